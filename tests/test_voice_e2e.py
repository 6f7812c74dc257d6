"""Calls end to end: consoles on the stream, the bridge and the sandbox (playing Twilio's voice) on loopback.

The sandbox runs its simulated time fast (``voice_time_scale``) and places calls on demand; its callers and the
agents' phones (``client:ana``, ``client:ben``) behave as each test tells them. Nothing is mocked between the
parts: the bridge answers the sandbox's webhooks with TwiML the sandbox executes, and drives conferences through
the sandbox's REST API, as it would Twilio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage
from websockets.asyncio.client import connect

from bridge import protocol
from bridge.app import create_app
from bridge.queues import OpeningSpan, Queue, QueueConfig
from bridge.sandbox.app import SandboxConfig, create_sandbox_app
from bridge.settings import Settings
from bridge.store import add_agent, open_database, set_agent_phone
from tests.processes import BridgeProcess
from tests.sandbox_support.server import bound_socket, run_app_in_thread, socket_url
from tests.support import ACCOUNT_SID, AUTH_TOKEN
from tests.test_send_sms_e2e import Console

OUR_NUMBER = "+14155550100"
CALLER = "+12125550123"
OTHER_CALLER = "+12125550177"
EXTERNAL = "+13125550199"
ANA_PHONE, BEN_PHONE, CAL_PHONE = "client:ana", "client:ben", "client:cal"
WAIT = 15.0
"""Seconds any single wait may take before the test fails with what it saw."""
TIME_SCALE = 0.02
"""Real seconds per simulated second in the sandbox: a 4-second ring takes 80 ms."""

Frame = dict[str, Any]


class Agent(Console):
    """A console that sends any command."""

    def __init__(self, console: Console, name: str) -> None:
        super().__init__(console.ws)
        self.frames = console.frames
        self.cursor = console.cursor
        self.name = name
        self._ids = 0

    async def do(self, command: str, timeout: float = WAIT, **args: Any) -> Frame:
        """Send a command with a fresh id; its result frame."""
        self._ids += 1
        command_id = f"{self.name}-{command}-{self._ids}"
        mark = len(self.frames)
        await self.ws.send(protocol.encode(protocol.Command(command_id, command, args).to_frame()))
        return await self.result(command_id, mark, timeout)

    async def call(self, change: str, timeout: float = WAIT, **data: Any) -> Frame:
        """The first call.updated with this change (and data) in the stream."""
        return await self.event(protocol.CALL_UPDATED, timeout=timeout, change=change, **data)

    async def wait_for(self, predicate: Callable[[Frame], bool], since: int = 0, timeout: float = WAIT) -> Frame:
        try:
            return await super().wait_for(predicate, since, timeout)
        except AssertionError:
            raise AssertionError(f"no matching frame within {timeout} s; saw:\n{self.summary()}") from None

    def summary(self) -> str:
        """One short line per frame, for failure messages."""
        lines = []
        for f in self.frames:
            d = f.get("data") or {}
            if f.get("type") == protocol.CALL_UPDATED:
                extra = f"{d['change']} state={d['state']} agent={d['agent']} hold={d['on_hold']} reason={d['reason']}"
                lines.append(f"#{f['seq']} call {d['call_sid'][-6:]} {extra}")
            elif f.get("type") == protocol.AGENT_PRESENCE:
                lines.append(f"#{f['seq']} presence {d['agent']} {d['presence']} ({d['reason']})")
            else:
                lines.append(json.dumps(f)[:160])
        return "\n".join(lines)

    def changes(self, call_sid: str) -> list[str]:
        return [f["data"]["change"] for f in self.events(protocol.CALL_UPDATED, call_sid=call_sid)]


@dataclass
class World:
    bridge_url: str
    sandbox_url: str
    tokens: dict[str, str]
    db_path: Path
    http: httpx.AsyncClient

    @contextlib.asynccontextmanager
    async def agent(self, name: str) -> AsyncIterator[Agent]:
        url = self.bridge_url.replace("http://", "ws://") + "/v1/stream?after=0"
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        async with connect(url, additional_headers=headers, open_timeout=WAIT, close_timeout=2) as ws:
            console = Agent(Console(ws), name)
            await console.wait_for(lambda f: f.get("type") == protocol.CAUGHT_UP)
            yield console

    async def control(self, path: str, **data: Any) -> Any:
        response = await self.http.post(f"{self.sandbox_url}{path}", json=data)
        assert response.status_code == 200, response.text
        return response.json()

    async def call_in(self, caller: str = CALLER, **behaviour: Any) -> str:
        """A simulated caller dials our number; by default they wait and talk until hung up on."""
        data = {"from": caller, "to": OUR_NUMBER, "patience": None, "talk": None, **behaviour}
        return str((await self.control("/sandbox/call", **data))["call_sid"])

    async def hang_up(self, call_sid: str) -> None:
        await self.control(f"/sandbox/calls/{call_sid}/hangup")

    async def phone(self, endpoint: str, answer: bool = True, ring: float = 1.0) -> None:
        await self.control("/sandbox/phones", endpoint=endpoint, answer=answer, ring=ring)

    async def calls(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.sandbox_url}/sandbox/calls")
        found: list[dict[str, Any]] = response.json()
        return found

    async def sandbox_call(self, sid: str) -> dict[str, Any]:
        return next(c for c in await self.calls() if c["sid"] == sid)

    async def legs_to(self, endpoint: str) -> list[dict[str, Any]]:
        return [c for c in await self.calls() if c["to"] == endpoint]

    async def until(self, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Poll ``check`` (sync or async) until it returns something truthy."""
        deadline = asyncio.get_running_loop().time() + timeout
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; last saw {last!r}")

    async def in_conference(self, call_sid: str) -> dict[str, Any]:
        """The caller's participant in the call's conference, once they are in it."""

        async def check() -> dict[str, Any] | None:
            conference = (await self.sandbox_call(call_sid))["conference"]
            return conference if conference is not None and conference["status"] == "connected" else None

        found: dict[str, Any] = await self.until(check, f"{call_sid} in its conference")
        return found

    def db(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()


def queues(**changes: Any) -> QueueConfig:
    values: dict[str, Any] = {"name": "support", "catch_all": True, "wait_music": "", "longest_wait": 600}
    values.update(changes)
    return QueueConfig((Queue(**values), Queue("billing", numbers=frozenset({"+14155550101"}), wait_music="")))


@contextlib.asynccontextmanager
async def loopback(
    tmp_path: Path,
    queue_config: QueueConfig | None = None,
    bridge_changes: dict[str, Any] | None = None,
    **sandbox_changes: Any,
) -> AsyncIterator[World]:
    """The sandbox and the bridge on loopback; agents ana, ben and cal, each with a phone the sandbox answers."""
    settings = Settings(
        data_dir=tmp_path / "bridge",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        rest_retries=1,
        rest_backoff=0.01,
        rest_timeout=5.0,
        ring_timeout=10,
        presence_grace=0.2,
    ).with_(**(bridge_changes or {}))
    db = open_database(settings.db_path)
    try:
        tokens = {name: add_agent(db, name) for name in ("ana", "ben", "cal")}
        for name, phone in (("ana", ANA_PHONE), ("ben", BEN_PHONE), ("cal", CAL_PHONE)):
            set_agent_phone(db, name, phone)
    finally:
        db.close()
    with contextlib.ExitStack() as stack:
        bridge_sock, sandbox_sock = bound_socket(), bound_socket()
        bridge_url, sandbox_url = socket_url(bridge_sock), socket_url(sandbox_sock)
        settings = settings.with_(public_url=bridge_url, api_base=sandbox_url)
        config = SandboxConfig(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            bridge_url=bridge_url,
            public_url=sandbox_url,
            support_numbers=(OUR_NUMBER, "+14155550101"),
            voice_time_scale=TIME_SCALE,
            ring_seconds=1.0,
            caller_patience=None,
            caller_talk_seconds=None,
            webhook_timeout=5.0,
            **sandbox_changes,
        )
        stack.enter_context(run_app_in_thread(create_sandbox_app(config), sock=sandbox_sock))
        stack.enter_context(run_app_in_thread(create_app(settings, queues=queue_config or queues()), sock=bridge_sock))
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
            world = World(bridge_url, sandbox_url, tokens, settings.db_path, http)
            try:
                yield world
            finally:
                await _quiet(world)


async def _quiet(world: World) -> None:
    """Hang up every call still going, and wait for the webhooks that sets off, before the servers stop: a server
    stopping while the other still talks to it leaves connections half-closed (ResourceWarning, an error here)."""
    live = ("queued", "ringing", "in-progress")
    for call in await world.calls():
        if call["status"] in live:
            await world.http.post(f"{world.sandbox_url}/sandbox/calls/{call['sid']}/hangup")

    async def settled() -> bool:
        return all(call["status"] not in live for call in await world.calls())

    await world.until(settled, "every call in the sandbox over")
    await asyncio.sleep(0.3)  # the last status callbacks, and the REST calls they set off


async def queued(agent: Agent, world: World, caller: str = CALLER, **behaviour: Any) -> str:
    sid = await world.call_in(caller, **behaviour)
    await agent.call("queued", call_sid=sid)
    return sid


async def connected(agent: Agent, world: World, caller: str = CALLER) -> str:
    """A call comes in and ``agent`` accepts it; returns once caller and agent talk in the conference."""
    sid = await queued(agent, world, caller)
    result = await agent.do(protocol.ACCEPT_CALL, call_sid=sid)
    assert result["ok"] is True, result
    await agent.call("connected", call_sid=sid)
    await world.in_conference(sid)
    return sid


async def _in_queue(world: World, sid: str) -> dict[str, Any] | None:
    queue: dict[str, Any] | None = (await world.sandbox_call(sid))["queue"]
    return queue


def last_call(agent: Agent, call_sid: str) -> dict[str, Any]:
    data: dict[str, Any] = agent.events(protocol.CALL_UPDATED, call_sid=call_sid)[-1]["data"]
    return data


# -- accept ------------------------------------------------------------------------------------------------------


async def test_accept_rings_the_agent_then_moves_the_caller_into_the_conference(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        sid = await queued(ana, world)
        snapshot = last_call(ana, sid)
        assert (snapshot["state"], snapshot["queue"], snapshot["customer_number"]) == ("queued", "support", CALLER)
        waiting = await world.until(lambda: _in_queue(world, sid), "the caller in the sandbox's queue")
        assert waiting["name"] == "support"

        result = await ana.do(protocol.ACCEPT_CALL)  # no call_sid: the one waiting longest
        assert result["ok"] is True, result
        assert result["data"]["call_sid"] == sid and result["data"]["state"] == "ringing_agent"
        accepted = await ana.call("accepted", call_sid=sid)
        assert (accepted["data"]["state"], accepted["data"]["agent"]) == ("ringing_agent", "ana")
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", presence="busy", reason="on_call", call_sid=sid)

        joined = await ana.call("connected", call_sid=sid)
        assert joined["data"]["agents"] == ["ana"] and joined["data"]["queue"] is None
        conference = await world.in_conference(sid)
        assert conference["name"] == sid and conference["hold"] is False
        [leg] = await world.legs_to(ANA_PHONE)
        assert leg["conference"]["name"] == sid and leg["status"] == "in-progress"
        assert ana.changes(sid) == ["queued", "accepted", "connected"]


async def test_two_agents_accepting_at_once_exactly_one_wins_and_the_other_is_told_who(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana, world.agent("ben") as ben:
        sid = await queued(ana, world)
        await ben.call("queued", call_sid=sid)
        first, second = await asyncio.gather(
            ana.do(protocol.ACCEPT_CALL, call_sid=sid), ben.do(protocol.ACCEPT_CALL, call_sid=sid)
        )
        winners = [r for r in (first, second) if r["ok"]]
        losers = [r for r in (first, second) if not r["ok"]]
        assert len(winners) == 1 and len(losers) == 1, (first, second)
        winner = "ana" if first["ok"] else "ben"
        assert losers[0]["error"]["code"] == "already_taken"
        assert losers[0]["data"] == {"agent": winner} and winner in losers[0]["error"]["message"]
        await ana.call("connected", call_sid=sid, agent=winner)
        await world.in_conference(sid)
        # Only the winner's phone was ever dialled.
        assert len(await world.legs_to(ANA_PHONE if winner == "ana" else BEN_PHONE)) == 1
        assert await world.legs_to(BEN_PHONE if winner == "ana" else ANA_PHONE) == []
        assert ana.changes(sid).count("accepted") == 1


async def test_agent_phone_not_answering_leaves_the_caller_first_in_line(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        await world.phone(ANA_PHONE, answer=False)
        sid = await queued(ana, world)
        later = await queued(ana, world, OTHER_CALLER)
        assert (await ana.do(protocol.ACCEPT_CALL, call_sid=sid))["ok"] is True
        missed = await ana.call("agent_no_answer", call_sid=sid)
        assert (missed["data"]["state"], missed["data"]["agent"], missed["data"]["queue"]) == (
            "queued",
            None,
            "support",
        )
        assert "ana" in missed["data"]["reason"]
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", presence="available", reason="released")
        # Never taken out of the queue, so still ahead of the later caller; the next accept takes it again.
        assert (await world.sandbox_call(sid))["queue"]["position"] == 1
        assert (await world.sandbox_call(later))["queue"]["position"] == 2
        again = await ana.do(protocol.ACCEPT_CALL)
        assert again["data"]["call_sid"] == sid


async def test_hold_and_unhold_and_mute_change_the_conference(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        sid = await connected(ana, world)
        held = await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=True)
        assert held["data"] == {"call_sid": sid, "on_hold": True, "changed": True}
        assert (await ana.call("held", call_sid=sid))["data"]["state"] == "on_hold"
        await world.until(lambda: _hold(world, sid, True), "the caller on hold in the sandbox")
        again = await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=True)
        assert again["data"]["changed"] is False
        await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=False)
        assert (await ana.call("unheld", call_sid=sid))["data"]["state"] == "connected"
        await world.until(lambda: _hold(world, sid, False), "the caller unheld in the sandbox")

        muted = await ana.do(protocol.MUTE_CALL, call_sid=sid, muted=True)
        assert muted["data"]["muted"] is True
        [leg] = await world.legs_to(ANA_PHONE)
        await world.until(lambda: _leg_muted(world, leg["sid"]), "ana's leg muted")
        ben_tries = await ana.do(protocol.HANG_UP, call_sid="CA" + "0" * 32)
        assert ben_tries["error"]["code"] == "unknown_call"


async def _hold(world: World, sid: str, hold: bool) -> bool:
    conference = (await world.sandbox_call(sid))["conference"]
    return conference is not None and conference["hold"] is hold


async def _leg_muted(world: World, leg_sid: str) -> bool:
    conference = (await world.sandbox_call(leg_sid))["conference"]
    return conference is not None and conference["muted"] is True


# -- transfers ---------------------------------------------------------------------------------------------------


async def test_cold_transfer_to_an_agent_hands_the_caller_over(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana, world.agent("ben") as ben:
        sid = await connected(ana, world)
        result = await ana.do(protocol.TRANSFER_CALL, call_sid=sid, mode="cold", target={"agent": "ben"})
        assert result["ok"] is True, result
        assert result["data"]["transfer"]["state"] == "ringing"
        started = await ben.call("transfer_started", call_sid=sid)
        assert (started["data"]["state"], started["data"]["agent"]) == ("transferring", "ben")
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", reason="wrap_up", call_sid=sid)
        done = await ben.call("transfer_completed", call_sid=sid)
        assert (done["data"]["state"], done["data"]["agent"], done["data"]["on_hold"]) == ("connected", "ben", False)
        assert done["data"]["agents"] == ["ana", "ben"]
        assert done["data"]["transfer"]["state"] == "completed"
        # In the sandbox: the caller talks with ben's phone in the same conference; ana's phone has left.
        await world.until(lambda: _hold(world, sid, False), "the caller unheld")
        [ben_leg] = await world.legs_to(BEN_PHONE)
        assert ben_leg["conference"]["name"] == sid
        [ana_leg] = await world.legs_to(ANA_PHONE)
        await world.until(lambda: _ended(world, ana_leg["sid"]), "ana's phone hung up")
        # ana wraps up with a disposition note and is available again.
        wrapped = await ana.do(protocol.WRAP_UP, call_sid=sid, note="Billing question: passed to Ben.")
        assert wrapped["ok"] is True, wrapped
        note = await ana.event(protocol.NOTE_ADDED, call_sid=sid)
        assert note["data"]["body"] == "Billing question: passed to Ben."
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", presence="available", reason="wrapped_up")


async def _ended(world: World, sid: str) -> bool:
    return (await world.sandbox_call(sid))["status"] in ("completed", "canceled", "no-answer", "busy", "failed")


async def test_cold_transfer_to_an_agent_who_does_not_answer_puts_the_caller_back_first_in_line(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana, world.agent("ben"):
        await world.phone(BEN_PHONE, answer=False)
        sid = await connected(ana, world)
        later = await queued(ana, world, OTHER_CALLER)
        result = await ana.do(protocol.TRANSFER_CALL, call_sid=sid, mode="cold", target={"agent": "ben"})
        assert result["ok"] is True, result
        failed = await ana.call("transfer_failed", call_sid=sid)
        assert (failed["data"]["state"], failed["data"]["queue"]) == ("queued", "support")
        assert failed["data"]["transfer"]["state"] == "failed" and "ben" in failed["data"]["reason"]
        # The caller is never dropped: back in the queue; and first in line, since accept takes the oldest call.
        await world.until(lambda: _in_queue(world, sid), "the caller back in the queue")
        assert (await world.sandbox_call(sid))["status"] == "in-progress"
        await ana.do(protocol.WRAP_UP, call_sid=sid, note="Tried Ben.")
        again = await ana.do(protocol.ACCEPT_CALL)
        assert again["data"]["call_sid"] == sid, (again, later)
        mark = len(ana.frames)
        await ana.wait_for(
            lambda f: f.get("type") == protocol.CALL_UPDATED and f["data"]["change"] == "connected", since=mark
        )
        # A new conference (same name, new SID): hold reaches it, not the finished one.
        conference = await world.in_conference(sid)
        await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=True)
        await world.until(lambda: _hold(world, sid, True), f"the caller held in {conference['sid']}")


async def test_cold_transfer_to_a_queue_and_to_a_number(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        sid = await connected(ana, world)
        result = await ana.do(protocol.TRANSFER_CALL, call_sid=sid, mode="cold", target={"queue": "billing"})
        assert result["ok"] is True, result
        moved = await ana.call("transfer_completed", call_sid=sid)
        assert (moved["data"]["state"], moved["data"]["queue"]) == ("queued", "billing")
        waiting = await world.until(lambda: _in_queue(world, sid), "the caller in the billing queue")
        assert waiting["name"] == "billing"
        await ana.do(protocol.WRAP_UP, call_sid=sid, note="Sent to billing.")

        other = await connected(ana, world, OTHER_CALLER)
        out = await ana.do(protocol.TRANSFER_CALL, call_sid=other, mode="cold", target={"number": "(312) 555-0199"})
        assert out["ok"] is True, out
        assert out["data"]["transfer"]["target"] == EXTERNAL
        await ana.call("transfer_completed", call_sid=other)
        [external] = await world.legs_to(EXTERNAL)
        assert external["conference"]["name"] == other
        await world.hang_up(other)
        ended = await ana.call("ended", call_sid=other)
        assert ended["data"]["outcome"] == "transferred_out"
        bad = await ana.do(protocol.TRANSFER_CALL, call_sid=other, mode="cold", target={"number": "555"})
        assert bad["error"]["code"] in ("bad_number", "not_your_call")


async def test_warm_transfer_completed(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana, world.agent("ben"):
        sid = await connected(ana, world)
        result = await ana.do(protocol.TRANSFER_CALL, call_sid=sid, mode="warm", target={"agent": "ben"})
        assert result["ok"] is True, result
        started = await ana.call("transfer_started", call_sid=sid)
        assert (started["data"]["state"], started["data"]["on_hold"]) == ("on_hold", True)
        early = await ana.do(protocol.COMPLETE_TRANSFER, call_sid=sid)
        assert early["ok"] is True or early["error"]["code"] == "no_transfer"
        if not early["ok"]:
            consulting = await ana.call("transfer_answered", call_sid=sid)
            assert consulting["data"]["state"] == "consulting"
            await world.until(lambda: _hold(world, sid, True), "the caller on hold while ana and ben talk")
            done = await ana.do(protocol.COMPLETE_TRANSFER, call_sid=sid)
            assert done["ok"] is True, done
        completed = await ana.call("transfer_completed", call_sid=sid)
        assert (completed["data"]["agent"], completed["data"]["state"]) == ("ben", "connected")
        assert completed["data"]["agents"] == ["ana", "ben"]
        await world.until(lambda: _hold(world, sid, False), "the caller unheld, with ben")
        [ana_leg] = await world.legs_to(ANA_PHONE)
        await world.until(lambda: _ended(world, ana_leg["sid"]), "ana's phone out of the call")
        assert (await world.sandbox_call(sid))["status"] == "in-progress"
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", reason="wrap_up", call_sid=sid)


async def test_warm_transfer_cancelled(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana, world.agent("ben"):
        sid = await connected(ana, world)
        await ana.do(protocol.TRANSFER_CALL, call_sid=sid, mode="warm", target={"agent": "ben"})
        await ana.call("transfer_answered", call_sid=sid)
        cancelled = await ana.do(protocol.CANCEL_TRANSFER, call_sid=sid)
        assert cancelled["ok"] is True, cancelled
        back = await ana.call("transfer_cancelled", call_sid=sid)
        assert (back["data"]["state"], back["data"]["agent"], back["data"]["on_hold"]) == ("connected", "ana", False)
        await world.until(lambda: _hold(world, sid, False), "the caller unheld, back with ana")
        [ben_leg] = await world.legs_to(BEN_PHONE)
        await world.until(lambda: _ended(world, ben_leg["sid"]), "ben's phone hung up")
        await ana.event(protocol.AGENT_PRESENCE, agent="ben", presence="available", reason="released")
        assert (await world.sandbox_call(sid))["status"] == "in-progress"


# -- hanging up --------------------------------------------------------------------------------------------------


async def test_caller_hanging_up_on_hold_ends_the_call_cleanly(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        sid = await connected(ana, world)
        await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=True)
        await world.until(lambda: _hold(world, sid, True), "the caller on hold")
        await world.hang_up(sid)
        ended = await ana.call("ended", call_sid=sid)
        assert (ended["data"]["state"], ended["data"]["outcome"]) == ("ended", "answered")
        [ana_leg] = await world.legs_to(ANA_PHONE)
        await world.until(lambda: _ended(world, ana_leg["sid"]), "ana's phone hung up with the conference")
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", presence="busy", reason="wrap_up", call_sid=sid)
        refused = await ana.do(protocol.ACCEPT_CALL)
        assert refused["error"]["code"] in ("agent_busy", "no_calls_waiting")


async def test_agent_hangs_up_then_wraps_up(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        sid = await connected(ana, world)
        result = await ana.do(protocol.HANG_UP, call_sid=sid)
        assert result["ok"] is True, result
        ended = await ana.call("ended", call_sid=sid)
        assert ended["data"]["outcome"] == "answered" and "ana" in ended["data"]["reason"]
        await world.until(lambda: _ended(world, sid), "the caller's call over")
        second = await queued(ana, world, OTHER_CALLER)
        busy = await ana.do(protocol.ACCEPT_CALL, call_sid=second)
        assert busy["error"]["code"] == "agent_busy"
        not_yet = await ana.do(protocol.WRAP_UP, call_sid=second, note="x")
        assert not_yet["error"]["code"] == "not_in_wrap_up"
        await ana.do(protocol.WRAP_UP, call_sid=sid, note="Resolved.")
        assert (await ana.do(protocol.ACCEPT_CALL, call_sid=second))["ok"] is True


async def test_agent_putting_the_phone_down_ends_the_call(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        sid = await connected(ana, world)
        [ana_leg] = await world.legs_to(ANA_PHONE)
        await world.hang_up(ana_leg["sid"])
        ended = await ana.call("ended", call_sid=sid)
        assert ended["data"]["outcome"] == "answered"
        await world.until(lambda: _ended(world, sid), "the caller's call over")
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", reason="wrap_up", call_sid=sid)


# -- voicemail ---------------------------------------------------------------------------------------------------


async def test_voicemail_after_the_longest_wait(tmp_path: Path) -> None:
    config = queues(longest_wait=1, missed_call_text="Sorry we missed you! Reply here and we'll help.")
    async with loopback(tmp_path, config, voicemail_seconds=3.0) as world, world.agent("ana") as ana:
        sid = await queued(ana, world)
        started = await ana.call("voicemail_started", call_sid=sid)
        assert started["data"]["state"] == "voicemail"
        recorded = await ana.event(protocol.VOICEMAIL_RECORDED, call_sid=sid)
        data = recorded["data"]
        assert (data["reason"], data["queue"], data["customer_number"]) == ("longest wait", "support", CALLER)
        assert data["recording_url"].startswith("http") and data["duration"] >= 1
        assert data["conversation_id"] == last_call(ana, sid)["conversation_id"]
        ended = await ana.call("ended", call_sid=sid)
        assert ended["data"]["outcome"] == "voicemail"
        text = await ana.event(protocol.MESSAGE_OUTBOUND, conversation_id=data["conversation_id"])
        assert text["data"]["body"].startswith("Sorry we missed you")
        assert world.db("SELECT count(*) FROM voicemails WHERE call_sid = ?", (sid,)) == [(1,)]


async def test_voicemail_outside_opening_hours(tmp_path: Path) -> None:
    never = (OpeningSpan(frozenset(), time(9), time(10)),)  # open on no day at all
    async with loopback(tmp_path, queues(hours=never), voicemail_seconds=2.0) as world, world.agent("ana") as ana:
        sid = await world.call_in()
        started = await ana.call("voicemail_started", call_sid=sid)
        assert "closed" in started["data"]["reason"]
        recorded = await ana.event(protocol.VOICEMAIL_RECORDED, call_sid=sid)
        assert recorded["data"]["reason"] == "closed"
        assert "queued" not in ana.changes(sid)


# -- chaos -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chaos", ["duplicate", "reorder"])
async def test_duplicated_and_reordered_callbacks_change_nothing(tmp_path: Path, chaos: str) -> None:
    share = {f"voice_{chaos}_callback_share": 0.5}
    async with loopback(tmp_path, None, None, **share) as world, world.agent("ana") as ana:
        sid = await connected(ana, world)
        await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=True)
        await ana.do(protocol.HOLD_CALL, call_sid=sid, hold=False)
        await world.hang_up(sid)
        await ana.call("ended", call_sid=sid)
        await asyncio.sleep(0.5)  # let every late or repeated callback arrive
        assert ana.changes(sid) == ["queued", "accepted", "connected", "held", "unheld", "ended"]
        assert world.db("SELECT state, outcome FROM calls WHERE call_sid = ?", (sid,)) == [("ended", "answered")]
        presence = [f["data"]["presence"] for f in ana.events(protocol.AGENT_PRESENCE, agent="ana")]
        assert presence == ["available", "busy", "busy"]
        assert json.loads(world.db("SELECT agents FROM calls")[0][0]) == ["ana"]


# -- more ways a call goes -----------------------------------------------------------------------------------------


async def test_caller_hanging_up_while_the_agent_phone_rings_releases_the_agent(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana:
        await world.phone(ANA_PHONE, ring=200.0)  # rings for a long while
        sid = await queued(ana, world)
        await world.until(lambda: _in_queue(world, sid), "the caller in the queue")
        await ana.do(protocol.ACCEPT_CALL, call_sid=sid)
        [leg] = await world.until(lambda: world.legs_to(ANA_PHONE), "ana's phone ringing")
        await world.hang_up(sid)
        ended = await ana.call("ended", call_sid=sid)
        assert (ended["data"]["outcome"], ended["data"]["agents"]) == ("abandoned", [])
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", presence="available", reason="released")
        await world.until(lambda: _ended(world, leg["sid"]), "ana's phone stopped ringing")


async def test_an_agent_hanging_up_while_their_phone_rings_is_no_missed_call(tmp_path: Path) -> None:
    """The agent hung up (their own phone still ringing): the caller did not give up, so the outcome is not
    "abandoned" and no "sorry we missed you" text goes out."""
    config = queues(missed_call_text="Sorry we missed you! Reply here and we'll help.")
    async with loopback(tmp_path, config) as world, world.agent("ana") as ana:
        await world.phone(ANA_PHONE, ring=200.0)  # rings for a long while
        sid = await queued(ana, world)
        await world.until(lambda: _in_queue(world, sid), "the caller in the queue")
        await ana.do(protocol.ACCEPT_CALL, call_sid=sid)
        await world.until(lambda: world.legs_to(ANA_PHONE), "ana's phone ringing")
        hung_up = await ana.do(protocol.HANG_UP, call_sid=sid)
        assert hung_up["ok"] is True, hung_up
        ended = await ana.call("ended", call_sid=sid)
        assert (ended["data"]["outcome"], ended["data"]["agents"]) == ("agent_hung_up", [])
        await world.until(lambda: _ended(world, sid), "the caller's call over")
        await asyncio.sleep(0.5)  # the missed-call text, were it sent, is sent as soon as the end commits
        assert ana.events(protocol.MESSAGE_OUTBOUND) == []
        assert world.db("SELECT count(*) FROM messages") == [(0,)]


async def test_agent_leaving_mid_consultation_leaves_the_caller_with_the_target(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.agent("ana") as ana, world.agent("ben"):
        sid = await connected(ana, world)
        await ana.do(protocol.TRANSFER_CALL, call_sid=sid, mode="warm", target={"agent": "ben"})
        await ana.call("transfer_answered", call_sid=sid)
        [ana_leg] = await world.legs_to(ANA_PHONE)
        await world.hang_up(ana_leg["sid"])  # ana puts her phone down: the caller must not be dropped
        done = await ana.call("transfer_completed", call_sid=sid)
        assert (done["data"]["agent"], done["data"]["state"]) == ("ben", "connected")
        await world.until(lambda: _hold(world, sid, False), "the caller unheld, with ben")
        assert (await world.sandbox_call(sid))["status"] == "in-progress"
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", reason="wrap_up", call_sid=sid)


async def test_auto_offer_goes_to_the_longest_idle_agent_then_the_next(tmp_path: Path) -> None:
    changes = {"auto_offer": True, "offer_timeout": 0.5}
    async with loopback(tmp_path, bridge_changes=changes) as world, world.agent("ana") as ana:
        await ana.event(protocol.AGENT_PRESENCE, agent="ana", presence="available")
        async with world.agent("ben") as ben:
            await ben.event(protocol.AGENT_PRESENCE, agent="ben", presence="available")
            sid = await world.call_in()
            first = await ana.call("offered", call_sid=sid)
            assert first["data"]["offered_to"] == "ana" and first["data"]["offer_expires_at"]
            wrong = await ben.do(protocol.DECLINE_CALL, call_sid=sid)
            assert wrong["error"]["code"] == "not_offered"
            assert (await ana.do(protocol.DECLINE_CALL, call_sid=sid))["ok"] is True
            await ana.call("offer_declined", call_sid=sid)
            second = await ben.wait_for(
                lambda f: (
                    f.get("type") == protocol.CALL_UPDATED
                    and f["data"]["change"] == "offered"
                    and f["data"]["offered_to"] == "ben"
                )
            )
            assert second["data"]["call_sid"] == sid
            # ben lets it time out: offered to nobody else (ana declined), the caller keeps waiting.
            timed_out = await ben.wait_for(
                lambda f: (
                    f.get("type") == protocol.CALL_UPDATED
                    and f["data"]["change"] == "offer_declined"
                    and "in time" in (f["data"]["reason"] or "")
                )
            )
            assert timed_out["data"]["state"] == "queued" and timed_out["data"]["offered_to"] is None
            assert (await ben.do(protocol.ACCEPT_CALL, call_sid=sid))["ok"] is True
            await ben.call("connected", call_sid=sid, agent="ben")


# -- a crash mid-accept ------------------------------------------------------------------------------------------


class HoldFirstDial:
    """ASGI middleware in front of the sandbox: holds the first participant create (its body read) until released,
    so the bridge can be killed while its dial is provably in flight."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.held = threading.Event()
        self.release = threading.Event()
        self.dials = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_dial = scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/Participants.json")
        if not is_dial:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        with self._lock:
            self.dials += 1
            first = self.dials == 1
        if first:
            self.held.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        replayed = False

        async def replay() -> AsgiMessage:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def answer(message: AsgiMessage) -> None:
            with contextlib.suppress(Exception):  # the bridge that asked may be dead
                await send(message)

        await self.app(scope, replay, answer)


async def test_a_dial_in_flight_when_the_bridge_is_killed_is_looked_up_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text('[[queues]]\nname = "support"\nwait_music = ""\n', encoding="utf-8")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    bridge_dir = tmp_path / "bridge"
    db = open_database(bridge_dir / "bridge.db")
    try:
        token = add_agent(db, "ana")
        set_agent_phone(db, "ana", ANA_PHONE)
    finally:
        db.close()
    sandbox_sock = bound_socket()
    sandbox_url = socket_url(sandbox_sock)
    bridge = BridgeProcess(bridge_dir, api_base=sandbox_url)
    sandbox = SandboxConfig(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        bridge_url=bridge.url,
        public_url=sandbox_url,
        support_numbers=(OUR_NUMBER,),
        voice_time_scale=TIME_SCALE,
        ring_seconds=1.0,
        caller_patience=None,
        caller_talk_seconds=None,
        webhook_timeout=5.0,
    )
    gate = HoldFirstDial(create_sandbox_app(sandbox))
    with run_app_in_thread(gate, sock=sandbox_sock):
        bridge.start()
        try:
            async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
                world = World(bridge.url, sandbox_url, {"ana": token}, bridge_dir / "bridge.db", http)
                async with world.agent("ana") as ana:
                    sid = await queued(ana, world)
                    await world.until(lambda: _in_queue(world, sid), "the caller in the queue")
                    assert (await ana.do(protocol.ACCEPT_CALL, call_sid=sid))["ok"] is True
                    await world.until(gate.held.is_set, "the dial held at the gate")
                bridge.kill()  # the dial has left the bridge; whether Twilio got it, the bridge cannot know
                gate.release.set()
                await world.until(lambda: _answered(world), "ana's phone answering while the bridge is down")
                bridge.start()
                async with world.agent("ana") as ana:
                    joined = await ana.call("connected", call_sid=sid)
                    assert joined["data"]["agent"] == "ana"
                    await world.in_conference(sid)
                assert gate.dials == 1  # looked up by its label after the restart, never dialled again
                assert len(await world.legs_to(ANA_PHONE)) == 1
                await _quiet(world)
        finally:
            bridge.stop()


async def _answered(world: World) -> bool:
    return any(leg["status"] == "in-progress" for leg in await world.legs_to(ANA_PHONE))
