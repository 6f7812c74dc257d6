"""Where the catch-up helper's time goes: 100k missed events into the 1M-message bench cache, against a real bridge.

    uv run python -m tests.bench.profile_catchup                       # 3 runs as the helper runs
    uv run python -m tests.bench.profile_catchup --commit-after 1.5    # and with another commit policy

The helper's ``catch_up`` runs in this process (no spawn, no console), on a fresh copy of bench_console's 1M cache
each run, against ``bridge.cli serve`` in its own process holding the 100k events bench_console's catch-up uses.
Reported per run: the time to the line saying it is done (what the console waits for) and to the end of
``catch_up``, the commits, and where it went (parsing, the Python of applying, the texts' inserts, their move in
their own thread and the waits for it, the conversation updates at commit, the full-text index after it), and the
CPU seconds the helper (all its threads) and the bridge used meanwhile. The timings wrap the
functions from here (benchmark side); the product runs unwrapped. Writes ``results/catchup-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import bench_console as bc
from tests.bench.common import cpu_seconds

TIMED: dict[str, float] = {}


def timed(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMED[label] = TIMED.get(label, 0.0) + time.perf_counter() - started

    setattr(owner, name, wrapper)


class Lines(io.StringIO):
    """The helper's output, noting when it said it was done."""

    def __init__(self) -> None:
        super().__init__()
        self.done_at: float | None = None

    def write(self, text: str) -> int:
        if self.done_at is None and '"done":true' in text:
            self.done_at = time.perf_counter()
        return super().write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile_catchup", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--commit-after", type=float, help="the helper's COMMIT_AFTER for these runs (seconds)")
    args = parser.parse_args(argv)

    from bridge import protocol
    from console import cache as cache_module
    from console import catchup
    from tests.processes import BridgeProcess

    if args.commit_after is not None:
        catchup.COMMIT_AFTER = args.commit_after  # type: ignore[misc]
    timed(protocol, "parse_server_frame", "parse")
    timed(cache_module, "_apply_one", "apply (Python)")
    timed(cache_module._Batch, "flush_rows", "texts' inserts")  # with bulk_texts: staging them, and any wait
    timed(cache_module._TextInserts, "_move", "texts moved (their thread)")
    timed(cache_module._TextInserts, "wait", "waits for the texts' thread")
    timed(cache_module._Batch, "flush", "conversation updates at commit")
    timed(cache_module, "_index_new_messages", "full-text index (after the commit)")
    timed(cache_module, "_set_aside", "inbox indexes dropped")
    timed(cache_module, "_put_back", "inbox indexes made again")
    timed(cache_module.Cache, "apply", "Cache.apply in all")

    close = cache_module.Cache.close

    def close_and_measure(cache: Any) -> None:  # the log the helper wrote, before closing folds it in
        wal = Path(str(cache.path) + "-wal")
        TIMED["log MB"] = wal.stat().st_size / 1e6 if wal.exists() else 0.0
        close(cache)

    cache_module.Cache.close = close_and_measure  # type: ignore[method-assign,assignment]

    big = bc.DATA_DIR / "console-1m.db"
    bc.build_cache(big, bc.CONVERSATIONS, bc.MESSAGES)
    cursor = bc.cache_info(big)[1]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="profile-catchup-") as tmp:
        built = bc.build_bridge(Path(tmp) / "data", cursor, bc.MISSED)
        bridge = BridgeProcess(Path(tmp) / "data")
        bridge.start(timeout=60)
        try:
            for n in range(args.runs):
                scratch = bc.working_copy(big, "profile-catchup.db")
                out = Lines()
                TIMED.clear()
                assert bridge.proc is not None
                bridge_cpu = cpu_seconds(bridge.proc.pid)
                own_cpu = time.process_time()
                started = time.perf_counter()
                try:
                    params = {"url": bridge.url, "token": built["token"], "cache": str(scratch)}
                    status = asyncio.run(asyncio.wait_for(catchup.catch_up(params, out), bc.CATCH_UP_LIMIT))
                finally:
                    bc.drop_copy(scratch)
                seconds = time.perf_counter() - started
                said_done = None if out.done_at is None else out.done_at - started
                TIMED["helper CPU"] = time.process_time() - own_cpu
                TIMED["bridge CPU"] = cpu_seconds(bridge.proc.pid) - bridge_cpu
                commits = sum(1 for line in out.getvalue().splitlines() if '"cursor"' in line)
                run = {"said_done_s": said_done, "seconds": seconds, "exit": status, "commits": commits, **TIMED}
                runs.append(run)
                parts = ", ".join(f"{k} {v:.2f}" for k, v in TIMED.items())
                done = "never" if said_done is None else f"{said_done:.2f} s"
                print(
                    f"run {n + 1}: done said at {done}, returned at {seconds:.2f} s, exit {status}, "
                    f"{commits} commit(s); {parts}",
                    flush=True,
                )
        finally:
            bridge.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    bc.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = bc.RESULTS_DIR / f"catchup-{stamp}.json"
    path.write_text(json.dumps({"commit_after": catchup.COMMIT_AFTER, "events": bc.MISSED, "runs": runs}, indent=1))
    print(f"results: {path.relative_to(bc.REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
