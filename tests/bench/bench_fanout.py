"""Fan-out benchmark: webhook sent → event received by each of N stream clients; then one client stalls.

    uv run python -m tests.bench.bench_fanout            # full run, about 2 minutes
    uv run python -m tests.bench.bench_fanout --quick    # a smoke run

For each run a fresh bridge (the real ``create_app`` on uvicorn, its own process) gets N stream clients (the
``websockets`` client with the console's options, all in this process), then signed webhooks at a fixed rate
(20/s for 10 s after 1 s of warmup). Latency is from the moment a webhook's bytes are written to the moment a
client has the event's frame; p50/p99/max over every (client, event) pair.

Runs: 1, 10 and 100 clients; 100 clients plus one stalled client (it completes the WebSocket handshake and never
reads its socket again, with a small receive buffer) on the default per-console queue; the same with a small
queue (16) so that the overflow happens within the run. For the stalled runs the others' p99 is compared with the
100-client run, and what the bridge did to the stalled client is shown: the console count in /healthz over time,
the bridge's log line about it, and what the stalled socket holds when it is finally read (events, close code).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import re
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bridge.store import add_agent, open_database
from tests.bench.bench_ingest import run_async
from tests.bench.common import (
    HAVE_UVLOOP,
    SERVER_HTTP,
    SERVER_LOOP,
    Child,
    core_split,
    environment,
    fmt,
    percentile,
    pin_self,
    summary_ms,
    table,
    wait_for_quiet,
    write_results,
)
from tests.bench.loadgen import Pool, now, open_loop, sms_batch
from tests.bench.servers import bridge_argv
from tests.processes import free_port

LEGEND = """\
delivery latency: webhook bytes written → event frame read by a client, over every (client, event) pair; stalled
  clients excluded. worst client p99: the highest per-client p99. spread: how much later than the first client each
  client read an event (the fan-out alone: a slow commit delays everyone alike). ack: the webhook's own answer.
CPU: share of one core. others: cores used meanwhile by processes not ours (other jobs on this shared machine,
  kernel threads); a high value means that row was disturbed."""


@dataclass(frozen=True)
class RunSpec:
    label: str
    clients: int
    rate: float
    seconds: float
    stalled: bool = False
    queue_size: int | None = None
    baseline: str | None = None
    """For a stalled run: the label of the run without a stalled client to compare with."""


@dataclass
class StreamClient:
    """A console-like stream reader that notes when each event arrives."""

    received: dict[str, float] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    ws: ClientConnection | None = None
    task: asyncio.Task[None] | None = None
    close_code: int | None = None

    async def run(self, url: str, token: str) -> None:
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=10,
            ping_interval=10,
            ping_timeout=10,
            max_size=4 * 1024 * 1024,
        ) as ws:
            self.ws = ws
            with contextlib.suppress(Exception):
                async for raw in ws:
                    t = now()
                    frame = json.loads(raw)
                    seq = frame.get("seq")
                    if isinstance(seq, int):
                        self.seqs.append(seq)
                        self.received[frame["data"]["message_sid"]] = t
                    elif frame.get("type") == "caught_up":
                        self.caught_up.set()
            self.close_code = ws.close_code


class StalledClient:
    """Completes the WebSocket handshake, then never reads its socket (until ``read_all`` at the very end)."""

    def __init__(self, host: str, port: int, token: str, rcvbuf: int = 4096) -> None:
        self.host, self.port, self.token, self.rcvbuf = host, port, token, rcvbuf
        self.sock: socket.socket | None = None
        self.connected_at = math.nan

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before connect: sets the window
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), 10)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/stream?after=0 HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte, so not one byte past the handshake is read
            byte = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
            if not byte:
                raise ConnectionError(f"stalled client: connection closed during the handshake: {head!r}")
            head += byte
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"stalled client: handshake refused: {head[:200]!r}")
        self.sock = sock
        self.connected_at = now()

    async def read_all(self, timeout: float) -> dict[str, Any]:
        """Read what the bridge sent (until it closes, or ``timeout``): event frames, then the close frame if any."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        data = bytearray()
        deadline = time.monotonic() + timeout
        eof = False
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(
                    loop.sock_recv(self.sock, 1 << 16), max(0.01, deadline - time.monotonic())
                )
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                eof = True
                break
            data += chunk
            if _close_frame(data) is not None:
                break
        self.sock.close()
        events, close = _read_frames(bytes(data))
        return {
            "bytes_read": len(data),
            "events_read": events,
            "close": close,
            "eof": eof,
        }


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked frame (server → client frames are never masked)."""
    out = []
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            if i + 2 > len(data):
                break
            length = struct.unpack("!H", data[i : i + 2])[0]
            i += 2
        elif length == 127:
            if i + 8 > len(data):
                break
            length = struct.unpack("!Q", data[i : i + 8])[0]
            i += 8
        if i + length > len(data):
            break
        out.append((opcode, data[i : i + length]))
        i += length
    return out


def _close_frame(data: bytes | bytearray) -> dict[str, Any] | None:
    for opcode, payload in _frames(bytes(data)):
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return {"code": code, "reason": payload[2:].decode("utf-8", "replace")}
    return None


def _read_frames(data: bytes) -> tuple[int, dict[str, Any] | None]:
    events = 0
    for opcode, payload in _frames(data):
        if opcode == 0x1 and payload.startswith(b'{"seq"'):
            events += 1
    return events, _close_frame(data)


async def watch_consoles(base: str, timeline: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """Poll /healthz for the number of consoles the bridge's hub knows, every 0.25 s."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                answer = await client.get(base + "/healthz")
                timeline.append((now(), int(answer.json()["consoles"])))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def measure_run(
    spec: RunSpec, port: int, token: str, stalled_token: str, server_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/v1/stream?after=0"
    await wait_for_quiet(args.max_others, args.quiet_wait, print)  # before any client connects: keepalive clocks run
    clients = [StreamClient() for _ in range(spec.clients)]
    for client in clients:
        client.task = asyncio.create_task(client.run(ws_url, token))
    await asyncio.wait_for(asyncio.gather(*(c.caught_up.wait() for c in clients)), 60)
    stalled = StalledClient("127.0.0.1", port, stalled_token) if spec.stalled else None
    if stalled is not None:
        await stalled.connect()
    timeline: list[tuple[float, int]] = []
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch_consoles(base, timeline, stop_watch))

    pool = Pool("127.0.0.1", port, 16)
    sids, requests = sms_batch(base + "/twilio/sms", math.ceil((args.warmup + spec.seconds) * spec.rate), "fanout")
    phase = await open_loop(pool, requests, spec.rate, args.warmup, spec.seconds, 15.0, server_pid)
    pool.close()
    acked = [i for i, status in enumerate(phase.status) if status == 200]
    expected = {sids[i] for i in acked}
    # Wait (at most 10 s) for every client to have every acknowledged event.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(expected <= c.received.keys() for c in clients):
        await asyncio.sleep(0.05)

    fate: dict[str, Any] = {}
    if stalled is not None:
        # Keep watching what the bridge does with the stalled client, up to `watch` seconds after it connected.
        until = stalled.connected_at + args.watch
        while now() < until and not (timeline and timeline[-1][1] <= spec.clients):
            await asyncio.sleep(0.1)
        detached = [t for t, n in timeline if n <= spec.clients]
        fate["watched_s"] = now() - stalled.connected_at
        fate["detached_after_s"] = (detached[0] - stalled.connected_at) if detached else None
        fate["events_published_while_stalled"] = len(acked)
        fate["socket"] = await stalled.read_all(10.0)
    stop_watch.set()
    await watcher

    measured = phase.measured()
    latencies: list[float] = []
    per_client_p99: list[float] = []
    missing = 0
    out_of_order = 0
    # Spread: how much later than the first client each client got an event. Commit jitter (a slow fsync) delays an
    # event for every client alike and drops out; what is left is the fan-out itself.
    spread: list[float] = []
    for i in measured:
        if phase.status[i] != 200:
            continue
        times = [t for c in clients if (t := c.received.get(sids[i])) is not None]
        if times:
            first = min(times)
            spread += [t - first for t in times]
    for client in clients:
        mine = []
        for i in measured:
            if phase.status[i] != 200:
                continue
            got = client.received.get(sids[i])
            if got is None:
                missing += 1
                mine.append(math.inf)
            else:
                mine.append(got - phase.sent[i])
        latencies += mine
        per_client_p99.append(percentile(sorted(mine), 99))
        if client.seqs != list(range(1, len(client.seqs) + 1)):
            out_of_order += 1
    for client in clients:
        if client.ws is not None:
            await client.ws.close()
    await asyncio.wait([c.task for c in clients if c.task is not None], timeout=10)
    summary = phase.summary()
    return {
        "run": spec.label,
        "clients": spec.clients,
        "rate": spec.rate,
        "seconds": spec.seconds,
        "baseline": spec.baseline,
        "stalled": spec.stalled,
        "queue_size": spec.queue_size,
        "events_measured": sum(1 for i in measured if phase.status[i] == 200),
        "events_total": len(acked),
        "delivery": summary_ms(latencies),
        "spread": summary_ms(spread),
        "worst_client_p99_ms": max(per_client_p99) * 1000 if per_client_p99 else math.nan,
        "missing": missing,
        "clients_with_gaps_or_disorder": out_of_order,
        "ack": summary["ack_latency"],
        "post_errors": summary["errors"],
        "bridge_cpu": summary["server_cpu"],
        "client_process_cpu": summary["generator_cpu"],
        "cores": summary["cores"],
        "foreign_cpu": summary["foreign_cpu"],
        "consoles_timeline": [(round(t - timeline[0][0], 2), n) for t, n in timeline] if timeline else [],
        "stalled_fate": fate,
    }


def stalled_log_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"\bstalled (connected|disconnected)", line)]


def one_run(
    spec: RunSpec, args: argparse.Namespace, server_cpus: set[int] | None, tmp: Path, attempt: int
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"run-{attempt}-", dir=tmp)) / "bridge"
    db = open_database(data_dir / "bridge.db")
    token = add_agent(db, "console")
    stalled_token = add_agent(db, "stalled")
    db.close()
    port = free_port()
    bridge = Child(
        "bridge", bridge_argv(port, data_dir, spec.queue_size), data_dir.parent / f"{data_dir.name}.log", server_cpus
    )
    bridge.start()
    try:
        bridge.wait_http(f"http://127.0.0.1:{port}/healthz", want=200)
        result = run_async(measure_run(spec, port, token, stalled_token, bridge.pid, args))
        bridge.check_alive()
    finally:
        bridge.stop()
    if spec.stalled:
        result["stalled_fate"]["bridge_log"] = stalled_log_lines(bridge.log_tail(200_000))
    return result


def report(results: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    print()
    print(f"Cores: {env['cores']}. Bridge: uvicorn with {SERVER_LOOP} + {SERVER_HTTP}, one process.")
    print(
        f"Stream clients: websockets' asyncio client (console options, permessage-deflate), all in this process "
        f"({'uvloop' if HAVE_UVLOOP else 'asyncio'}); webhooks at {args.rate:.0f}/s for {args.seconds:.0f} s "
        f"after {args.warmup:.0f} s of warmup (the overflow run: {args.overflow_rate:.0f}/s for "
        f"{args.overflow_seconds:.0f} s)."
    )
    print()
    headers = [
        "run",
        "clients",
        "rate",
        "events",
        "p50 ms",
        "p99 ms",
        "max ms",
        "worst client p99",
        "spread p99",
        "missing",
        "ack p99 ms",
        "bridge CPU",
        "client CPU",
        "others",
    ]
    rows = []
    for r in results:
        d = r["delivery"]
        rows.append(
            [
                r["run"],
                str(r["clients"]),
                f"{r['rate']:.0f}/s",
                str(r["events_measured"]),
                fmt(d["p50_ms"]),
                fmt(d["p99_ms"]),
                fmt(d["max_ms"]),
                fmt(r["worst_client_p99_ms"]),
                fmt(r["spread"]["p99_ms"]),
                str(r["missing"])
                + (f" (+{r['clients_with_gaps_or_disorder']} gappy)" if r["clients_with_gaps_or_disorder"] else ""),
                fmt(r["ack"]["p99_ms"]),
                f"{r['bridge_cpu']:.0%}",
                f"{r['client_process_cpu']:.0%}",
                f"{r['foreign_cpu']:.2f}",
            ]
        )
    print(table(headers, rows))
    print(LEGEND)
    comparisons = []
    for r in results:
        if not r["stalled"]:
            continue
        fate = r["stalled_fate"]
        sock = fate.get("socket", {})
        close = sock.get("close")
        detached = fate.get("detached_after_s")
        baseline = next((b for b in results if b["run"] == r["baseline"]), None)
        print()
        print(f"{r['run']} (per-console queue {r['queue_size'] or 'default, 2048'}):")
        if baseline is not None:
            ratio = r["delivery"]["p99_ms"] / baseline["delivery"]["p99_ms"]
            ack_ratio = r["ack"]["p99_ms"] / baseline["ack"]["p99_ms"]
            spread_ratio = r["spread"]["p99_ms"] / baseline["spread"]["p99_ms"]
            comparisons.append(
                {
                    "run": r["run"],
                    "baseline": baseline["run"],
                    "p99_ms": r["delivery"]["p99_ms"],
                    "baseline_p99_ms": baseline["delivery"]["p99_ms"],
                    "ratio": ratio,
                    "p50_ratio": r["delivery"]["p50_ms"] / baseline["delivery"]["p50_ms"],
                    "spread_p99_ratio": spread_ratio,
                    "ack_p99_ratio": ack_ratio,
                }
            )
            print(
                f"  the {r['clients']} others' p99 {fmt(r['delivery']['p99_ms'])} ms vs "
                f"{fmt(baseline['delivery']['p99_ms'])} ms in '{baseline['run']}' just before: x{ratio:.2f} "
                f"(p50 x{r['delivery']['p50_ms'] / baseline['delivery']['p50_ms']:.2f}, fan-out spread p99 "
                f"x{spread_ratio:.2f}, the webhooks' own ack p99 x{ack_ratio:.2f}); missing events {r['missing']}"
            )
        else:
            print(f"  the {r['clients']} others: p99 {fmt(r['delivery']['p99_ms'])} ms, missing events {r['missing']}")
        print(
            f"  stalled client: {fate.get('events_published_while_stalled')} events published while it was connected; "
            + (
                f"the bridge dropped it from the hub {detached:.1f} s after it connected"
                if detached is not None
                else f"still attached to the hub after {fate.get('watched_s', 0):.1f} s"
            )
        )
        print(
            f"  when finally read: {sock.get('events_read')} event frames, then "
            + (f"close code {close['code']} ({close['reason']!r})" if close else "no close frame")
            + (", connection closed" if sock.get("eof") else "")
        )
        for line in fate.get("bridge_log", []):
            print(f"  bridge log: {line.strip()}")
    return {"stalled_vs_baseline": comparisons}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="webhooks per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at the same rate first")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100])
    parser.add_argument("--pairs", type=int, default=2, help="(N clients, N + 1 stalled) pairs, alternated")
    parser.add_argument("--overflow-rate", type=float, default=600.0, help="rate of the overflow run (0: skip)")
    parser.add_argument("--overflow-seconds", type=float, default=15.0, help="seconds of the overflow run")
    parser.add_argument("--overflow-clients", type=int, default=5, help="healthy clients in the overflow run")
    parser.add_argument("--watch", type=float, default=25.0, help="seconds to watch a stalled client after it connects")
    parser.add_argument("--max-others", type=float, default=0.25, help="other jobs' cores that make a run redone")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for other jobs before each")
    parser.add_argument("--retries", type=int, default=2, help="times a disturbed run is measured again")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the bridge and the clients to separate cores")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 and 10 clients, 3 s each")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.watch, args.pairs, args.overflow_seconds = [1, 10], 3.0, 10.0, 1, 5.0
    specs = [RunSpec(f"{n} client{'s' if n > 1 else ''}", n, args.rate, args.seconds) for n in args.clients]
    n = max(args.clients)
    for round_ in range(1, args.pairs + 1):
        plain = f"{n} clients #{round_}" if round_ > 1 else specs[-1].label
        if round_ > 1:
            specs.append(RunSpec(plain, n, args.rate, args.seconds))
        specs.append(RunSpec(f"{n} + 1 stalled #{round_}", n, args.rate, args.seconds, stalled=True, baseline=plain))
    if args.overflow_rate > 0:
        m = args.overflow_clients
        specs.append(RunSpec(f"{m} + 1 stalled, overflow", m, args.overflow_rate, args.overflow_seconds, stalled=True))

    server_cpus, client_cpus = core_split(not args.no_pin)
    args.server_cpus = server_cpus
    pin_self(client_cpus)
    env = environment(server_cpus, client_cpus)
    print(f"fan-out benchmark: {env['cores']}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="switchboard-fanout-") as tmp:
        for spec in specs:
            best: dict[str, Any] | None = None
            for attempt in range(args.retries + 1):
                result = one_run(spec, args, server_cpus, Path(tmp), attempt)
                result["attempt"] = attempt + 1
                if best is None or result["foreign_cpu"] < best["foreign_cpu"]:
                    best = result
                if result["foreign_cpu"] <= args.max_others:
                    break
                print(f"  {spec.label:28}: disturbed (others {result['foreign_cpu']:.2f} cores): measuring again")
            assert best is not None
            result = best
            d = result["delivery"]
            print(
                f"  {spec.label:28}: p50 {fmt(d['p50_ms'])} ms  p99 {fmt(d['p99_ms'])} ms  max {fmt(d['max_ms'])} ms  "
                f"missing {result['missing']}  bridge CPU {result['bridge_cpu']:.0%}  "
                f"others {result['foreign_cpu']:.2f}",
                flush=True,
            )
            results.append(result)
    verdicts = report(results, env, args)
    env["loadavg_at_end"] = list(os.getloadavg())
    path = write_results(
        "fanout",
        {
            "benchmark": "fanout",
            "command": "python -m tests.bench.bench_fanout " + " ".join(sys.argv[1:]),
            "settings": vars(args),
            "environment": env,
            "runs": results,
            "verdicts": verdicts,
        },
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
