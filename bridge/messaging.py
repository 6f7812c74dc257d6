"""Texts as the support desk sees them: inbound messages, delivery statuses, opt-outs and agents' replies.

Each ``record_*`` function is one store operation: it runs inside the writer's transaction, changes current
state and appends the events that say what happened, all or nothing.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge import protocol
from bridge.conversations import REOPENED_BY_CUSTOMER, reopen_on_customer_text
from bridge.store import REVOKED_SAID, STATUS_RANK, StoredEvent, Tx, is_revoked
from bridge.twilio_errors import describe_error
from bridge.types import E164, ConversationId, MessageId, MessageSid, conversation_id, new_id

# Twilio's default opt-out and opt-in keywords on long codes; the whole body must be the keyword.
STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
OPTED_OUT_ERROR = 21610

# Always used with fullmatch: "$" alone would also accept a value with a trailing newline.
_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
_ANY_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also admits "²" and "①"
MAX_MEDIA = 10
PREVIEW_CHARS = 120


class BadWebhook(ValueError):
    """A webhook the bridge refuses; the message is the one-line reason sent back with a 4xx."""


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str

    def to_json(self) -> dict[str, str]:
        return {"url": self.url, "content_type": self.content_type}


@dataclass(slots=True)
class InboundMessage:
    """An inbound SMS or MMS webhook, checked. Never changed once made; not declared frozen because a frozen
    dataclass sets each field through ``object.__setattr__``: 13.5k of the 527k instructions an inbound webhook
    took through the bridge's app (callgrind)."""

    sid: MessageSid
    account_sid: str
    from_number: E164
    to_number: E164
    body: str
    media: tuple[Media, ...] = ()
    num_segments: int | None = None
    messaging_service_sid: str | None = None
    opt_out_type: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Sequence[tuple[str, str]]) -> InboundMessage:
        form = _first_values(params)
        sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
        if not sid:
            raise BadWebhook("missing MessageSid")
        if not _SID.fullmatch(sid):
            raise BadWebhook("MessageSid is not a Twilio message SID (SM… or MM… and 32 hex digits)")
        from_number = _number(form, "From")
        to_number = _number(form, "To")
        num_media = _count(form, "NumMedia", limit=MAX_MEDIA)
        media = []
        for n in range(num_media):
            url = form.get(f"MediaUrl{n}")
            if not url:
                raise BadWebhook(f"NumMedia is {num_media} but MediaUrl{n} is missing")
            media.append(Media(url=url, content_type=form.get(f"MediaContentType{n}", "")))
        segments = form.get("NumSegments")
        extra = {k: form[k] for k in _GEO_FIELDS if form.get(k)}
        if form.get("ProfileName"):
            extra["ProfileName"] = form["ProfileName"]
        return cls(
            sid=MessageSid(sid),
            account_sid=form.get("AccountSid", ""),
            from_number=from_number,
            to_number=to_number,
            body=form.get("Body", ""),
            media=tuple(media),
            num_segments=int(segments) if segments and _DIGITS.fullmatch(segments) else None,
            messaging_service_sid=form.get("MessagingServiceSid") or None,
            opt_out_type=(form.get("OptOutType") or "").upper() or None,
            extra=extra,
        )


@dataclass(frozen=True, slots=True)
class StatusCallback:
    """A delivery status callback for an outbound message, checked."""

    sid: MessageSid
    status: str
    error_code: int | None
    error_message: str | None
    to_number: str | None
    from_number: str | None
    raw_dlr_done_date: str | None

    @classmethod
    def from_params(cls, params: Sequence[tuple[str, str]]) -> StatusCallback:
        form = _first_values(params)
        sid = form.get("MessageSid") or form.get("SmsSid")
        if not sid:
            raise BadWebhook("missing MessageSid")
        if not _SID.fullmatch(sid):
            raise BadWebhook("MessageSid is not a Twilio message SID (SM… or MM… and 32 hex digits)")
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not status:
            raise BadWebhook("missing MessageStatus")
        if status not in STATUS_RANK:
            raise BadWebhook(f"unknown MessageStatus {status[:40]!r}")
        code_text = form.get("ErrorCode") or ""
        if code_text and not _DIGITS.fullmatch(code_text):
            raise BadWebhook("ErrorCode must be a number of at most 9 digits")
        code = int(code_text) if code_text else None
        return cls(
            sid=MessageSid(sid),
            status=status,
            error_code=code,
            error_message=form.get("ErrorMessage") or (describe_error(code) if code else None),
            to_number=form.get("To"),
            from_number=form.get("From"),
            raw_dlr_done_date=form.get("RawDlrDoneDate"),
        )


_GEO_FIELDS = ("FromCity", "FromState", "FromZip", "FromCountry", "ToCity", "ToState", "ToZip", "ToCountry")


def _first_values(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Each name's first value (built backwards, so the first one is written last)."""
    return dict(reversed(params))


def _number(form: dict[str, str], name: str) -> E164:
    value = form.get(name)
    if not value:
        raise BadWebhook(f"missing {name}")
    # Twilio sends E.164 for phone numbers; other channels (whatsapp:+1…) keep their prefix.
    bare = value.split(":", 1)[1] if value.startswith(("whatsapp:", "messenger:", "rcs:")) else value
    if not _E164.fullmatch(bare):
        raise BadWebhook(f"{name} is not an E.164 phone number")
    return E164(value)


def _count(form: dict[str, str], name: str, limit: int) -> int:
    text = form.get(name, "0") or "0"
    if not _DIGITS.fullmatch(text) or int(text) > limit:
        raise BadWebhook(f"{name} must be a whole number from 0 to {limit}")
    return int(text)


def opt_out_intent(body: str, opt_out_type: str | None) -> bool | None:
    """True for an opt-out keyword, False for an opt-in keyword, None otherwise."""
    if opt_out_type == "STOP":
        return True
    if opt_out_type == "START":
        return False
    word = body.strip().upper()
    if word in STOP_KEYWORDS:
        return True
    if word in START_KEYWORDS:
        return False
    return None


def preview(body: str, media: Sequence[Media] = ()) -> str:
    text = " ".join(body.split())
    if not text and media:
        text = f"[{len(media)} attachment{'s' if len(media) > 1 else ''}]"
    return text[:PREVIEW_CHARS]


# -- store operations -------------------------------------------------------------------------------------------


def ensure_conversation(tx: Tx, twilio_number: str, customer_number: str) -> ConversationId:
    cid = conversation_id(twilio_number, customer_number)
    tx.execute(
        "INSERT INTO conversations (id, twilio_number, customer_number, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(id) DO NOTHING",
        (cid, twilio_number, customer_number, tx.now),
    )
    return cid


def _touch_conversation(tx: Tx, cid: str, text: str) -> None:
    tx.execute("UPDATE conversations SET last_message_at = ?, last_preview = ? WHERE id = ?", (tx.now, text, cid))


def set_opt_out(tx: Tx, twilio_number: str, customer_number: str, opted_out: bool, reason: str) -> None:
    """Record an opt-out change, with an event, only if it changes anything."""
    row = tx.one(
        "SELECT opted_out FROM opt_outs WHERE twilio_number = ? AND customer_number = ?",
        (twilio_number, customer_number),
    )
    current = bool(row[0]) if row is not None else False
    if current == opted_out:
        return
    tx.execute(
        "INSERT INTO opt_outs (twilio_number, customer_number, opted_out, reason, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(twilio_number, customer_number) DO UPDATE SET opted_out = excluded.opted_out, "
        "reason = excluded.reason, updated_at = excluded.updated_at",
        (twilio_number, customer_number, int(opted_out), reason, tx.now),
    )
    tx.append(
        protocol.OPTOUT_CHANGED,
        {
            "conversation_id": ensure_conversation(tx, twilio_number, customer_number),
            "twilio_number": twilio_number,
            "customer_number": customer_number,
            "opted_out": opted_out,
            "reason": reason,
        },
    )


def is_opted_out(conn: Any, twilio_number: str, customer_number: str) -> bool:
    row = conn.execute(
        "SELECT opted_out FROM opt_outs WHERE twilio_number = ? AND customer_number = ?",
        (twilio_number, customer_number),
    ).fetchone()
    return bool(row[0]) if row is not None else False


_conversation_id = functools.lru_cache(maxsize=4096)(conversation_id)

# A text usually comes in an existing conversation that stays as it is: moving its latest-message columns is
# then one UPDATE, which costs about 60% of an INSERT … ON CONFLICT DO UPDATE. Without RETURNING: SQLite returns
# rows through a temporary table made for the statement (callgrind: 503.4k instructions per inbound webhook
# through the app against 509.5k). Only when no row moved is the conversation looked at: new (inserted), or
# reopened by this text.
_TOUCH_CONVERSATION = (
    "UPDATE conversations SET last_message_at = ?, last_preview = ? WHERE id = ? AND status NOT IN ("
    + ", ".join(f"'{status}'" for status in sorted(REOPENED_BY_CUSTOMER))
    + ")"
)
_TOUCH_ANY_CONVERSATION = "UPDATE conversations SET last_message_at = ?, last_preview = ? WHERE id = ?"
_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, twilio_number, customer_number, created_at, last_message_at, last_preview) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INBOUND_SEEN = "SELECT 1 FROM messages WHERE id = ?"
_INSERT_INBOUND = (
    "INSERT INTO messages (id, sid, conversation_id, direction, body, media, status, created_at, updated_at) "
    "VALUES (?, ?, ?, 'inbound', ?, ?, 'received', ?, ?)"
)


def record_inbound(tx: Tx, msg: InboundMessage, idempotency_token: str | None) -> list[StoredEvent] | None:
    """Store an inbound text; None if this MessageSid (or idempotency token) was already recorded."""
    # A MessageSid seen before is in messages already (an inbound text's id is its SID): a lookup, not a key.
    if tx.one(_INBOUND_SEEN, (msg.sid,)) is not None:
        return None
    if idempotency_token and not tx.claim_key(f"token:{idempotency_token}"):
        return None
    now = tx.now
    cid = _conversation_id(msg.to_number, msg.from_number)
    shown = preview(msg.body, msg.media)
    reopened = False
    if tx.execute(_TOUCH_CONVERSATION, (now, shown, cid)).rowcount == 0:
        if tx.one("SELECT 1 FROM conversations WHERE id = ?", (cid,)) is None:
            tx.execute(_INSERT_CONVERSATION, (cid, msg.to_number, msg.from_number, now, now, shown))
        else:  # resolved or snoozed: this text opens it again (below, once the text is logged)
            tx.execute(_TOUCH_ANY_CONVERSATION, (now, shown, cid))
            reopened = True
    media = [m.to_json() for m in msg.media]
    tx.execute(_INSERT_INBOUND, (msg.sid, msg.sid, cid, msg.body, json.dumps(media) if media else "[]", now, now))
    data: dict[str, Any] = {
        "message_id": msg.sid,
        "message_sid": msg.sid,
        "conversation_id": cid,
        "twilio_number": msg.to_number,
        "customer_number": msg.from_number,
        "body": msg.body,
        "media": media,
        "num_segments": msg.num_segments,
        "received_at": now,
    }
    if msg.messaging_service_sid:
        data["messaging_service_sid"] = msg.messaging_service_sid
    if msg.extra:
        data["details"] = msg.extra
    tx.append(protocol.MESSAGE_RECEIVED, data)
    if reopened:
        reopen_on_customer_text(tx, cid)
    intent = opt_out_intent(msg.body, msg.opt_out_type)
    if intent is not None:
        word = msg.opt_out_type or msg.body.strip().upper()
        set_opt_out(tx, msg.to_number, msg.from_number, intent, f"customer texted {word}")
    return tx.events


def _apply_status(tx: Tx, row: Any, status: str, error_code: int | None, error_message: str | None) -> tuple[str, bool]:
    """Move a message to ``status`` if it outranks the current one; returns (effective status, applied)."""
    current = str(row["status"])
    if STATUS_RANK.get(status, -1) <= STATUS_RANK.get(current, -1):
        return current, False
    tx.execute(
        "UPDATE messages SET status = ?, error_code = coalesce(?, error_code), "
        "error_message = coalesce(?, error_message), updated_at = ? WHERE id = ?",
        (status, error_code, error_message, tx.now, row["id"]),
    )
    return status, True


def record_status(tx: Tx, cb: StatusCallback, idempotency_token: str | None) -> list[StoredEvent] | None:
    """Apply a status callback by precedence; keep it for later if the message is not recorded yet."""
    keys = [f"status:{cb.sid}:{cb.status}:{cb.error_code or ''}"]
    if idempotency_token:
        keys.append(f"token:{idempotency_token}")
    if not tx.claim_keys(keys):
        return None
    row = tx.one("SELECT id, conversation_id, status FROM messages WHERE sid = ? AND direction = 'outbound'", (cb.sid,))
    data: dict[str, Any] = {
        "message_sid": cb.sid,
        "reported": cb.status,
        "error_code": cb.error_code,
        "error_message": cb.error_message,
    }
    if cb.raw_dlr_done_date:
        data["raw_dlr_done_date"] = cb.raw_dlr_done_date
    if row is None:
        tx.execute(
            "INSERT INTO early_statuses (sid, status, error_code, error_message, received_at) VALUES (?, ?, ?, ?, ?)",
            (cb.sid, cb.status, cb.error_code, cb.error_message, tx.now),
        )
        data.update(message_id=None, conversation_id=None, status=cb.status, applied=False)
        tx.append(protocol.MESSAGE_STATUS, data)
        return tx.events
    effective, applied = _apply_status(tx, row, cb.status, cb.error_code, cb.error_message)
    data.update(message_id=row["id"], conversation_id=row["conversation_id"], status=effective, applied=applied)
    tx.append(protocol.MESSAGE_STATUS, data)
    if cb.error_code == OPTED_OUT_ERROR:
        _opt_out_after_error(tx, str(row["conversation_id"]))
    return tx.events


def _opt_out_after_error(tx: Tx, cid: str) -> None:
    conv = tx.one("SELECT twilio_number, customer_number FROM conversations WHERE id = ?", (cid,))
    if conv is not None:
        set_opt_out(tx, conv[0], conv[1], True, f"Twilio error {OPTED_OUT_ERROR}: the customer has opted out")


# -- agents' replies --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conversation:
    id: ConversationId
    twilio_number: E164
    customer_number: E164


@dataclass(frozen=True, slots=True)
class OutboundDraft:
    """A reply an agent asked to send, validated, ready to be recorded."""

    agent: str
    command_id: str
    conversation: Conversation
    body: str
    media_urls: tuple[str, ...]
    encoding: str
    segments: int


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command already known to the store: running, or done with its result frame."""

    state: str
    result: dict[str, Any] | None
    message_id: str | None
    args: dict[str, Any]
    created_at: str


def find_command(conn: Any, agent: str, command_id: str) -> CommandRecord | None:
    row = conn.execute(
        "SELECT state, result, message_id, args, created_at FROM commands WHERE agent = ? AND id = ?",
        (agent, command_id),
    ).fetchone()
    if row is None:
        return None
    return CommandRecord(
        state=row[0],
        result=json.loads(row[1]) if row[1] else None,
        message_id=row[2],
        args=json.loads(row[3]),
        created_at=row[4],
    )


def record_command_result(
    tx: Tx, agent: str, command_id: str, command: str, args: dict[str, Any], result: protocol.Result
) -> protocol.Result:
    """Store a command that finished without sending anything (refused before Twilio), so a resend agrees."""
    existing = find_command(tx.conn, agent, command_id)
    if existing is not None and existing.result is not None:
        return _result_from_frame(existing.result)
    tx.execute(
        "INSERT INTO commands (agent, id, command, args, state, result, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'done', ?, ?, ?)",
        (agent, command_id, command, json.dumps(args), json.dumps(result.to_frame()), tx.now, tx.now),
    )
    return result


def _result_from_frame(frame: dict[str, Any]) -> protocol.Result:
    parsed = protocol.parse_server_frame(json.dumps(frame))
    assert isinstance(parsed, protocol.Result)
    return parsed


OPTED_OUT_SAID = "This customer texted STOP, so Twilio will not deliver texts to them until they text START."


class OutboundRefused(Exception):
    """A reply refused in the transaction that would record it; the message is a sentence the agent can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def record_outbound(tx: Tx, draft: OutboundDraft, args: dict[str, Any]) -> tuple[MessageId, CommandRecord | None]:
    """Record the reply and its command before Twilio is called; returns the existing command if a resend.

    Refuses (``OutboundRefused``) a reply from a revoked agent, or to a customer opted out, in this same
    transaction: a STOP or a revocation committed after the caller's own checks is still seen here, before
    anything goes to Twilio."""
    existing = find_command(tx.conn, draft.agent, draft.command_id)
    if existing is not None:
        return MessageId(existing.message_id or ""), existing
    conv = draft.conversation
    if is_revoked(tx.conn, draft.agent):
        raise OutboundRefused("agent_revoked", REVOKED_SAID)
    if is_opted_out(tx.conn, conv.twilio_number, conv.customer_number):
        raise OutboundRefused("opted_out", OPTED_OUT_SAID)
    message_id = MessageId(new_id("OB"))
    ensure_conversation(tx, conv.twilio_number, conv.customer_number)  # a first text to a new customer
    tx.execute(
        "INSERT INTO commands (agent, id, command, args, state, message_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
        (draft.agent, draft.command_id, protocol.SEND_SMS, json.dumps(args), message_id, tx.now, tx.now),
    )
    media = [{"url": url, "content_type": None} for url in draft.media_urls]
    tx.execute(
        "INSERT INTO messages (id, conversation_id, direction, body, media, status, agent, command_id, encoding, "
        "segments, created_at, updated_at) VALUES (?, ?, 'outbound', ?, ?, 'sending', ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            conv.id,
            draft.body,
            json.dumps(media),
            draft.agent,
            draft.command_id,
            draft.encoding,
            draft.segments,
            tx.now,
            tx.now,
        ),
    )
    _touch_conversation(tx, conv.id, preview(draft.body))
    tx.append(
        protocol.MESSAGE_OUTBOUND,
        {
            "message_id": message_id,
            "conversation_id": conv.id,
            "twilio_number": conv.twilio_number,
            "customer_number": conv.customer_number,
            "body": draft.body,
            "media": media,
            "agent": draft.agent,
            "command_id": draft.command_id,
            "encoding": draft.encoding,
            "segments": draft.segments,
            "status": "sending",
        },
    )
    return message_id, None


def _finish_command(tx: Tx, agent: str, command_id: str, result: protocol.Result) -> None:
    tx.execute(
        "UPDATE commands SET state = 'done', result = ?, updated_at = ? WHERE agent = ? AND id = ?",
        (json.dumps(result.to_frame()), tx.now, agent, command_id),
    )


_REPLY_BY_SID = "SELECT id FROM messages WHERE sid = ? AND direction = 'outbound' AND id != ?"


def record_submitted(
    tx: Tx, agent: str, command_id: str, message_id: str, sid: str, status: str, result: protocol.Result
) -> bool:
    """Twilio accepted the reply: keep its SID, then apply any status callback that raced ahead of us. False (and
    nothing written) when another reply holds that SID already: a lookup took the same text for two sends."""
    row = tx.one("SELECT id, conversation_id, status FROM messages WHERE id = ?", (message_id,))
    if row is None:
        raise LookupError(f"no message {message_id}")
    if tx.one(_REPLY_BY_SID, (sid, message_id)) is not None:
        return False
    # Twilio's answer replaces the bridge's own "sending" placeholder whatever its rank.
    effective = status if status in STATUS_RANK else "queued"
    tx.execute(
        "UPDATE messages SET sid = ?, status = ?, updated_at = ? WHERE id = ?", (sid, effective, tx.now, message_id)
    )
    tx.append(
        protocol.MESSAGE_SUBMITTED,
        {"message_id": message_id, "message_sid": sid, "conversation_id": row["conversation_id"], "status": effective},
    )
    early = tx.execute(
        "SELECT id, status, error_code, error_message FROM early_statuses WHERE sid = ? ORDER BY id", (sid,)
    ).fetchall()
    for item in early:
        current = tx.one("SELECT id, conversation_id, status FROM messages WHERE id = ?", (message_id,))
        effective, applied = _apply_status(tx, current, item["status"], item["error_code"], item["error_message"])
        tx.append(
            protocol.MESSAGE_STATUS,
            {
                "message_sid": sid,
                "message_id": message_id,
                "conversation_id": row["conversation_id"],
                "status": effective,
                "reported": item["status"],
                "error_code": item["error_code"],
                "error_message": item["error_message"],
                "applied": applied,
            },
        )
        if item["error_code"] == OPTED_OUT_ERROR:
            _opt_out_after_error(tx, str(row["conversation_id"]))
    tx.execute("DELETE FROM early_statuses WHERE sid = ?", (sid,))
    _finish_command(tx, agent, command_id, result)
    return True


def record_rejected(
    tx: Tx,
    agent: str,
    command_id: str,
    message_id: str,
    error_code: int | None,
    error_message: str,
    hint: str,
    result: protocol.Result,
) -> None:
    """Twilio (or the bridge, after its retries) refused the reply: say why on the message."""
    row = tx.one("SELECT conversation_id FROM messages WHERE id = ?", (message_id,))
    if row is None:
        raise LookupError(f"no message {message_id}")
    tx.execute(
        "UPDATE messages SET status = 'failed', error_code = ?, error_message = ?, updated_at = ? WHERE id = ?",
        (error_code, error_message, tx.now, message_id),
    )
    tx.append(
        protocol.MESSAGE_REJECTED,
        {
            "message_id": message_id,
            "conversation_id": row[0],
            "error_code": error_code,
            "error_message": error_message,
            "hint": hint,
        },
    )
    if error_code == OPTED_OUT_ERROR:
        _opt_out_after_error(tx, str(row[0]))
    _finish_command(tx, agent, command_id, result)


def is_twilio_sid(value: str) -> bool:
    return bool(_ANY_SID.fullmatch(value))
