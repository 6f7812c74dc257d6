"""Twilio's voice webhooks: an incoming call, its queue (wait loop and exit), status, conference and recording
callbacks; each answered with TwiML once what it changed is committed.

Public paths (all POST, signed, checked like the SMS webhooks by ``bridge.webhooks.verified``):
``/twilio/voice`` (a call comes in; also where a caller is sent back to the queue), ``/twilio/voice/status``
(call progress of the caller and of the phones the bridge dials), ``/twilio/voice/wait`` (the queue's waitUrl),
``/twilio/voice/queue-exit`` (the ``<Enqueue>`` action), ``/twilio/voice/join`` (the TwiML a caller taken out of
the queue runs: into the call's conference), ``/twilio/voice/conference`` (conference events) and
``/twilio/voice/recording`` (the voicemail ``<Record>`` action and its recording status callback).

Callbacks are applied in ``SequenceNumber`` order per call and per conference: the last applied number is kept,
so a duplicate or an older one changes nothing. Every other webhook is idempotent by what it names (a CallSid
already known, a RecordingSid already stored).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from bridge import protocol, twiml
from bridge.calls import (
    IN_CONFERENCE,
    TERMINAL_STATUSES,
    Intent,
    call_row,
    end_call,
    intents_of,
    leg_answered,
    leg_ended,
    leg_row,
    update_call,
)
from bridge.conversations import parse_ts
from bridge.handoff import Handoff
from bridge.messaging import BadWebhook, ensure_conversation
from bridge.state import bridge_of
from bridge.store import Tx
from bridge.types import new_id
from bridge.webhooks import Refusal, verified

Item = TypeVar("Item")

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_ANY_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
_LEG_ID = re.compile(r"LG[0-9a-f]{32}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# Who a call is from: a number, a Voice SDK client or SIP address, or a word like "anonymous".
_CALLER = re.compile(r"\+[1-9][0-9]{6,14}|(?:client|sip):[!-~]{1,120}|[A-Za-z]{1,20}")
_DIGITS = re.compile(r"[0-9]{1,9}")
_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress", "answered"}) | TERMINAL_STATUSES
_QUEUE_RESULTS = frozenset(
    {
        "bridged",
        "bridging-in-process",
        "error",
        "hangup",
        "leave",
        "redirected",
        "redirected-from-bridged",
        "queue-full",
        "system-error",
    }
)
MAX_TEXT = 200


def _form(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    form: dict[str, str] = {}
    for key, value in params:
        form.setdefault(key, value)
    return form


def _call_sid(form: dict[str, str], name: str = "CallSid") -> str:
    value = form.get(name)
    if not value:
        raise BadWebhook(f"missing {name}")
    if not _CALL_SID.fullmatch(value):
        raise BadWebhook(f"{name} is not a Twilio call SID (CA and 32 hex digits)")
    return value


def _seq(form: dict[str, str]) -> int | None:
    text = form.get("SequenceNumber")
    if text is None or text == "":
        return None
    if not _DIGITS.fullmatch(text):
        raise BadWebhook("SequenceNumber must be a whole number of at most 9 digits")
    return int(text)


def _optional(form: dict[str, str], name: str) -> str | None:
    value = form.get(name) or None
    if value is not None and (len(value) > MAX_TEXT or not value.isprintable()):
        raise BadWebhook(f"{name} is over {MAX_TEXT} characters or holds control characters")
    return value


def _shown(form: dict[str, str], name: str) -> str | None:
    """A caller-ID extra (name, city ...), only for show: left out, not refused, when it is unreadable, so a call is
    never hung up on for its caller's name."""
    try:
        return _optional(form, name)
    except BadWebhook:
        return None


@dataclass(frozen=True, slots=True)
class CallRequest:
    """An incoming call, or a call progress (status) callback."""

    call_sid: str
    from_number: str
    to_number: str
    status: str
    seq: int | None = None
    caller_name: str | None = None
    geo: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Sequence[tuple[str, str]]) -> CallRequest:
        form = _form(params)
        sid = _call_sid(form)
        caller = form.get("From", "")
        if not _CALLER.fullmatch(caller):
            raise BadWebhook("From is not a phone number, client: or sip: address")
        to = form.get("To", "")
        if not (_E164.fullmatch(to) or _CALLER.fullmatch(to)):
            raise BadWebhook("To is not a phone number, client: or sip: address")
        status = form.get("CallStatus", "")
        if status not in _STATUSES:
            raise BadWebhook(f"unknown CallStatus {status[:40]!r}")
        return cls(
            call_sid=sid,
            from_number=caller,
            to_number=to,
            status=status,
            seq=_seq(form),
            caller_name=_shown(form, "CallerName"),
            geo={
                "from_city": _shown(form, "FromCity"),
                "from_state": _shown(form, "FromState"),
                "from_country": _shown(form, "FromCountry"),
            },
        )


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """A wait-loop request or the ``<Enqueue>`` action."""

    call_sid: str
    queue_sid: str | None
    result: str | None

    @classmethod
    def from_params(cls, params: Sequence[tuple[str, str]]) -> QueueRequest:
        form = _form(params)
        queue_sid = form.get("QueueSid") or None
        if queue_sid is not None and not (queue_sid.startswith("QU") and _ANY_SID.fullmatch(queue_sid)):
            raise BadWebhook("QueueSid is not a Twilio queue SID (QU and 32 hex digits)")
        result = form.get("QueueResult") or None
        if result is not None and result not in _QUEUE_RESULTS:
            raise BadWebhook(f"unknown QueueResult {result[:40]!r}")
        return cls(call_sid=_call_sid(form), queue_sid=queue_sid, result=result)


@dataclass(frozen=True, slots=True)
class ConferenceEvent:
    """A conference status callback."""

    name: str
    conference_sid: str
    event: str
    seq: int | None
    call_sid: str | None
    label: str | None

    @classmethod
    def from_params(cls, params: Sequence[tuple[str, str]]) -> ConferenceEvent:
        form = _form(params)
        sid = form.get("ConferenceSid", "")
        if not (sid.startswith("CF") and _ANY_SID.fullmatch(sid)):
            raise BadWebhook("ConferenceSid is not a Twilio conference SID (CF and 32 hex digits)")
        name = form.get("FriendlyName", "")
        if not name or len(name) > 128 or not name.isprintable():
            raise BadWebhook("FriendlyName must be the conference's name (1–128 printable characters)")
        event = form.get("StatusCallbackEvent", "")
        if not event or len(event) > 40 or not event.isprintable():
            raise BadWebhook("missing StatusCallbackEvent")
        call_sid = form.get("CallSid") or None
        if call_sid is not None:
            call_sid = _call_sid(form)
        return cls(
            name=name,
            conference_sid=sid,
            event=event,
            seq=_seq(form),
            call_sid=call_sid,
            label=_optional(form, "ParticipantLabel"),
        )


@dataclass(frozen=True, slots=True)
class RecordingRequest:
    """The ``<Record>`` action (no RecordingStatus) or a recording status callback."""

    call_sid: str
    recording_sid: str | None
    recording_url: str | None
    duration: int | None
    status: str | None

    @classmethod
    def from_params(cls, params: Sequence[tuple[str, str]]) -> RecordingRequest:
        form = _form(params)
        rec = form.get("RecordingSid") or None
        if rec is not None and not (rec.startswith("RE") and _ANY_SID.fullmatch(rec)):
            raise BadWebhook("RecordingSid is not a Twilio recording SID (RE and 32 hex digits)")
        url = form.get("RecordingUrl") or None
        if url is not None and (not url.startswith(("https://", "http://")) or len(url) > 500 or not url.isprintable()):
            raise BadWebhook("RecordingUrl must be an http(s) URL")
        duration_text = form.get("RecordingDuration") or None
        if duration_text is not None and not _DIGITS.fullmatch(duration_text):
            raise BadWebhook("RecordingDuration must be a whole number of seconds")
        status = form.get("RecordingStatus") or None
        if status is not None and status not in ("in-progress", "completed", "absent", "failed"):
            raise BadWebhook(f"unknown RecordingStatus {status[:40]!r}")
        return cls(
            call_sid=_call_sid(form),
            recording_sid=rec,
            recording_url=url,
            duration=int(duration_text) if duration_text is not None else None,
            status=status,
        )


# -- store operations: each returns the TwiML to answer with -------------------------------------------------------


def incoming(tx: Tx, voice: Handoff, req: CallRequest, requeue: bool) -> bytes:
    """A call comes in (or, ``requeue``, a caller is sent back to their queue)."""
    row = call_row(tx.conn, req.call_sid)
    if row is None:
        if requeue:
            return twiml.goodbye("Sorry, we lost your place in line. Please call again.")
        return _new_call(tx, voice, req)
    return _back_in_line(voice, row, requeue)


def _back_in_line(voice: Handoff, row: sqlite3.Row, requeue: bool) -> bytes:
    """What a caller the bridge knows, reaching the voice URL (or, late, the join URL), is answered with."""
    state = row["state"]
    queue = voice.queues.named(row["queue"] or row["last_queue"]) or voice.queues.for_number(row["twilio_number"])
    if state == "queued" or (state in ("ringing_agent", *IN_CONFERENCE) and not row["caller_joined"]):
        # A retry of the first webhook is greeted again; a caller coming back from a failed handoff is not. Not in
        # the conference yet (an agent accepted before this request landed): they wait in the queue for that
        # agent's phone, and the dequeue (or the wait loop) takes them in; an empty answer would hang them up.
        greeting = None if requeue else queue.greeting
        return twiml.enqueue(
            queue.name, greeting, voice.url("/twilio/voice/queue-exit"), voice.url("/twilio/voice/wait")
        )
    if state == "voicemail":
        return _voicemail_twiml(voice, queue.voicemail_prompt)
    if state == "ended":
        return bytes(twiml.Document().hangup())
    return twiml.empty()


def _new_call(tx: Tx, voice: Handoff, req: CallRequest) -> bytes:
    queue = voice.queues.for_number(req.to_number)
    cid = ensure_conversation(tx, req.to_number, req.from_number)
    tx.execute(
        "UPDATE conversations SET last_message_at = ?, last_preview = ? WHERE id = ?", (tx.now, "Phone call", cid)
    )
    is_open = queue.is_open(parse_ts(tx.now))
    tx.execute(
        "INSERT INTO calls (call_sid, conversation_id, twilio_number, customer_number, caller_name, from_city, "
        "from_state, from_country, queue, last_queue, state, queued_at, waiting_since, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        (
            req.call_sid,
            cid,
            req.to_number,
            req.from_number,
            req.caller_name,
            req.geo.get("from_city"),
            req.geo.get("from_state"),
            req.geo.get("from_country"),
            queue.name,
            queue.name,
            tx.now,
            tx.now,
            tx.now,
        ),
    )
    if req.seq is not None:
        tx.execute("UPDATE calls SET call_seq = ? WHERE call_sid = ?", (req.seq, req.call_sid))
    if not is_open:
        update_call(
            tx,
            req.call_sid,
            "voicemail_started",
            state="voicemail",
            queue=None,
            voicemail_reason="closed",
            reason=f"{queue.name} is closed: the caller was offered voicemail.",
        )
        return _voicemail_twiml(voice, f"{queue.closed_message} {queue.voicemail_prompt}")
    update_call(tx, req.call_sid, "queued")
    return twiml.enqueue(
        queue.name, queue.greeting, voice.url("/twilio/voice/queue-exit"), voice.url("/twilio/voice/wait")
    )


def _voicemail_twiml(voice: Handoff, prompt: str) -> bytes:
    return twiml.voicemail(prompt, voice.url("/twilio/voice/recording"), voice.url("/twilio/voice/recording"))


def wait(tx: Tx, voice: Handoff, req: QueueRequest) -> bytes:
    """One turn of the wait loop: the caller's place in line and music, or out to voicemail after the longest wait."""
    row = call_row(tx.conn, req.call_sid)
    if row is None:
        return twiml.wait(None, "")
    queue = voice.queues.named(row["last_queue"]) or voice.queues.for_number(row["twilio_number"])
    if req.queue_sid and row["queue_sid"] != req.queue_sid:
        tx.execute("UPDATE calls SET queue_sid = ? WHERE call_sid = ?", (req.queue_sid, req.call_sid))
    if row["state"] in IN_CONFERENCE and not row["caller_joined"]:
        # The agent answered before the caller reached <Enqueue> (they were still hearing the greeting), so the
        # REST dequeue found nobody: leave now, and the <Enqueue> action sends them into the conference.
        return twiml.leave()
    if row["state"] in ("voicemail", "ended"):
        # A retry of the turn that sent them to voicemail (or a caller whose call was ended): out of the queue
        # again, or they would hear the music until they hang up.
        return twiml.leave()
    if row["state"] != "queued":
        return twiml.wait(None, queue.wait_music)  # an agent's phone is ringing for them: keep them waiting
    waited = (parse_ts(tx.now) - parse_ts(row["waiting_since"])).total_seconds()
    if waited >= queue.longest_wait and row["offered_to"] is None:
        update_call(
            tx,
            req.call_sid,
            "voicemail_started",
            state="voicemail",
            queue=None,
            voicemail_reason="longest wait",
            reason=f"Nobody answered within {queue.longest_wait} s: the caller was offered voicemail.",
        )
        return twiml.leave()
    return twiml.wait(position(tx.conn, row), queue.wait_music)


def position(conn: sqlite3.Connection, row: sqlite3.Row) -> int:
    """Where the caller is in line: by when they first queued, so a failed handoff keeps their place."""
    found = conn.execute(
        "SELECT count(*) FROM calls WHERE state = 'queued' AND last_queue = ? AND queued_at < ?",
        (row["last_queue"], row["queued_at"]),
    ).fetchone()
    return int(found[0]) + 1


def queue_exit(tx: Tx, voice: Handoff, req: QueueRequest) -> bytes:
    """The caller left the queue: what happens next depends on why (``QueueResult``)."""
    row = call_row(tx.conn, req.call_sid)
    if row is None:
        return twiml.empty()
    queue = voice.queues.named(row["last_queue"]) or voice.queues.for_number(row["twilio_number"])
    result = req.result or ""
    if result == "hangup":
        end_call(tx, row, "The caller hung up while waiting.")
        return twiml.empty()
    if result == "leave" and row["state"] in IN_CONFERENCE and not row["caller_joined"]:
        return join(tx, voice, req)
    if result in ("leave", "queue-full"):
        if row["state"] == "queued":
            update_call(
                tx, req.call_sid, "voicemail_started", state="voicemail", queue=None, voicemail_reason="longest wait"
            )
        if row["state"] in ("queued", "voicemail"):
            return _voicemail_twiml(voice, queue.voicemail_prompt)
        return twiml.empty()
    if result in ("error", "system-error"):
        end_call(tx, row, "Twilio could not keep the caller in the queue.", outcome="failed")
        return twiml.goodbye("Sorry, something went wrong. Please call again.")
    return twiml.empty()  # bridged or redirected: the bridge took them out, their new TwiML is running


def join(tx: Tx, voice: Handoff, req: QueueRequest) -> bytes:
    """The caller, out of the queue for an agent who answered, joins the call's conference.

    Only while the call is in one: a join landing late, after the call went back to the queue (the agent's phone
    hung up, a transfer failed), would put the caller alone in an empty conference; they wait in line instead."""
    row = call_row(tx.conn, req.call_sid)
    if row is None:
        return twiml.goodbye("Sorry, we lost your place in line. Please call again.")
    if row["state"] not in IN_CONFERENCE:
        return _back_in_line(voice, row, True)
    tx.execute("UPDATE calls SET caller_joined = 1 WHERE call_sid = ?", (req.call_sid,))
    return twiml.join_conference(req.call_sid, voice.url("/twilio/voice/conference"), "")


def status(tx: Tx, voice: Handoff, req: CallRequest, leg_id: str | None) -> bytes:
    """Call progress, of the caller's call or (``leg_id``) of a phone the bridge dialled; in SequenceNumber order."""
    if leg_id is not None:
        leg = leg_row(tx.conn, leg_id)
        if leg is None:
            return twiml.empty()
        if req.seq is not None:
            if req.seq <= leg["last_seq"]:
                return twiml.empty()  # a duplicate, or older than what was applied
            tx.execute("UPDATE call_legs SET last_seq = ? WHERE leg_id = ?", (req.seq, leg_id))
        if leg["leg_sid"] is None:
            tx.execute("UPDATE call_legs SET leg_sid = ? WHERE leg_id = ?", (req.call_sid, leg_id))
        if leg["status"] == "ended":
            return twiml.empty()  # the bridge hung it up, or settled it, already
        row = call_row(tx.conn, leg["call_sid"])
        assert row is not None
        if req.status in ("in-progress", "answered"):
            leg_answered(tx, leg, row)
        elif req.status in TERMINAL_STATUSES:
            leg_ended(tx, leg, row, req.status)
        return twiml.empty()
    row = call_row(tx.conn, req.call_sid)
    if row is None:
        return twiml.empty()
    if req.seq is not None:
        if req.seq <= row["call_seq"]:
            return twiml.empty()
        tx.execute("UPDATE calls SET call_seq = ? WHERE call_sid = ?", (req.seq, req.call_sid))
    if req.status in TERMINAL_STATUSES and row["state"] != "ended":
        end_call(tx, row, _ended_reason(row["state"]))
    return twiml.empty()


def _ended_reason(state: str) -> str:
    if state in ("queued", "ringing_agent"):
        return "The caller hung up while waiting."
    if state == "on_hold":
        return "The caller hung up while on hold."
    if state == "voicemail":
        return "The caller hung up."
    return "The call ended."


def conference(tx: Tx, voice: Handoff, req: ConferenceEvent) -> bytes:
    """A conference event: remember which conference the call is in; a dialled phone joining means it answered.

    SequenceNumber is per conference, and a caller sent back to the queue joins a new one (same name, new SID),
    so the last applied number is kept per ConferenceSid."""
    row = call_row(tx.conn, req.name)
    if row is None:
        return twiml.empty()
    known = tx.one("SELECT last_seq, ended FROM conference_seqs WHERE conference_sid = ?", (req.conference_sid,))
    if known is not None and req.seq is not None and req.seq <= known["last_seq"]:
        return twiml.empty()  # a duplicate, or older than what was applied
    ended = bool(known["ended"]) if known is not None else False
    if req.event == "conference-end":
        ended = True
        if row["conference_sid"] == req.conference_sid:
            tx.execute("UPDATE calls SET conference_sid = NULL WHERE call_sid = ?", (req.name,))
    elif not ended and known is None and row["conference_sid"] != req.conference_sid:
        # Only a conference heard of for the first time is the call's new one: a late event from the one it left
        # (whose end has not landed yet) must not take the call back to it.
        tx.execute("UPDATE calls SET conference_sid = ? WHERE call_sid = ?", (req.conference_sid, req.name))
    tx.execute(
        "INSERT INTO conference_seqs (conference_sid, call_sid, last_seq, ended) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(conference_sid) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq), ended = excluded.ended",
        (req.conference_sid, req.name, -1 if req.seq is None else req.seq, int(ended)),
    )
    if req.event == "participant-join" and req.call_sid != row["call_sid"]:
        leg = None
        if req.label is not None and _LEG_ID.fullmatch(req.label):
            leg = leg_row(tx.conn, req.label)
        if leg is None and req.call_sid is not None:
            leg = tx.one("SELECT * FROM call_legs WHERE leg_sid = ?", (req.call_sid,))
        if leg is not None and leg["call_sid"] == row["call_sid"] and leg["status"] == "dialing":
            if leg["leg_sid"] is None and req.call_sid is not None:
                tx.execute("UPDATE call_legs SET leg_sid = ? WHERE leg_id = ?", (req.call_sid, leg["leg_id"]))
            current = call_row(tx.conn, row["call_sid"])
            assert current is not None
            leg_answered(tx, leg, current)
    return twiml.empty()


def recording(tx: Tx, voice: Handoff, req: RecordingRequest) -> bytes:
    """A voicemail: stored once (by RecordingSid) with its URL and length, and shown in the customer's thread."""
    row = call_row(tx.conn, req.call_sid)
    is_action = req.status is None
    answer = twiml.goodbye("Thank you for your message. Goodbye.") if is_action else twiml.empty()
    if row is None or req.recording_sid is None or req.recording_url is None:
        return answer
    if req.status is not None and req.status != "completed":
        return answer
    known = tx.one("SELECT id, duration FROM voicemails WHERE recording_sid = ?", (req.recording_sid,))
    if known is not None:
        if known["duration"] is None and req.duration is not None:
            tx.execute("UPDATE voicemails SET duration = ? WHERE id = ?", (req.duration, known["id"]))
        return answer
    voicemail_id = new_id("VM")
    reason = row["voicemail_reason"] or "longest wait"
    tx.execute(
        "INSERT INTO voicemails (id, call_sid, conversation_id, recording_sid, recording_url, duration, reason, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            voicemail_id,
            req.call_sid,
            row["conversation_id"],
            req.recording_sid,
            req.recording_url,
            req.duration,
            reason,
            tx.now,
        ),
    )
    tx.execute(
        "UPDATE conversations SET last_message_at = ?, last_preview = ? WHERE id = ?",
        (tx.now, "Voicemail", row["conversation_id"]),
    )
    tx.append(
        protocol.VOICEMAIL_RECORDED,
        {
            "voicemail_id": voicemail_id,
            "call_sid": req.call_sid,
            "conversation_id": row["conversation_id"],
            "twilio_number": row["twilio_number"],
            "customer_number": row["customer_number"],
            "queue": row["last_queue"],
            "recording_sid": req.recording_sid,
            "recording_url": req.recording_url,
            "duration": req.duration or 0,
            "reason": reason,
            "at": tx.now,
        },
    )
    return answer


# -- endpoints ------------------------------------------------------------------------------------------------


async def _answer(
    request: Request,
    parse: Callable[[Sequence[tuple[str, str]]], Item],
    apply: Callable[[Tx, Handoff, Item, dict[str, str]], bytes],
) -> Response:
    """Verify, apply in one store operation, and answer with its TwiML once committed; then make its REST calls."""
    bridge = bridge_of(request)
    try:
        item, _token = await verified(request, parse)
        query = _query(request)
    except Refusal as refusal:
        return refusal.response()
    voice = bridge.voice
    assert voice is not None

    def op(tx: Tx) -> tuple[bytes, list[Intent]]:
        # No idempotency-token check here, unlike the SMS webhooks: every voice webhook is idempotent by what it
        # names (a known CallSid, a SequenceNumber already applied, a leg already settled, a RecordingSid already
        # stored), and a retry must still get its TwiML, so a redelivery is answered again from the state as it
        # now stands, changing nothing.
        return apply(tx, voice, item, query), intents_of(tx)

    answer, intents = await bridge.store.write(op)
    voice.run_intents(intents)
    return Response(answer, media_type="text/xml; charset=utf-8")


def _query(request: Request) -> dict[str, str]:
    """The bridge's own query parameters on callback URLs it handed Twilio: leg (LG…), requeue (1)."""
    query: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key == "leg":
            if not _LEG_ID.fullmatch(value):
                raise Refusal(400, "leg must be a leg id the bridge handed out (LG and 32 hex digits)")
            query["leg"] = value
        elif key == "requeue":
            if value != "1":
                raise Refusal(400, "requeue takes only 1")
            query["requeue"] = value
        else:
            raise Refusal(400, f"unknown query parameter {key[:40]!r}")
    return query


async def voice_webhook(request: Request) -> Response:
    """POST /twilio/voice: a call to one of our numbers (greet and queue it), or a caller sent back to the queue."""
    return await _answer(request, CallRequest.from_params, lambda tx, v, req, q: incoming(tx, v, req, "requeue" in q))


async def voice_status_webhook(request: Request) -> Response:
    """POST /twilio/voice/status: call progress of a caller, or of an agent's or transfer target's phone."""
    return await _answer(request, CallRequest.from_params, lambda tx, v, req, q: status(tx, v, req, q.get("leg")))


async def voice_wait_webhook(request: Request) -> Response:
    """POST /twilio/voice/wait: the queue's wait loop."""
    return await _answer(request, QueueRequest.from_params, lambda tx, v, req, _q: wait(tx, v, req))


async def voice_queue_exit_webhook(request: Request) -> Response:
    """POST /twilio/voice/queue-exit: the ``<Enqueue>`` action."""
    return await _answer(request, QueueRequest.from_params, lambda tx, v, req, _q: queue_exit(tx, v, req))


async def voice_join_webhook(request: Request) -> Response:
    """POST /twilio/voice/join: the caller, taken out of the queue for an agent who answered, joins the conference."""
    return await _answer(request, QueueRequest.from_params, lambda tx, v, req, _q: join(tx, v, req))


async def voice_conference_webhook(request: Request) -> Response:
    """POST /twilio/voice/conference: a conference status callback."""
    return await _answer(request, ConferenceEvent.from_params, lambda tx, v, req, _q: conference(tx, v, req))


async def voice_recording_webhook(request: Request) -> Response:
    """POST /twilio/voice/recording: the voicemail's ``<Record>`` action, or its recording status callback."""
    return await _answer(request, RecordingRequest.from_params, lambda tx, v, req, _q: recording(tx, v, req))
