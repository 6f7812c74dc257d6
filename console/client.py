"""The console's link to its bridge: resume the stream from the cache's cursor, apply events, flush the outbox.

No textual import. The app gives it callbacks (or iterates ``statuses()``); every cache call runs on the link's own
worker thread, so the UI loop never waits on SQLite. Events are applied in batches, one transaction each, so a long
catch-up costs a few hundred thread hops rather than one per event.

States, as the UI shows them (``LinkStatus.state``)::

    OFFLINE ──start()──► CONNECTING ──handshake──► CATCHING_UP ──caught_up──► CONNECTED
                             │ failure                  │ failure                 │ failure
                             ▼                          ▼                         ▼
          OFFLINE (never caught up yet) or RECONNECTING, with retry_at ──backoff──► CONNECTING
    terminal (run() returns, no retries): TOKEN_REJECTED (401/403, close 4401), WRONG_BRIDGE (409),
    BAD_URL (not a bridge URL, or not a bridge there), REFUSED (another 4xx, e.g. 400 on a corrupt cursor)

A long catch-up (``catch_up_helper``, as the console runs: HELPER_FROM events or more behind) runs in a helper
process, console/catchup.py, while this link shows its progress; the link then resumes from the helper's cursor.

Commands go to the cache's outbox first (durable), then out on the socket once the stream is caught up, in the order
they were made and always with the same id; every (re)connection resends whatever is still pending. The bridge runs
an id at most once and answers a resend with its first answer, so a command is carried out exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import random
import re
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from types import TracebackType
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridge import protocol
from console.cache import Cache, GapError, outbox_writing
from console.stream import (
    CATCH_UP_CACHE_KIB,
    OPEN_TIMEOUT,
    bridge_parts,
    health_url,
    open_stream,
    stream_url,
)

log = logging.getLogger("switchboard.console.link")

T = TypeVar("T")

APPLY_BATCH: Final = 500
"""Most live events applied in one transaction (one thread hop)."""
CATCH_UP_BATCH: Final = 20_000
"""Most events applied in one transaction while catching up: a commit costs a write of every page it dirtied, and
a missed day lands in random conversations, so bigger batches write each index page once instead of many times
(and fold more texts into each conversation's one update). 100k events into a 1M-message cache, Cache.apply alone:
5.2 s in 4000-event batches, 3.5 s in 20,000, 2.5 s in 50,000 — but the events of a batch are held in memory: the
link alone peaked 73 MB above its start with 20,000 (and FRAME_QUEUE 16), 121 MB with 25,000 and 128."""
BATCH_WINDOW: Final = 0.005
"""Seconds to wait for more events before applying a batch that is not full."""
FRAME_QUEUE: Final = 16
"""Frames read ahead of the cache (an ``events`` frame of the replay, ~300 texts, counts as one): some of the next
batch arrives while one is applied. Beyond this the socket is not read, and TCP slows the bridge down."""
READ_CHUNK: Final = 16 * 1024
"""Bytes read from the socket per loop callback (see _limit_reads)."""
HEALTHY_AFTER: Final = 1.0
"""Seconds a caught-up connection must last before the backoff starts again from its first, short delay."""
DONE_KEPT: Final = timedelta(days=7)
"""How long answered commands stay in the outbox."""
HEAD_TIMEOUT: Final = 3.0
HEAD_BODY_LIMIT: Final = 64 * 1024
FINISH_TIMEOUT: Final = 2.0
"""Seconds each step of ending a session (its tasks, the close handshake) may take before it is cut short."""
HELPER_FROM: Final = 20_000
"""Events behind the bridge from which a catch-up runs in the helper process (console.catchup), when the link was
made with ``catch_up_helper=True``. Below this the console catches up in a second or two by itself; above it, the
interface and the link would share one interpreter lock for longer: keys pressed during a 100k-event catch-up waited
p99 ~280 ms, and the catch-up took 10.8 s with the interface against 7.5 s without (bench_console)."""
HELPER_STALL: Final = 30.0
"""Seconds the helper may go without committing anything before the console stops it and catches up by itself."""
HELPER_LINE_LIMIT: Final = 16 * 1024 * 1024
"""Longest progress line the helper may write (it names every conversation a transaction touched)."""
HELPER_EXIT: Final = 5.0
"""Seconds the helper has to exit once stopped, before it is killed (its open transaction is then rolled back)."""

RESET_REASON: Final = "Not sent: the cache was reset because it belonged to another bridge. Send it again."


class LinkState(Enum):
    """What the link is doing; ``LinkStatus.detail`` says why, in a sentence."""

    OFFLINE = "offline"
    """Not connected, and never caught up since the link was made (or stopped): the cache is readable.
    ``retry_at`` is set while retrying."""
    CONNECTING = "connecting"
    """A connection attempt is under way."""
    CATCHING_UP = "catching up"
    """Connected; applying the events missed while away (``applied``, ``cursor``, ``head`` show progress)."""
    CONNECTED = "connected"
    """Caught up and live: new events arrive as they happen; commands go out at once."""
    RECONNECTING = "reconnecting"
    """The connection was lost after having worked; the next attempt is at ``retry_at``."""
    TOKEN_REJECTED = "token rejected"
    """The bridge refused the agent token (HTTP 401/403) or revoked it (close 4401). Terminal: no retries."""
    WRONG_BRIDGE = "wrong bridge"
    """The cache's cursor is beyond the bridge's log (HTTP 409): this cache belongs to another bridge. Terminal;
    ``BridgeLink.reset_cache()`` then ``start()`` loads this bridge's history."""
    BAD_URL = "bad URL"
    """The bridge URL is not usable, or what answers there is not a bridge. Terminal."""
    REFUSED = "refused"
    """The bridge refused the connection for another reason (``detail`` has its words). Terminal."""

    @property
    def terminal(self) -> bool:
        """True when the link has stopped and will not retry by itself."""
        return self in _TERMINAL


_TERMINAL = frozenset({LinkState.TOKEN_REJECTED, LinkState.WRONG_BRIDGE, LinkState.BAD_URL, LinkState.REFUSED})


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """A snapshot of the link, replaced (never mutated) on every change."""

    state: LinkState
    detail: str
    """One sentence a person can act on."""
    retry_at: float | None = None
    """When the next attempt starts, on the ``time.monotonic()`` clock (OFFLINE and RECONNECTING only)."""
    cursor: int | None = None
    """The last event in the cache (None until read)."""
    head: int | None = None
    """The bridge's last event, when known."""
    applied: int = 0
    """Events applied since this connection opened (catch-up progress)."""
    outbox_pending: int = 0
    """Commands in the outbox not yet answered by the bridge."""
    ever_connected: bool = False
    """True once a connection has been caught up since the link was made."""
    agent: str | None = None
    """The agent the token belongs to, as the bridge said when the stream caught up."""
    reached: int | None = None
    """The last event a catch-up has applied but not yet committed (the catch-up helper commits in large
    transactions), when beyond ``cursor``."""

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def live(self) -> bool:
        """Caught up: what is on screen is what the bridge knows."""
        return self.state is LinkState.CONNECTED

    @property
    def retry_in(self) -> float | None:
        """Seconds from now until the next attempt (never negative), or None if none is planned."""
        return self.seconds_to_retry()

    def seconds_to_retry(self, now: float | None = None) -> float | None:
        """Seconds from ``now`` (``time.monotonic()`` by default) until the next attempt, or None."""
        if self.retry_at is None:
            return None
        return max(0.0, self.retry_at - (time.monotonic() if now is None else now))

    @property
    def progress(self) -> float | None:
        """Catch-up progress from 0 to 1 when the bridge's head is known, else None."""
        if self.head is None or self.cursor is None:
            return None
        start = self.cursor - self.applied
        if self.head <= start:
            return 1.0
        at = max(self.cursor, self.reached or 0)
        return min(1.0, max(0.0, (at - start) / (self.head - start)))

    def describe(self, now: float | None = None) -> str:
        """The status line: the detail, with the countdown to the next attempt when there is one."""
        wait = self.seconds_to_retry(now)
        if wait is None:
            return self.detail
        return f"{self.detail} Retrying in {wait:.0f} s." if wait >= 1 else f"{self.detail} Retrying now."


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """Events just committed to the cache, in seq order; the UI repaints what they touch."""

    events: tuple[protocol.Event, ...]
    cursor: int
    """The cache's cursor after this batch."""
    catching_up: bool
    """True while replaying missed events (repaint lazily); False for live events."""
    conversation_ids: frozenset[str]
    """The conversations these events touch."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One command in the cache's outbox."""

    command_id: str
    command: str
    args: dict[str, Any]
    conversation_id: str | None
    created_at: str
    state: str
    """pending | done | failed"""
    error: str | None
    """The bridge's sentence when the command failed."""


class Backoff:
    """Jittered exponential backoff with a short first wait (websockets' own default waits up to 5 s first).

    The n-th delay (from 0) is drawn uniformly from [d/2, d] with d = min(cap, first * 2**n).
    """

    def __init__(self, first: float = 0.2, cap: float = 15.0, rng: random.Random | None = None) -> None:
        self.first, self.cap = first, cap
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        delay: float = min(self.cap, self.first * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return delay / 2 + self.rng.random() * delay / 2

    def reset(self) -> None:
        self.attempt = 0


class _Retry(Exception):
    """A session ended in a way worth retrying; the message is the status sentence."""

    def __init__(self, detail: str, healthy: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.healthy = detail, healthy


class _Stop(Exception):
    """A session ended in a way no retry will fix."""

    def __init__(self, state: LinkState, detail: str, head: int | None = None) -> None:
        super().__init__(detail)
        self.state, self.detail, self.head = state, detail, head


@dataclass(eq=False)
class _Session:
    """One open connection."""

    ws: ClientConnection
    sent: set[str] = field(default_factory=set)
    """Command ids sent on this connection: each goes out once per connection."""
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    live_since: float | None = None
    """When the stream caught up (monotonic clock); None while catching up."""

    @property
    def live(self) -> bool:
        return self.live_since is not None


_CLOSED: Final = object()


class BridgeLink:
    """Keeps one console connected to its bridge while started, and owns the cache's writers on the console side.

    Callbacks run on the event loop that started the link, in the order things happened; an exception in one is
    logged and does not disturb the link. They may be set after construction (plain attributes).
    """

    def __init__(
        self,
        bridge_url: str,
        token: str,
        cache: Cache,
        *,
        on_status: Callable[[LinkStatus], None] | None = None,
        on_batch: Callable[[AppliedBatch], None] | None = None,
        on_events: Callable[[list[protocol.Event]], None] | None = None,
        on_result: Callable[[protocol.Result], None] | None = None,
        on_signal: Callable[[protocol.Signal], None] | None = None,
        backoff: Backoff | None = None,
        apply_batch: int = APPLY_BATCH,
        catch_up_batch: int = CATCH_UP_BATCH,
        fetch_head: bool = True,
        catch_up_helper: bool = False,
        helper_from: int = HELPER_FROM,
        helper_command: Sequence[str] | None = None,
    ) -> None:
        self.bridge_url = bridge_url
        """May be changed while stopped; the next start() uses it."""
        self.token = token
        """May be changed while stopped (e.g. after TOKEN_REJECTED); the next start() uses it."""
        self.cache = cache
        self.on_status = on_status
        """Called with every new LinkStatus."""
        self.on_batch = on_batch
        """Called after each batch of events is committed to the cache."""
        self.on_events = on_events
        """Called after each batch too, with just its events (for code that needs no more). Not called for what the
        catch-up helper commits (``on_batch`` hears of that, with no events)."""
        self.on_result = on_result
        """Called with each command's result, after the outbox row is settled."""
        self.on_signal = on_signal
        """Called with other agents' ephemeral signals (viewing, typing, idle); never cached."""
        self.backoff = backoff or Backoff()
        self.apply_batch = max(1, apply_batch)
        self.catch_up_batch = max(self.apply_batch, catch_up_batch)
        self.fetch_head = fetch_head
        self.catch_up_helper = catch_up_helper
        """Hand a catch-up of ``helper_from`` events or more to a helper process (needs a cache file and the
        bridge's head from /healthz); if the helper fails, the link catches up by itself."""
        self.helper_from = helper_from
        self.helper_command = tuple(helper_command or (sys.executable, "-m", "console.catchup"))
        self.helper: asyncio.subprocess.Process | None = None
        """The catch-up helper while it runs."""
        self._head_soon: asyncio.Future[int | None] | None = None
        """The bridge's head, asked for as the link starts, for its first catch-up decision (``_run``)."""
        self._helpers_ending: dict[asyncio.Task[None], asyncio.Event] = {}
        """Helpers that said they were done, exiting while the link goes on, each with the event that tells it to
        stop now; ``stop`` sets them and waits."""
        # One worker thread owns every cache call the link makes: writes are serialised, the loop never waits.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchboard-link")
        self._status = LinkStatus(LinkState.OFFLINE, "Not connected yet: showing the cache.")
        self._version = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[LinkStatus] | None = None
        self._session: _Session | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._bulk = False
        """The worker's connection is tuned for catching up (only the worker thread reads or sets this)."""
        self._inner: asyncio.Task[LinkStatus] | None = None
        """The task doing run()'s work; stop() cancels it, whoever awaits run()."""
        self._stopped: asyncio.Task[LinkStatus] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def status(self) -> LinkStatus:
        return self._status

    @property
    def agent(self) -> str | None:
        """The agent the token belongs to (from the bridge's caught_up), once known."""
        return self._status.agent

    @property
    def running(self) -> bool:
        """True while run() runs (started with start(), or awaited directly, e.g. in a Textual worker)."""
        return any(t is not None and not t.done() for t in (self._inner, self._task))

    def start(self) -> None:
        """Run the link in the background (no-op if it runs). Needs a running event loop."""
        if self._closed:
            raise RuntimeError("this BridgeLink is closed")
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="switchboard bridge link")

    async def stop(self) -> None:
        """Disconnect and stop retrying; run() returns the OFFLINE status. The cache and outbox stay as they are;
        start() (or run()) resumes. Works whether run() was started with start() or is awaited elsewhere."""
        inner, task = self._inner, self._task
        self._task = None
        if inner is not None and not inner.done():
            self._stopped = inner
            inner.cancel()
            await asyncio.wait({inner})  # if stop() itself is cancelled, that goes through
        if self._helpers_ending:
            for now in self._helpers_ending.values():
                now.set()
            await asyncio.wait(set(self._helpers_ending))
        if task is not None and not task.done():
            if inner is None:  # started, but run() has not begun yet
                task.cancel()
            await asyncio.wait({task})
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("the bridge link had failed", exc_info=task.exception())

    async def aclose(self) -> None:
        """Stop, and release the worker thread and its cache connection. Status iterators end."""
        await self.stop()
        if self._closed:
            return
        self._closed = True
        self._notify()
        with contextlib.suppress(RuntimeError):
            await self._db(self.cache.close)  # the worker thread's own connection
        await asyncio.to_thread(self._worker.shutdown, True)

    async def __aenter__(self) -> BridgeLink:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def retry_now(self) -> None:
        """Cut the current wait short (a "retry now" key). No effect unless waiting to retry."""
        self._wake.set()

    async def statuses(self) -> AsyncGenerator[LinkStatus, None]:
        """The current status, then each change; a slow reader skips to the latest. Ends when the link is closed."""
        seen = -1
        while True:
            if self._version != seen:
                seen = self._version
                yield self._status
                continue
            if self._closed:
                return
            await self._changed.wait()

    async def run(self) -> LinkStatus:
        """Connect, catch up, stay live; reconnect with backoff. Returns the terminal status when one is reached,
        or the OFFLINE status after stop(). Cancelling the caller disconnects too. One run() at a time.
        """
        if self._closed:
            raise RuntimeError("this BridgeLink is closed")
        starter = self._task
        if (self._inner is not None and not self._inner.done()) or (
            starter is not None and not starter.done() and starter is not asyncio.current_task()
        ):
            raise RuntimeError("this BridgeLink is already running")
        inner = asyncio.get_running_loop().create_task(self._run(), name="switchboard bridge link")
        self._inner = inner
        try:
            return await inner  # a cancellation of the caller reaches the inner task too
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._stopped is inner and (me is None or me.cancelling() == 0):
                return self._status
            raise

    async def _run(self) -> LinkStatus:
        try:
            try:
                stream_url(self.bridge_url, 0)
            except ValueError as exc:
                return self._set(LinkState.BAD_URL, str(exc), retry_at=None)
            if not self.token or not self.token.isprintable() or any(c.isspace() for c in self.token):
                detail = "No agent token is set." if not self.token else "The agent token has characters no token has."
                return self._set(LinkState.TOKEN_REJECTED, f"{detail} Ask your admin for one.", retry_at=None)
            self.backoff.reset()
            if self.catch_up_helper and self._head_soon is None:
                # Asked now, beside the cache's first read: at start-up the screen's first paint holds the event loop,
                # and each hop between the two would wait for it.
                self._head_soon = asyncio.ensure_future(self._ask_head())
            cursor, pending = await self._db(self._prepare_sync)
            self._update(cursor=cursor, outbox_pending=pending)
            while True:
                self._set(LinkState.CONNECTING, f"Connecting to {_host(self.bridge_url)}…", retry_at=None)
                try:
                    await self._connect_once()
                except _Stop as stop:
                    changes: dict[str, Any] = {} if stop.head is None else {"head": stop.head}
                    return self._set(stop.state, stop.detail, retry_at=None, **changes)
                except _Retry as exc:
                    problem, healthy = exc.detail, exc.healthy
                except Exception as exc:  # a bug here must cost a reconnect, not the console's link
                    log.exception("bridge link session failed")
                    problem, healthy = f"Unexpected error in the link ({exc.__class__.__name__}: {exc}).", False
                if healthy:
                    self.backoff.reset()
                delay = self.backoff.next()
                state = LinkState.RECONNECTING if self._status.ever_connected else LinkState.OFFLINE
                if state is LinkState.OFFLINE:
                    problem = f"{problem} Showing the cache."
                self._set(state, problem, retry_at=time.monotonic() + delay)
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation that lands as the
                # awaited thing finishes, and stop() would then wait for a link that never stops.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        except asyncio.CancelledError:
            if not self._closed:
                self._set(LinkState.OFFLINE, "Disconnected: showing the cache.", retry_at=None, applied=0)
            raise
        finally:
            self._session = None
            if self._head_soon is not None:
                self._head_soon.cancel()
                self._head_soon.add_done_callback(_quietly)
                self._head_soon = None

    # -- one connection --------------------------------------------------------------------------------------

    async def _connect_once(self) -> NoReturn:
        """Open, catch up and stay live until the connection ends; raises _Retry or _Stop."""
        if self.catch_up_helper:
            await self._catch_up_in_helper()
        cursor = await self._db(self.cache.cursor)
        self._update(cursor=cursor, applied=0)
        host = _host(self.bridge_url)
        try:
            ws = await open_stream(self.bridge_url, self.token, cursor)
        except InvalidStatus as exc:
            raise _refusal(exc, host, cursor) from None
        except InvalidURI as exc:
            raise _Stop(LinkState.BAD_URL, f"{self.bridge_url!r} is not a usable bridge URL ({exc}).") from None
        except InvalidHandshake as exc:
            raise _Retry(f"The WebSocket handshake with {host} failed ({exc}); if this lasts, check the URL.") from None
        except socket.gaierror:
            raise _Retry(f"Cannot find the host {_hostname(self.bridge_url)!r}: check the bridge URL.") from None
        except ConnectionRefusedError:
            raise _Retry(f"Nothing is listening at {host}: is the bridge running?") from None
        except TimeoutError:
            raise _Retry(f"The bridge at {host} did not answer within {OPEN_TIMEOUT:.0f} s.") from None
        except OSError as exc:
            raise _Retry(f"Cannot reach the bridge at {host} ({exc.strerror or exc}).") from None
        _limit_reads(ws)
        session = _Session(ws)
        self._session = session
        self._catch_up_mode(True)
        self._set(LinkState.CATCHING_UP, f"Catching up with {host}…", retry_at=None, applied=0)
        frames: asyncio.Queue[Any] = asyncio.Queue(FRAME_QUEUE)
        tasks = [asyncio.create_task(self._read(ws, frames), name="link-read")]
        if self.fetch_head:
            tasks.append(asyncio.create_task(self._learn_head(), name="link-head"))
        try:
            try:
                await self._consume(session, frames, tasks)
            finally:
                self._session = None
                if not session.live:
                    self._catch_up_mode(False)
                await _finish(tasks, ws)
        except _Retry as exc:
            since = session.live_since
            raise _Retry(exc.detail, since is not None and time.monotonic() - since >= HEALTHY_AFTER) from None

    async def _read(self, ws: ClientConnection, frames: asyncio.Queue[Any]) -> None:
        """Socket → queue, parsed. The end of the connection is queued too, after every frame before it."""
        count = 0
        try:
            while True:
                raw = await ws.recv(decode=False)  # bytes: orjson reads UTF-8 (see console/catchup.py's read)
                await frames.put(protocol.parse_server_frame(raw, orjson.loads))
                count += 1
                if count % 256 == 0:
                    await asyncio.sleep(0)  # a long burst from the buffer must not starve the UI
        except Exception as exc:
            await frames.put((_CLOSED, exc))

    async def _consume(
        self, session: _Session, frames: asyncio.Queue[Any], tasks: list[asyncio.Task[None]]
    ) -> NoReturn:
        """Apply frames in order until the connection ends; raises _Retry or _Stop."""
        held: Any = None
        while True:
            if held is not None:
                frame, held = held, None
            else:
                frame = await frames.get()
            if isinstance(frame, protocol.Event | list):
                batch = [frame] if isinstance(frame, protocol.Event) else frame
                limit = self.apply_batch if session.live else self.catch_up_batch
                if len(batch) > limit:  # an events frame larger than a transaction: the rest waits its turn
                    batch, held = batch[:limit], batch[limit:]
                while len(batch) < limit and held is None:
                    try:
                        nxt = frames.get_nowait()
                    except asyncio.QueueEmpty:
                        try:
                            async with asyncio.timeout(BATCH_WINDOW):  # not wait_for: see _run
                                nxt = await frames.get()
                        except TimeoutError:
                            break
                    if isinstance(nxt, protocol.Event):
                        batch.append(nxt)
                    elif isinstance(nxt, list):
                        room = limit - len(batch)
                        batch.extend(nxt[:room])
                        if len(nxt) > room:
                            held = nxt[room:]
                    else:
                        held = nxt
                        break
                await self._apply(batch, session)
            elif isinstance(frame, protocol.Result):
                await self._settle(frame)
            elif isinstance(frame, protocol.Signal):
                self._call(self.on_signal, frame)
            elif isinstance(frame, tuple) and frame and frame[0] is _CLOSED:
                self._ended(frame[1])
            elif isinstance(frame, dict) and frame.get("type") == protocol.CAUGHT_UP:
                session.live_since = time.monotonic()
                self._catch_up_mode(False)
                cursor = self._status.cursor or 0
                head = max(cursor, self._status.head or 0)
                agent = frame.get("agent")
                agent = agent if isinstance(agent, str) and agent else self._status.agent
                self._set(
                    LinkState.CONNECTED, "Connected: live.", retry_at=None, head=head, ever_connected=True, agent=agent
                )
                tasks.append(asyncio.create_task(self._send_pending(session), name="link-outbox"))
                session.kick.set()
            elif isinstance(frame, dict) and frame.get("type") == protocol.ERROR:
                log.warning("the bridge could not read a frame: %s %s", frame.get("code"), frame.get("message"))
            else:
                log.info("ignoring a frame of type %r", frame.get("type") if isinstance(frame, dict) else frame)

    def _ended(self, exc: BaseException) -> NoReturn:
        """Turn the end of the connection into a retry or a stop."""
        cursor = self._status.cursor or 0
        if isinstance(exc, protocol.ProtocolError):
            raise _Retry(f"The bridge sent a frame this console cannot read ({exc}); resuming from #{cursor}.")
        if not isinstance(exc, ConnectionClosed):
            raise _Retry(f"Lost the connection to the bridge ({exc.__class__.__name__}: {exc}).")
        rcvd = exc.rcvd
        if rcvd is not None and rcvd.code == protocol.CLOSE_UNAUTHORIZED:
            raise _Stop(
                LinkState.TOKEN_REJECTED,
                "The bridge revoked this agent token: ask your admin for a new one "
                "(switchboard-bridge agents add NAME), then reconnect.",
            )
        if rcvd is not None and rcvd.code == protocol.CLOSE_OVERFLOW:
            raise _Retry(f"This console fell behind the bridge; resuming from #{cursor}.")
        if rcvd is not None and rcvd.code in (protocol.CLOSE_SHUTDOWN, 1012):
            raise _Retry("The bridge is restarting or shutting down.")
        if rcvd is None:
            raise _Retry("Lost the connection to the bridge.")
        reason = f": {rcvd.reason}" if rcvd.reason else ""
        raise _Retry(f"The bridge closed the connection (code {rcvd.code}{reason}).")

    async def _apply(self, batch: list[protocol.Event], session: _Session) -> None:
        done = asyncio.get_running_loop().run_in_executor(self._worker, self._apply_sync, batch)
        try:
            applied, cursor, failure = await asyncio.shield(done)
        except asyncio.CancelledError:
            # Stopped mid-batch: the thread commits it all the same, so the UI still hears of it.
            applied, cursor, _ = await done
            self._applied(applied, cursor, session)
            raise
        self._applied(applied, cursor, session)
        if isinstance(failure, GapError):
            raise _Retry(f"The stream skipped events ({failure}); resuming from #{cursor}.")
        if failure is not None:  # an event this cache cannot store: never skip it; try again later
            raise _Retry(
                f"Could not store event #{cursor + 1} in the cache ({failure.__class__.__name__}: {failure}); "
                "will try again."
            )

    def _applied(self, applied: list[protocol.Event], cursor: int, session: _Session) -> None:
        if not applied:
            return
        status = self._status
        head = max(cursor, status.head or 0) if session.live or status.head is not None else None
        self._update(cursor=cursor, head=head, applied=status.applied + len(applied))
        conversations = frozenset(str(e.data["conversation_id"]) for e in applied if e.data.get("conversation_id"))
        self._call(self.on_batch, AppliedBatch(tuple(applied), cursor, not session.live, conversations))
        self._call(self.on_events, list(applied))

    def _apply_sync(self, batch: Sequence[protocol.Event]) -> tuple[list[protocol.Event], int, Exception | None]:
        """Apply a batch in one transaction; if it fails, apply event by event up to the one that fails, so the
        cache gets as far as it can. Returns (applied, cursor, the failure or None)."""
        try:
            return self.cache.apply(batch), self.cache.cursor(), None
        except GapError as gap:
            # Keep what came before the gap: the reconnect then resumes right at it.
            cursor = self.cache.cursor()
            prefix: list[protocol.Event] = []
            for event in batch:
                if event.seq > cursor + len(prefix) + 1:
                    break
                if event.seq > cursor:
                    prefix.append(event)
            return (self.cache.apply(prefix) if prefix else []), self.cache.cursor(), gap
        except Exception as exc:
            if len(batch) == 1:
                log.error("could not apply event %d", batch[0].seq, exc_info=True)
                return [], self.cache.cursor(), exc
        applied: list[protocol.Event] = []
        for event in batch:
            try:
                applied += self.cache.apply([event])
            except Exception as exc:
                log.error("could not apply event %d", event.seq, exc_info=not isinstance(exc, GapError))
                return applied, self.cache.cursor(), exc
        return applied, self.cache.cursor(), None

    async def _catch_up_in_helper(self) -> None:
        """Run a long catch-up in the helper process, showing its progress; return when it has caught up, failed
        or stalled (the connection that follows then catches up the rest by itself). See console/catchup.py."""
        path = str(self.cache.path)
        if path == ":memory:" or path.startswith("file:"):
            return
        soon, self._head_soon = self._head_soon, None  # asked at start-up (see _run), for the first attempt only
        try:
            head = await (soon or self._ask_head())
        except Exception:  # unreachable, or not a bridge: the connection attempt says which
            return
        # The first attempt has the cursor _run just read; a later one reads it again.
        known = self._status.cursor if soon is not None else None
        cursor = known if known is not None else await self._db(self.cache.cursor)
        if head is None or head - cursor < self.helper_from:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.helper_command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=HELPER_LINE_LIMIT,
            )
        except OSError:
            log.warning("could not start the catch-up helper; catching up here", exc_info=True)
            return
        self.cache.checkpoints.paused = True  # the log is folded in once caught up
        self._set(
            LinkState.CATCHING_UP,
            f"Catching up with {_host(self.bridge_url)}…",
            retry_at=None,
            cursor=cursor,
            head=head,
            applied=0,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.helper = proc
        said = asyncio.create_task(_tail(proc.stderr))
        start = cursor
        done = False
        try:
            params = {"url": self.bridge_url, "token": self.token, "cache": path, "until": head}
            proc.stdin.write(json.dumps(params).encode() + b"\n")
            await proc.stdin.drain()
            while True:
                try:
                    async with asyncio.timeout(HELPER_STALL):  # not wait_for: see _run
                        line = await proc.stdout.readline()
                except TimeoutError:
                    log.warning("the catch-up helper committed nothing for %.0f s; catching up here", HELPER_STALL)
                    break
                if not line:
                    break
                try:
                    progress = json.loads(line)
                    if "reached" in progress:  # applied, not yet committed: progress only
                        reached = int(progress["reached"])
                        self._update(reached=reached, head=max(head, reached))
                        continue
                    cursor = int(progress["cursor"])
                    touched = frozenset(str(c) for c in progress["conversations"])
                except (ValueError, KeyError, TypeError):
                    log.warning("the catch-up helper said something unexpected: %r", line[:200])
                    continue
                self._update(cursor=cursor, head=max(head, cursor), applied=cursor - start, reached=None)
                # Conversations may have come, or changed status or owner, in another process's commit: counts
                # taken before no longer hold.
                self.cache.inbox_version += 1
                # No events: the UI cannot tell what kind changed, so it repaints the calls too.
                self._call(self.on_batch, AppliedBatch((), cursor, True, touched))
                if progress.get("done") is True:
                    done = True  # its last transaction is committed: what it does to exit is its own business
                    break
        finally:
            try:
                if done:
                    # Not waited for: a helper's exit (the socket's close handshake, the interpreter's teardown)
                    # took ~0.25 s that the agent would otherwise wait through. Its input stays open meanwhile:
                    # closed, it would stop, and say it failed, on its way out.
                    now = asyncio.Event()
                    ending = asyncio.create_task(
                        self._end_helper_and_index(proc, said, linger=(HELPER_EXIT, now)),
                        name="catch-up helper exiting",
                    )
                    self._helpers_ending[ending] = now
                    ending.add_done_callback(lambda task: self._helpers_ending.pop(task, None))
                else:
                    await self._end_helper_and_index(proc, said)
            finally:
                self.helper = None
                self._update(reached=None)  # what was not committed is rolled back
                self.cache.checkpoints.paused = False  # the connection that follows pauses them while it catches up

    async def _end_helper_and_index(
        self,
        proc: asyncio.subprocess.Process,
        said: asyncio.Task[bytes],
        linger: tuple[float, asyncio.Event] | None = None,
    ) -> None:
        """End the helper (``_end_helper``). If it did not exit cleanly it may have died between a commit and that
        commit's search index (``Cache.defer_search_index``), and this process may have nothing left to apply, whose
        commit would index them: index them now."""
        await _end_helper(proc, said, linger)
        if proc.returncode != 0:
            with contextlib.suppress(RuntimeError, sqlite3.Error):  # closed, or not writable: the next apply does it
                await self._db(self.cache.index_search)

    async def _ask_head(self) -> int | None:
        """The bridge's head from its /healthz, asked in a thread (None if it does not say); raises if unreachable."""
        return await asyncio.to_thread(_fetch_head, health_url(self.bridge_url))

    async def _learn_head(self) -> None:
        """The bridge's last event, from /healthz, so catch-up can show progress. Optional: failures are ignored."""
        try:
            head = await self._ask_head()
        except Exception:
            return
        if head is not None and self._status.state in (LinkState.CATCHING_UP, LinkState.CONNECTED):
            self._update(head=max(head, self._status.head or 0, self._status.cursor or 0))

    # -- commands and the outbox -----------------------------------------------------------------------------

    async def command(self, name: str, args: dict[str, Any], conversation_id: str | None = None) -> str:
        """Put a command in the outbox (it survives restarts) and send it as soon as the stream is live.

        Returns its id. The result arrives later through ``on_result`` and settles the outbox row. Raises
        ValueError for a command that cannot be sent (not JSON, not text, too large).
        """
        if self._closed:
            raise RuntimeError("this BridgeLink is closed")
        if not isinstance(name, str) or not name:
            raise ValueError("a command needs a name")
        if not isinstance(args, dict) or not protocol.is_text(args):
            raise ValueError("a command's args must be a JSON object of text (no lone surrogates)")
        command_id = f"c-{uuid.uuid4().hex}"
        try:
            frame = protocol.encode(protocol.Command(command_id, name, args).to_frame())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a command's args must be JSON: {exc}") from None
        if len(frame.encode("utf-8")) > protocol.MAX_FRAME_BYTES:
            raise ValueError(f"the command is larger than the {protocol.MAX_FRAME_BYTES} bytes a frame may carry")
        pending = await self._db(self._enqueue_sync, command_id, name, args, conversation_id)
        self._update(outbox_pending=pending)
        session = self._session
        if session is not None and session.live:
            session.kick.set()
        return command_id

    def _enqueue_sync(self, command_id: str, name: str, args: dict[str, Any], conversation_id: str | None) -> int:
        with self.cache.transaction() as conn:
            # Strictly after every command already there, even if the clock stepped back: the outbox's order is
            # the order commands were made.
            created_at = datetime.now(UTC).isoformat(timespec="microseconds")
            last = conn.execute("SELECT max(created_at) FROM outbox").fetchone()[0]
            if last is not None and created_at <= last:
                later = datetime.fromisoformat(last) + timedelta(microseconds=1)
                created_at = later.isoformat(timespec="microseconds")
            conn.execute(
                "INSERT INTO outbox (command_id, command, args, conversation_id, created_at) VALUES (?, ?, ?, ?, ?)",
                (command_id, name, json.dumps(args, ensure_ascii=False), conversation_id, created_at),
            )
        return _pending_count(self.cache)

    async def _send_pending(self, session: _Session) -> None:
        """Send pending commands in creation order, each once per connection, whenever kicked."""
        try:
            while True:
                await session.kick.wait()
                session.kick.clear()
                for entry in await self._db(read_outbox, self.cache, None, ("pending",)):
                    if entry.command_id in session.sent:
                        continue
                    session.sent.add(entry.command_id)
                    cmd = protocol.Command(entry.command_id, entry.command, entry.args)
                    await session.ws.send(protocol.encode(cmd.to_frame()))
        except ConnectionClosed:
            return  # the reader reports the end; what is still pending goes out on the next connection
        except Exception:
            log.exception("could not send the outbox; it goes out on the next connection")

    async def _settle(self, result: protocol.Result) -> None:
        done = asyncio.get_running_loop().run_in_executor(self._worker, self._settle_sync, result)
        try:
            pending = await asyncio.shield(done)
        except asyncio.CancelledError:
            # Stopped meanwhile: the row is settled all the same, and will not be resent, so say so.
            self._settled(result, await done)
            raise
        self._settled(result, pending)

    def _settled(self, result: protocol.Result, pending: int) -> None:
        self._update(outbox_pending=pending)
        self._call(self.on_result, result)

    def _settle_sync(self, result: protocol.Result) -> int:
        error = None
        if not result.ok:
            error = result.error_message or f"The bridge refused the command ({result.error_code or 'no reason'})."
        with self.cache._write_lock:
            self.cache.conn().execute(
                "UPDATE outbox SET state = ?, error = ? WHERE command_id = ? AND state = 'pending'",
                ("done" if result.ok else "failed", error, result.id),
            )
        return _pending_count(self.cache)

    async def send_now(self, cmd: protocol.Command) -> None:
        """Send a command now, bypassing the outbox: for questions like ``list_agents`` that are worth nothing
        later. Its result arrives through ``on_result``. Raises ConnectionError when the stream is not live.
        Anything that changes something goes through command() instead."""
        session = self._session
        if session is None or not session.live:
            raise ConnectionError("not connected to the bridge")
        try:
            await session.ws.send(protocol.encode(cmd.to_frame()))
        except ConnectionClosed as exc:
            raise ConnectionError("the connection to the bridge closed") from exc

    # -- signals ---------------------------------------------------------------------------------------------

    async def signal(self, conversation_id: str, signal: str) -> bool:
        """Tell the other consoles this agent is viewing/typing/idle in a conversation. Ephemeral: when not
        connected it is dropped (returns False), never queued. Raises ValueError for an unknown signal."""
        if signal not in protocol.SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(sorted(protocol.SIGNALS))}, not {signal!r}")
        if not conversation_id:
            raise ValueError("a signal needs a conversation_id")
        session = self._session
        if session is None or not session.live:
            return False
        try:
            await session.ws.send(protocol.encode(protocol.Signal(conversation_id, signal).to_frame()))
        except ConnectionClosed:
            return False
        return True

    # -- the cache -------------------------------------------------------------------------------------------

    async def reset_cache(self) -> list[tuple[str, bool, str]]:
        """Forget every cached event and the cursor (after WRONG_BRIDGE), so start() loads this bridge's history.

        Stops the link first. Replies and notes still pending leave the outbox and are returned, (conversation,
        is a note, body), for the composer to hold as drafts: they were meant for the other bridge, and the agent
        decides whether they still apply here. Other commands still pending are marked failed; answered ones are
        dropped.
        """
        await self.stop()
        if self.running:
            raise RuntimeError("the link is still running")
        taken: list[tuple[str, bool, str]] = await self._db(_reset_cache_sync, self.cache)
        cursor, pending = await self._db(self._read_counts)
        self._set(
            LinkState.OFFLINE,
            "The cache was reset: connect to load this bridge's history.",
            retry_at=None,
            cursor=cursor,
            head=None,
            applied=0,
            outbox_pending=pending,
        )
        return taken

    def _read_counts(self) -> tuple[int, int]:
        return self.cache.cursor(), _pending_count(self.cache)

    def _prepare_sync(self) -> tuple[int, int]:
        """Drop answered commands older than a week (their messages are in the cache), then read the counts."""
        week_ago = (datetime.now(UTC) - DONE_KEPT).isoformat(timespec="microseconds")
        with self.cache._write_lock:
            self.cache.conn().execute("DELETE FROM outbox WHERE state = 'done' AND created_at < ?", (week_ago,))
        return self._read_counts()

    def _catch_up_mode(self, on: bool) -> None:
        """Queue the tuning on the worker without waiting: it is FIFO, so it lands between the right batches."""
        with contextlib.suppress(RuntimeError):  # the worker is shut down: the link is closed
            self._worker.submit(self._catch_up_mode_sync, on)

    def _catch_up_mode_sync(self, on: bool) -> None:
        """Tune the link's own connection for a long catch-up (a big page cache, the WAL left to grow), or back for
        live events (the cache's background checkpoints fold the WAL in; PASSIVE: nobody waits for them)."""
        if on == self._bulk:
            return
        self._bulk = on
        self.cache.checkpoints.paused = on
        try:
            conn = self.cache.conn()
            if on:
                conn.execute(f"PRAGMA cache_size = -{CATCH_UP_CACHE_KIB}")
            else:
                conn.execute("PRAGMA cache_size = -2000")  # SQLite's default
        except sqlite3.Error:  # only speed is at stake
            log.warning("could not tune the cache for catching up", exc_info=True)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # -- status ----------------------------------------------------------------------------------------------

    def _set(self, state: LinkState, detail: str, *, retry_at: float | None, **changes: Any) -> LinkStatus:
        status = replace(self._status, state=state, detail=detail, retry_at=retry_at, **changes)
        self._publish(status)
        return status

    def _update(self, **changes: Any) -> None:
        status = replace(self._status, **changes)
        if status != self._status:
            self._publish(status)

    def _publish(self, status: LinkStatus) -> None:
        self._status = status
        self._call(self.on_status, status)
        self._notify()

    def _notify(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _call(self, callback: Callable[[Any], None] | None, value: Any) -> None:
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            log.exception("a bridge link callback failed")


# -- the outbox and the cache, for the UI's thread workers ------------------------------------------------------


def read_outbox(
    cache: Cache, conversation_id: str | None = None, states: Sequence[str] = ("pending", "failed")
) -> list[OutboxEntry]:
    """Outbox commands in the order they were made (blocking: call it from a thread worker)."""
    sql = "SELECT command_id, command, args, conversation_id, created_at, state, error FROM outbox"
    where, params = [], []
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        params += list(states)
    if conversation_id is not None:
        where.append("conversation_id = ?")
        params.append(conversation_id)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at, command_id"
    rows = cache.conn().execute(sql, params).fetchall()
    return [OutboxEntry(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def _pending_count(cache: Cache) -> int:
    return int(cache.conn().execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0])


def _reset_cache_sync(cache: Cache) -> list[tuple[str, bool, str]]:
    """Empty every table of cached events (whatever tables the cache has), keep the outbox and the migrations;
    take the pending replies and notes out of the outbox and return them (see ``BridgeLink.reset_cache``)."""
    with cache.transaction() as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
        virtual = [str(r[0]) for r in rows if str(r[1] or "").upper().startswith("CREATE VIRTUAL TABLE")]
        for row in rows:
            name = str(row[0])
            if (
                name in virtual
                or name in ("outbox", "meta")
                or name.startswith(("sqlite_", "_sqlite_migrations"))
                or any(name.startswith(f"{v}_") for v in virtual)  # a virtual table's own storage
            ):
                continue
            conn.execute(f'DELETE FROM "{name}"')
        for name in virtual:  # triggers have emptied them; this covers indexes without triggers
            with contextlib.suppress(Exception):
                conn.execute(f'INSERT INTO "{name}" ("{name}") VALUES (\'delete-all\')')
        # The index's own position too: the next messages' positions start again from 1.
        conn.execute("DELETE FROM meta WHERE key IN ('cursor', 'fts_pos')")
        conn.execute("DELETE FROM outbox WHERE state = 'done'")
        taken = _take_pending_writing(conn)
        conn.execute("UPDATE outbox SET state = 'failed', error = ? WHERE state = 'pending'", (RESET_REASON,))
    return taken


def _take_pending_writing(conn: sqlite3.Connection) -> list[tuple[str, bool, str]]:
    """The pending replies and notes, in the order they were written, out of the outbox."""
    taken: list[tuple[str, bool, str]] = []
    rows = conn.execute(
        "SELECT command_id, command, args, conversation_id FROM outbox WHERE state = 'pending' "
        "AND command IN (?, ?) ORDER BY created_at",
        (protocol.SEND_SMS, protocol.ADD_NOTE),
    ).fetchall()
    for command_id, command, args_json, conversation_id in rows:
        writing = outbox_writing(command, args_json, conversation_id)
        if writing is not None:
            taken.append(writing)
            conn.execute("DELETE FROM outbox WHERE command_id = ?", (command_id,))
    return taken


# -- helpers ------------------------------------------------------------------------------------------------


def _limit_reads(ws: ClientConnection) -> None:
    """Read the socket in small chunks: websockets parses a whole read in one callback on the UI loop, and asyncio
    reads up to 256 KiB at once (a thousand event frames, a visible stall under a long catch-up). Best effort: the
    attribute is the standard selector transport's; other loops (uvloop) keep their own sizes."""
    transport = ws.transport
    if isinstance(getattr(transport, "max_size", None), int):
        with contextlib.suppress(AttributeError, TypeError):
            transport.max_size = READ_CHUNK  # type: ignore[attr-defined]


async def _finish(tasks: list[asyncio.Task[None]], ws: ClientConnection) -> None:
    """Cancel a session's tasks and close its socket, in bounded time whatever state they are in.

    Their outcomes are collected, not raised. A task that outlives its cancellation (a library swallowing it, as
    wait_for does on Python 3.11) is ended by aborting the socket under it, so stop() always returns."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.shield(asyncio.wait(tasks, timeout=FINISH_TIMEOUT))
    with contextlib.suppress(Exception):
        await asyncio.shield(ws.close())  # bounded by the connection's close_timeout
    if pending:
        log.warning("%d link task(s) ignored cancellation; aborting the socket", len(pending))
        ws.transport.abort()
        await asyncio.shield(asyncio.wait(pending, timeout=FINISH_TIMEOUT))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log "never retrieved"


async def _end_helper(
    proc: asyncio.subprocess.Process, said: asyncio.Task[bytes], linger: tuple[float, asyncio.Event] | None = None
) -> None:
    """Close the helper's input (it stops at end of input) and wait for it; kill it if it lingers. Logs what it
    said on stderr (``said``) if it failed. With ``linger`` (seconds, an event), first give it that long to exit by
    itself, unless the event is set meanwhile."""
    if linger is not None:
        seconds, now = linger
        waits = {asyncio.ensure_future(proc.wait()), asyncio.ensure_future(now.wait())}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        async with asyncio.timeout(HELPER_EXIT):
            await asyncio.shield(proc.wait())
    except TimeoutError:
        proc.kill()
        await proc.wait()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        said.cancel()
        raise
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FINISH_TIMEOUT):
            await asyncio.wait({said})
    said.cancel()
    if proc.returncode != 0:
        detail = said.result().decode("utf-8", "replace").strip() if said.done() and not said.cancelled() else ""
        log.warning("the catch-up helper exited with %s%s", proc.returncode, f": {detail}" if detail else "")


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """Everything a stream says until it ends, but only the last ``keep`` bytes."""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-keep:]
    return kept


def _quietly(future: asyncio.Future[Any]) -> None:
    """Retrieve a dropped future's outcome, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _fetch_head(url: str) -> int | None:
    """The bridge's head from its /healthz (the standard library's client: ~1 ms here, where a one-off httpx request
    took ~30 ms, and the catch-up helper, which imports this module, starts ~0.35 s sooner without httpx)."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=HEAD_TIMEOUT)
    try:
        conn.request("GET", parts.path or "/", headers={"User-Agent": "switchboard-console/0.1"})
        response = conn.getresponse()
        if response.status != 200:
            return None
        body = json.loads(response.read(HEAD_BODY_LIMIT))
    finally:
        conn.close()
    head = body.get("head") if isinstance(body, dict) else None
    return head if isinstance(head, int) and not isinstance(head, bool) else None


def _host(bridge_url: str) -> str:
    try:
        return bridge_parts(bridge_url).netloc
    except ValueError:
        return bridge_url


def _hostname(bridge_url: str) -> str:
    try:
        return bridge_parts(bridge_url).hostname or bridge_url
    except ValueError:
        return bridge_url


_HEAD_IN_REASON = re.compile(r"last event is #(\d+)")


def _refusal(exc: InvalidStatus, host: str, cursor: int) -> Exception:
    """What an HTTP answer instead of the upgrade means for this console."""
    status = exc.response.status_code
    body = exc.response.body or b""
    reason = body.decode("utf-8", "replace").strip().splitlines()[0][:300] if body.strip() else ""
    said = f" (the bridge said: {reason})" if reason else ""
    if status in (401, 403):
        return _Stop(
            LinkState.TOKEN_REJECTED,
            f"The bridge refused this agent token: it is wrong or was revoked{said}. Ask your admin for a new one.",
        )
    if status == 409:
        found = _HEAD_IN_REASON.search(reason)
        head = int(found.group(1)) if found else None
        theirs = f" (this bridge's log ends at #{head})" if head is not None else ""
        return _Stop(
            LinkState.WRONG_BRIDGE,
            f"This cache belongs to another bridge: it holds events up to #{cursor}{theirs}. "
            "Reset the cache to load this bridge's history.",
            head=head,
        )
    if status in (408, 425, 429) or status >= 500:
        return _Retry(f"The bridge at {host} answered HTTP {status}: it is starting or busy.")
    if status == 400:
        return _Stop(LinkState.REFUSED, f"The bridge refused this console's request{said or f' (HTTP {status})'}.")
    if status in (200, 404, 405, 426) or 300 <= status < 400:
        return _Stop(
            LinkState.BAD_URL,
            f"{host} answered HTTP {status} instead of opening the stream: "
            "it does not look like a Switchboard bridge. Check the bridge URL.",
        )
    return _Stop(LinkState.REFUSED, f"The bridge refused the connection with HTTP {status}{said}.")
