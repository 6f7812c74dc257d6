"""The console against a real bridge and the sandbox on loopback: keys pressed, texts sent, statuses come back.

The end-to-end test: a sandbox customer texts → the bridge → the console shows it → the agent replies with keys →
the sandbox receives that message with the right To, From and Body → "delivered" appears in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from textual.pilot import Pilot

from bridge.app import create_app
from bridge.sandbox.app import SandboxConfig, create_sandbox_app
from bridge.settings import Settings
from bridge.store import add_agent, open_database
from console.app import SwitchboardApp
from console.cache import Cache
from console.cli import make_app
from console.config import ConsoleConfig
from console.screens.confirm import Confirm
from console.screens.picker import Picker
from console.widgets.composer import Composer
from console.widgets.conversation_list import ConversationList
from console.widgets.thread_view import ThreadView
from tests.sandbox_support.server import bound_socket, run_app_in_thread, socket_url
from tests.support import ACCOUNT_SID, AUTH_TOKEN

OUR_NUMBER = "+14155550100"
CUSTOMER = "+12125550147"
WAIT = 10.0


@dataclass
class World:
    bridge_url: str
    sandbox_url: str
    settings: Settings
    tokens: dict[str, str]
    http: httpx.AsyncClient

    async def text_in(self, body: str, from_: str = CUSTOMER) -> None:
        answer = await self.http.post(
            f"{self.sandbox_url}/sandbox/sms", json={"from": from_, "to": OUR_NUMBER, "body": body}
        )
        assert answer.status_code == 200, answer.text

    async def sent_to(self, to: str) -> list[dict[str, Any]]:
        answer = await self.http.get(f"{self.sandbox_url}/sandbox/messages", params={"to": to})
        assert answer.status_code == 200, answer.text
        messages: list[dict[str, Any]] = answer.json()
        return [m for m in messages if m["direction"] == "outbound-api"]


@contextlib.contextmanager
def bridge_on(sock: socket.socket, settings: Settings) -> Iterator[str]:
    with run_app_in_thread(create_app(settings), sock=sock) as url:
        yield url


@contextlib.asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(
        data_dir=tmp_path / "bridge",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        rest_retries=1,
        rest_backoff=0.01,
        revocation_poll=0.5,
    )
    db = open_database(settings.db_path)
    tokens = {name: add_agent(db, name) for name in ("you", "ben")}
    db.close()
    with contextlib.ExitStack() as stack:
        bridge_sock, sandbox_sock = bound_socket(), bound_socket()
        bridge_url, sandbox_url = socket_url(bridge_sock), socket_url(sandbox_sock)
        settings = settings.with_(public_url=bridge_url, api_base=sandbox_url)
        sandbox = SandboxConfig(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            bridge_url=bridge_url,
            public_url=sandbox_url,
            support_numbers=(OUR_NUMBER,),
            sent_delay=0.02,
            delivered_delay=0.05,
            accepted_delay=0.005,
            undelivered_share=0.0,
            customer_reply_delay=60.0,
            seed=3,
        )
        stack.enter_context(run_app_in_thread(create_sandbox_app(sandbox), sock=sandbox_sock))
        stack.enter_context(bridge_on(bridge_sock, settings))
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as http:
            yield World(bridge_url, sandbox_url, settings, tokens, http)


def console_for(world: World, tmp_path: Path, agent: str = "you") -> SwitchboardApp:
    cache = Cache(tmp_path / f"console-{agent}.db")
    app = make_app(ConsoleConfig(url=world.bridge_url, token=world.tokens[agent]), cache)
    assert isinstance(app, SwitchboardApp)
    return app


async def until(pilot: Pilot[Any], check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Let the app run until ``check()`` holds; fail saying ``what`` was awaited."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.05)


def thread_text(app: SwitchboardApp) -> str:
    lines = app.query_one(ThreadView)._lines
    return " ".join(" ".join("".join(s.text for s in strip) for strip in lines).split())


def connected(app: SwitchboardApp) -> bool:
    return app.link is not None and app.link.status.live


async def test_a_customer_text_answered_with_keys_is_delivered(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        app = console_for(w, tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: connected(app), "the console to connect")
            assert app.agent == "you"
            await w.text_in("Hi! Is my order [b]#123[/b] shipped?")
            inbox = app.query_one(ConversationList)
            await until(pilot, lambda: inbox.count == 1 and inbox.highlighted is not None, "the text in the inbox")
            await pilot.press("enter")
            await until(pilot, lambda: "Is my order [b]#123[/b] shipped?" in thread_text(app), "the thread")
            await pilot.press(*"Yes, it left today!", "enter")
            await until(pilot, lambda: app.query_one(Composer).text == "", "the composer to clear")
            await until(pilot, lambda: "✓✓ delivered" in thread_text(app), "'delivered' in the thread")
            sent = await w.sent_to(CUSTOMER)
            assert [(m["to"], m["from"], m["body"]) for m in sent] == [(CUSTOMER, OUR_NUMBER, "Yes, it left today!")]


async def test_a_reply_made_offline_goes_out_once_when_the_bridge_is_back(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.text_in("Are you there?")
        app = console_for(w, tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: connected(app), "the console to connect")
            inbox = app.query_one(ConversationList)
            await until(pilot, lambda: inbox.count == 1, "the text in the inbox")
            await pilot.press("enter")
            await until(pilot, lambda: "Are you there?" in thread_text(app), "the thread")
            assert app.link is not None
            await app.link.stop()  # the bridge is away (a laptop lid closed, a network blip)
            await pilot.press(*"Yes! Sorry for the wait.", "enter")
            await until(pilot, lambda: "waiting for the bridge (outbox)" in thread_text(app), "the pending reply")
            assert await w.sent_to(CUSTOMER) == []
            app.link.start()
            await until(pilot, lambda: "✓✓ delivered" in thread_text(app), "the reply to be delivered")
            await until(pilot, lambda: "outbox" not in thread_text(app), "the outbox entry to settle")
            await app.link.stop()
            app.link.start()  # a second reconnect resends nothing
            await until(pilot, lambda: connected(app), "the console to reconnect")
            await pilot.pause(0.3)
            sent = await w.sent_to(CUSTOMER)
            assert [m["body"] for m in sent] == ["Yes! Sorry for the wait."]


async def test_claim_note_snooze_and_resolve_are_shared_with_the_team(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.text_in("Can someone help?")
        app = console_for(w, tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: connected(app), "the console to connect")
            inbox = app.query_one(ConversationList)
            await until(pilot, lambda: inbox.count == 1, "the text in the inbox")
            await pilot.press("enter")
            await until(pilot, lambda: app.main.current is not None, "the conversation to open")
            await pilot.press("escape", "c")
            await until(pilot, lambda: app.main.current is not None and app.main.current.assignee == "you", "claim")
            await pilot.press("m", *"VIP: ship express", "enter")
            await until(pilot, lambda: "✎ note by you" in thread_text(app), "the note")
            await pilot.press("escape", "z")
            await until(pilot, lambda: isinstance(app.screen, Picker), "the snooze picker")
            await pilot.press(*"2h", "enter")
            await until(
                pilot, lambda: app.main.current is not None and app.main.current.status == "snoozed", "the snooze"
            )
            await pilot.press("x")
            await until(
                pilot, lambda: app.main.current is not None and app.main.current.status == "resolved", "resolve"
            )
            await until(pilot, lambda: inbox.count == 0, "the resolved conversation to leave the open inbox")
        # Another agent's console sees the same state.
        other = console_for(w, tmp_path, "ben")
        async with other.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: connected(other), "ben's console to connect")
            rows = other.cache.conversations(10)
            assert [(r.assignee, r.status) for r in rows] == [("you", "resolved")]
            assert [m.direction for m in other.cache.messages(rows[0].id)] == ["inbound", "note"]


async def test_replying_where_someone_else_has_claimed_asks_first(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.text_in("Hello?")
        ben = console_for(w, tmp_path, "ben")
        async with ben.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: connected(ben), "ben's console to connect")
            await until(pilot, lambda: ben.query_one(ConversationList).count == 1, "the inbox")
            await pilot.press("enter")
            await until(pilot, lambda: ben.main.current is not None, "the conversation")
            await pilot.press("escape", "c")
            await until(pilot, lambda: ben.main.current is not None and ben.main.current.assignee == "ben", "claim")
        app = console_for(w, tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: connected(app), "the console to connect")
            await until(pilot, lambda: app.query_one(ConversationList).count == 1, "the inbox")
            await pilot.press("enter")
            await until(pilot, lambda: "claimed by ben" in str(app.main.header.render()), "the header")
            await pilot.press(*"I can take this", "enter")
            await until(pilot, lambda: isinstance(app.screen, Confirm), "the confirmation")
            await pilot.press("n")
            await pilot.pause(0.3)
            assert app.query_one(Composer).text == "I can take this"
            assert await w.sent_to(CUSTOMER) == []


async def test_a_wrong_token_says_so(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        cache = Cache(tmp_path / "c.db")
        app = make_app(ConsoleConfig(url=w.bridge_url, token="not-a-token"), cache)
        assert isinstance(app, SwitchboardApp)
        async with app.run_test(size=(120, 36)) as pilot:
            status = app.query_one("#status")
            await until(pilot, lambda: "token rejected" in str(status.render()), "the status line")
