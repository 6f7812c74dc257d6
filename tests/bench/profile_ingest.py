"""Where the bridge's CPU goes per acknowledged webhook: a quick, repeatable measurement to compare changes by.

    uv run python -m tests.bench.profile_ingest                    # closed loop, 64 senders, 8 s
    uv run python -m tests.bench.profile_ingest --rate 1000        # open loop at 1000/s instead
    uv run --with py-spy python -m tests.bench.profile_ingest --py-spy out.txt   # and a py-spy profile (raw)

The bridge runs as in ``bench_ingest`` (its own process, pinned to the first core, one console stream draining
events on the other core). Reported: acks/s, ack p50/p99, and the bridge's CPU per ack, in total and per thread
(event loop, store writer, ...), from /proc: CPU per ack is much steadier than a rate on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bridge.store import add_agent, open_database
from tests.bench.bench_ingest import run_async
from tests.bench.common import Child, core_split, fmt, pin_self, python_module, read_line
from tests.bench.loadgen import Pool, closed_loop, open_loop, sms_requests
from tests.bench.servers import bridge_argv
from tests.processes import free_port

_TICK_S = 0.01  # /proc times are in clock ticks (100 Hz)


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """CPU seconds so far per thread, (user, system): the main thread (the event loop) as "loop", the others by
    thread id."""
    out: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = "loop" if task.name == str(pid) else f"thread {task.name}"
        out[name] = (int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S)
    return out


async def run(args: argparse.Namespace, pid: int, base: str) -> None:
    pool = Pool("127.0.0.1", int(base.rsplit(":", 1)[1]), 512)
    url = base + "/twilio/sms"
    warm = sms_requests(url, 600, "warmup")
    await open_loop(pool, warm, 300, 0.0, 2.0, 15.0, pid)
    count = math.ceil((1 + args.duration) * (args.rate or 12000))
    requests = sms_requests(url, count, "profile")
    spy: subprocess.Popen[bytes] | None = None
    if args.py_spy:
        exe = shutil.which("py-spy")
        if exe is None:
            raise SystemExit("py-spy is not installed: uv run --with py-spy python -m tests.bench.profile_ingest ...")
        spy = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--threads", "--rate", "250", "--nonblocking"]
            + ["--duration", str(int(args.duration)), "--output", args.py_spy],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    before, t0 = thread_cpu(pid), time.perf_counter()
    acks_before = pool.ok
    if args.rate:
        phase = await open_loop(pool, requests, args.rate, 1.0, args.duration, 15.0, pid)
    else:
        phase = await closed_loop(pool, requests, args.concurrency, 1.0, args.duration, 15.0, pid)
    after, wall = thread_cpu(pid), time.perf_counter() - t0
    acks = pool.ok - acks_before
    if spy is not None:
        spy.wait(timeout=60)
    summary = phase.summary()
    lat = summary["ack_latency"]
    kind = f"open loop at {args.rate:.0f}/s" if args.rate else f"closed loop, {args.concurrency} senders"
    print(
        f"{kind}: {summary['acks_per_s']:.0f} acks/s, p50 {fmt(lat['p50_ms'])} ms, p99 {fmt(lat['p99_ms'])} ms, "
        f"errors {summary['errors']}, server CPU {summary['server_cpu']:.0%}, others {summary['foreign_cpu']:.2f}"
    )
    used = {
        name: (user - before.get(name, (0.0, 0.0))[0], system - before.get(name, (0.0, 0.0))[1])
        for name, (user, system) in after.items()
    }
    per_ack = 1e3 / max(acks, 1)
    total = sum(user + system for user, system in used.values())
    print(f"bridge CPU per ack: {per_ack * total:.3f} ms ({acks} acks over {wall:.1f} s, whole run)")
    for name, (user, system) in sorted(used.items(), key=lambda item: -sum(item[1])):
        if user + system > 0:
            print(
                f"  {name:16} {per_ack * (user + system):.3f} ms/ack"
                f" (user {per_ack * user:.3f}, system {per_ack * system:.3f})"
            )
    pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile_ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this rate (default: closed loop)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--py-spy", metavar="FILE", help="record a py-spy profile (raw, per thread) into FILE")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    server_cpus, client_cpus = core_split(not args.no_pin)
    pin_self(client_cpus)
    with tempfile.TemporaryDirectory(prefix="switchboard-profile-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "bridge"
        db = open_database(data_dir / "bridge.db")
        token = add_agent(db, "bench")
        db.close()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        bridge = Child("bridge", bridge_argv(port, data_dir), tmp / "bridge.log", cpus=server_cpus)
        drainer = Child(
            "stream client",
            python_module(
                "tests.bench.bench_ingest",
                "drain",
                "--url",
                f"http://127.0.0.1:{port}",
                "--token",
                token,
            ),
            tmp / "drain.log",
            cpus=client_cpus,
            stdout_pipe=True,
        )
        try:
            bridge.start()
            bridge.wait_http(base + "/healthz", want=200)
            drainer.start()
            if read_line(drainer, 30) != "ready":
                raise RuntimeError(f"stream client did not catch up: {drainer.log_tail()}")
            run_async(run(args, bridge.pid, base))
            bridge.check_alive()
            time.sleep(0.5)
            head = int(httpx.get(base + "/healthz", timeout=5).json()["head"])
            assert drainer.proc is not None
            drainer.proc.send_signal(signal.SIGTERM)
            out, _ = drainer.proc.communicate(timeout=30)
            last = out.decode().strip().splitlines()[-1:]
            print(f"log head {head}; stream client: {last[0] if last else '?'}")
            conn = sqlite3.connect(data_dir / "bridge.db")
            events, stamps = conn.execute("SELECT count(*), count(DISTINCT ts) FROM events").fetchone()
            conn.close()
            # The writer reads the clock once per batch, so distinct times approximate batches (from below).
            print(f"events per distinct ts (about the mean batch size): {events / max(stamps, 1):.1f}")
        finally:
            drainer.stop()
            bridge.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
