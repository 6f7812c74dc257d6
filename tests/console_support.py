"""Console test data: a deterministic stream of the bridge's events, and a frozen clock.

Events are built in the bridge's wire shapes (see bridge/protocol.py) and applied through the cache's real
``apply``, so tests and benchmarks exercise the same path as a live stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge import protocol
from console.cache import Cache
from console.client import BridgeLink, LinkState

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
    ids: str = "event log"
    """Seeds the ids, random where Twilio's and the bridge's are (a cache's id index behaves very differently with
    ids that count up: tests/bench/profile_random_ids.py), and the same in every run. A second log adding to a cache
    another filled needs a seed of its own."""

    def __post_init__(self) -> None:
        self._ids = random.Random(self.ids)

    def add(self, kind: str, ts: datetime, data: dict[str, Any]) -> protocol.Event:
        self.seq += 1
        event = protocol.Event(self.seq, kind, iso(ts), data)
        self.events.append(event)
        return event

    def _id(self, prefix: str) -> str:
        """An id of Twilio's (a SID) or the text's: 32 random hex digits."""
        return f"{prefix}{self._ids.getrandbits(128):032x}"

    def _minted(self, prefix: str, at: datetime) -> str:
        """An id the bridge mints (``bridge.types.new_id``): the time in milliseconds, then 20 random hex digits."""
        return f"{prefix}{int(at.timestamp() * 1000):012x}{self._ids.getrandbits(80):020x}"

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
        message_id, sid = self._minted("OB", at), self._id("SM")
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


@dataclass
class CallLog:
    """Builds the voice events of bridge/protocol.py on an EventLog: whole-call snapshots, voicemails, presence."""

    log: EventLog
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)

    def start(
        self,
        number: str,
        at: datetime,
        queue: str = "support",
        caller_name: str | None = None,
        city: str | None = "San Francisco",
        state: str | None = "CA",
        country: str | None = "US",
    ) -> str:
        sid = self.log._id("CA")
        self.calls[sid] = {
            "call_sid": sid,
            "conversation_id": conversation_id(OUR_NUMBER, number),
            "twilio_number": OUR_NUMBER,
            "customer_number": number,
            "caller_name": caller_name,
            "from_city": city,
            "from_state": state,
            "from_country": country,
            "queue": queue,
            "state": "queued",
            "agent": None,
            "on_hold": False,
            "muted": False,
            "transfer": None,
            "offered_to": None,
            "offer_expires_at": None,
            "queued_at": iso(at),
            "answered_at": None,
            "ended_at": None,
            "outcome": None,
            "agents": [],
            "reason": None,
        }
        self.emit(sid, "queued", at)
        return sid

    def update(self, sid: str, change: str, at: datetime, **fields: Any) -> protocol.Event:
        call = self.calls[sid]
        call.update(fields)
        return self.emit(sid, change, at)

    def emit(self, sid: str, change: str, at: datetime) -> protocol.Event:
        return self.log.add(protocol.CALL_UPDATED, at, {**self.calls[sid], "change": change})

    def answer(self, sid: str, agent: str, at: datetime) -> None:
        """Accepted by ``agent``, whose phone rings for 5 s, then connected (and the agent marked busy)."""
        self.update(sid, "accepted", at, state="ringing_agent", agent=agent, queue=None)
        self.presence(agent, "busy", "on_call", at, sid)
        self.update(
            sid,
            "connected",
            at + timedelta(seconds=5),
            state="connected",
            answered_at=iso(at + timedelta(seconds=5)),
            agents=[*self.calls[sid]["agents"], agent],
        )

    def end(self, sid: str, at: datetime, outcome: str = "answered") -> None:
        self.update(sid, "ended", at, state="ended", ended_at=iso(at), outcome=outcome, on_hold=False)

    def presence(self, agent: str, presence: str, reason: str, at: datetime, sid: str | None = None) -> None:
        self.log.add(
            protocol.AGENT_PRESENCE,
            at,
            {"agent": agent, "presence": presence, "previous": None, "reason": reason, "call_sid": sid, "at": iso(at)},
        )

    def voicemail(self, sid: str, at: datetime, duration: int = 42, reason: str = "longest wait") -> str:
        call = self.calls[sid]
        vid = self.log._minted("VM", at)
        self.log.add(
            protocol.VOICEMAIL_RECORDED,
            at,
            {
                "voicemail_id": vid,
                "call_sid": sid,
                "conversation_id": call["conversation_id"],
                "twilio_number": OUR_NUMBER,
                "customer_number": call["customer_number"],
                "queue": call["queue"] or "support",
                "recording_sid": self.log._id("RE"),
                "recording_url": f"https://api.twilio.com/2010-04-01/Accounts/AC0/Recordings/RE{vid[2:]}",
                "duration": duration,
                "reason": reason,
                "at": iso(at),
            },
        )
        return vid


def calls_events(
    base: list[protocol.Event] | None = None, waiting: int = 3, mine: str | None = "on_hold"
) -> list[protocol.Event]:
    """Voice after the demo's texts: callers waiting (one with a name, one from abroad), this agent's call in the
    state ``mine`` (or none), a colleague's call, an earlier answered call, a voicemail and the queue's last hour."""
    log = EventLog()
    log.seq = base[-1].seq if base else 0
    calls = CallLog(log)
    for agent in ("you", "ana", "bob", "chen", "dee"):
        calls.presence(agent, "available", "connected", NOW - timedelta(hours=2))
    calls.presence("chen", "away", "agent", NOW - timedelta(hours=1))
    earlier = calls.start(customer(100), NOW - timedelta(minutes=75), caller_name="Maya Chen")
    calls.answer(earlier, "ana", NOW - timedelta(minutes=74))
    calls.end(earlier, NOW - timedelta(minutes=70, seconds=48))
    calls.presence("ana", "available", "wrapped_up", NOW - timedelta(minutes=70))
    missed = calls.start(customer(107), NOW - timedelta(minutes=50), city="Chicago", state="IL")
    calls.update(missed, "voicemail_started", NOW - timedelta(minutes=45), state="voicemail", queue="support")
    calls.voicemail(missed, NOW - timedelta(minutes=44), duration=42)
    calls.end(missed, NOW - timedelta(minutes=44), outcome="voicemail")
    # A burst in the last hour for the sparkline: calls that came and were answered.
    for n in range(6):
        sid = calls.start(customer(300 + n), NOW - timedelta(minutes=40 - n * 4))
        calls.answer(sid, "bob", NOW - timedelta(minutes=38 - n * 4))
        calls.end(sid, NOW - timedelta(minutes=35 - n * 4))
        calls.presence("bob", "available", "wrapped_up", NOW - timedelta(minutes=34 - n * 4))
    colleague = calls.start(customer(410), NOW - timedelta(minutes=9), city="Seattle", state="WA")
    calls.answer(colleague, "bob", NOW - timedelta(minutes=8))
    if mine is not None:
        sid = calls.start(customer(114), NOW - timedelta(minutes=6), caller_name="Jordan Alvarez")
        if mine == "ringing_agent":  # accepted, your phone still ringing
            calls.update(sid, "accepted", NOW - timedelta(seconds=3), state="ringing_agent", agent="you", queue=None)
            calls.presence("you", "busy", "on_call", NOW - timedelta(seconds=3), sid)
        else:
            calls.answer(sid, "you", NOW - timedelta(minutes=5, seconds=30))
        if mine == "on_hold":
            calls.update(sid, "held", NOW - timedelta(seconds=47), state="on_hold", on_hold=True)
    callers = [
        (customer(121), "Priya Natarajan", "New York", "NY", "US", "support"),
        ("+442079460958", None, None, None, "GB", "support"),
        (customer(135), None, "Austin", "TX", "US", "billing"),
        (customer(142), None, None, None, None, "support"),
    ]
    for n in range(waiting):
        number, name, city, state, country, queue = callers[n % len(callers)]
        if n >= len(callers):
            number = customer(500 + n)
        at = NOW - timedelta(seconds=252 - n * 61) if n < 4 else NOW - timedelta(seconds=max(1, 30 - n % 30))
        calls.start(number, at, queue=queue, caller_name=name, city=city, state=state, country=country)
    return log.events


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


class FakeLink(BridgeLink):
    """A bridge link with no bridge: connected at once as ``agent``; records the commands the console makes, answers
    questions (``list_agents``, ``list_queues``) from ``replies``, and delivers events and results when told to.

    For pilot tests: ``SwitchboardApp(cache, config, link_factory=FakeLink.factory())``.
    """

    def __init__(self, app: Any, agent: str = AGENT) -> None:
        super().__init__(
            "http://bridge.invalid",
            "token",
            app.cache,
            on_status=app.link_status,
            on_events=app.link_events,
            on_result=app.link_result,
            on_signal=app.link_signal,
            fetch_head=False,
        )
        self.app = app
        self.me = agent
        self.sent: list[protocol.Command] = []
        """Commands queued by the console (``command()``), in order."""
        self.asked: list[protocol.Command] = []
        """Questions sent straight away (``send_now()``)."""
        self.replies: dict[str, dict[str, Any]] = {}
        """The data answered to a question, by command name."""
        self._ids = itertools.count(1)

    @classmethod
    def factory(cls, agent: str = AGENT) -> Callable[[Any], FakeLink]:
        return lambda app: cls(app, agent)

    def start(self) -> None:
        self._set(LinkState.CONNECTED, "Connected.", retry_at=None, agent=self.me, ever_connected=True)

    def go_offline(self) -> None:
        self._set(LinkState.RECONNECTING, "Lost the connection to the bridge.", retry_at=None)

    async def aclose(self) -> None:
        self._worker.shutdown(wait=False)

    async def command(self, name: str, args: dict[str, Any], conversation_id: str | None = None) -> str:
        command = protocol.Command(f"c-{next(self._ids)}", name, args)
        self.sent.append(command)
        return command.id

    async def send_now(self, cmd: protocol.Command) -> None:
        self.asked.append(cmd)
        data = self.replies.get(cmd.command)
        if data is not None:
            result = protocol.Result(cmd.id, True, data)
            asyncio.get_running_loop().call_soon(self.app.link_result, result)

    def answer(self, command: protocol.Command, data: dict[str, Any] | None = None) -> None:
        """The bridge carried ``command`` out."""
        self.app.link_result(protocol.Result(command.id, True, data or {}))

    def refuse(self, command: protocol.Command, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.app.link_result(protocol.Result.failure(command.id, code, message, data))

    def deliver(self, events: list[protocol.Event]) -> None:
        """Live events from the bridge: into the cache, then to the console."""
        applied = self.cache.apply(events)
        self.app.link_events(applied)
