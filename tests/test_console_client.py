"""The console's bridge link against a real bridge on loopback: catch-up, live events, restarts, refusals, outbox.

Every wait is bounded (``until``), the bridge runs in a thread on a fixed port so it can be stopped and started
again, and Twilio is a small fake that counts what it was asked to send (and can hold a send mid-flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.server import ServerConnection, serve

from bridge import protocol
from bridge.app import create_app
from bridge.settings import Settings
from bridge.store import add_agent, open_database, revoke_agent
from bridge.types import conversation_id
from console.cache import Cache
from console.client import (
    RESET_REASON,
    AppliedBatch,
    Backoff,
    BridgeLink,
    LinkState,
    LinkStatus,
    read_outbox,
)
from console.stream import on_this_machine, open_stream, stream_url
from tests.sandbox_support.server import bound_socket, run_app_in_thread
from tests.support import ACCOUNT_SID, AUTH_TOKEN, CUSTOMER, OUR_NUMBER, inbound_params, signed

ROOT = Path(__file__).resolve().parent.parent
CID = conversation_id(OUR_NUMBER, CUSTOMER)


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


# -- servers on loopback ----------------------------------------------------------------------------------------


class Served:
    """An ASGI app served in a thread on one loopback port, which can be stopped and served again on that port."""

    def __init__(self, make_app: Callable[[], ASGIApp]) -> None:
        self.make_app = make_app
        self._first: socket.socket | None = bound_socket()
        self.port: int = self._first.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stack: contextlib.ExitStack | None = None

    async def start(self) -> None:
        assert self._stack is None
        sock, self._first = self._first, None
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
        stack = contextlib.ExitStack()
        # Served and stopped from a thread: the test's loop (and the link on it) keeps running meanwhile.
        await asyncio.to_thread(stack.enter_context, run_app_in_thread(self.make_app(), sock=sock))
        self._stack = stack

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await asyncio.to_thread(stack.close)
        if self._first is not None:
            self._first.close()
            self._first = None


class FakeTwilio:
    """Twilio's Messages.json, just enough for the bridge: counts creates; ``hold()`` keeps the next one waiting."""

    def __init__(self) -> None:
        self.created: list[dict[str, str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def app(self) -> Starlette:
        async def messages(request: Request) -> Response:
            if request.method == "GET":
                return JSONResponse({"messages": []})
            form = dict(parse_qsl((await request.body()).decode()))
            self.created.append(form)
            self.entered.set()
            await asyncio.to_thread(self.gate.wait, 10)
            sid = "SM" + uuid.uuid4().hex
            return JSONResponse({"sid": sid, "status": "queued", "to": form.get("To"), "body": form.get("Body")}, 201)

        return Starlette(routes=[Route("/2010-04-01/Accounts/{sid}/Messages.json", messages, methods=["GET", "POST"])])

    def bodies(self) -> list[str]:
        return [form["Body"] for form in self.created]


def watching_websockets(app: ASGIApp, attempts: list[str], commands: list[str]) -> ASGIApp:
    """``app``, noting each WebSocket handshake (its query) and the id of each command frame it receives."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return await app(scope, receive, send)
        attempts.append(scope.get("query_string", b"").decode())

        async def noting() -> Message:
            message = await receive()
            with contextlib.suppress(ValueError, AttributeError):
                frame = json.loads(message.get("text") or "")
                if frame.get("type") == protocol.COMMAND:
                    commands.append(frame["id"])
            return message

        await app(scope, noting, send)

    return wrapped


@dataclass
class World:
    settings: Settings
    token: str
    bridge: Served
    twilio: FakeTwilio
    attempts: list[str]
    """The query of each stream handshake, e.g. "after=40&batch=1"."""
    commands: list[str]
    """The id of each command frame the bridge received, in order."""
    tmp_path: Path
    links: list[BridgeLink] = field(default_factory=list)
    caches: list[Cache] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.bridge.url

    def cache(self, name: str = "console") -> Cache:
        cache = Cache(self.tmp_path / f"{name}.db")
        self.caches.append(cache)
        return cache

    def link(self, cache: Cache, token: str | None = None, url: str | None = None, **kw: Any) -> Recorder:
        recorder = Recorder()
        link = BridgeLink(
            url or self.url,
            self.token if token is None else token,
            cache,
            on_status=recorder.statuses.append,
            on_batch=recorder.batches.append,
            on_result=recorder.results.append,
            on_signal=recorder.signals.append,
            **kw,
        )
        recorder.link = link
        self.links.append(link)
        return recorder

    def add_agent(self, name: str) -> str:
        db = open_database(self.settings.db_path)
        try:
            return add_agent(db, name)
        finally:
            db.close()

    def bridge_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.settings.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@dataclass
class Recorder:
    statuses: list[LinkStatus] = field(default_factory=list)
    batches: list[AppliedBatch] = field(default_factory=list)
    results: list[protocol.Result] = field(default_factory=list)
    signals: list[protocol.Signal] = field(default_factory=list)
    link: BridgeLink = field(init=False)

    def states(self) -> list[LinkState]:
        return [s.state for s in self.statuses]

    def count(self, state: LinkState) -> int:
        return sum(1 for s in self.statuses if s.state is state)

    async def reach(self, state: LinkState, times: int = 1, timeout: float = 10.0) -> LinkStatus:
        await until(lambda: self.count(state) >= times, f"{state.value} (seen: {self.states()})", timeout)
        return [s for s in self.statuses if s.state is state][times - 1]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    twilio = FakeTwilio()
    twilio_server = Served(twilio.app)
    await twilio_server.start()
    settings = Settings(
        data_dir=tmp_path / "bridge",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        public_url=None,  # signatures are checked against the URL the webhook arrived on
        api_base=twilio_server.url,
        rest_retries=0,
        rest_backoff=0.0,
        revocation_poll=0.05,
    )
    db = open_database(settings.db_path)
    token = add_agent(db, "ana")
    db.close()
    attempts: list[str] = []
    commands: list[str] = []
    bridge = Served(lambda: watching_websockets(create_app(settings), attempts, commands))
    w = World(settings, token, bridge, twilio, attempts, commands, tmp_path)
    try:
        yield w
    finally:
        twilio.gate.set()
        for link in w.links:
            await link.aclose()
        for cache in w.caches:
            cache.close()
        await bridge.stop()
        await twilio_server.stop()


async def text_in(url: str, *bodies: str, customer: str = CUSTOMER) -> None:
    """Customers' texts, as Twilio's signed webhooks to the bridge."""
    sms = f"{url}/twilio/sms"
    async with httpx.AsyncClient(timeout=10) as client:
        for body in bodies:
            data, headers = signed(sms, inbound_params(body, from_=customer))
            assert (await client.post(sms, content=data, headers=headers)).status_code == 200


def received_data(n: int) -> dict[str, Any]:
    customer = f"+1415555{1000 + n % 40:04d}"
    sid = f"SM{n:032x}"
    return {
        "message_id": sid,
        "message_sid": sid,
        "conversation_id": conversation_id(OUR_NUMBER, customer),
        "twilio_number": OUR_NUMBER,
        "customer_number": customer,
        "body": f"text number {n}",
        "media": [],
        "num_segments": 1,
        "received_at": "2026-11-24T05:00:00.000Z",
    }


def seed_log(settings: Settings, count: int) -> None:
    """Append ``count`` inbound texts to the bridge's log directly (a bridge that ran a long time)."""
    db = open_database(settings.db_path)
    try:
        with db.atomic():
            db.conn.executemany(
                "INSERT INTO events (type, ts, data) VALUES (?, ?, ?)",
                [
                    (protocol.MESSAGE_RECEIVED, "2026-11-24T05:00:00.000Z", json.dumps(received_data(n)))
                    for n in range(1, count + 1)
                ],
            )
    finally:
        db.close()


def logged_events(settings: Settings, upto: int) -> list[protocol.Event]:
    conn = sqlite3.connect(settings.db_path)
    try:
        rows = conn.execute("SELECT seq, type, ts, data FROM events WHERE seq <= ? ORDER BY seq", (upto,)).fetchall()
    finally:
        conn.close()
    return [protocol.Event(r[0], r[1], r[2], json.loads(r[3])) for r in rows]


# -- catch-up and live events -----------------------------------------------------------------------------------


async def test_catch_up_from_zero_applies_in_batches_and_reports_progress(world: World) -> None:
    seed_log(world.settings, 3000)
    await world.bridge.start()
    cache = world.cache()
    seen = world.link(cache, catch_up_batch=500)  # 3000 events in several batches, so progress shows
    observed: list[LinkState] = []

    async def watch() -> None:
        async with contextlib.aclosing(seen.link.statuses()) as statuses:
            async for status in statuses:
                observed.append(status.state)

    watcher = asyncio.create_task(watch())
    seen.link.start()
    connected = await seen.reach(LinkState.CONNECTED)

    assert cache.cursor() == 3000
    assert (connected.cursor, connected.head) == (3000, 3000) and connected.progress == 1.0
    sizes = [len(b.events) for b in seen.batches]
    assert sum(sizes) == 3000 and max(sizes) <= 500 and len(sizes) >= 6
    assert [e.seq for b in seen.batches for e in b.events] == list(range(1, 3001))
    assert all(b.catching_up for b in seen.batches)
    assert len(seen.batches[-1].conversation_ids) <= 40 and seen.batches[0].conversation_ids
    progress = [s for s in seen.statuses if s.state is LinkState.CATCHING_UP and 0 < s.applied < 3000]
    assert progress and [s.cursor or 0 for s in progress] == sorted(s.cursor or 0 for s in progress)
    assert cache.conversation_count() == 40
    assert seen.states()[:3] == [LinkState.OFFLINE, LinkState.CONNECTING, LinkState.CATCHING_UP]
    assert seen.statuses[0].cursor == 0  # read from the cache before the first attempt

    await seen.link.aclose()  # the status iterator ends with the link
    await asyncio.wait_for(watcher, 5)
    assert observed[0] is LinkState.OFFLINE and LinkState.CONNECTED in observed


async def test_catch_up_from_a_mid_cursor_sends_only_what_is_missing(world: World) -> None:
    seed_log(world.settings, 100)
    cache = world.cache()
    cache.apply(logged_events(world.settings, 40))
    await world.bridge.start()
    seen = world.link(cache)
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)
    assert world.attempts == ["after=40&batch=1"]
    assert [e.seq for b in seen.batches for e in b.events] == list(range(41, 101))
    assert cache.cursor() == 100


async def test_live_events_arrive_as_batches_naming_their_conversations(world: World) -> None:
    await world.bridge.start()
    cache = world.cache()
    seen = world.link(cache)
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)
    await text_in(world.url, "hello", "is anyone there?")
    # The link's own cursor, not the cache's: the cache commits in the link's worker thread a moment before the
    # link hears of it and reports the batch.
    await until(lambda: seen.link.status.cursor == 2, "two live events applied and reported")
    assert cache.cursor() == 2
    assert [m.body for m in cache.messages(CID)] == ["hello", "is anyone there?"]
    live = [b for b in seen.batches if not b.catching_up]
    assert [e.seq for b in live for e in b.events] == [1, 2]
    assert all(b.conversation_ids == {CID} for b in live)
    assert seen.link.status.state is LinkState.CONNECTED and seen.link.status.cursor == 2
    assert seen.link.agent == "ana" == seen.link.status.agent

    # A question that is worth nothing later skips the outbox.
    await seen.link.send_now(protocol.Command("ask-1", protocol.LIST_AGENTS, {}))
    await until(lambda: len(seen.results) == 1, "the list of agents")
    assert seen.results[0].ok and seen.results[0].data["agents"] == [
        {"name": "ana", "active": True, "presence": "offline", "has_phone": False}
    ]
    assert read_outbox(cache, states=()) == []


async def test_run_awaited_elsewhere_returns_on_stop(world: World) -> None:
    """As a Textual worker runs it: ``await link.run()``; stop() ends it with the OFFLINE status."""
    await world.bridge.start()
    seen = world.link(world.cache())
    with pytest.raises(ConnectionError):
        await seen.link.send_now(protocol.Command("ask-1", protocol.LIST_AGENTS, {}))
    worker = asyncio.create_task(seen.link.run())
    await seen.reach(LinkState.CONNECTED)
    assert seen.link.running
    with pytest.raises(RuntimeError, match="already running"):
        await seen.link.run()
    await seen.link.stop()
    final = await asyncio.wait_for(worker, 5)
    assert final.state is LinkState.OFFLINE and not seen.link.running

    worker = asyncio.create_task(seen.link.run())  # and again; cancelling the worker disconnects too
    await seen.reach(LinkState.CONNECTED, times=2)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert seen.link.status.state is LinkState.OFFLINE and not seen.link.running


async def test_reconnects_after_the_bridge_restarts_without_gap_or_duplicate(world: World) -> None:
    await world.bridge.start()
    await text_in(world.url, "before")
    cache = world.cache()
    seen = world.link(cache)
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)

    await world.bridge.stop()
    lost = await seen.reach(LinkState.RECONNECTING)
    assert lost.retry_at is not None and lost.ever_connected
    assert "Reconnecting" not in lost.detail and lost.describe().startswith(lost.detail)

    await world.bridge.start()
    await text_in(world.url, "after")
    await seen.reach(LinkState.CONNECTED, times=2)
    await until(lambda: seen.link.status.cursor == 2, "the text sent after the restart, applied and reported")
    assert cache.cursor() == 2
    assert [e.seq for b in seen.batches for e in b.events] == [1, 2]
    assert world.attempts[0] == "after=0&batch=1" and world.attempts[-1] in ("after=1&batch=1", "after=2&batch=1")


# -- refusals ---------------------------------------------------------------------------------------------------


async def test_a_rejected_token_stops_without_retrying(world: World) -> None:
    await world.bridge.start()
    seen = world.link(world.cache(), token="sb_not-a-real-token")
    final = await asyncio.wait_for(seen.link.run(), 10)
    assert final.state is LinkState.TOKEN_REJECTED and final.terminal
    assert "refused this agent token" in final.detail and "unknown or revoked" in final.detail
    await asyncio.sleep(0.5)  # long enough for a few retries, if there were any
    assert len(world.attempts) == 1
    assert seen.states() == [LinkState.OFFLINE, LinkState.CONNECTING, LinkState.TOKEN_REJECTED]


async def test_a_token_revoked_while_connected_stops_the_link(world: World) -> None:
    await world.bridge.start()
    seen = world.link(world.cache())
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)
    db = open_database(world.settings.db_path)
    assert revoke_agent(db, "ana")
    db.close()
    rejected = await seen.reach(LinkState.TOKEN_REJECTED)
    assert "revoked" in rejected.detail
    await until(lambda: not seen.link.running, "the link to stop")
    assert len(world.attempts) == 1


async def test_a_cache_from_another_bridge_is_refused_and_can_be_reset(world: World) -> None:
    cache = world.cache()
    cache.apply([protocol.Event(n, protocol.MESSAGE_RECEIVED, "t", received_data(n)) for n in range(1, 6)])
    await world.bridge.start()
    await text_in(world.url, "this bridge's only text")
    seen = world.link(cache)
    waiting = await seen.link.command(protocol.CLAIM, {"conversation_id": CID}, CID)
    await seen.link.command(protocol.SEND_SMS, {"conversation_id": CID, "body": "queued"}, CID)
    await seen.link.command(protocol.ADD_NOTE, {"conversation_id": CID, "body": "a note"}, CID)
    final = await asyncio.wait_for(seen.link.run(), 10)
    assert final.state is LinkState.WRONG_BRIDGE
    assert "belongs to another bridge" in final.detail and "#5" in final.detail and final.head == 1
    assert len(world.attempts) == 1 and cache.cursor() == 5

    # The reply and the note come back for the composer, out of the outbox; the claim stays, failed.
    assert await seen.link.reset_cache() == [(CID, False, "queued"), (CID, True, "a note")]
    assert cache.cursor() == 0 and cache.conversation_count() == 0 and cache.search("text") == []
    [entry] = read_outbox(cache)
    assert (entry.command_id, entry.state, entry.error) == (waiting, "failed", RESET_REASON)
    assert seen.link.status.state is LinkState.OFFLINE and seen.link.status.outbox_pending == 0

    seen.link.start()
    await seen.reach(LinkState.CONNECTED)
    assert cache.cursor() == 1 and [m.body for m in cache.messages(CID)] == ["this bridge's only text"]
    assert [m.body for m in cache.search("only text")] == ["this bridge's only text"]
    assert world.twilio.created == []  # the other bridge's command was never sent here


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "No bridge URL"),
        ("localhost:8000", "is not a bridge URL"),
        ("ftp://bridge.example.com", "is not a bridge URL"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:8000/?x=1", "query"),
    ],
)
async def test_a_bad_url_is_said_plainly_and_not_retried(tmp_path: Path, url: str, words: str) -> None:
    cache = Cache(tmp_path / "c.db")
    link = BridgeLink(url, "sb_token", cache)
    try:
        final = await asyncio.wait_for(link.run(), 5)
        assert final.state is LinkState.BAD_URL and words in final.detail
    finally:
        await link.aclose()
        cache.close()


async def test_a_server_that_is_not_a_bridge_is_a_bad_url(tmp_path: Path) -> None:
    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(not_found, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = Cache(tmp_path / "c.db")
    link = BridgeLink(f"http://127.0.0.1:{port}", "sb_token", cache, fetch_head=False)
    try:
        final = await asyncio.wait_for(link.run(), 5)
        assert (
            final.state is LinkState.BAD_URL and "HTTP 404" in final.detail and "Check the bridge URL" in final.detail
        )
    finally:
        await link.aclose()
        cache.close()
        server.close()
        await server.wait_closed()


def test_stream_urls() -> None:
    assert stream_url("http://127.0.0.1:8000", 7) == "ws://127.0.0.1:8000/v1/stream?after=7&batch=1"
    assert (
        stream_url("https://x.example.com/switchboard/", 0)
        == "wss://x.example.com/switchboard/v1/stream?after=0&batch=1"
    )
    assert stream_url("WSS://x.example.com", 3) == "wss://x.example.com/v1/stream?after=3&batch=1"


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.8.9.10", True),
        ("http://localhost:8080", True),
        ("https://LOCALHOST", True),
        ("http://[::1]:8000", True),
        ("http://10.0.0.7:8000", False),
        ("https://bridge.example.com", False),
        ("https://localhost.example.com", False),
        ("http://[2001:db8::1]", False),
    ],
)
def test_a_bridge_on_this_machine_is_told_apart(url: str, local: bool) -> None:
    assert on_this_machine(url) is local


async def test_the_stream_from_a_bridge_on_this_machine_is_not_compressed(world: World) -> None:
    await world.bridge.start()
    async with open_stream(world.url, world.add_agent("ann"), 0) as ws:
        assert ws.protocol.extensions == []  # no permessage-deflate: over loopback it would only cost CPU


# -- backoff ----------------------------------------------------------------------------------------------------


def test_backoff_starts_short_doubles_with_jitter_and_caps() -> None:
    for seed in range(100):
        backoff = Backoff(rng=random.Random(seed))
        delays = [backoff.next() for _ in range(40)]
        assert 0.1 <= delays[0] <= 0.2
        assert 0.2 <= delays[1] <= 0.4
        assert all(7.5 <= d <= 15.0 for d in delays[10:])
        backoff.reset()
        assert backoff.next() < 0.5
    assert Backoff(rng=random.Random(1)).next() != Backoff(rng=random.Random(2)).next()
    huge = Backoff()
    huge.attempt = 5000
    assert huge.next() <= 15.0


async def test_an_unreachable_bridge_means_offline_with_a_quick_first_retry(tmp_path: Path) -> None:
    closed = bound_socket()  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    cache = Cache(tmp_path / "c.db")
    stamps: list[tuple[float, LinkStatus]] = []
    link = BridgeLink(
        f"http://127.0.0.1:{port}", "sb_token", cache, on_status=lambda s: stamps.append((time.monotonic(), s))
    )
    try:
        command_id = await link.command(protocol.SEND_SMS, {"conversation_id": CID, "body": "later"}, CID)
        link.start()
        await until(lambda: sum(s.state is LinkState.CONNECTING for _, s in stamps) >= 2, "a second attempt")
        failed_at, offline = next((t, s) for t, s in stamps if s.state is LinkState.OFFLINE and s.retry_at)
        retried_at = [t for t, s in stamps if s.state is LinkState.CONNECTING][1]
        planned = offline.seconds_to_retry(failed_at)
        assert planned is not None and 0.05 <= planned < 0.5  # the first delay: ~0.2 s, jittered
        assert retried_at - failed_at < 2.0  # and it is kept (loosely: this machine is shared)
        assert "Nothing is listening" in offline.detail and "Showing the cache" in offline.detail
        assert not offline.ever_connected and offline.outbox_pending == 1
        assert [e.command_id for e in read_outbox(cache)] == [command_id]
    finally:
        await link.aclose()
        cache.close()
        closed.close()


# -- commands and the outbox ------------------------------------------------------------------------------------


async def test_commands_made_while_the_bridge_is_down_are_sent_once_when_it_is_back(world: World) -> None:
    await world.bridge.start()
    await text_in(world.url, "can you help?")
    cache = world.cache()
    seen = world.link(cache)
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)

    await world.bridge.stop()
    await seen.reach(LinkState.RECONNECTING)
    first = await seen.link.command(protocol.SEND_SMS, {"conversation_id": CID, "body": "first"}, CID)
    second = await seen.link.command(protocol.SEND_SMS, {"conversation_id": CID, "body": "second"}, CID)
    assert [e.command_id for e in read_outbox(cache, CID)] == [first, second]
    assert seen.link.status.outbox_pending == 2 and world.twilio.created == []

    await world.bridge.start()
    await until(lambda: len(seen.results) == 2, "both results")
    assert world.commands == [first, second]  # in the order they were made, each once
    assert {(r.id, r.ok) for r in seen.results} == {(first, True), (second, True)}  # the bridge runs them in parallel
    assert read_outbox(cache) == [] and {e.state for e in read_outbox(cache, states=())} == {"done"}
    assert sorted(world.twilio.bodies()) == ["first", "second"]
    assert seen.link.status.outbox_pending == 0

    # Another reconnection resends nothing that was answered.
    await seen.link.stop()
    seen.link.start()
    await seen.reach(LinkState.CONNECTED, times=3)
    await until(lambda: cache.cursor() >= 5, "the outbound and submitted events")
    assert world.commands == [first, second] and sorted(world.twilio.bodies()) == ["first", "second"]
    assert sorted(world.bridge_rows("SELECT id, state FROM commands")) == sorted([(first, "done"), (second, "done")])
    bodies = [m.body for m in cache.messages(CID)]
    assert bodies[0] == "can you help?" and sorted(bodies[1:]) == ["first", "second"]


CONSOLE = """
import asyncio, sys
from console.cache import Cache
from console.client import BridgeLink

async def main() -> None:
    cache = Cache(sys.argv[1])
    link = BridgeLink(sys.argv[2], sys.argv[3], cache)
    link.start()
    await link.command("send_sms", {"conversation_id": sys.argv[4], "body": "sent once"}, sys.argv[4])
    await asyncio.sleep(60)  # until killed

asyncio.run(main())
"""


async def test_a_console_killed_mid_send_resends_the_same_id_and_the_text_goes_once(world: World) -> None:
    await world.bridge.start()
    await text_in(world.url, "please reply")
    path = world.tmp_path / "killed.db"
    world.twilio.gate.clear()  # Twilio holds the send: the console is killed before any result
    log = (world.tmp_path / "console.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-c", CONSOLE, str(path), world.url, world.token, CID], cwd=ROOT, stdout=log, stderr=log
    )
    log.close()
    try:
        assert await asyncio.to_thread(world.twilio.entered.wait, 20), "the console never sent its command"
    finally:
        child.kill()
        child.wait(timeout=10)

    cache = world.cache("killed")
    [entry] = read_outbox(cache)
    assert entry.state == "pending"
    world.twilio.gate.set()  # the bridge finishes the send on its own; nobody is there to hear the answer

    seen = world.link(cache)
    seen.link.start()
    await until(lambda: len(seen.results) == 1, "the resent command's answer")
    [result] = seen.results
    assert result.id == entry.command_id and result.ok
    assert [e.state for e in read_outbox(cache, states=())] == ["done"]
    assert world.twilio.bodies() == ["sent once"]
    assert world.commands == [entry.command_id, entry.command_id]  # sent by the killed console, then resent
    rows = world.bridge_rows("SELECT id, state FROM commands")
    assert rows == [(entry.command_id, "done")]
    outbound = world.bridge_rows("SELECT count(*) FROM events WHERE type = ?", (protocol.MESSAGE_OUTBOUND,))
    assert outbound == [(1,)]


async def test_a_failed_command_is_recorded_with_the_bridges_sentence(world: World) -> None:
    await world.bridge.start()
    cache = world.cache()
    seen = world.link(cache)
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)
    command_id = await seen.link.command(protocol.SEND_SMS, {"conversation_id": "CVnothere", "body": "hi"})
    await until(lambda: len(seen.results) == 1, "the result")
    [result] = seen.results
    assert (result.id, result.ok, result.error_code) == (command_id, False, "unknown_conversation")
    [entry] = read_outbox(cache)
    assert (entry.state, entry.error) == ("failed", "That conversation does not exist on this bridge.")
    assert world.twilio.created == []


async def test_commands_that_cannot_be_sent_are_refused_before_the_outbox(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    link = BridgeLink("http://127.0.0.1:9", "sb_token", cache)
    try:
        with pytest.raises(ValueError, match="text"):
            await link.command(protocol.SEND_SMS, {"body": "\ud800"})
        with pytest.raises(ValueError, match="JSON"):
            await link.command(protocol.SEND_SMS, {"body": object()})
        with pytest.raises(ValueError, match="bytes"):
            await link.command(protocol.SEND_SMS, {"body": "x" * protocol.MAX_FRAME_BYTES})
        assert read_outbox(cache, states=()) == []
    finally:
        await link.aclose()
        cache.close()


# -- signals ----------------------------------------------------------------------------------------------------


async def test_signals_reach_the_other_agents_and_are_not_cached(world: World) -> None:
    await world.bridge.start()
    ben_token = world.add_agent("ben")
    ana = world.link(world.cache("ana"))
    ben_cache = world.cache("ben")
    ben = world.link(ben_cache, token=ben_token)
    assert await ana.link.signal(CID, "typing") is False  # not connected: dropped, not queued
    ana.link.start()
    ben.link.start()
    await ana.reach(LinkState.CONNECTED)
    await ben.reach(LinkState.CONNECTED)
    assert await ana.link.signal(CID, "typing") is True
    await until(lambda: len(ben.signals) == 1, "ben to see ana typing")
    assert ben.signals == [protocol.Signal(CID, "typing", agent="ana")]
    assert ana.signals == [] and ben_cache.cursor() == 0
    with pytest.raises(ValueError, match="idle, typing, viewing"):
        await ana.link.signal(CID, "shouting")


# -- a bridge that misbehaves -----------------------------------------------------------------------------------


def event_frame(seq: int) -> str:
    return protocol.encode(protocol.Event(seq, protocol.MESSAGE_RECEIVED, "t", received_data(seq)).to_frame())


@contextlib.asynccontextmanager
async def fake_bridge(
    script: Callable[[ServerConnection, int, int], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """A WebSocket server playing a bridge: ``script(ws, after, connection_number)``; yields (url, afters)."""
    afters: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        after = int(ws.request.path.partition("after=")[2].partition("&")[0])
        afters.append(after)
        await script(ws, after, len(afters))
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", afters


async def test_a_gap_in_the_stream_reconnects_from_the_cache_cursor(tmp_path: Path) -> None:
    async def script(ws: ServerConnection, after: int, n: int) -> None:
        seqs = [1, 3] if n == 1 else list(range(after + 1, 4))  # the first connection skips #2
        for seq in seqs:
            await ws.send(event_frame(seq))
        await ws.send(protocol.encode(protocol.caught_up(3)))

    cache = Cache(tmp_path / "c.db")
    async with fake_bridge(script) as (url, afters):
        seen = Recorder()
        link = BridgeLink(url, "t", cache, on_status=seen.statuses.append, apply_batch=1, fetch_head=False)
        try:
            link.start()
            await until(lambda: link.status.state is LinkState.CONNECTED, "connected after the gap")
            assert afters == [0, 1]
            assert cache.cursor() == 3 and [m.body for m in cache.messages(str(received_data(2)["conversation_id"]))]
            gap = next(s for s in seen.statuses if "skipped" in s.detail)
            assert gap.state is LinkState.OFFLINE and "resuming from #1" in gap.detail and gap.retry_at is not None
        finally:
            await link.aclose()
            cache.close()


async def test_a_console_that_fell_behind_resumes_from_its_cursor(tmp_path: Path) -> None:
    async def script(ws: ServerConnection, after: int, n: int) -> None:
        if n == 1:
            for seq in (1, 2):
                await ws.send(event_frame(seq))
            await ws.send(protocol.encode(protocol.caught_up(2)))
            await ws.close(protocol.CLOSE_OVERFLOW, "too far behind: reconnect and resume from your cursor")
        else:
            await ws.send(protocol.encode(protocol.caught_up(2)))

    cache = Cache(tmp_path / "c.db")
    async with fake_bridge(script) as (url, afters):
        seen = Recorder()
        link = BridgeLink(url, "t", cache, on_status=seen.statuses.append, fetch_head=False)
        try:
            link.start()
            await seen.reach(LinkState.CONNECTED, times=2)
            assert afters == [0, 2] and cache.cursor() == 2
            behind = next(s for s in seen.statuses if s.state is LinkState.RECONNECTING)
            assert "fell behind" in behind.detail and "#2" in behind.detail and behind.retry_at is not None
        finally:
            await link.aclose()
            cache.close()


async def test_an_event_the_cache_cannot_store_is_never_skipped(tmp_path: Path) -> None:
    broken = protocol.encode(protocol.Event(2, protocol.MESSAGE_RECEIVED, "t", {"body": "no ids"}).to_frame())

    async def script(ws: ServerConnection, after: int, n: int) -> None:
        if n == 1:  # #2 cannot be stored: #1 is kept, nothing after #2 is
            for frame in (event_frame(1), broken, event_frame(3)):
                await ws.send(frame)
        else:
            for seq in range(after + 1, 4):
                await ws.send(event_frame(seq))
        await ws.send(protocol.encode(protocol.caught_up(3)))

    cache = Cache(tmp_path / "c.db")
    async with fake_bridge(script) as (url, afters):
        seen = Recorder()
        link = BridgeLink(url, "t", cache, on_status=seen.statuses.append, fetch_head=False)
        try:
            link.start()
            await seen.reach(LinkState.CONNECTED)
            assert afters == [0, 1] and cache.cursor() == 3
            stuck = next(s for s in seen.statuses if "Could not store" in s.detail)
            assert "event #2" in stuck.detail and stuck.cursor == 1
        finally:
            await link.aclose()
            cache.close()


async def test_a_catch_up_stopped_midway_resumes_where_the_cache_stopped(world: World) -> None:
    seed_log(world.settings, 3000)
    await world.bridge.start()
    cache = world.cache()
    seen = world.link(cache, catch_up_batch=500)
    stopping: list[asyncio.Task[None]] = []

    def first_batch(batch: AppliedBatch) -> None:
        seen.batches.append(batch)
        if not stopping:  # the console quits right after its first batch
            stopping.append(asyncio.create_task(seen.link.stop()))

    seen.link.on_batch = first_batch
    seen.link.start()
    await until(lambda: bool(stopping) and stopping[0].done(), "the link to stop")
    stopped_at = cache.cursor()
    # Batches are whatever arrived within the batch window (up to 500); one more may commit while stopping.
    assert 1 <= stopped_at < 3000 and seen.link.status.state is LinkState.OFFLINE and not seen.link.running
    seen.link.start()
    await seen.reach(LinkState.CONNECTED)
    assert world.attempts == ["after=0&batch=1", f"after={stopped_at}&batch=1"]
    assert [e.seq for b in seen.batches for e in b.events] == list(range(1, 3001))
    assert cache.cursor() == 3000


# -- the catch-up helper process --------------------------------------------------------------------------------

# The helper as console/catchup.py runs it, but killed (SIGKILL, no cleanup) at a chosen point: after its first
# commit, or in the middle of the transaction that follows it. Small transactions, so there are several.
HELPER_KILLED = """
import os, signal, sys
import console.catchup as helper
from console.cache import Cache

helper.COMMIT_EVERY = 500
helper.CHUNK = 1  # one frame (~600 events) per hand-over, however fast they arrive: the first commit is early
where = sys.argv[1]
commit, apply, index_search = helper._Writer.commit, Cache.apply, Cache.index_search
commits = []
done = []

def killing_index_search(self, first=None):
    def said_then_killed():
        if first is not None:
            first()
            # Committed and said; its texts not yet in the search index.
            if where == "said-not-indexed" or (where == "done-not-indexed" and done):
                os.kill(os.getpid(), signal.SIGKILL)
    index_search(self, said_then_killed)

def killing_commit(self, **kwargs):
    if kwargs.get("done"):
        done.append(True)
    commit(self, **kwargs)
    commits.append(self.cache.cursor())
    if where == "after-commit":
        os.kill(os.getpid(), signal.SIGKILL)

def killing_apply(self, events, *, commit=True):
    applied = apply(self, events, commit=commit)
    if where == "mid-transaction" and commits and applied and not commit:
        os.kill(os.getpid(), signal.SIGKILL)  # events applied, in a transaction not committed
    return applied

helper._Writer.commit, Cache.apply, Cache.index_search = killing_commit, killing_apply, killing_index_search
sys.exit(helper.main())
"""


def message_counts(cache: Cache) -> tuple[int, int, int]:
    """(messages, distinct message ids, the conversations' message counts summed): equal when nothing is doubled."""
    conn = cache.conn()
    rows, ids = conn.execute("SELECT count(*), count(DISTINCT id) FROM messages").fetchone()
    counted = conn.execute("SELECT coalesce(sum(message_count), 0) FROM conversations").fetchone()[0]
    return int(rows), int(ids), int(counted)


async def far_behind(world: World, events: int, command: tuple[str, ...] | None = None) -> tuple[Cache, Recorder]:
    """A bridge ``events`` ahead of an empty cache, and a link started on it that hands a catch-up of 1000 events
    or more to the helper (``command`` instead of the real one, if given)."""
    seed_log(world.settings, events)
    await world.bridge.start()
    cache = world.cache()
    seen = world.link(cache, catch_up_helper=True, helper_from=1000, helper_command=command)
    seen.link.start()
    return cache, seen


async def test_a_long_catch_up_runs_in_the_helper_process_and_the_console_takes_over_live(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    cache, seen = await far_behind(world, 3000)
    version = cache.inbox_version
    connected = await seen.reach(LinkState.CONNECTED, timeout=30)

    assert cache.cursor() == 3000 and connected.cursor == 3000 and connected.head == 3000
    # The helper's commits added conversations behind this process's back: inbox counts taken before are stale.
    assert cache.inbox_version > version
    assert message_counts(cache) == (3000, 3000, 3000)
    # The helper replayed from 0 on its own connection; the console resumed where it had committed.
    assert world.attempts == ["after=0&batch=1", "after=3000&batch=1"]
    from_helper = [b for b in seen.batches if not b.events]
    assert from_helper and all(b.catching_up for b in from_helper)
    assert from_helper[-1].cursor == 3000
    touched = set().union(*(b.conversation_ids for b in from_helper))
    assert touched == {received_data(n)["conversation_id"] for n in range(40)}
    assert any(s.state is LinkState.CATCHING_UP and s.head == 3000 for s in seen.statuses)
    assert seen.link.helper is None
    # Live events come to the console itself.
    await text_in(world.url, "after the catch-up")
    # (The link hears of its batch after the commit that moves the cursor: wait for that, not for the cursor.)
    await until(lambda: any(b.events for b in seen.batches), "the live text")
    assert [e.type for b in seen.batches for e in b.events] == [protocol.MESSAGE_RECEIVED] and cache.cursor() == 3001
    # The helper, done, exited by itself (its input left open, it did not stop and say it had failed).
    async with asyncio.timeout(10):
        await seen.link.stop()
    assert "catch-up helper exited" not in caplog.text


async def test_a_short_catch_up_stays_in_the_console(world: World) -> None:
    _, seen = await far_behind(world, 300)
    await seen.reach(LinkState.CONNECTED)
    assert world.attempts == ["after=0&batch=1"]
    assert [e.seq for b in seen.batches for e in b.events] == list(range(1, 301))


@pytest.mark.parametrize("where", ["after-commit", "mid-transaction", "said-not-indexed"])
async def test_a_helper_killed_mid_catch_up_loses_nothing_and_the_console_finishes(world: World, where: str) -> None:
    cache, seen = await far_behind(world, 3000, (sys.executable, "-c", HELPER_KILLED, where))
    await seen.reach(LinkState.CONNECTED, timeout=30)

    # The helper committed its first transaction (500 events or a little more: what had arrived) and, killed in
    # the middle of the next, had it rolled back; the console resumed from there on its own connection, and
    # everything is in the cache once.
    [committed] = [b.cursor for b in seen.batches if not b.events]
    assert 500 <= committed < 3000
    assert world.attempts == ["after=0&batch=1", f"after={committed}&batch=1"]
    assert [e.seq for b in seen.batches for e in b.events] == list(range(committed + 1, 3001))
    assert cache.cursor() == 3000
    assert message_counts(cache) == (3000, 3000, 3000)
    # Every text is searchable: what the helper committed but did not index, the console's own commits indexed.
    assert cache.conn().execute("SELECT count(*) FROM messages_fts_docsize").fetchone()[0] == 3000


async def test_a_helper_killed_after_saying_it_is_done_leaves_every_text_searchable(world: World) -> None:
    """Killed after its last line, before that commit's texts were in the search index: the console has nothing
    left to apply (no commit of its own indexes them), so it indexes them once the helper has gone."""
    cache, seen = await far_behind(world, 3000, (sys.executable, "-c", HELPER_KILLED, "done-not-indexed"))
    await seen.reach(LinkState.CONNECTED, timeout=30)
    assert world.attempts == ["after=0&batch=1", "after=3000&batch=1"] and cache.cursor() == 3000
    assert not [b for b in seen.batches if b.events]
    async with asyncio.timeout(10):
        await seen.link.stop()  # waits for the helper that said it was done
    assert cache.conn().execute("SELECT count(*) FROM messages_fts_docsize").fetchone()[0] == 3000
    assert len(cache.search("text", limit=5000)) == 3000


# The helper as it runs, but committing only at the end and saying how far it got after every frame.
HELPER_ONE_TRANSACTION = """
import sys
import console.catchup as helper

helper.COMMIT_EVERY, helper.COMMIT_AFTER, helper.PROGRESS_EVERY, helper.CHUNK = 10**9, 1e9, 0.0, 1
sys.exit(helper.main())
"""


async def test_the_helpers_progress_shows_before_its_transaction_commits(world: World) -> None:
    cache, seen = await far_behind(world, 3000, (sys.executable, "-c", HELPER_ONE_TRANSACTION))
    connected = await seen.reach(LinkState.CONNECTED, timeout=30)

    midway = [s for s in seen.statuses if s.state is LinkState.CATCHING_UP and s.reached is not None]
    assert midway and all(s.cursor == 0 and 0 < s.reached < 3000 for s in midway)  # type: ignore[operator]
    progress = [s.progress or 0.0 for s in midway]
    assert progress == sorted(progress) and 0 < progress[0] < progress[-1] < 1
    assert [b.cursor for b in seen.batches if not b.events] == [3000]  # one commit
    assert connected.reached is None and connected.progress == 1.0 and cache.cursor() == 3000


# The helper as it runs, but slow to exit once it has said it is done (as a close handshake or a teardown can be).
HELPER_SLOW_TO_EXIT = """
import sys, time
import console.catchup as helper

status = helper.main()
time.sleep(30)  # the console closes its input and, after HELPER_EXIT, kills it
sys.exit(status)
"""


async def test_the_console_goes_on_once_the_helper_says_it_is_done_and_ends_it_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from console import client

    monkeypatch.setattr(client, "HELPER_EXIT", 1.0)
    cache, seen = await far_behind(world, 3000, (sys.executable, "-c", HELPER_SLOW_TO_EXIT))
    await until(lambda: seen.link.helper is not None, "the helper to start")
    helper = seen.link.helper
    assert helper is not None
    await seen.reach(LinkState.CONNECTED, timeout=30)

    # Live on its own connection from the helper's last commit, while the helper has not exited.
    assert helper.returncode is None and seen.link.helper is None
    assert world.attempts == ["after=0&batch=1", "after=3000&batch=1"] and cache.cursor() == 3000
    async with asyncio.timeout(10):
        await seen.link.stop()
    assert helper.returncode is not None  # stopping waited for it (killed after HELPER_EXIT)


async def test_stopping_the_console_mid_catch_up_ends_the_helper(world: World) -> None:
    # A helper that never commits: it waits (for its input to end) as a slow one would.
    cache, seen = await far_behind(world, 3000, (sys.executable, "-c", "import sys; sys.stdin.read()"))
    await until(lambda: seen.link.helper is not None, "the helper to start")
    helper = seen.link.helper
    assert helper is not None and seen.link.status.state is LinkState.CATCHING_UP
    async with asyncio.timeout(10):
        await seen.link.stop()
    after: LinkStatus = seen.link.status
    assert helper.returncode is not None and seen.link.helper is None
    assert after.state is LinkState.OFFLINE and cache.cursor() == 0


async def test_the_helper_turns_the_collector_off_while_it_catches_up_and_back_on_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from console import catchup

    seen: list[bool] = []

    async def replay(params: dict[str, Any], out: Any) -> int:
        seen.append(gc.isenabled())
        raise ConnectionError("the bridge went away")

    monkeypatch.setattr(catchup, "_catch_up", replay)
    assert gc.isenabled()
    with pytest.raises(ConnectionError):
        params = {"url": "http://127.0.0.1:9", "token": "t", "cache": str(tmp_path / "c.db")}
        await catchup.catch_up(params, io.StringIO())
    assert seen == [False] and gc.isenabled()
