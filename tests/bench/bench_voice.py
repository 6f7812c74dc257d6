"""Accept key → REST requests leaving the bridge: how long from an agent's accept_call to Twilio (the sandbox)
receiving the request that dials the agent's phone. Target: p99 < 100 ms.

Run by hand: ``uv run python -m tests.bench.bench_voice [--accepts 200] [--agents 4]``.

The bridge runs in its own process (`switchboard-bridge serve`), the sandbox in this one (uvicorn in a thread);
both on loopback. One monotonic clock (shared by the processes) times both ends:
the moment the console writes the command frame, and the moment the sandbox's ASGI app receives
``POST …/Conferences/{call}/Participants.json`` (a middleware stamps it before the sandbox reads the body). Each
round: calls come in (one per agent), wait in the queue, then every agent accepts one at the same moment; once all
are connected, each agent hangs up and wraps up. Rounds run back to back; the first is a warm-up, not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect

from bridge import protocol
from bridge.sandbox.app import SandboxConfig, create_sandbox_app
from bridge.store import add_agent, open_database, set_agent_phone
from tests.bench.common import RESULTS_DIR
from tests.processes import BridgeProcess
from tests.sandbox_support.server import bound_socket, run_app_in_thread, socket_url
from tests.support import ACCOUNT_SID, AUTH_TOKEN

OUR_NUMBER = "+14155550100"
WAIT = 15.0


class Stamps:
    """ASGI middleware in front of the sandbox: when each participant create arrived, by conference."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = str(scope["path"])
            if path.endswith("/Participants.json"):
                conference = path.rsplit("/", 2)[-2]
                with self.lock:
                    self.arrivals.setdefault(conference, time.perf_counter())
        await self.app(scope, receive, send)


class Console:
    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.connected: dict[str, asyncio.Event] = {}
        self.queued: asyncio.Queue[str] = asyncio.Queue()
        self.sent_at: dict[str, float] = {}
        self._ids = 0

    async def pump(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame.get("type") == protocol.RESULT:
                future = self.results.pop(frame["id"], None)
                if future is not None and not future.done():
                    future.set_result(frame)
            elif frame.get("type") == protocol.CALL_UPDATED:
                data = frame["data"]
                if data["change"] == "queued" and data["state"] == "queued":
                    self.queued.put_nowait(data["call_sid"])
                if data["change"] == "connected":
                    self.connected.setdefault(data["call_sid"], asyncio.Event()).set()

    async def command(self, name: str, **args: Any) -> dict[str, Any]:
        self._ids += 1
        command_id = f"{self.name}-{self._ids}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.results[command_id] = future
        if name == protocol.ACCEPT_CALL:
            self.sent_at[args["call_sid"]] = time.perf_counter()
        await self.ws.send(protocol.encode(protocol.Command(command_id, name, args).to_frame()))
        return await asyncio.wait_for(future, WAIT)


@contextlib.asynccontextmanager
async def world(tmp: Path, agents: int) -> AsyncIterator[tuple[str, str, dict[str, str], Stamps]]:
    """The sandbox in this process (behind the stamping middleware), the bridge in its own (as in production:
    sharing this process's GIL with the sandbox and the consoles would charge it for their work)."""
    data_dir = tmp / "bridge"
    names = [f"agent{i}" for i in range(agents)]
    db = open_database(data_dir / "bridge.db")
    tokens = {name: add_agent(db, name) for name in names}
    for name in names:
        set_agent_phone(db, name, f"client:{name}")
    db.close()
    config = tmp / "switchboard.toml"
    config.write_text('[[queues]]\nname = "support"\nwait_music = ""\nlongest_wait = 3600\n', encoding="utf-8")
    with contextlib.ExitStack() as stack:
        sandbox_sock = bound_socket()
        sandbox_url = socket_url(sandbox_sock)
        bridge = BridgeProcess(data_dir, api_base=sandbox_url)
        sandbox = SandboxConfig(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            bridge_url=bridge.url,
            public_url=sandbox_url,
            support_numbers=(OUR_NUMBER,),
            voice_time_scale=0.02,
            ring_seconds=1.0,
            caller_patience=None,
            caller_talk_seconds=None,
        )
        stamps = Stamps(create_sandbox_app(sandbox))
        stack.enter_context(run_app_in_thread(stamps, sock=sandbox_sock))
        previous = os.environ.get("SWITCHBOARD_CONFIG")
        os.environ["SWITCHBOARD_CONFIG"] = str(config)
        try:
            bridge.start()
        finally:
            if previous is None:
                os.environ.pop("SWITCHBOARD_CONFIG", None)
            else:
                os.environ["SWITCHBOARD_CONFIG"] = previous
        stack.callback(bridge.stop)
        yield bridge.url, sandbox_url, tokens, stamps


async def run(accepts: int, agents: int) -> dict[str, Any]:
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-voice-") as tmp:
        async with (
            world(Path(tmp), agents) as (bridge_url, sandbox_url, tokens, stamps),
            httpx.AsyncClient(timeout=WAIT, trust_env=False) as http,
        ):
            consoles: list[Console] = []
            async with contextlib.AsyncExitStack() as stack:
                for name, token in tokens.items():
                    ws = await stack.enter_async_context(
                        connect(
                            bridge_url.replace("http://", "ws://") + "/v1/stream?after=0",
                            additional_headers={"Authorization": f"Bearer {token}"},
                        )
                    )
                    console = Console(ws, name)
                    consoles.append(console)
                    pump = asyncio.create_task(console.pump())
                    stack.callback(pump.cancel)
                rounds = -(-accepts // agents) + 1  # one warm-up round
                for round_no in range(rounds):
                    sids = []
                    for i in range(agents):
                        placed = await http.post(
                            f"{sandbox_url}/sandbox/call",
                            json={"from": f"+1212555{round_no % 10}{i:03d}", "to": OUR_NUMBER, "patience": None},
                        )
                        sids.append(placed.json()["call_sid"])
                    for sid in sids:  # every call queued, and its caller in the sandbox's queue
                        await asyncio.wait_for(_in_queue(http, sandbox_url, sid), WAIT)
                    for console in consoles:
                        while not console.queued.empty():
                            console.queued.get_nowait()
                    results = await asyncio.gather(
                        *(c.command(protocol.ACCEPT_CALL, call_sid=sid) for c, sid in zip(consoles, sids, strict=True))
                    )
                    assert all(r["ok"] for r in results), results
                    for console, sid in zip(consoles, sids, strict=True):
                        await asyncio.wait_for(console.connected.setdefault(sid, asyncio.Event()).wait(), WAIT)
                    if round_no:
                        for console, sid in zip(consoles, sids, strict=True):
                            latencies.append((stamps.arrivals[sid] - console.sent_at[sid]) * 1000)
                    for console, sid in zip(consoles, sids, strict=True):
                        await console.command(protocol.HANG_UP, call_sid=sid)
                        await console.command(protocol.WRAP_UP, call_sid=sid, note="bench")
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "accepts": len(latencies),
        "agents_at_once": agents,
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1], 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


async def _in_queue(http: httpx.AsyncClient, sandbox_url: str, sid: str) -> None:
    while True:
        calls = (await http.get(f"{sandbox_url}/sandbox/calls")).json()
        if any(c["sid"] == sid and c["queue"] is not None for c in calls):
            return
        await asyncio.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accepts", type=int, default=200, help="measured accepts (default 200)")
    parser.add_argument("--agents", type=int, default=4, help="agents accepting at the same moment (default 4)")
    args = parser.parse_args(argv)
    rows = [asyncio.run(run(args.accepts, 1)), asyncio.run(run(args.accepts, args.agents))]
    print(f"{'agents at once':>15} {'accepts':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for row in rows:
        print(
            f"{row['agents_at_once']:>15} {row['accepts']:>8} {row['p50_ms']:>8} {row['p90_ms']:>8} "
            f"{row['p99_ms']:>8} {row['max_ms']:>8}"
        )
    ok = all(row["p99_ms"] < 100 for row in rows)
    print("target p99 < 100 ms:", "met" if ok else "MISSED")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS_DIR / f"voice-{stamp}.json").write_text(json.dumps({"rows": rows, "target_met": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
