"""The stream's wire format: the frames a bridge and its consoles exchange over `/v1/stream` (standard library only).

Version 1. Every frame is one JSON object in one WebSocket text message.

Bridge → console
    ``{"seq": 42, "type": "message.received", "ts": "2026-11-24T05:00:00.123Z", "data": {...}}``
        An event from the log. ``seq`` is gap-free and strictly increasing; ``type`` is one of ``EVENT_TYPES``.
    ``{"type": "events", "events": [{"seq": 42, ...}, {"seq": 43, ...}]}``
        Only to a console that connected with ``batch=1``: consecutive events (each an event frame as above) in
        one message of at most ``REPLAY_BATCH_BYTES``. A 100k-event catch-up is ~150 messages instead of 100,000;
        live, the events committed together (a busy moment's texts) go together. An event too large to share a
        message comes as a frame of its own.
    ``{"type": "caught_up", "cursor": 42, "agent": "ana"}``
        Sent once, after every event with ``seq > after`` has been replayed; live events follow. ``agent`` is the
        name the token belongs to, so a console knows which conversations are its own.
    ``{"type": "result", "id": "c-1", "ok": true, "data": {...}}``
    ``{"type": "result", "id": "c-1", "ok": false, "error": {"code": "opted_out", "message": "..."}}``
        The answer to a command, by the command's id. Resending an id returns the first answer.
    ``{"type": "signal", "agent": "ana", "conversation_id": "CV...", "signal": "typing"}``
        Ephemeral presence (viewing, typing, idle): relayed to the other consoles, never logged.
    ``{"type": "error", "code": "bad_frame", "message": "..."}``
        A frame the bridge could not read. The connection stays open.

Console → bridge
    ``{"type": "command", "id": "c-1", "command": "send_sms", "args": {...}}``
        ``id`` is chosen by the console (1–128 printable characters) and is the command's idempotency key.
    ``{"type": "signal", "conversation_id": "CV...", "signal": "typing"}``

Connect with ``GET /v1/stream?after=<seq>`` (add ``&batch=1`` to take events in ``events`` frames) and
``Authorization: Bearer <agent token>``. A missing or wrong token is refused before anything is sent (HTTP 403
on the upgrade; close code 4401 once open, e.g. on revocation). A console whose send queue overflows is closed
with code 4408 and resumes from its cursor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

VERSION: Final = 1

# Event types in the log.
MESSAGE_RECEIVED: Final = "message.received"
"""An inbound text or MMS. data: message_id, message_sid, conversation_id, twilio_number, customer_number, body,
media [{url, content_type}], num_segments, received_at, and Twilio's geo fields when sent."""
MESSAGE_OUTBOUND: Final = "message.outbound"
"""An agent's reply, recorded before Twilio is called. data: message_id, conversation_id, twilio_number,
customer_number, body, media, agent, command_id, encoding, segments, status ("sending")."""
MESSAGE_SUBMITTED: Final = "message.submitted"
"""Twilio accepted an outbound message. data: message_id, message_sid, conversation_id, status."""
MESSAGE_REJECTED: Final = "message.rejected"
"""Twilio (or the bridge) refused an outbound message. data: message_id, conversation_id, error_code,
error_message, hint."""
MESSAGE_STATUS: Final = "message.status"
"""A delivery status callback. data: message_sid, message_id (null if not yet known), conversation_id, status
(the message's status after applying precedence), reported (what this callback said), error_code,
error_message, applied (false if it arrived before the message was recorded or lost to a higher status)."""
OPTOUT_CHANGED: Final = "optout.changed"
"""A customer opted out of or back into texts from one number. data: conversation_id, twilio_number,
customer_number, opted_out, reason."""
CONVERSATION_ASSIGNED: Final = "conversation.assigned"
"""A conversation's assignee changed. data: conversation_id, assignee (agent name or null: unassigned), previous
(agent name or null), by (the agent who assigned or claimed). A conversation starts unassigned, with no event."""
CONVERSATION_STATUS: Final = "conversation.status"
"""A conversation's status changed. data: conversation_id, status (one of CONVERSATION_STATUSES), snoozed_until
(ISO 8601 UTC with milliseconds when status is "snoozed", else null), previous (the status before), by (the agent,
or null when the bridge changed it), reason: "agent" (set_status), "snooze ended" (the bridge woke it when
snoozed_until passed), "customer wrote" (an inbound text reopened a resolved or snoozed conversation; this event
follows that text's message.received in the same commit). A conversation starts "open", with no event."""
NOTE_ADDED: Final = "note.added"
"""An agent's internal note on a conversation (never sent to the customer). data: note_id ("NT" + 32 hex digits),
conversation_id, body, agent, at (ISO 8601 UTC with milliseconds), call_sid (the call a wrap-up note is the
disposition of; absent or null for other notes)."""

# Voice (issue #4). A call is identified by the caller's CallSid ("CA" + 32 hex digits); it belongs to the same
# conversation as that customer's texts to that number.
CALL_UPDATED: Final = "call.updated"
"""A call's state changed. data is the whole call as it now stands (a console upserts it by call_sid) plus
``change``, what just happened (one of CALL_CHANGES):
call_sid, conversation_id, twilio_number, customer_number, caller_name (or null), from_city, from_state,
from_country (Twilio's geo fields or null), queue (the queue's name, or null once answered from it),
state (one of CALL_STATES), agent (the agent on the call, the one being rung, or null), on_hold (bool),
muted (the agent's leg, bool), transfer (null, or {mode: "cold"|"warm", target_kind: "agent"|"queue"|"number",
target: name or E.164, state: "ringing"|"consulting"|"failed"|"completed"|"cancelled", by}),
offered_to (agent offered the call by auto-offer, or null), offer_expires_at (ISO 8601 UTC ms, or null),
queued_at, answered_at, ended_at (ISO 8601 UTC ms, or null), outcome (null while live; one of CALL_OUTCOMES),
agents (every agent who talked to the caller, in order), reason (a sentence for the timeline, or null)."""
VOICEMAIL_RECORDED: Final = "voicemail.recorded"
"""A caller left a voicemail. data: voicemail_id ("VM" + 32 hex digits), call_sid, conversation_id, twilio_number,
customer_number, queue, recording_sid, recording_url (Twilio's, append ".mp3" or ".wav" to fetch), duration
(seconds, int), reason ("longest wait" | "closed": why the caller was sent to voicemail), at."""
AGENT_PRESENCE: Final = "agent.presence"
"""An agent's presence changed. data: agent, presence (one of PRESENCES), previous, reason (one of
PRESENCE_REASONS), call_sid (the call that made them busy, or null), at (ISO 8601 UTC ms)."""

EVENT_TYPES: Final = frozenset(
    {
        MESSAGE_RECEIVED,
        MESSAGE_OUTBOUND,
        MESSAGE_SUBMITTED,
        MESSAGE_REJECTED,
        MESSAGE_STATUS,
        OPTOUT_CHANGED,
        CONVERSATION_ASSIGNED,
        CONVERSATION_STATUS,
        NOTE_ADDED,
        CALL_UPDATED,
        VOICEMAIL_RECORDED,
        AGENT_PRESENCE,
    }
)

CONVERSATION_STATUSES: Final = frozenset({"open", "pending", "resolved", "snoozed"})
STATUS_REASONS: Final = frozenset({"agent", "snooze ended", "customer wrote"})

CALL_STATES: Final = frozenset(
    {
        "queued",  # waiting in a queue, hearing the wait music
        "ringing_agent",  # accepted (or transferred to an agent): the agent's phone is ringing
        "connected",  # caller and agent talk in the call's conference
        "on_hold",  # the caller hears hold music; the agent may consult a transfer target
        "consulting",  # warm transfer: caller on hold, agent talking to the target
        "transferring",  # cold transfer: the target's phone is ringing, the caller hears hold music
        "voicemail",  # the caller is recording a voicemail
        "ended",  # the caller's call is over; see outcome
    }
)
CALL_CHANGES: Final = frozenset(
    {
        "queued",  # greeted and enqueued (also: back at the front of the queue after a failed handoff)
        "offered",  # auto-offer rings an available agent's console (offered_to, offer_expires_at)
        "offer_declined",  # the offered agent declined, or the offer timed out
        "accepted",  # an agent took the call; their phone is being dialled
        "agent_no_answer",  # the agent's phone did not answer: the caller is back at the front of the queue
        "connected",  # the agent answered and is talking to the caller
        "held",
        "unheld",
        "muted",
        "unmuted",
        "transfer_started",
        "transfer_answered",  # warm transfer: the target answered; the agent and the target talk (state consulting)
        "transfer_failed",  # the target did not answer: cold → front of the queue; warm → back to the agent
        "transfer_completed",  # the target is now the agent on the call (or the call is in another queue)
        "transfer_cancelled",  # warm transfer cancelled: the agent is back with the caller
        "voicemail_started",
        "ended",
    }
)
CALL_OUTCOMES: Final = frozenset(
    {
        "answered",  # talked to at least one agent
        "abandoned",  # the caller hung up before anyone answered
        "agent_hung_up",  # the agent who took it hung up before anyone talked to the caller (their phone still rang)
        "voicemail",  # left a voicemail
        "transferred_out",  # cold-transferred to an external number
        "failed",  # Twilio or the bridge could not carry the call
    }
)
PRESENCES: Final = frozenset({"available", "busy", "away", "offline"})
PRESENCE_REASONS: Final = frozenset(
    {
        "agent",  # set_presence
        "on_call",  # took or was given a call
        "wrap_up",  # the call ended; busy until wrap_up
        "wrapped_up",  # wrap_up done: back to available
        "released",  # a call they were being given went elsewhere before they talked to the caller (their phone did
        # not answer, the transfer was cancelled, the caller hung up): available again
        "connected",  # a console connected (offline → available)
        "disconnected",  # no console for longer than the grace period
    }
)

# Control frame types.
CAUGHT_UP: Final = "caught_up"
EVENTS: Final = "events"
RESULT: Final = "result"
SIGNAL: Final = "signal"
ERROR: Final = "error"
COMMAND: Final = "command"

SIGNALS: Final = frozenset({"viewing", "typing", "idle"})

# Commands.
SEND_SMS: Final = "send_sms"
"""args: conversation_id or to (+ from_number when several numbers), body, media_urls (optional list).
result data: message_id, message_sid, status, encoding, segments, conversation_id."""
ASSIGN: Final = "assign"
"""args: conversation_id, agent (an agent's name, or null to unassign); both required, nothing else.
result data: conversation_id, assignee, previous, changed (false: already so, and no event was logged).
Refusals: bad_args, unknown_conversation, unknown_agent, agent_revoked."""
CLAIM: Final = "claim"
"""args: conversation_id. Assigns the conversation to the calling agent; result and refusals as for assign."""
SET_STATUS: Final = "set_status"
"""args: conversation_id, status (one of CONVERSATION_STATUSES), until (ISO 8601 UTC, e.g.
"2026-11-24T17:00:00Z": required for "snoozed", later than now and at most MAX_SNOOZE_DAYS ahead; absent or null
otherwise). result data: conversation_id, status, snoozed_until, previous, changed.
Refusals: bad_args, unknown_conversation, until_in_past, until_too_far."""
ADD_NOTE: Final = "add_note"
"""args: conversation_id, body (1–MAX_NOTE_CHARS characters, not only whitespace). Internal: never sent to Twilio.
result data: note_id, conversation_id, at. Refusals: bad_args, empty_body, body_too_long, unknown_conversation."""
LIST_AGENTS: Final = "list_agents"
"""args: none ({}). result data: agents [{name, active, presence, has_phone}], by name; never tokens or phones.
Logs no event. Like every command, a resent id gets its first answer: ask with a fresh id for the current list."""

# Voice commands. Every refusal carries a sentence an agent can act on; codes are listed per command.
ACCEPT_CALL: Final = "accept_call"
"""args: call_sid (or null/absent: the call waiting longest in any queue). The first agent to accept wins; the
bridge dials the agent's phone into the call's conference, and moves the caller in when the agent answers.
result data: call_sid, conversation_id, state ("ringing_agent"). Refusals: bad_args, no_calls_waiting,
unknown_call, already_taken (data: agent), call_ended, no_phone (set one with `switchboard-bridge agents set-phone`),
agent_busy (already on a call or in wrap-up)."""
HOLD_CALL: Final = "hold_call"
"""args: call_sid, hold (bool). result data: call_sid, on_hold, changed. Refusals: bad_args, unknown_call,
not_your_call, not_connected."""
MUTE_CALL: Final = "mute_call"
"""args: call_sid, muted (bool): mutes the agent's own leg. result data: call_sid, muted, changed. Refusals as for
hold_call."""
TRANSFER_CALL: Final = "transfer_call"
"""args: call_sid, mode ("cold" | "warm"), target ({"agent": name} | {"queue": name} | {"number": text}; warm
takes an agent or a number). The number is read with the team's region and must be a valid phone number.
result data: call_sid, transfer (as in call.updated). Refusals: bad_args, unknown_call, not_your_call,
not_connected, unknown_agent, unknown_queue, bad_number (message says why), no_phone (the target agent has none),
agent_busy, transfer_in_progress."""
COMPLETE_TRANSFER: Final = "complete_transfer"
"""args: call_sid. Warm transfer: the agent leaves; caller and target stay connected. result data: call_sid.
Refusals: bad_args, unknown_call, not_your_call, no_transfer (nothing to complete: not consulting)."""
CANCEL_TRANSFER: Final = "cancel_transfer"
"""args: call_sid. Warm transfer: the target is hung up and the agent is back with the caller (caller unheld).
result data: call_sid. Refusals as for complete_transfer."""
HANG_UP: Final = "hang_up"
"""args: call_sid. Ends the call for the caller too; the agent enters wrap-up. result data: call_sid.
Refusals: bad_args, unknown_call, not_your_call, call_ended, transfer_in_progress (the agent's phone left a warm
transfer whose target is still ringing: the target takes the caller)."""
WRAP_UP: Final = "wrap_up"
"""args: call_sid, note (the disposition: 1–MAX_NOTE_CHARS characters). Adds the note to the conversation
(note.added, with call_sid) and makes the agent available again. result data: call_sid, note_id.
Refusals: bad_args, empty_body, body_too_long, unknown_call, not_in_wrap_up."""
DECLINE_CALL: Final = "decline_call"
"""args: call_sid. Declines an auto-offered call; it is offered to the next agent. result data: call_sid.
Refusals: bad_args, unknown_call, not_offered."""
SET_PRESENCE: Final = "set_presence"
"""args: presence ("available" | "away"). Busy and offline are the bridge's to set. result data: agent, presence,
changed. Refusals: bad_args, agent_busy (on a call or in wrap-up: finish first)."""
LIST_QUEUES: Final = "list_queues"
"""args: none ({}). result data: queues [{name, numbers, open_now, waiting, longest_wait (seconds), agents_available}].
Logs no event. Ask with a fresh id for the current state."""
VOICE_COMMANDS: Final = frozenset(
    {
        ACCEPT_CALL,
        HOLD_CALL,
        MUTE_CALL,
        TRANSFER_CALL,
        COMPLETE_TRANSFER,
        CANCEL_TRANSFER,
        HANG_UP,
        WRAP_UP,
        DECLINE_CALL,
        SET_PRESENCE,
        LIST_QUEUES,
    }
)
COMMANDS: Final = frozenset({SEND_SMS, ASSIGN, CLAIM, SET_STATUS, ADD_NOTE, LIST_AGENTS}) | VOICE_COMMANDS

MAX_NOTE_CHARS: Final = 4000
MAX_SMS_CHARS: Final = 1600
"""The longest text body Twilio takes (send_sms's ``body``)."""
MAX_SNOOZE_DAYS: Final = 90

# Close codes.
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_OVERFLOW: Final = 4408
CLOSE_SHUTDOWN: Final = 1001

MAX_COMMAND_ID: Final = 128
MAX_FRAME_BYTES: Final = 256 * 1024
REPLAY_BATCH_BYTES: Final = 192 * 1024
"""The most bytes of events one ``events`` frame carries (with its envelope, under MAX_FRAME_BYTES)."""


class ProtocolError(ValueError):
    """A frame that does not follow this protocol; ``code`` says which rule it broke."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Event:
    """One event from the log, as streamed. Nothing changes one once it is made.

    Not a frozen dataclass, for speed: a frozen one's ``__init__`` sets each field through ``object.__setattr__``,
    and reading a catch-up's 100k events built them in 0.19–0.22 s frozen against 0.08–0.09 s (a one-off timing of
    ``_event`` over bench_console's missed events, best of seven)."""

    seq: int
    type: str
    ts: str
    data: dict[str, Any]

    def to_frame(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "ts": self.ts, "data": self.data}


@dataclass(frozen=True, slots=True)
class Command:
    """A console's request to act, idempotent by ``id``."""

    id: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> dict[str, Any]:
        return {"type": COMMAND, "id": self.id, "command": self.command, "args": self.args}


@dataclass(frozen=True, slots=True)
class Signal:
    """An ephemeral presence signal for one conversation."""

    conversation_id: str
    signal: str
    agent: str | None = None

    def to_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": SIGNAL, "conversation_id": self.conversation_id, "signal": self.signal}
        if self.agent is not None:
            frame["agent"] = self.agent
        return frame


@dataclass(frozen=True, slots=True)
class Result:
    """The answer to one command."""

    id: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None

    def to_frame(self) -> dict[str, Any]:
        if self.ok:
            return {"type": RESULT, "id": self.id, "ok": True, "data": self.data}
        return {
            "type": RESULT,
            "id": self.id,
            "ok": False,
            "error": {"code": self.error_code, "message": self.error_message},
            "data": self.data,
        }

    @classmethod
    def failure(cls, id: str, code: str, message: str, data: dict[str, Any] | None = None) -> Result:
        return cls(id=id, ok=False, data=data or {}, error_code=code, error_message=message)


def encode(frame: dict[str, Any]) -> str:
    """Serialise one frame."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def caught_up(cursor: int, agent: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": CAUGHT_UP, "cursor": cursor}
    if agent is not None:
        frame["agent"] = agent
    return frame


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": ERROR, "code": code, "message": message}


def is_text(value: Any) -> bool:
    """False when any string in ``value`` (nested lists and objects included) holds a lone surrogate.

    JSON's ``\\ud800`` escape decodes to one, and such a string can be neither stored nor sent as UTF-8.
    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _load(text: str | bytes, loads: Callable[[str | bytes], Any] = json.loads) -> dict[str, Any]:
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        frame = loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "not JSON we take: nested too deeply") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_frame", "a frame must be a JSON object")
    return frame


def _event(frame: object) -> Event:
    if not isinstance(frame, dict):  # an item of an events frame (a frame itself is an object already)
        raise ProtocolError("bad_event", "each item of an events frame must be an event object")
    seq, data, ts, kind = frame.get("seq"), frame.get("data"), frame.get("ts", ""), frame.get("type")
    # Exact types, as JSON decodes them (a bool is not a seq); cheaper than isinstance for 100k events a catch-up.
    if type(seq) is not int or type(kind) is not str:
        raise ProtocolError("bad_event", "an event needs an integer seq and a string type")
    if type(data) is not dict:
        raise ProtocolError("bad_event", "an event's data must be an object")
    return Event(seq, kind, ts if type(ts) is str else str(ts), data)


def parse_client_frame(text: str | bytes) -> Command | Signal:
    """Read a frame a console sent; raises ProtocolError with a one-line reason."""
    frame = _load(text)
    kind = frame.get("type")
    if kind == COMMAND:
        cid = frame.get("id")
        if not isinstance(cid, str) or not 1 <= len(cid) <= MAX_COMMAND_ID or not cid.isprintable():
            raise ProtocolError("bad_id", f"a command needs an id of 1–{MAX_COMMAND_ID} printable characters")
        name = frame.get("command")
        if not isinstance(name, str):
            raise ProtocolError("bad_command", "a command needs a 'command' name")
        args = frame.get("args", {})
        if not isinstance(args, dict):
            raise ProtocolError("bad_args", "'args' must be an object")
        return Command(id=cid, command=name, args=args)
    if kind == SIGNAL:
        conversation = frame.get("conversation_id")
        signal = frame.get("signal")
        if (
            not isinstance(conversation, str)
            or not conversation
            or len(conversation) > 128
            or not is_text(conversation)
        ):
            raise ProtocolError("bad_signal", "a signal needs a conversation_id")
        if not isinstance(signal, str) or signal not in SIGNALS:
            raise ProtocolError("bad_signal", f"signal must be one of {', '.join(sorted(SIGNALS))}")
        return Signal(conversation_id=conversation, signal=str(signal))
    raise ProtocolError("bad_type", f"unknown frame type {kind!r}")


ServerFrame = Event | list[Event] | Result | Signal | dict[str, Any]


def parse_server_frame(text: str | bytes, loads: Callable[[str | bytes], Any] = json.loads) -> ServerFrame:
    """Read a frame the bridge sent: an Event, a list of them (an ``events`` frame), a Result, a Signal, or the
    control frame as a dict.

    ``loads`` decodes the JSON: a faster decoder with the same results may stand in for the standard library's (it
    must raise ValueError for what is not JSON)."""
    frame = _load(text, loads)
    kind = frame.get("type")
    if "seq" in frame:
        return _event(frame)
    if kind == EVENTS:
        events = frame.get("events")
        if not isinstance(events, list) or not events:
            raise ProtocolError("bad_event", "an events frame needs a non-empty list of events")
        batch = [_event(item) for item in events]
        if any(b.seq != a.seq + 1 for a, b in zip(batch, batch[1:], strict=False)):
            raise ProtocolError("bad_event", "the events in an events frame must be consecutive")
        return batch
    if kind == RESULT:
        cid = frame.get("id")
        if not isinstance(cid, str):
            raise ProtocolError("bad_result", "a result needs an id")
        err = frame.get("error") or {}
        data = frame.get("data") or {}
        return Result(
            id=cid,
            ok=bool(frame.get("ok")),
            data=data if isinstance(data, dict) else {},
            error_code=err.get("code") if isinstance(err, dict) else None,
            error_message=err.get("message") if isinstance(err, dict) else None,
        )
    if kind == SIGNAL:
        return Signal(
            conversation_id=str(frame.get("conversation_id", "")),
            signal=str(frame.get("signal", "")),
            agent=str(frame["agent"]) if "agent" in frame else None,
        )
    return frame
