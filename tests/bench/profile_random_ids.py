"""What Twilio's random message ids cost the cache, against the sequential ones the console benchmark generates.

    uv run python -m tests.bench.profile_random_ids            # 1M messages, then 100k inserts, 3 rounds (~1 min)

The cache keeps ``messages.id`` unique, and a real id is random: a text's is its Twilio SID, a reply's and a note's
"OB…"/"NT…" and 32 random hex digits. ``bench_console`` builds its 1M-message cache from ``EventLog``, whose ids
count up, so its inserts append to the id index where a real cache's land on random pages of it. This measures the
difference on the cache's own schema (``Cache``'s migrations): a table of 1M texts with random ids, then 100k more
inserted in one transaction (as the catch-up helper does) with random ids, then with sequential ones, alternating,
each rolled back. The conversations are random in both, as the catch-up's are.

Measured 2026-11-26: with every id in a unique index (up to m006), 2.20 / 2.31 / 2.19 s with random ids against
1.12 / 0.98 / 0.89 s with sequential ones; since m007 (texts in leave the id index), 0.93 / 0.80 s against
0.81 / 0.74 s. Since then ``bench_console``'s ids are random too (``EventLog``).
"""

from __future__ import annotations

import argparse
import random
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridge.types import conversation_id
from console.cache import _INBOUND_INSERT, Cache
from console.stream import CATCH_UP_CACHE_KIB

Row = tuple[Any, ...]


def texts(count: int, conversations: Sequence[str], new_id: Callable[[int], str], rng: random.Random) -> list[Row]:
    """Rows for ``_INBOUND_INSERT``: (id, sid, conversation_id, body, media, at, seq)."""
    rows = []
    for n in range(count):
        message_id = new_id(n)
        body = f"Hello, where is my order #{n}? It has not arrived yet."
        rows.append((message_id, message_id, rng.choice(conversations), body, "[]", "2026-11-26T10:00:00.000Z", n))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile_random_ids", description=description)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--inserts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(5)
    conversations = [conversation_id("+14155550100", f"+1312555{n:04d}") for n in range(20_000)]
    with tempfile.TemporaryDirectory(prefix="profile-random-ids-") as tmp:
        cache = Cache(Path(tmp) / "cache.db")
        conn = cache.conn()
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(_INBOUND_INSERT, texts(args.messages, conversations, lambda n: twilio_sid(), rng))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"{args.messages:,} texts with random ids in {time.perf_counter() - started:.1f} s", flush=True)
        conn.execute(f"PRAGMA cache_size = -{CATCH_UP_CACHE_KIB}")  # as the catch-up helper sets it
        base = f"{rng.randrange(16**8):08x}"  # "SZ…" sorts after every "SM…": these append
        kinds: dict[str, Callable[[int], str]] = {
            "random ids (Twilio's)": lambda n: twilio_sid(),
            "sequential ids (bench_console's)": lambda n: f"SZ{base}{n:024x}",
        }
        for round_ in range(args.rounds):
            for label, new_id in kinds.items():
                rows = texts(args.inserts, conversations, new_id, rng)
                conn.execute("BEGIN")
                started = time.perf_counter()
                conn.executemany(_INBOUND_INSERT, rows)
                seconds = time.perf_counter() - started
                conn.execute("ROLLBACK")
                print(f"round {round_ + 1}: {args.inserts:,} inserts, {label}: {seconds:.2f} s", flush=True)
        cache.close()
    return 0


def twilio_sid() -> str:
    return "SM" + secrets.token_hex(16)


if __name__ == "__main__":
    raise SystemExit(main())
