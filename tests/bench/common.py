"""What the benchmarks share: child processes pinned to cores, CPU accounting, percentiles, tables, results."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[2]

LoopName = Literal["uvloop", "asyncio"]
HttpName = Literal["httptools", "h11"]

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
SERVER_LOOP: LoopName = "uvloop" if HAVE_UVLOOP else "asyncio"
SERVER_HTTP: HttpName = "httptools" if HAVE_HTTPTOOLS else "h11"


# -- cores -----------------------------------------------------------------------------------------------------


def core_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server cores, client cores): the first core for the server under test, the rest for the load.

    With ``pin`` false, or fewer than two cores, nothing is pinned and every process shares every core.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin_self(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def describe_cores(server: set[int] | None, client: set[int] | None) -> str:
    if server is None or client is None:
        return f"not pinned: every process shares all {len(os.sched_getaffinity(0))} cores"
    return (
        f"server under test on core(s) {sorted(server)}; load generator and stream clients on core(s) {sorted(client)}"
    )


# -- CPU time from /proc ---------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by ``root``'s live process tree (all threads)."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


class CpuMeter:
    """CPU used by a process tree over an interval, as a share of one core."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._cpu = 0.0
        self._wall = 0.0

    def _now(self) -> float:
        if self.pid is None:
            return time.process_time()
        return cpu_seconds(self.pid)

    def start(self) -> None:
        self._cpu = self._now()
        self._wall = time.perf_counter()

    def share(self) -> float:
        wall = time.perf_counter() - self._wall
        return (self._now() - self._cpu) / wall if wall > 0 else 0.0


class CoreMeter:
    """How busy each core was over an interval (from /proc/stat), including time stolen by the hypervisor.

    Shows whether something outside the benchmark (another job on this shared machine) took a core's time.
    """

    def __init__(self) -> None:
        self._start: dict[str, tuple[int, int, int]] = {}

    @staticmethod
    def _read() -> dict[str, tuple[int, int, int]]:
        """cpu name -> (busy, steal, total) jiffies."""
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
                busy = user + nice + system + irq + softirq
                out[name] = (busy, steal, busy + steal + idle + iowait)
        return out

    def start(self) -> None:
        self._start = self._read()

    def shares(self) -> dict[str, dict[str, float]]:
        """Per core: busy and stolen, as shares of that core's time since ``start``."""
        end = self._read()
        result = {}
        for name, (busy, steal, total) in end.items():
            b0, s0, t0 = self._start.get(name, (busy, steal, total))
            span = total - t0
            result[name] = {
                "busy": (busy - b0) / span if span else 0.0,
                "steal": (steal - s0) / span if span else 0.0,
            }
        return result


class ForeignMeter:
    """Cores used over an interval by everything that is not this process or its descendants: other jobs on this
    shared machine, kernel threads, hypervisor steal. Machine-wide busy time (/proc/stat) minus our processes'."""

    def __init__(self) -> None:
        self._busy = 0
        self._ours = 0
        self._wall = 0.0

    @staticmethod
    def _read() -> tuple[int, int]:
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
                busy = user + nice + system + irq + softirq + steal
                break
        ours = 0
        for pid in process_tree(os.getpid()):
            fields = _stat_fields(pid)
            if fields is not None:
                ours += int(fields[11]) + int(fields[12])
        return busy, ours

    def start(self) -> None:
        self._busy, self._ours = self._read()
        self._wall = time.perf_counter()

    def share(self) -> float:
        wall = time.perf_counter() - self._wall
        busy, ours = self._read()
        if wall <= 0:
            return 0.0
        return max(0.0, ((busy - self._busy) - (ours - self._ours)) / _TICK / wall)


async def wait_for_quiet(threshold: float, max_wait: float, say: Callable[[str], None]) -> float:
    """Wait (at most ``max_wait`` s) until other jobs use under ``threshold`` cores over a second; returns their
    last measured use."""
    deadline = time.monotonic() + max_wait
    meter = ForeignMeter()
    told = False
    while True:
        meter.start()
        await asyncio.sleep(1.0)
        use = meter.share()
        if use < threshold or time.monotonic() >= deadline:
            return use
        if not told:
            say(f"    other jobs use {use:.2f} cores: waiting up to {max_wait:.0f} s for them to quiet down")
            told = True


# -- child processes -------------------------------------------------------------------------------------------


class Child:
    """A server (or helper) in its own process, optionally pinned to cores, with a log file and timeouts."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cpus = cpus
        self.env = env
        self.stdout_pipe = stdout_pipe
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cpus = self.cpus
        preexec: Callable[[], None] | None = None
        if cpus:

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env={**os.environ, **(self.env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.stdout_pipe else log,
                stderr=log,
                preexec_fn=preexec,
            )

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.name} exited ({code}): {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 30.0, want: int | None = None) -> None:
        """Wait until ``url`` answers (with status ``want`` if given)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    status = client.get(url).status_code
                    if want is None or status == want:
                        return
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; descendants left behind are killed by pid too."""
        if self.proc is None:
            return
        tree = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        for pid in tree[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if _stat_fields(pid) is not None:
                    os.kill(pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def read_line(child: Child, timeout: float) -> str:
    """The next line ``child`` writes to its stdout pipe, waiting at most ``timeout`` seconds."""
    assert child.proc is not None and child.proc.stdout is not None
    stream = child.proc.stdout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            line = stream.readline()
            if not line:
                raise RuntimeError(f"{child.name} closed its output: {child.log_tail()}")
            return line.decode("utf-8", "replace").strip()
        child.check_alive()
    raise TimeoutError(f"{child.name} wrote nothing for {timeout} s: {child.log_tail()}")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# -- numbers ---------------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max (and count) of durations given in seconds, in milliseconds."""
    ordered = sorted(values_s)
    return {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else math.nan,
    }


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, rule, *body])


# -- environment and results -----------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and (resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/")):
                if len(parts[1]) >= len(best):
                    best, kind = parts[1], parts[2]
    return kind


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the bridge's code had uncommitted changes (others edit it meanwhile)."""
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        state["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bridge"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.split("\n")
        state["bridge_uncommitted"] = [line[3:] for line in dirty if line.strip()]
    return state


def environment(server_cpus: set[int] | None, client_cpus: set[int] | None) -> dict[str, Any]:
    return {
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "cores": describe_cores(server_cpus, client_cpus),
        "server_loop": SERVER_LOOP,
        "server_http": SERVER_HTTP,
        "versions": {
            name: _version(name)
            for name in ("uvicorn", "starlette", "uvloop", "httptools", "websockets", "gunicorn", "flask", "twilio")
        },
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(_clean(payload), indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json_default(value: object) -> object:
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
