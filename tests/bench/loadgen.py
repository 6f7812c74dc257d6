"""A small HTTP/1.1 load generator on raw asyncio: pre-built requests, keep-alive connections, open or closed loop.

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened to earlier requests, and its latency is
measured from that due time, so a server that stalls is charged for the whole time a request waited to be sent
(no coordinated omission). The generator's own lateness (``started - due``: how late the event loop got to a
request) is recorded as well, so it can be shown not to be the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from tests.bench.common import CoreMeter, CpuMeter, ForeignMeter, summary_ms
from tests.support import inbound_params, message_sid, signed

now = time.perf_counter


class ServerClosed(ConnectionError):
    """The server closed the connection before answering."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool, float]] | None = None
        self.closed = False
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ServerClosed("connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            version, code, _ = (lines[0] + " ").split(" ", 2)
            status = int(code)
        except ValueError:
            waiter.set_exception(ValueError(f"bad status line {lines[0][:80]!r}"))
            return
        length = 0
        keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                keep_alive = value.strip().lower() != "close"
            elif name == "transfer-encoding":
                waiter.set_exception(ValueError("chunked answers are not supported by this generator"))
                return
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        self.waiter = None
        self.answered += 1
        waiter.set_result((status, keep_alive, now()))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bool, float]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """At most ``max_connections`` requests in flight, each on its own connection; idle connections are reused."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self.opened = 0
        self.retried = 0
        self.ok = 0
        """Requests answered 200, over the pool's life."""

    async def _connection(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        self.opened += 1
        return conn, False

    async def send(self, data: bytes) -> tuple[int, float, float]:
        """Send one request: (status, sent_at, answered_at)."""
        async with self._slots:
            for attempt in range(2):
                conn, reused = await self._connection()
                sent = now()
                try:
                    status, keep_alive, done = await conn.request(data)
                except ServerClosed:
                    conn.close()
                    if reused and attempt == 0:  # an idle connection the server had just closed: try a fresh one
                        self.retried += 1
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if keep_alive and not conn.closed:
                    self._idle.append(conn)
                else:
                    conn.close()
                if status == 200:
                    self.ok += 1
                return status, sent, done
            raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def sms_request(url: str, sid: str, body: str) -> bytes:
    """One signed inbound-SMS webhook for ``url`` as raw HTTP/1.1 bytes."""
    host, _, path = url.partition("//")[2].partition("/")
    payload, headers = signed(url, inbound_params(body=body, sid=sid))
    head = [f"POST /{path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(payload)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def sms_batch(url: str, count: int, tag: str) -> tuple[list[str], list[bytes]]:
    """``count`` webhooks for ``url``, each with its own MessageSid: (the sids, the requests)."""
    sids = [message_sid() for _ in range(count)]
    return sids, [sms_request(url, sid, f"Bench {tag} #{n}: where is my order?") for n, sid in enumerate(sids)]


def sms_requests(url: str, count: int, tag: str) -> list[bytes]:
    return sms_batch(url, count, tag)[1]


@dataclass
class Phase:
    """What one run of the generator saw; times are perf_counter seconds."""

    kind: str
    offered_rate: float | None
    window: tuple[float, float]
    due: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    generator_cpu: float = 0.0
    server_cpu: float = 0.0
    connections_opened: int = 0
    retried: int = 0
    foreign_cpu: float = 0.0
    """Cores used meanwhile by processes not ours (other jobs on this shared machine, kernel threads)."""
    cores: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per core, busy and stolen shares during the window (everything on the machine, not only ours)."""
    exhausted: bool = False
    """The closed loop used up its pre-built requests before the window ended: its rate is a lower bound."""

    def measured(self) -> list[int]:
        """Requests that count: those due (open loop) or issued (closed loop) inside the window."""
        lo, hi = self.window
        return [i for i, t in enumerate(self.due) if lo <= t < hi]

    def summary(self) -> dict[str, Any]:
        lo, hi = self.window
        duration = hi - lo
        acks = sum(1 for d, s in zip(self.done, self.status, strict=True) if s == 200 and lo <= d < hi)
        idx = self.measured()
        # From the due time (open loop) or the time the sender issued it (closed loop). A request never answered
        # (timeout, error) counts as an infinitely long wait.
        latency = [(self.done[i] - self.due[i]) if self.status[i] > 0 else math.inf for i in idx]
        errors: Counter[str] = Counter()
        for i in idx:
            if self.status[i] != 200:
                errors[self.error[i] or f"HTTP {self.status[i]}"] += 1
        lag = [self.started[i] - self.due[i] for i in idx] if self.kind == "open" else []
        wait = [self.sent[i] - self.started[i] for i in idx if not math.isnan(self.sent[i])]
        return {
            "kind": self.kind,
            "offered_rate": self.offered_rate,
            "window_s": duration,
            "requests": len(idx),
            "acks_per_s": acks / duration if duration > 0 else math.nan,
            "ack_latency": summary_ms(latency),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "generator_lag": summary_ms(lag),
            "connection_wait": summary_ms(wait),
            "generator_cpu": self.generator_cpu,
            "server_cpu": self.server_cpu,
            "connections_opened": self.connections_opened,
            "retried_on_stale_connection": self.retried,
            "exhausted": self.exhausted,
            "foreign_cpu": self.foreign_cpu,
            "cores": self.cores,
        }


def _new_phase(kind: str, rate: float | None, window: tuple[float, float], n: int) -> Phase:
    nan = math.nan
    return Phase(
        kind=kind,
        offered_rate=rate,
        window=window,
        due=[nan] * n,
        started=[nan] * n,
        sent=[nan] * n,
        done=[nan] * n,
        status=[0] * n,
        error=[None] * n,
    )


async def _one(pool: Pool, phase: Phase, i: int, data: bytes) -> None:
    phase.started[i] = now()
    try:
        status, sent, done = await pool.send(data)
    except asyncio.CancelledError:
        phase.status[i] = -1
        phase.error[i] = "timeout"
        return
    except Exception as exc:  # connection refused or reset, a malformed answer: an error, counted by kind
        phase.status[i] = -2
        phase.error[i] = type(exc).__name__
        return
    phase.status[i], phase.sent[i], phase.done[i] = status, sent, done


class _Deadlines:
    """Requests in flight and when each is abandoned (as Twilio gives up on a webhook after 15 s).

    Deadlines come in the order requests are issued, so expiry only ever looks at the front of a queue.
    """

    def __init__(self) -> None:
        self.queue: deque[tuple[float, asyncio.Task[None]]] = deque()
        self.pending: set[asyncio.Task[None]] = set()

    def add(self, task: asyncio.Task[None], deadline: float) -> None:
        self.queue.append((deadline, task))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def reap(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = now()
            while self.queue and (self.queue[0][0] <= t or self.queue[0][1].done()):
                _, task = self.queue.popleft()
                task.cancel()  # a no-op when it is done
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)


async def open_loop(
    pool: Pool,
    requests: Sequence[bytes],
    rate: float,
    preroll: float,
    duration: float,
    deadline: float,
    server_pid: int | None,
) -> Phase:
    """Send ``requests`` at ``rate``/s; the first ``preroll`` seconds warm up and are not measured."""
    n = min(len(requests), math.ceil((preroll + duration) * rate))
    start = now() + 0.05
    phase = _new_phase("open", rate, (start + preroll, start + preroll + duration), n)
    inflight = _Deadlines()
    stop = asyncio.Event()
    reaper = asyncio.create_task(inflight.reap(stop))
    opened, retried = pool.opened, pool.retried
    gen_cpu, srv_cpu, cores, foreign = CpuMeter(None), CpuMeter(server_pid), CoreMeter(), ForeignMeter()
    measuring = False
    loop = asyncio.get_running_loop()
    i = 0
    while i < n:
        t = now()
        if not measuring and t >= phase.window[0]:
            gen_cpu.start()
            srv_cpu.start()
            cores.start()
            foreign.start()
            measuring = True
        while i < n and start + i / rate <= t:
            due = start + i / rate
            phase.due[i] = due
            task = loop.create_task(_one(pool, phase, i, requests[i]))
            inflight.add(task, due + deadline)
            i += 1
        if i < n:
            # At least 1 ms: the loop's timers have millisecond resolution, and a shorter sleep would spin the CPU.
            # Requests that fall due meanwhile are sent together, at most about a millisecond late (see "gen lag").
            await asyncio.sleep(max(0.001, start + i / rate - now()))
    await asyncio.sleep(max(0.0, phase.window[1] - now()))
    if measuring:
        phase.generator_cpu, phase.server_cpu, phase.cores = gen_cpu.share(), srv_cpu.share(), cores.shares()
        phase.foreign_cpu = foreign.share()
    if inflight.pending:
        await asyncio.wait(list(inflight.pending), timeout=deadline + 5)
    stop.set()
    await reaper
    phase.connections_opened, phase.retried = pool.opened - opened, pool.retried - retried
    return phase


async def closed_loop(
    pool: Pool,
    requests: Sequence[bytes],
    concurrency: int,
    preroll: float,
    duration: float,
    deadline: float,
    server_pid: int | None,
) -> Phase:
    """``concurrency`` senders, each sending its next request as soon as the last is answered: the maximum rate."""
    n = len(requests)
    start = now()
    phase = _new_phase("closed", None, (start + preroll, start + preroll + duration), n)
    end = phase.window[1]
    next_index = 0
    opened, retried = pool.opened, pool.retried
    inflight = _Deadlines()
    stop = asyncio.Event()
    reaper = asyncio.create_task(inflight.reap(stop))
    loop = asyncio.get_running_loop()

    async def sender() -> None:
        nonlocal next_index
        while now() < end and next_index < n:
            i = next_index
            next_index += 1
            phase.due[i] = now()
            task = loop.create_task(_one(pool, phase, i, requests[i]))
            inflight.add(task, phase.due[i] + deadline)
            await task

    gen_cpu, srv_cpu, cores, foreign = CpuMeter(None), CpuMeter(server_pid), CoreMeter(), ForeignMeter()
    senders = [asyncio.create_task(sender()) for _ in range(concurrency)]
    await asyncio.sleep(max(0.0, phase.window[0] - now()))
    gen_cpu.start()
    srv_cpu.start()
    cores.start()
    foreign.start()
    await asyncio.sleep(max(0.0, phase.window[1] - now()))
    phase.generator_cpu, phase.server_cpu, phase.cores = gen_cpu.share(), srv_cpu.share(), cores.shares()
    phase.foreign_cpu = foreign.share()
    await asyncio.wait(senders, timeout=deadline + 5)
    for task in senders:
        task.cancel()
    stop.set()
    await reaper
    phase.connections_opened, phase.retried = pool.opened - opened, pool.retried - retried
    phase.exhausted = next_index >= n
    for name in ("due", "started", "sent", "done", "status", "error"):  # drop the requests never sent
        values: list[Any] = getattr(phase, name)
        del values[next_index:]
    return phase
