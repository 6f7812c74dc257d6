"""The stream's wire format: the frames a bridge and its consoles exchange over `/v1/stream` (standard library only).

Version 1. Every frame is one JSON object in one WebSocket text message.

Bridge → console
    ``{"seq": 42, "type": "message.received", "ts": "2026-11-24T05:00:00.123Z", "data": {...}}``
        An event from the log. ``seq`` is gap-free and strictly increasing; ``type`` is one of ``EVENT_TYPES``.
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

Connect with ``GET /v1/stream?after=<seq>`` and ``Authorization: Bearer <agent token>``. A missing or wrong token
is refused before anything is sent (HTTP 403 on the upgrade; close code 4401 once open, e.g. on revocation).
A console whose send queue overflows is closed with code 4408 and resumes from its cursor.
"""

from __future__ import annotations

import json
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
conversation_id, body, agent, at (ISO 8601 UTC with milliseconds)."""

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
    }
)

CONVERSATION_STATUSES: Final = frozenset({"open", "pending", "resolved", "snoozed"})
STATUS_REASONS: Final = frozenset({"agent", "snooze ended", "customer wrote"})

# Control frame types.
CAUGHT_UP: Final = "caught_up"
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
"""args: none ({}). result data: agents [{name, active}], by name; never tokens. Logs no event. Like every
command, a resent id gets its first answer: ask with a fresh id for the current list."""
COMMANDS: Final = frozenset({SEND_SMS, ASSIGN, CLAIM, SET_STATUS, ADD_NOTE, LIST_AGENTS})

MAX_NOTE_CHARS: Final = 4000
MAX_SNOOZE_DAYS: Final = 90

# Close codes.
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_OVERFLOW: Final = 4408
CLOSE_SHUTDOWN: Final = 1001

MAX_COMMAND_ID: Final = 128
MAX_FRAME_BYTES: Final = 256 * 1024


class ProtocolError(ValueError):
    """A frame that does not follow this protocol; ``code`` says which rule it broke."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Event:
    """One event from the log, as streamed."""

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


def _load(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "not JSON we take: nested too deeply") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_frame", "a frame must be a JSON object")
    return frame


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


ServerFrame = Event | Result | Signal | dict[str, Any]


def parse_server_frame(text: str | bytes) -> ServerFrame:
    """Read a frame the bridge sent: an Event, a Result, a Signal, or the control frame as a dict."""
    frame = _load(text)
    kind = frame.get("type")
    if "seq" in frame:
        seq, data, ts = frame.get("seq"), frame.get("data"), frame.get("ts", "")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(kind, str):
            raise ProtocolError("bad_event", "an event needs an integer seq and a string type")
        if not isinstance(data, dict):
            raise ProtocolError("bad_event", "an event's data must be an object")
        return Event(seq=seq, type=kind, ts=str(ts), data=data)
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
