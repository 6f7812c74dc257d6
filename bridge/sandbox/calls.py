"""Voice resources as the sandbox holds them: calls, queues, conferences, participants, recordings, parties."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import phonenumbers

from bridge.sandbox.rest import API_ROOT, API_VERSION, rfc2822, rfc2822_or_none

if TYPE_CHECKING:
    from bridge.sandbox.interpreter import Source
    from bridge.sandbox.voice import CallbackLane

VOICE_REQUEST = "voice-request"
CALL_STATUS = "call-status"
CONFERENCE_STATUS = "conference-status"
RECORDING_STATUS = "recording-status"

ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
CALL_EVENTS = ("initiated", "ringing", "answered", "completed")
# Which subscription (`statusCallbackEvent` word) each conference event belongs to.
CONFERENCE_EVENTS = {
    "conference-start": "start",
    "conference-end": "end",
    "participant-join": "join",
    "participant-leave": "leave",
    "participant-mute": "mute",
    "participant-unmute": "mute",
    "participant-hold": "hold",
    "participant-unhold": "hold",
    "participant-modify": "modify",
    "announcement-end": "announcement",
    "announcement-fail": "announcement",
}
DEFAULT_CONFERENCE_EVENTS = frozenset({"start", "end"})


# --- the parties on the far end -----------------------------------------------------------------------------


@dataclass(slots=True)
class CallerBehaviour:
    """A simulated person calling the team: how long they wait, talk, and what they say to a voicemail."""

    patience: float | None
    """Simulated seconds in a queue before hanging up; None: forever."""
    talk: float | None
    """Simulated seconds of conversation once someone is on the line; None: until hung up on."""
    voicemail: float
    """Simulated seconds spoken into ``<Record>``, after which they hang up."""
    digits: str = ""
    """Keys pressed at the next ``<Gather>``; empty: they press nothing."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "caller",
            "patience": self.patience,
            "talk": self.talk,
            "voicemail": self.voicemail,
            "digits": self.digits,
        }


@dataclass(slots=True)
class PhoneBehaviour:
    """An agent's phone (number, ``sip:`` or ``client:``): rings, then answers or not, and stays on until hung up."""

    answer: bool = True
    ring: float = 4.0
    """Simulated seconds of ringing before it answers."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": "phone", "answer": self.answer, "ring": self.ring}


Party = CallerBehaviour | PhoneBehaviour


def formatted(address: str) -> str:
    """Twilio's ``to_formatted`` / ``from_formatted``: national format for NANP numbers, else as given."""
    try:
        parsed = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException:
        return address
    if parsed.country_code == 1:
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


# --- resources ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    """One call leg, as the sandbox holds it; ``to_json`` gives Twilio's representation."""

    sid: str
    account_sid: str
    to: str
    from_: str
    direction: str
    """``inbound``, ``outbound-api`` (REST, participants) or ``outbound-dial`` (a ``<Dial>``'s child leg)."""
    status: str
    date_created: datetime
    date_updated: datetime
    party: Party
    parent_call_sid: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    timeout: float = 60.0
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_events: frozenset[str] = frozenset({"completed"})
    sequence: int = 0
    answered_at: float | None = None
    ended_at: float | None = None
    verb: str = ""
    """The TwiML verb the call is on (``Say``, ``Enqueue``, ``Dial``…), for ``GET /sandbox/calls``."""
    hearing: str = ""
    """What the caller hears inside that verb (wait music, hold music, an announcement…)."""
    doc_url: str | None = None
    """The URL of the TwiML document being executed: relative URLs in it resolve against this."""
    member: Member | None = None
    participant: Participant | None = None
    bridge: Bridge | None = None
    children: list[Call] = field(default_factory=list)
    phase: asyncio.Task[None] | None = None
    redirect_to: Source | None = None
    hangup_status: str | None = None
    leaving: str = ""
    """Why the current phase was stopped: ``hangup`` or ``redirected`` (verbs clean up accordingly)."""
    answer: asyncio.Future[bool] | None = None
    """Resolved True when the far end answers, False when the call ends without an answer."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    talking: bool = False
    errors: list[str] = field(default_factory=list)
    timers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    lane: CallbackLane | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def uri(self) -> str:
        return f"{API_ROOT}/Accounts/{self.account_sid}/Calls/{self.sid}.json"

    def to_json(self, duration: int | None) -> dict[str, Any]:
        """Every field of the OpenAPI ``api.v2010.account.call`` schema."""
        base = f"{API_ROOT}/Accounts/{self.account_sid}/Calls/{self.sid}"
        return {
            "sid": self.sid,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "parent_call_sid": self.parent_call_sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": formatted(self.to),
            "from": self.from_,
            "from_formatted": formatted(self.from_),
            "phone_number_sid": None,
            "status": self.status,
            "start_time": rfc2822_or_none(self.start_time),
            "end_time": rfc2822_or_none(self.end_time),
            "duration": None if duration is None else str(duration),
            "price": None,
            "price_unit": "USD",
            "direction": self.direction,
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": self.uri,
            "subresource_uris": {
                "notifications": f"{base}/Notifications.json",
                "recordings": f"{base}/Recordings.json",
                "payments": f"{base}/Payments.json",
                "events": f"{base}/Events.json",
                "siprec": f"{base}/Siprec.json",
                "streams": f"{base}/Streams.json",
                "transcriptions": f"{base}/Transcriptions.json",
                "user_defined_message_subscriptions": f"{base}/UserDefinedMessageSubscriptions.json",
                "user_defined_messages": f"{base}/UserDefinedMessages.json",
            },
        }


@dataclass(eq=False)
class Queue:
    sid: str
    account_sid: str
    friendly_name: str
    max_size: int
    date_created: datetime
    date_updated: datetime
    members: list[Member] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"{API_ROOT}/Accounts/{self.account_sid}/Queues/{self.sid}.json"


@dataclass(eq=False)
class Member:
    """A call waiting in a queue (or just bridged out of it, until its ``<Enqueue>`` verb finishes)."""

    call: Call
    queue: Queue
    date_enqueued: datetime
    since: float
    action: str | None
    method: str
    done: asyncio.Future[str]
    """Resolved with how the call left the queue: ``leave``, ``bridged``, ``hangup``, ``redirected``."""
    bridge: Bridge | None = None
    waited: int = 0
    """Simulated seconds spent in the queue, fixed when the call leaves it (QueueTime)."""
    dequeue_url: str | None = None
    dequeue_method: str = "POST"
    dequeuer: str | None = None


@dataclass(eq=False)
class Bridge:
    """Two calls talking through a ``<Dial>``: the dialer's verb and the callee wait for ``ended``."""

    dialer: Call
    callee: Call
    since: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class Conference:
    sid: str
    account_sid: str
    friendly_name: str
    status: str
    """``init`` (waiting for a moderator or a second participant), ``in-progress``, ``completed``."""
    date_created: datetime
    date_updated: datetime
    participants: list[Participant] = field(default_factory=list)
    subscriptions: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    """Status callback URL → (method, subscribed words); every participant's subscription is kept."""
    sequence: int = 0
    reason_ended: str | None = None
    call_sid_ending: str | None = None
    label_ending: str | None = None
    ever_joined: bool = False
    lane: CallbackLane | None = None

    @property
    def uri(self) -> str:
        return f"{API_ROOT}/Accounts/{self.account_sid}/Conferences/{self.sid}.json"

    def connected(self) -> list[Participant]:
        return [p for p in self.participants if p.status == "connected"]

    def to_json(self) -> dict[str, Any]:
        base = f"{API_ROOT}/Accounts/{self.account_sid}/Conferences/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "api_version": API_VERSION,
            "friendly_name": self.friendly_name,
            "region": "us1",
            "sid": self.sid,
            "status": self.status,
            "uri": self.uri,
            "subresource_uris": {
                "participants": f"{base}/Participants.json",
                "recordings": f"{base}/Recordings.json",
            },
            "reason_conference_ended": self.reason_ended,
            "call_sid_ending_conference": self.call_sid_ending,
        }


@dataclass(eq=False)
class Participant:
    call: Call
    conference: Conference
    label: str | None
    muted: bool
    start_conference_on_enter: bool
    end_conference_on_exit: bool
    status: str
    """``queued``/``ringing`` (REST-created, not answered yet), ``connected``, ``complete``, ``failed``."""
    date_created: datetime
    date_updated: datetime
    hold: bool = False
    hold_url: str | None = None
    hold_method: str = "GET"
    wait_url: str | None = None
    wait_method: str = "POST"
    announce_url: str | None = None
    announce_method: str = "POST"
    done: asyncio.Future[str] | None = None
    """Resolved with why the participant left: ``left``, ``kicked``, ``conference-ended``."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever hold, an announcement or the conference's state changes: music loops look again."""

    @property
    def uri(self) -> str:
        return (
            f"{API_ROOT}/Accounts/{self.conference.account_sid}/Conferences/{self.conference.sid}"
            f"/Participants/{self.call.sid}.json"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "account_sid": self.conference.account_sid,
            "call_sid": self.call.sid,
            "label": self.label,
            "call_sid_to_coach": None,
            "coaching": False,
            "conference_sid": self.conference.sid,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "end_conference_on_exit": self.end_conference_on_exit,
            "muted": self.muted,
            "hold": self.hold,
            "start_conference_on_enter": self.start_conference_on_enter,
            "status": self.status,
            "queue_time": "0",
            "uri": self.uri,
        }


@dataclass(frozen=True, slots=True)
class Recording:
    sid: str
    call_sid: str
    duration: int
    date_created: datetime
    url: str
