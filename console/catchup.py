"""The catch-up helper: a process of its own that replays a long stretch of missed events into the cache.

A console that missed tens of thousands of events (a night off, a long outage) must apply them all before it is
live again. In the console's own process that work shared one interpreter lock with the screen: keys waited for the
link's Python and the link for the screen's drawing (a 100k-event catch-up took 10.8 s with the screen against
7.5 s without, and keys pressed meanwhile waited p99 ~280 ms: bench_console). So ``BridgeLink`` hands a long
catch-up to this helper (``python -m console.catchup``) and the screen stays responsive meanwhile.

Without a screen to share memory with, the helper also streams the replay into long transactions
(``Cache.apply(commit=False)``): each index page of a large cache is written once per transaction and each
conversation updated once, where a console holding its batches in memory had to commit every few thousand events.
It reads the socket on its event loop and applies on a thread of its own, so the two overlap; each hand-over's
texts go into the table from a third thread while the next frames are parsed (``Cache.bulk_texts``: 100k events
into the 1M-message bench cache in 2.33–2.68 s against 2.72–3.06 s, ``tests.bench.profile_catchup``, four runs
each, alternating).

With the console (``BridgeLink._catch_up_in_helper``):

- stdin: one JSON line ``{"url", "token", "cache", "until"}``, then nothing. The token travels here rather than on
  the command line, which every user of the machine can read. End of input means the console is gone: the helper
  stops, and what it had not committed is rolled back (the cursor moves in the same transaction as the events, so
  nothing is ever half-applied).
- stdout: one JSON line per commit, ``{"cursor": N, "conversations": [...]}``, for the console's repaints, and
  between commits ``{"reached": N}`` (the last event applied, not yet committed), for its progress. The line of the
  last commit, once caught up, also says ``"done": true``: the console goes on from there without waiting for the
  helper to exit. Each commit's texts are added to the search index just after its line (``_Writer.commit``).
- exit status: 0 once the stream has caught up or the cursor has reached ``until``; 1 if anything went wrong (the
  reason on stderr: the console then catches up by itself, and its own connection says what the matter is); 2 for
  bad input.

The helper never sends the outbox, and never applies live events past the catch-up: both stay with the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TextIO

import orjson
from websockets.exceptions import ConnectionClosedOK

from bridge import protocol
from console.cache import Cache
from console.stream import CATCH_UP_CACHE_KIB, open_stream

COMMIT_EVERY: Final = 100_000
"""Most events in one transaction. 100k events into a 1M-message cache, the same SQL replayed by a one-off
prototype: 2.1 s in one transaction against 3.2 s in 20,000-event ones (the indexes' pages written once instead of
five times)."""
COMMIT_AFTER: Final = 10.0
"""Seconds a transaction may stay open, however few its events (a slow machine still shows the inbox move). Each
commit costs, the next writing back most of the pages the last had: 100k events into the 1M-message cache took
3.55 / 3.94 s in one transaction against 4.65 / 4.40 s committing every 1.5 s (``tests.bench.profile_catchup``,
``--commit-after 1.5``, alternating). Progress shows meanwhile."""
PROGRESS_EVERY: Final = 0.5
"""Seconds between progress lines for events applied but not yet committed (the console's status line)."""
CHUNK: Final = 16
"""Most frames handed to the writer thread at once (what has arrived since the last hand-over, up to this)."""
READ_AHEAD: Final = 64
"""Frames read ahead of the writer (an ``events`` frame of the replay holds a few hundred events); beyond this the
socket is not read and TCP slows the bridge down."""

HELPER_NICE: Final = 5
"""The helper's scheduling niceness, added to the console's: on a busy machine the agent's keys come first."""

EXIT_CAUGHT_UP: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2


class _Writer:
    """Reads frames and applies their events on a thread of its own, in transactions of up to COMMIT_EVERY events
    or COMMIT_AFTER seconds. Frames are parsed here too: the event loop only moves bytes, so the two threads seldom
    want the interpreter lock at once (parsing on the loop made each wait for the other: 5.5–6.1 s against 4.2–5.4 s
    for everything on one thread, timed as ``tests.bench.profile_catchup`` does, before it was kept).

    The JSON is decoded by orjson: parsing 100k events took 0.55–0.61 s with it against 0.73–0.84 s with the standard
    library's decoder (``tests.bench.profile_catchup``, "parse", four runs of each, alternating)."""

    def __init__(self, cache: Cache, out: TextIO, until: int | None) -> None:
        self.cache = cache
        self.out = out
        self.until = until
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catch-up-writer")
        self.held = 0
        self.opened = 0.0
        self.said = time.monotonic()
        self.touched: set[str] = set()
        """The conversations of the events applied since the last commit."""

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def start(self) -> int:
        """Tune the connection for a long catch-up; returns the cursor to resume from.

        Its statement journals are kept in memory (``temp_store``). Inserting many texts in one statement inside a
        transaction, SQLite keeps a copy of each page the statement changes, to undo that statement alone if it
        fails; the NOT NULL columns and the thread index's expression (``_THREAD_KEY``) may fail, so every
        hand-over's insert does. By default that copy goes to a temporary file past 64 KiB: 55k pages (226 MB)
        written and thrown away per 100k events, most of the helper's time in the kernel (``perf record``;
        ``strace`` counted the writes). In memory, the 100k events applied into the 1M-message cache with no network
        took 1.76 s median (2.14 CPU s) against 2.01 s (2.50), five runs each, alternating; against a real bridge,
        2.48 s median (helper 2.66 CPU s) against 2.61 s (2.83) in six rounds, and no difference in five more at a
        slower hour. The journal holds the pages one hand-over's insert changes, up to a page (4 KiB) a text, and
        is freed when the insert ends: 6,000 random texts into a 1M-row table indexed as ``messages`` took
        ~15 MB more than with the file (``sqlite3_status``; one-off measurements on synthetic tables). Sorts stay
        in memory too: the inbox's indexes made again at each commit (``_put_back``) no longer spill past
        ``cache_size``, ~14 MB more for 600k conversations, none for 300k."""
        conn = self.cache.conn()
        conn.execute(f"PRAGMA cache_size = -{CATCH_UP_CACHE_KIB}")
        conn.execute("PRAGMA temp_store = MEMORY")
        return self.cache.cursor()

    def feed(self, raws: list[str | bytes]) -> bool:
        """Apply the events of these frames; True once caught up (the transaction is then committed). Raises
        ProtocolError for a frame that cannot be read, after committing what came before it."""
        events: list[protocol.Event] = []
        caught_up = False
        try:
            for raw in raws:
                frame = protocol.parse_server_frame(raw, orjson.loads)
                if isinstance(frame, protocol.Event):
                    events.append(frame)
                elif isinstance(frame, list):
                    events.extend(frame)
                elif isinstance(frame, dict) and frame.get("type") == protocol.CAUGHT_UP:
                    caught_up = True
                    break  # what follows is live: the console's business
        except protocol.ProtocolError:
            self.apply(events, True)
            raise
        if self.until is not None and events and events[-1].seq >= self.until:
            caught_up = True
        self.apply(events, caught_up)
        return caught_up

    def apply(self, events: list[protocol.Event], last: bool) -> None:
        """Apply events into the open transaction; commit it if it is full, old, or ``last``."""
        now = time.monotonic()
        if not self.held:
            self.opened = now
        applied = self.cache.apply(events, commit=False)
        self.held += len(applied)
        self.touched.update([c for e in applied if type(c := e.data.get("conversation_id")) is str])
        if last or self.held >= COMMIT_EVERY or now - self.opened >= COMMIT_AFTER:
            self.commit(done=last)
        elif applied and now - self.said >= PROGRESS_EVERY:
            self.say({"reached": applied[-1].seq})

    def commit(self, *, done: bool = False) -> None:
        """Commit the open transaction, say so, then add its texts to the full-text index (``Cache.index_search``:
        the console goes on meanwhile); ``done``: the catch-up is over (the console need not wait for the exit)."""
        self.cache.apply([], commit=True)
        if self.held or done:
            line: dict[str, Any] = {"cursor": self.cache.cursor(), "conversations": sorted(self.touched)}
            if done:
                line["done"] = True
            self.cache.index_search(lambda: self.say(line))
        else:
            self.cache.index_search()
        self.held = 0
        self.touched = set()
        if not done:  # the collector is off during a catch-up (see catch_up): what cycles there are go here
            gc.collect()  # (once done, the helper exits: nothing to collect for)

    def say(self, line: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(line).decode() + "\n")
        self.out.flush()
        self.said = time.monotonic()

    def close(self) -> None:
        self.cache.close()  # an open transaction is rolled back


async def catch_up(params: dict[str, Any], out: TextIO) -> int:
    """Replay the events after the cache's cursor until the stream catches up; returns the exit status.

    The cyclic garbage collector is off meanwhile and runs at each commit instead. Every decoded event is a few
    dicts and strings, freed by reference counting, but allocating them set off a collection every few hundred
    events, each walking what was still in flight: parsing 100k events took 0.67–0.83 s without it against
    1.03–1.17 s with it, and the whole catch-up 3.47–3.96 s against 3.84–4.87 s (``tests.bench.profile_catchup``,
    six runs and two, one after the other on 2026-11-26)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return await _catch_up(params, out)
    finally:
        if collecting:
            gc.enable()


async def _catch_up(params: dict[str, Any], out: TextIO) -> int:
    cache = Cache(params["cache"], migrate=False)
    cache.checkpoints.paused = True  # the console folds the log into the file once it is live again
    cache.bulk_search_index = True  # the index's segments are merged as live texts come in
    cache.defer_search_index = True  # each commit said before its texts are indexed (see _Writer.commit)
    cache.bulk_inbox = True  # the inbox is sorted once, at the commit
    cache.bulk_texts = True  # the texts are inserted while the next frames are parsed
    until = params.get("until")
    writer = _Writer(cache, out, until if isinstance(until, int) else None)
    try:
        cursor = await writer.run(writer.start)
        async with open_stream(params["url"], params["token"], cursor, "switchboard-console-catch-up/0.1") as ws:
            frames: asyncio.Queue[str | bytes | Exception] = asyncio.Queue(READ_AHEAD)

            async def read() -> None:
                # Frames as the bytes they came in (decode=False): orjson reads UTF-8 itself, where a decoded frame
                # was a second copy, four bytes a character once a text has an emoji, encoded again for orjson.
                try:
                    while True:
                        await frames.put(await ws.recv(decode=False))
                except ConnectionClosedOK:
                    await frames.put(ConnectionError("the bridge closed the stream"))
                except Exception as exc:  # the end of the connection
                    await frames.put(exc)

            reader = asyncio.create_task(read())
            try:
                while True:
                    raws: list[str | bytes] = []
                    ended: Exception | None = None
                    item = await frames.get()
                    while True:
                        if isinstance(item, Exception):
                            ended = item
                            break
                        raws.append(item)
                        if len(raws) >= CHUNK or frames.empty():
                            break
                        item = frames.get_nowait()
                    if await writer.run(writer.feed, raws):
                        return EXIT_CAUGHT_UP
                    if ended is not None:
                        await writer.run(writer.commit)  # what arrived before the end is whole: keep it
                        raise ended
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
    finally:
        await writer.run(writer.close)
        writer.thread.shutdown(wait=True)


def main() -> int:
    with contextlib.suppress(OSError, AttributeError):  # not everywhere, and only speed is at stake
        os.nice(HELPER_NICE)
    try:
        params = json.loads(sys.stdin.readline())
        if not isinstance(params, dict) or not all(isinstance(params.get(k), str) for k in ("url", "token", "cache")):
            raise ValueError("expected an object with url, token and cache")
    except ValueError as exc:
        print(f"switchboard catch-up helper: bad input on stdin ({exc})", file=sys.stderr)
        return EXIT_BAD_INPUT

    async def run() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def watch_stdin() -> None:  # end of input: the console that started us is gone
            with contextlib.suppress(Exception):
                sys.stdin.read()
            if task is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already finished
                    loop.call_soon_threadsafe(task.cancel)

        threading.Thread(target=watch_stdin, name="catch-up-stdin", daemon=True).start()
        try:
            return await catch_up(params, sys.stdout)
        except asyncio.CancelledError:
            print("switchboard catch-up helper: the console went away; stopped", file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:
            print(f"switchboard catch-up helper: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
