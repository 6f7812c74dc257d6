"""Console test data: a deterministic stream of the bridge's events, and a frozen clock.

Events are built in the bridge's wire shapes (see bridge/protocol.py) and applied through the cache's real
``apply``, so tests and benchmarks exercise the same path as a live stream.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge import protocol
from console.cache import Cache

NOW = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)
OUR_NUMBER = "+14155550100"
AGENT = "you"

BODIES = [
    "Hi, where is my order #{n}? It was supposed to arrive on Monday.",
    "Can I change the delivery address on order #{n}?",
    "The jacket I got is the wrong size, can I swap it?",
    "Thanks, that worked!",
    "Is the store on Market St open on Sunday?",
    "My package says delivered but it's not here 😟",
    "Could you send a replacement instead of a refund?",
    "Buenas, ¿dónde está mi pedido #{n}?",
]
REPLIES = [
    "Thanks for reaching out! Let me look into that for you.",
    "Got it — I'm checking order #{n} now.",
    "Sorry about that! A replacement is on its way.",
]
NAMES = ["Maya Chen", "Jordan Alvarez", "Priya Natarajan", None, "Sam O'Neill", None]


def frozen_clock() -> datetime:
    return NOW


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def customer(n: int) -> str:
    area = (415, 212, 312, 646, 206)[n // 10000 % 5]
    return f"+1{area}555{n % 10000:04d}"


def conversation_id(twilio_number: str, customer_number: str) -> str:
    return "CV" + hashlib.sha256(f"{twilio_number}|{customer_number}".encode()).hexdigest()[:32]


@dataclass
class EventLog:
    """Builds events with consecutive seqs, as the bridge's log would stream them."""

    seq: int = 0
    events: list[protocol.Event] = field(default_factory=list)
    _ids: int = 0

    def add(self, kind: str, ts: datetime, data: dict[str, Any]) -> protocol.Event:
        self.seq += 1
        event = protocol.Event(self.seq, kind, iso(ts), data)
        self.events.append(event)
        return event

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:032x}"

    def inbound(self, number: str, body: str, at: datetime, media: list[dict[str, str]] | None = None) -> str:
        cid = conversation_id(OUR_NUMBER, number)
        self.add(
            protocol.MESSAGE_RECEIVED,
            at,
            {
                "message_id": self._id("MI"),
                "message_sid": self._id("SM"),
                "conversation_id": cid,
                "twilio_number": OUR_NUMBER,
                "customer_number": number,
                "body": body,
                "media": media or [],
                "received_at": iso(at),
            },
        )
        return cid

    def outbound(
        self,
        number: str,
        body: str,
        at: datetime,
        agent: str = AGENT,
        status: str = "delivered",
        error: int | None = None,
    ) -> str:
        cid = conversation_id(OUR_NUMBER, number)
        message_id, sid = self._id("MO"), self._id("SM")
        self.add(
            protocol.MESSAGE_OUTBOUND,
            at,
            {
                "message_id": message_id,
                "conversation_id": cid,
                "twilio_number": OUR_NUMBER,
                "customer_number": number,
                "body": body,
                "media": [],
                "agent": agent,
                "command_id": self._id("c-"),
                "encoding": "GSM-7",
                "segments": 1,
                "status": "sending",
            },
        )
        self.add(
            protocol.MESSAGE_SUBMITTED,
            at,
            {"message_id": message_id, "message_sid": sid, "conversation_id": cid, "status": "queued"},
        )
        if status != "queued":
            self.add(
                protocol.MESSAGE_STATUS,
                at + timedelta(seconds=2),
                {
                    "message_sid": sid,
                    "message_id": message_id,
                    "conversation_id": cid,
                    "status": status,
                    "reported": status,
                    "error_code": error,
                    "error_message": "Unreachable destination handset" if error == 30003 else None,
                    "applied": True,
                },
            )
        return cid


def demo_events(conversations: int = 12, seed: int = 7) -> list[protocol.Event]:
    """A small, realistic morning: some answered, some waiting, a failure, an opt-out, an MMS."""
    rng = random.Random(seed)
    log = EventLog()
    start = NOW - timedelta(hours=26)
    for n in range(conversations):
        number = customer(100 + n * 7)
        at = start + timedelta(minutes=n * 97 + rng.randrange(30))
        log.inbound(number, BODIES[n % len(BODIES)].format(n=40000 + n * 13), at)
        if n % 3 != 2:
            failed = n == 4
            log.outbound(
                number,
                REPLIES[n % len(REPLIES)].format(n=40000 + n * 13),
                at + timedelta(minutes=3),
                status="undelivered" if failed else "delivered",
                error=30003 if failed else None,
            )
        if n % 4 == 0:
            log.inbound(number, "Thanks, that worked!", at + timedelta(minutes=9))
    log.inbound(
        customer(999),
        "Photo of the damage attached",
        NOW - timedelta(minutes=12),
        media=[
            {
                "url": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME0",
                "content_type": "image/jpeg",
            }
        ],
    )
    stop_cid = log.inbound(customer(998), "STOP", NOW - timedelta(minutes=40))
    log.add(
        protocol.OPTOUT_CHANGED,
        NOW - timedelta(minutes=40),
        {
            "conversation_id": stop_cid,
            "twilio_number": OUR_NUMBER,
            "customer_number": customer(998),
            "opted_out": True,
            "reason": "STOP",
        },
    )
    return log.events


def fill(cache: Cache, events: list[protocol.Event], batch: int = 5000) -> None:
    for start in range(0, len(events), batch):
        cache.apply(events[start : start + batch])


def big_history(conversations: int, messages: int, seed: int = 1) -> Iterator[list[protocol.Event]]:
    """``messages`` texts spread over ``conversations``, in batches of events (for the scale benchmark)."""
    rng = random.Random(seed)
    log = EventLog()
    start = NOW - timedelta(days=365)
    step = timedelta(days=365) / max(1, messages)
    for n in range(messages):
        who = customer(rng.randrange(conversations))
        at = start + step * n
        if rng.random() < 0.6:
            log.inbound(who, BODIES[n % len(BODIES)].format(n=n), at)
        else:
            log.outbound(who, REPLIES[n % len(REPLIES)].format(n=n), at, status="queued")
        if len(log.events) >= 20000:
            yield log.events
            log.events = []
    if log.events:
        yield log.events
