"""Replies going out end to end: a console on the stream, the bridge and the sandbox both served on loopback.

The console is a websockets client, as a real one is; the sandbox plays Twilio (REST API, signed status callbacks,
customers texting in). Nothing is mocked between them: what the tests see is what an agent would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage
from websockets.asyncio.client import ClientConnection, connect

from bridge import protocol
from bridge.app import create_app
from bridge.sandbox.app import SandboxConfig, create_sandbox_app
from bridge.sandbox.messaging import Messaging
from bridge.settings import Settings
from bridge.store import STATUS_RANK, add_agent, open_database
from bridge.types import conversation_id
from tests.processes import BridgeProcess
from tests.sandbox_support.server import bound_socket, run_app_in_thread, socket_url
from tests.support import ACCOUNT_SID, AUTH_TOKEN

OUR_NUMBER = "+14155550100"
OTHER_NUMBER = "+14155550101"
CUSTOMER = "+12125550123"
NEW_CUSTOMER = "+13125550188"
SEED = 20261124
WAIT = 10.0  # seconds any single wait may take before the test fails with what it saw

Frame = dict[str, Any]


# -- the console -------------------------------------------------------------------------------------------------


class Console:
    """An agent's console on ``/v1/stream``: every frame it received, in order, and waits with timeouts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.cursor = 0

    async def wait_for(self, predicate: Callable[[Frame], bool], since: int = 0, timeout: float = WAIT) -> Frame:
        """The first frame from index ``since`` on that satisfies ``predicate``, reading more as needed."""
        index = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while index < len(self.frames):
                        if predicate(self.frames[index]):
                            return self.frames[index]
                        index += 1
                    frame = json.loads(await self.ws.recv())
                    assert isinstance(frame, dict)
                    if "seq" in frame:
                        self.cursor = frame["seq"]
                    self.frames.append(frame)
        except TimeoutError:
            seen = "\n".join(json.dumps(f)[:300] for f in self.frames[since:])
            raise AssertionError(f"no matching frame within {timeout} s; frames since #{since}:\n{seen}") from None

    async def send(self, command_id: str, args: dict[str, Any]) -> int:
        """Send a send_sms command; returns the frame index from which its answer can be looked for."""
        mark = len(self.frames)
        frame = protocol.Command(id=command_id, command=protocol.SEND_SMS, args=args).to_frame()
        await self.ws.send(protocol.encode(frame))
        return mark

    async def result(self, command_id: str, since: int = 0, timeout: float = WAIT) -> Frame:
        return await self.wait_for(lambda f: f.get("type") == protocol.RESULT and f["id"] == command_id, since, timeout)

    async def command(self, command_id: str, args: dict[str, Any], timeout: float = WAIT) -> Frame:
        """Send a command and wait for its result frame."""
        return await self.result(command_id, await self.send(command_id, args), timeout)

    async def event(self, type_: str, timeout: float = WAIT, **data: Any) -> Frame:
        """Wait for an event of ``type_`` whose data has every given key/value."""
        return await self.wait_for(lambda f: f.get("type") == type_ and _has(f, data), 0, timeout)

    def events(self, type_: str | None = None, **data: Any) -> list[Frame]:
        return [f for f in self.frames if "seq" in f and (type_ is None or f["type"] == type_) and _has(f, data)]

    def of_message(self, message_id: str) -> list[Frame]:
        """The events about one outbound message, in log order, as a console files them (by message_id)."""
        return [f for f in self.frames if "seq" in f and f["data"].get("message_id") == message_id]


def _has(frame: Frame, data: dict[str, Any]) -> bool:
    return all(frame.get("data", {}).get(key) == value for key, value in data.items())


@contextlib.asynccontextmanager
async def console(bridge_url: str, token: str, after: int = 0) -> AsyncIterator[Console]:
    """A console connected and caught up (the replay of everything after ``after`` is in ``frames``)."""
    url = bridge_url.replace("http://", "ws://") + f"/v1/stream?after={after}"
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=WAIT, close_timeout=2
    ) as ws:
        agent = Console(ws)
        agent.cursor = after
        await agent.wait_for(lambda f: f.get("type") == protocol.CAUGHT_UP)
        yield agent


def statuses_seen(frames: list[Frame]) -> list[str]:
    """How a console's view of one message moves: the outbound event, Twilio's answer, then each status event."""
    seen: list[str] = []
    for frame in frames:
        if frame["type"] in (protocol.MESSAGE_OUTBOUND, protocol.MESSAGE_SUBMITTED, protocol.MESSAGE_STATUS):
            seen.append(frame["data"]["status"])
    return seen


# -- a REST gate in front of the sandbox -------------------------------------------------------------------------


@dataclass
class Held:
    """One POST Messages.json the gate is holding: the test decides whether it reaches the sandbox."""

    body: bytes
    decided: threading.Event = field(default_factory=threading.Event)
    forward: bool = False

    @property
    def form_body(self) -> str:
        return parse_qs(self.body.decode())["Body"][0]


class RestGate:
    """ASGI middleware in front of the sandbox that can fail, hold or delay message creations.

    ``fail_next``: that many ``POST …/Messages.json`` are answered 500 without reaching the sandbox, as when Twilio
    fails before creating the message. ``lose_next``: that many POSTs reach the sandbox (it creates the message),
    and their answer is replaced by a 502, as when the answer is lost on the way back. ``fail_lookups``: that many
    ``GET …/Messages.json`` are answered 503. ``hold``: each POST waits (its body read) until the test forwards
    it to the sandbox or drops it, so a test can kill the bridge while its request is provably in flight.
    ``hold_answers``:
    the sandbox creates the message (and starts its delivery) but its answer waits for ``answers.set()``, so status
    callbacks can reach the bridge before the answer does. Runs in the sandbox's server thread; the test talks to
    it through thread-safe state only.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.hold = False
        self.hold_answers = False
        self.fail_next = 0
        self.lose_next = 0
        self.fail_lookups = 0
        self.answers = threading.Event()
        self.posts = 0
        self.lookups = 0
        self.held: list[Held] = []
        self._lock = threading.Lock()
        self._sandbox: tuple[asyncio.AbstractEventLoop, Messaging] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._sandbox is None:
            # The sandbox's lifespan state rides on every request: keep its message store and its loop.
            self._sandbox = (asyncio.get_running_loop(), scope["state"]["messaging"])
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.endswith("/Messages.json"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET":
            with self._lock:
                self.lookups += 1
                failing = self.fail_lookups > 0
                self.fail_lookups -= failing
            if failing:
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await self.app(scope, receive, send)
            return
        body = b""
        while True:  # read the body now: once the bridge is killed, the connection can no longer give it
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        with self._lock:
            self.posts += 1
            failing = self.fail_next > 0
            self.fail_next -= failing
        if failing:
            error = b'{"code": 20500, "message": "Internal Server Error", "status": 500}'
            await send(
                {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": error})
            return
        with self._lock:
            item = Held(body)
            if self.hold:
                self.held.append(item)
            else:
                item.forward = True
                item.decided.set()
        await _until(item.decided)
        if not item.forward:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        replayed = False

        async def replay() -> AsgiMessage:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        with self._lock:
            losing = self.lose_next > 0
            self.lose_next -= losing

        async def slow_send(message: AsgiMessage) -> None:
            if losing:  # created at the sandbox; the bridge hears only that something went wrong
                if message["type"] == "http.response.start":
                    await send({"type": "http.response.start", "status": 502, "headers": []})
                elif not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            if message["type"] == "http.response.start" and self.hold_answers:
                await _until(self.answers)
            await send(message)

        await self.app(scope, replay, slow_send)

    def snapshot(self) -> list[Held]:
        with self._lock:
            return list(self.held)

    async def wait_held(self, count: int, timeout: float = WAIT) -> list[Held]:
        async with asyncio.timeout(timeout):
            while len(self.snapshot()) < count:
                await asyncio.sleep(0.01)
        return self.snapshot()

    async def sandbox_idle(self, timeout: float = WAIT) -> None:
        """Wait until the sandbox has no delivery in flight: every status callback made and answered."""
        assert self._sandbox is not None, "the sandbox has not served a request yet"
        loop, messaging = self._sandbox
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(messaging.idle(timeout), loop))

    def release_all(self) -> None:
        """Drop whatever is still held (cleanup)."""
        for item in self.snapshot():
            item.decided.set()


async def _until(event: threading.Event, limit: float = 30.0) -> None:
    """Wait, without blocking the server's loop, for another thread to set ``event`` (at most ``limit`` s)."""
    for _ in range(int(limit / 0.01)):
        if event.is_set():
            return
        await asyncio.sleep(0.01)


# -- the loopback world ------------------------------------------------------------------------------------------


def sandbox_config(bridge_url: str, sandbox_url: str, **changes: Any) -> SandboxConfig:
    """The sandbox as these tests want it: our credentials, short delays, no random failures, a fixed seed."""
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "bridge_url": bridge_url,
        "public_url": sandbox_url,
        "support_numbers": (OUR_NUMBER, OTHER_NUMBER),
        "sent_delay": 0.02,
        "delivered_delay": 0.02,
        "accepted_delay": 0.005,
        "customer_rate": 0.0,
        "undelivered_share": 0.0,
        "seed": SEED,
        "webhook_timeout": 5.0,
    }
    values.update(changes)
    return SandboxConfig(**values)


@dataclass
class Loopback:
    """The sandbox and the bridge on loopback, an agent token, and an HTTP client for the sandbox's side doors."""

    bridge_url: str
    sandbox_url: str
    token: str
    db_path: Path
    http: httpx.AsyncClient
    gate: RestGate

    def console(self, after: int = 0) -> contextlib.AbstractAsyncContextManager[Console]:
        return console(self.bridge_url, self.token, after)

    async def text_in(self, body: str, from_: str = CUSTOMER, to: str = OUR_NUMBER) -> str:
        """A customer texts one of our numbers; the sandbox posts the signed webhook. Returns the MessageSid."""
        response = await self.http.post(f"{self.sandbox_url}/sandbox/sms", json={"from": from_, "to": to, "body": body})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["webhook_status"] == 200, answer
        return str(answer["message_sid"])

    async def sandbox_messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """What the sandbox holds (newest first), through its own side door."""
        params = {"to": to} if to else {}
        response = await self.http.get(f"{self.sandbox_url}/sandbox/messages", params=params)
        assert response.status_code == 200
        found: list[dict[str, Any]] = response.json()
        return found

    async def sent_to(self, to: str) -> list[dict[str, Any]]:
        return [m for m in await self.sandbox_messages(to) if m["direction"] == "outbound-api"]

    async def listed(self, to: str) -> list[dict[str, Any]]:
        """Messages to ``to`` through Twilio's REST list endpoint, authenticated as the bridge is."""
        response = await self.http.get(
            f"{self.sandbox_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            params={"To": to},
            auth=(ACCOUNT_SID, AUTH_TOKEN),
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["messages"]
        return found

    async def status_webhooks(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.sandbox_url}/sandbox/webhooks", params={"kind": "message-status"})
        assert response.status_code == 200
        found: list[dict[str, Any]] = response.json()
        return found

    def db(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()


def new_agent(db_path: Path, name: str = "ana") -> str:
    db = open_database(db_path)
    try:
        return add_agent(db, name)
    finally:
        db.close()


@contextlib.asynccontextmanager
async def loopback(tmp_path: Path, **sandbox_changes: Any) -> AsyncIterator[Loopback]:
    """Serve the sandbox (behind a RestGate) and the bridge on loopback, each knowing the other's URL."""
    settings = Settings(
        data_dir=tmp_path / "bridge",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        rest_retries=1,
        rest_backoff=0.01,
        rest_timeout=5.0,
        revocation_poll=0.5,
    )
    token = new_agent(settings.db_path)
    with contextlib.ExitStack() as stack:
        bridge_sock, sandbox_sock = bound_socket(), bound_socket()
        stack.callback(bridge_sock.close)
        stack.callback(sandbox_sock.close)
        bridge_url, sandbox_url = socket_url(bridge_sock), socket_url(sandbox_sock)
        settings = settings.with_(public_url=bridge_url, api_base=sandbox_url)
        gate = RestGate(create_sandbox_app(sandbox_config(bridge_url, sandbox_url, **sandbox_changes)))
        stack.callback(gate.release_all)
        stack.enter_context(run_app_in_thread(gate, sock=sandbox_sock))
        stack.enter_context(run_app_in_thread(create_app(settings), sock=bridge_sock))
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
            yield Loopback(bridge_url, sandbox_url, token, settings.db_path, http, gate)


async def conversation_with(world: Loopback, agent: Console, body: str, customer: str = CUSTOMER) -> str:
    """A customer texts in; returns the conversation the console sees it in."""
    sid = await world.text_in(body, from_=customer)
    received = await agent.event(protocol.MESSAGE_RECEIVED, message_sid=sid)
    return str(received["data"]["conversation_id"])


async def delivered(agent: Console, message_id: str) -> None:
    await agent.event(protocol.MESSAGE_STATUS, message_id=message_id, status="delivered", applied=True)


# -- replies -----------------------------------------------------------------------------------------------------


async def test_reply_by_conversation_reaches_the_sandbox_and_the_console_sees_it_delivered(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Where is my order?")
        assert cid == conversation_id(OUR_NUMBER, CUSTOMER)

        result = await agent.command("reply-1", {"conversation_id": cid, "body": "It ships today 📦"})
        assert result["ok"] is True, result
        data = result["data"]
        assert data["conversation_id"] == cid
        assert (data["encoding"], data["segments"]) == ("UCS-2", 1)
        sid = data["message_sid"]
        await delivered(agent, data["message_id"])

        # Twilio (the sandbox) got exactly this text, from our number, with our status callback.
        [sent] = await world.sent_to(CUSTOMER)
        assert (sent["sid"], sent["to"], sent["from"], sent["body"]) == (sid, CUSTOMER, OUR_NUMBER, "It ships today 📦")
        assert sent["status"] == "delivered"
        listed = [m for m in await world.listed(CUSTOMER) if m["direction"] == "outbound-api"]
        assert [(m["sid"], m["from"], m["body"]) for m in listed] == [(sid, OUR_NUMBER, "It ships today 📦")]
        callbacks = [w for w in await world.status_webhooks() if w["message_sid"] == sid]
        assert [w["message_status"] for w in callbacks] == ["sent", "delivered"]
        assert all(w["url"] == f"{world.bridge_url}/twilio/sms/status" and w["status_code"] == 200 for w in callbacks)

        # The console saw the reply recorded, accepted by Twilio, sent, then delivered, in that order.
        events = agent.of_message(data["message_id"])
        assert [(e["type"], e["data"]["status"]) for e in events] == [
            (protocol.MESSAGE_OUTBOUND, "sending"),
            (protocol.MESSAGE_SUBMITTED, "queued"),
            (protocol.MESSAGE_STATUS, "sent"),
            (protocol.MESSAGE_STATUS, "delivered"),
        ]
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        outbound = events[0]["data"]
        assert (outbound["agent"], outbound["command_id"], outbound["body"]) == ("ana", "reply-1", "It ships today 📦")
        assert (outbound["twilio_number"], outbound["customer_number"]) == (OUR_NUMBER, CUSTOMER)
        assert all(e["data"]["message_sid"] == sid for e in events[1:])
        assert world.db("SELECT status, sid FROM messages WHERE id = ?", (data["message_id"],)) == [("delivered", sid)]


async def test_reply_to_a_new_customer_by_number_creates_the_conversation(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.console() as agent:
        # Typed as an agent would type it; the bridge sends E.164 and files it under a new conversation.
        result = await agent.command("first", {"to": "(312) 555-0188", "from_number": OTHER_NUMBER, "body": "Hi!"})
        assert result["ok"] is True, result
        cid = conversation_id(OTHER_NUMBER, NEW_CUSTOMER)
        assert result["data"]["conversation_id"] == cid
        outbound = await agent.event(protocol.MESSAGE_OUTBOUND, command_id="first")
        assert (outbound["data"]["conversation_id"], outbound["data"]["customer_number"]) == (cid, NEW_CUSTOMER)
        assert outbound["data"]["twilio_number"] == OTHER_NUMBER
        await delivered(agent, result["data"]["message_id"])
        assert [(m["from"], m["body"]) for m in await world.sent_to(NEW_CUSTOMER)] == [(OTHER_NUMBER, "Hi!")]
        assert world.db("SELECT twilio_number, customer_number FROM conversations WHERE id = ?", (cid,)) == [
            (OTHER_NUMBER, NEW_CUSTOMER)
        ]

        # The conversation now exists: the next reply can name it, or just the customer's number.
        again = await agent.command("second", {"conversation_id": cid, "body": "Following up."})
        by_number = await agent.command("third", {"to": NEW_CUSTOMER, "body": "And once more."})
        assert again["ok"] is True and by_number["ok"] is True, (again, by_number)
        assert by_number["data"]["conversation_id"] == cid
        await delivered(agent, by_number["data"]["message_id"])
        bodies = [m["body"] for m in await world.sent_to(NEW_CUSTOMER)]
        assert sorted(bodies) == sorted(["Hi!", "Following up.", "And once more."])


async def test_a_picture_reply_goes_out_as_mms(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Can you show me?")
        picture = f"{world.sandbox_url}/sandbox/media/label.png"
        result = await agent.command("pic", {"conversation_id": cid, "body": "", "media_urls": [picture]})
        assert result["ok"] is True, result
        assert result["data"]["message_sid"].startswith("MM")
        await delivered(agent, result["data"]["message_id"])
        [sent] = await world.sent_to(CUSTOMER)
        assert (sent["sid"], sent["body"], sent["num_media"]) == (result["data"]["message_sid"], "", "1")
        assert sent["media"] == [{"url": picture, "content_type": "image/png"}]
        outbound = await agent.event(protocol.MESSAGE_OUTBOUND, command_id="pic")
        assert [m["url"] for m in outbound["data"]["media"]] == [picture]


async def test_a_resent_command_id_gets_the_first_answer_and_sends_once(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world:
        async with world.console() as agent:
            cid = await conversation_with(world, agent, "Hello?")
            args = {"conversation_id": cid, "body": "Hello! How can I help?"}
            # Twice back to back (the second arrives while the first is still at Twilio), then once more after.
            mark = await agent.send("once", args)
            await agent.send("once", args)
            first = await agent.result("once", mark)
            second = await agent.wait_for(
                lambda f: f.get("type") == protocol.RESULT and f["id"] == "once" and f is not first, mark
            )
            third = await agent.command("once", args)
            assert first["ok"] is True, first
            assert first == second == third
            await delivered(agent, first["data"]["message_id"])
            cursor = agent.cursor

        # A console that reconnects (say, after a network blip) and resends gets the same answer, no new events.
        async with world.console(after=cursor) as agent:
            fourth = await agent.command("once", args)
            assert fourth == first
            # Even with a different body, an id that already ran is answered from the record, not sent again.
            fifth = await agent.command("once", {**args, "body": "Something else"})
            assert fifth == first
            assert agent.events(protocol.MESSAGE_OUTBOUND) == []

        assert [m["body"] for m in await world.sent_to(CUSTOMER)] == ["Hello! How can I help?"]
        assert world.db("SELECT count(*) FROM messages WHERE direction = 'outbound'") == [(1,)]


async def test_a_retry_after_twilio_failed_never_takes_an_earlier_identical_text_for_this_one(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Is it in stock?")
        first = await agent.command("ok-1", {"conversation_id": cid, "body": "Yes."})
        await delivered(agent, first["data"]["message_id"])
        # Twilio answers the next send with a 500 before creating anything: the bridge looks before it retries,
        # and the "Yes." it finds is the earlier one, not this one.
        world.gate.fail_next = 1
        second = await agent.command("ok-2", {"conversation_id": cid, "body": "Yes."})
        assert second["ok"] is True, second
        assert second["data"]["message_sid"] != first["data"]["message_sid"]
        await delivered(agent, second["data"]["message_id"])
        sent = await world.sent_to(CUSTOMER)
        assert [m["sid"] for m in sent] == [second["data"]["message_sid"], first["data"]["message_sid"]]
        assert (world.gate.posts, world.gate.lookups) == (3, 1)


async def test_a_send_twilio_may_hold_is_asked_about_until_it_answers_never_sent_twice(tmp_path: Path) -> None:
    """The sandbox creates the reply but its answer is lost (502), and the lookups that follow fail for a while
    (503): past every retry, the bridge neither sends the reply again nor calls it failed; it keeps asking, and
    when Twilio answers, the reply it finds is the one this command sent."""
    async with loopback(tmp_path) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Did my refund go through?")
        world.gate.lose_next = 1
        world.gate.fail_lookups = 6  # more than rest_retries allows in one go
        result = await agent.command("refund-1", {"conversation_id": cid, "body": "Yes, it did."})
        assert result["ok"] is True, result
        assert world.gate.posts == 1
        assert world.gate.lookups > 6
        [sent] = await world.sent_to(CUSTOMER)
        assert result["data"]["message_sid"] == sent["sid"]
        assert world.db("SELECT state FROM commands WHERE id = 'refund-1'") == [("done",)]
        assert world.db("SELECT sid FROM messages WHERE id = ?", (result["data"]["message_id"],)) == [(sent["sid"],)]


async def test_two_identical_replies_whose_answers_are_lost_each_find_their_own_text(tmp_path: Path) -> None:
    """Two agents answer one customer with the same words at once, and Twilio's answers to both are lost: each
    send finds a text of its own, not both the newest one (which left one send without its SID)."""
    async with loopback(tmp_path) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Are you open today?")
        world.gate.lose_next = 2
        marks = [await agent.send(f"open-{n}", {"conversation_id": cid, "body": "Yes, until 6pm."}) for n in (1, 2)]
        results = [await agent.result(f"open-{n}", mark) for n, mark in zip((1, 2), marks, strict=True)]
        assert all(r["ok"] for r in results), results
        sent = await world.sent_to(CUSTOMER)
        assert len(sent) == 2
        assert sorted(r["data"]["message_sid"] for r in results) == sorted(m["sid"] for m in sent)
        assert world.gate.posts == 2


async def test_an_opted_out_customer_is_refused_and_nothing_reaches_twilio(tmp_path: Path) -> None:
    async with loopback(tmp_path) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "stop")  # any case: Twilio's keywords are the whole body
        changed = await agent.event(protocol.OPTOUT_CHANGED, conversation_id=cid)
        assert changed["data"]["opted_out"] is True

        refused = await agent.command("after-stop", {"conversation_id": cid, "body": "Sorry to see you go"})
        assert refused["ok"] is False
        assert refused["error"]["code"] == "opted_out"
        message = refused["error"]["message"]
        assert "STOP" in message and "START" in message and message.endswith(".")
        assert await agent.command("after-stop", {"conversation_id": cid, "body": "Sorry to see you go"}) == refused
        by_number = await agent.command("by-number", {"to": CUSTOMER, "from_number": OUR_NUMBER, "body": "Hi?"})
        assert by_number["error"]["code"] == "opted_out"
        assert agent.events(protocol.MESSAGE_OUTBOUND) == []
        assert await world.sent_to(CUSTOMER) == []

        # START opts back in: the next reply goes out.
        await conversation_with(world, agent, "START")
        await agent.event(protocol.OPTOUT_CHANGED, conversation_id=cid, opted_out=False)
        welcome = await agent.command("after-start", {"conversation_id": cid, "body": "Welcome back"})
        assert welcome["ok"] is True, welcome
        await delivered(agent, welcome["data"]["message_id"])
        assert [m["body"] for m in await world.sent_to(CUSTOMER)] == ["Welcome back"]


async def test_twilio_refusing_the_number_is_an_error_the_agent_can_act_on(tmp_path: Path) -> None:
    invalid = "+15005550001"  # Twilio's magic test number: error 21211, invalid 'To'
    async with loopback(tmp_path) as world, world.console() as agent:
        result = await agent.command("bad-to", {"to": invalid, "from_number": OUR_NUMBER, "body": "Hello"})
        assert result["ok"] is False
        assert result["error"]["code"] == "twilio_error"
        assert result["data"]["twilio_code"] == 21211
        assert result["data"]["status"] == "failed"
        message = result["error"]["message"]
        assert "21211" in message and invalid in message
        assert "Check the customer's number" in message
        assert ". (" not in message and ".." not in message, message  # one sentence, not Twilio's full stop + ours

        rejected = await agent.event(protocol.MESSAGE_REJECTED, message_id=result["data"]["message_id"])
        assert rejected["data"]["error_code"] == 21211
        assert rejected["data"]["hint"] == "Check the customer's number and try again."
        assert rejected["data"]["conversation_id"] == conversation_id(OUR_NUMBER, invalid)
        assert [e["type"] for e in agent.of_message(result["data"]["message_id"])] == [
            protocol.MESSAGE_OUTBOUND,
            protocol.MESSAGE_REJECTED,
        ]
        assert await agent.command("bad-to", {"to": invalid, "from_number": OUR_NUMBER, "body": "Hello"}) == result
        assert await world.sent_to(invalid) == []
        assert world.gate.posts == 1  # a 4xx is final: not retried, not resent


async def test_twilio_saying_unsubscribed_marks_the_customer_opted_out(tmp_path: Path) -> None:
    unsubscribed = "+15005550004"  # Twilio's magic test number: error 21610
    async with loopback(tmp_path) as world, world.console() as agent:
        result = await agent.command("unsub", {"to": unsubscribed, "from_number": OUR_NUMBER, "body": "Hello"})
        assert result["ok"] is False and result["data"]["twilio_code"] == 21610
        assert "text START" in result["error"]["message"]
        changed = await agent.event(protocol.OPTOUT_CHANGED, customer_number=unsubscribed)
        assert changed["data"]["opted_out"] is True
        # The bridge now knows: the next try is refused without asking Twilio.
        again = await agent.command("unsub-2", {"to": unsubscribed, "from_number": OUR_NUMBER, "body": "Hello?"})
        assert again["error"]["code"] == "opted_out"
        assert world.gate.posts == 1


# -- status callbacks out of order -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chaos",
    [
        pytest.param({"duplicate_callback_share": 1.0, "reorder_callback_share": 1.0}, id="every-callback"),
        pytest.param({"duplicate_callback_share": 0.5, "reorder_callback_share": 0.5}, id="half"),
        pytest.param(
            {"duplicate_callback_share": 0.5, "reorder_callback_share": 0.5, "undelivered_share": 0.3},
            id="half-with-failures",
        ),
    ],
)
async def test_out_of_order_and_duplicate_callbacks_never_move_a_message_backwards(
    tmp_path: Path, chaos: dict[str, float]
) -> None:
    replies = 6
    async with loopback(tmp_path, **chaos) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Lots of questions")
        results = [
            await agent.command(f"r{n}", {"conversation_id": cid, "body": f"Answer number {n}"}) for n in range(replies)
        ]
        assert all(r["ok"] for r in results), results
        sids = {r["data"]["message_sid"]: r["data"]["message_id"] for r in results}
        await world.gate.sandbox_idle()  # every callback made, duplicates and late "sent" ones included
        hooks = [w for w in await world.status_webhooks() if w["message_sid"] in sids]
        assert all(w["status_code"] == 200 for w in hooks), hooks
        [(head,)] = world.db("SELECT max(seq) FROM events")
        await agent.wait_for(lambda f: f.get("seq") == head)

        sandbox = {m["sid"]: m["status"] for m in await world.sent_to(CUSTOMER)}
        assert set(sandbox) == set(sids)
        late_sent = 0
        for sid, message_id in sids.items():
            final = sandbox[sid]
            events = agent.of_message(message_id)
            view = statuses_seen(events)
            ranks = [STATUS_RANK[s] for s in view[1:]]  # after "sending", Twilio's answer replaces the placeholder
            assert ranks == sorted(ranks), (sid, view)
            assert view[-1] == final, (sid, view, final)
            reported = [w["message_status"] for w in hooks if w["message_sid"] == sid]  # in the order made
            if reported.index("sent") > reported.index(final):
                late_sent += 1
                late = [
                    e["data"]
                    for e in events
                    if e["type"] == protocol.MESSAGE_STATUS and e["data"]["reported"] == "sent"
                ]
                assert late and all(d["applied"] is False and d["status"] == final for d in late), late
        assert dict(world.db("SELECT sid, status FROM messages WHERE direction = 'outbound'")) == sandbox
        # The seed decides the chaos; make sure this run had some of each kind it asked for.
        duplicates = len(hooks) - 2 * replies
        finals = sorted(sandbox.values())
        assert late_sent == replies if chaos["reorder_callback_share"] == 1.0 else 0 < late_sent < replies
        assert duplicates == 2 * replies if chaos["duplicate_callback_share"] == 1.0 else 0 < duplicates < 2 * replies
        assert ("undelivered" in finals) == ("undelivered_share" in chaos)


async def test_callbacks_that_beat_twilios_answer_are_applied_when_it_arrives(tmp_path: Path) -> None:
    async with loopback(tmp_path, sent_delay=0.0, delivered_delay=0.0) as world, world.console() as agent:
        cid = await conversation_with(world, agent, "Quick question")
        world.gate.hold_answers = True
        mark = await agent.send("racy", {"conversation_id": cid, "body": "Quick answer"})
        # Twilio has sent and delivered the text, and said so, before the bridge hears back from it.
        for status in ("sent", "delivered"):
            await agent.event(protocol.MESSAGE_STATUS, reported=status, message_id=None, applied=False)
        world.gate.answers.set()
        result = await agent.result("racy", mark)
        assert result["ok"] is True, result
        sid, message_id = result["data"]["message_sid"], result["data"]["message_id"]
        await delivered(agent, message_id)

        early = agent.events(protocol.MESSAGE_STATUS, message_sid=sid, message_id=None)
        assert [(e["data"]["reported"], e["data"]["applied"]) for e in early] == [("sent", False), ("delivered", False)]
        assert [(e["type"], e["data"]["status"]) for e in agent.of_message(message_id)] == [
            (protocol.MESSAGE_OUTBOUND, "sending"),
            (protocol.MESSAGE_SUBMITTED, "queued"),
            (protocol.MESSAGE_STATUS, "sent"),
            (protocol.MESSAGE_STATUS, "delivered"),
        ]
        assert world.db("SELECT status FROM messages WHERE sid = ?", (sid,)) == [("delivered",)]
        assert world.db("SELECT count(*) FROM early_statuses") == [(0,)]


# -- crash recovery ----------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_around_the_rest_call_sends_each_reply_exactly_once(tmp_path: Path) -> None:
    """The bridge dies with its requests to Twilio in flight; on restart it looks before it resends.

    The gate holds each POST Messages.json, so the kill provably lands after the commands were recorded and while
    their requests are at Twilio's door. The test then decides what Twilio did with each: one request goes through
    and the text is delivered, its status callbacks reaching the bridge before Twilio's answer (which then dies
    with the bridge); two never arrive. Restarted, the bridge must find the first at Twilio, not send it again,
    and apply the callbacks it kept; and send the other two. Words repeat on purpose: one reply repeats a text
    sent a moment before the crash, and two interrupted replies are word for word the same, so a lookup must
    never take one text for another.
    """
    data_dir = tmp_path / "bridge"
    token = new_agent(data_dir / "bridge.db")
    sandbox_sock = bound_socket()
    sandbox_url = socket_url(sandbox_sock)
    bridge = BridgeProcess(data_dir, api_base=sandbox_url)
    gate = RestGate(create_sandbox_app(sandbox_config(bridge.url, sandbox_url)))
    moment, done = "One moment while I check.", "Done!"
    bodies = {"x": moment, "a": moment, "b": done, "c": done}

    def db(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(data_dir / "bridge.db")
        try:
            return list(conn.execute(sql).fetchall())
        finally:
            conn.close()

    async def start() -> None:
        await asyncio.wait_for(asyncio.to_thread(bridge.start, WAIT), WAIT + 5)

    async def kill() -> None:
        await asyncio.wait_for(asyncio.to_thread(bridge.kill), WAIT)

    with contextlib.ExitStack() as stack:
        stack.callback(sandbox_sock.close)
        stack.enter_context(run_app_in_thread(gate, sock=sandbox_sock))
        stack.callback(gate.release_all)
        stack.callback(bridge.stop)
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
            await start()
            async with console(bridge.url, token) as agent:
                response = await http.post(
                    f"{sandbox_url}/sandbox/sms", json={"from": CUSTOMER, "to": OUR_NUMBER, "body": "Refund?"}
                )
                assert response.json()["webhook_status"] == 200, response.text
                received = await agent.event(protocol.MESSAGE_RECEIVED, message_sid=response.json()["message_sid"])
                cid = received["data"]["conversation_id"]
                first = await agent.command("x", {"conversation_id": cid, "body": moment})
                assert first["ok"] is True, first
                await delivered(agent, first["data"]["message_id"])

                gate.hold = gate.hold_answers = True
                for command_id in "abc":
                    await agent.send(command_id, {"conversation_id": cid, "body": bodies[command_id]})
                for command_id in "abc":
                    await agent.event(protocol.MESSAGE_OUTBOUND, command_id=command_id)
                held = await gate.wait_held(3)
                # Twilio takes the first "Done!" and delivers it; the bridge hears the callbacks, not the answer.
                [arrived] = [item for item in held if item.form_body == done][:1]
                arrived.forward = True
                arrived.decided.set()
                for status in ("sent", "delivered"):
                    await agent.event(protocol.MESSAGE_STATUS, reported=status, message_id=None, applied=False)
                cursor = agent.cursor
            await kill()
            # The other two requests never arrive; Twilio's answer to the first goes to a dead socket.
            gate.release_all()
            gate.answers.set()
            await gate.sandbox_idle()
            before = await sent_messages(http, sandbox_url)
            assert [m["body"] for m in before] == [done, moment]
            arrived_sid = before[0]["sid"]

            # Restart: recovery looks each send up, and sends only what Twilio does not have, before any console asks.
            gate.hold = gate.hold_answers = False
            await start()
            try:
                async with asyncio.timeout(WAIT):
                    while db("SELECT count(*) FROM commands WHERE state != 'done'") != [(0,)]:
                        await asyncio.sleep(0.02)
            except TimeoutError:
                unfinished = db("SELECT id, state FROM commands WHERE state != 'done'")
                raise AssertionError(f"recovery left {unfinished}: {bridge.log_path.read_text()[-3000:]}") from None
            async with console(bridge.url, token, after=cursor) as agent:
                results = {c: await agent.command(c, {"conversation_id": cid, "body": bodies[c]}) for c in "abc"}
                await gate.sandbox_idle()  # the resent texts delivered, their callbacks answered
                [(head,)] = db("SELECT max(seq) FROM events")
                await agent.wait_for(lambda f: f.get("seq") == head)
            outbound = await sent_messages(http, sandbox_url)
        await asyncio.to_thread(bridge.stop)

    results["x"] = first
    assert all(r["ok"] for r in results.values()), results
    by_sid = {m["sid"]: m["body"] for m in outbound}
    assert sorted(by_sid.values()) == sorted(bodies.values()), "each reply reached the customer exactly once"
    assert {c: by_sid[r["data"]["message_sid"]] for c, r in results.items()} == bodies
    assert len({r["data"]["message_sid"] for r in results.values()}) == 4
    assert gate.posts == 6  # x, a, b, c; then the two that never arrived, once each: the one that did, never again
    assert gate.lookups >= 3  # the restarted bridge looked a, b and c up before sending anything
    assert db("SELECT id, state FROM commands ORDER BY id") == [(c, "done") for c in "abcx"]
    assert db("SELECT count(*) FROM messages WHERE direction = 'outbound' AND sid IS NULL") == [(0,)]
    assert db("SELECT count(*) FROM early_statuses") == [(0,)]  # kept across the crash, applied on recovery
    assert db("SELECT DISTINCT status FROM messages WHERE direction = 'outbound'") == [("delivered",)]
    # The text Twilio had taken: found, and the callbacks that beat its lost answer applied to it.
    [found] = [r for r in results.values() if r["data"]["message_sid"] == arrived_sid]
    events = agent.of_message(found["data"]["message_id"])
    assert [(e["type"], e["data"].get("reported"), e["data"]["status"]) for e in events] == [
        (protocol.MESSAGE_SUBMITTED, None, "delivered"),
        (protocol.MESSAGE_STATUS, "sent", "delivered"),
        (protocol.MESSAGE_STATUS, "delivered", "delivered"),
    ]
    log = bridge.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]


async def sent_messages(http: httpx.AsyncClient, sandbox_url: str) -> list[dict[str, Any]]:
    response = await http.get(f"{sandbox_url}/sandbox/messages", params={"to": CUSTOMER})
    return [m for m in response.json() if m["direction"] == "outbound-api"]


async def test_a_stop_committed_after_the_opt_out_check_still_stops_the_reply(settings: Settings) -> None:
    """The customer's STOP commits between send_sms's opt-out read and the write that records the reply (a webhook
    can land there): the reply is refused in that write, and nothing goes to Twilio."""
    from bridge.commands import CommandRunner
    from bridge.messaging import InboundMessage, record_inbound
    from bridge.store import SqliteStore
    from bridge.twilio_rest import OutgoingMessage
    from tests.support import CUSTOMER, OUR_NUMBER, inbound_params

    class Twilio:
        created: list[OutgoingMessage] = []

        async def create_message(self, message: OutgoingMessage, exclude: Any = ()) -> dict[str, Any]:
            self.created.append(message)
            return {"sid": "SM" + "a" * 32, "status": "queued"}

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.db_path)
    await store.start()
    twilio = Twilio()
    runner = CommandRunner(settings, store, twilio)  # type: ignore[arg-type]
    await store.write(lambda tx: record_inbound(tx, InboundMessage.from_params(inbound_params("hi")), None))
    read, reads = store.read, 0

    async def read_then_stop(query: Callable[[sqlite3.Connection], Any]) -> Any:
        nonlocal reads
        value = await read(query)
        reads += 1
        if reads == 3:  # the command's record, its conversation, the opt-out check: the STOP commits now
            stop = InboundMessage.from_params(inbound_params("STOP"))
            await store.write(lambda tx: record_inbound(tx, stop, None))
        return value

    store.read = read_then_stop  # type: ignore[method-assign]
    args = {"conversation_id": conversation_id(OUR_NUMBER, CUSTOMER), "body": "your order shipped"}
    cmd = protocol.Command("c-1", protocol.SEND_SMS, args)
    try:
        result = await runner.run("ana", cmd)
        types = await read(lambda conn: [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")])
    finally:
        await store.close()
    assert reads >= 3 and (result.ok, result.error_code) == (False, "opted_out")
    assert twilio.created == [] and protocol.MESSAGE_OUTBOUND not in types
