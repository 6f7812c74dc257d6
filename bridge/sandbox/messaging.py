"""Programmable Messaging in the sandbox: the Message resource, its delivery lifecycle, and inbound texts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from urllib.parse import parse_qsl

import phonenumbers
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.sandbox.config import MESSAGING_SERVICE_PATTERN, SandboxConfig, config_of
from bridge.sandbox.rest import (
    API_ROOT,
    API_VERSION,
    ApiError,
    Form,
    PageQuery,
    api_endpoint,
    day_filter,
    new_sid,
    not_found,
    page_json,
    paginate,
    query_form,
    read_form,
    rfc2822,
    rfc2822_or_none,
    twilio_json,
)
from bridge.sandbox.webhooks import WebhookAttempt, WebhookPoster, is_web_url
from bridge.segments import analyze

log = logging.getLogger("switchboard.sandbox.messaging")

MAX_BODY_CHARS = 1600
MAX_MEDIA = 10
INCOMING_MESSAGE = "incoming-message"
MESSAGE_STATUS = "message-status"

# Twilio's default opt-out and opt-in keywords on long codes; the whole body, any case, must be the keyword.
STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})

# Carrier errors a text can end with. Twilio reports 30001/30002 as `failed` (the text never left Twilio)
# and the carrier's verdicts as `undelivered`.
CARRIER_ERRORS: dict[int, str] = {
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}
FAILED_CODES = frozenset({30001, 30002})
RANDOM_FAILURE_CODES = (30003, 30005, 30007, 30008)

# Message Scheduling (Messaging Services only): SendAt from 5 minutes to 35 days ahead (error 35114's page).
SCHEDULE_SOONEST = timedelta(seconds=300)
SCHEDULE_LATEST = timedelta(days=35)

# Statuses in which Twilio is still working on a text: it may not be deleted yet (error 20009).
IN_FLIGHT = frozenset({"accepted", "scheduled", "queued", "sending", "receiving"})

# US list prices: per SMS segment, per MMS.
SMS_PRICE = Decimal("-0.00790")
MMS_PRICE = Decimal("-0.02000")

# Twilio's magic test numbers (docs: "Test credentials"). The sandbox honours them with any credentials, so a
# test can reach each error path without a real account.
MAGIC_FROM_OK = "+15005550006"
MAGIC_FROM_ERRORS: dict[str, int] = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}
MAGIC_TO_ERRORS: dict[str, int] = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}

# Geo fields for the area codes simulated customers use. Twilio sends empty strings where it knows nothing.
_AREA_GEO: dict[str, tuple[str, str, str]] = {
    "415": ("SAN FRANCISCO", "CA", "94105"),
    "212": ("NEW YORK", "NY", "10001"),
    "312": ("CHICAGO", "IL", "60601"),
    "512": ("AUSTIN", "TX", "78701"),
    "206": ("SEATTLE", "WA", "98101"),
    "617": ("BOSTON", "MA", "02108"),
    "303": ("DENVER", "CO", "80202"),
    "404": ("ATLANTA", "GA", "30303"),
}


def normalize_number(text: str) -> str | None:
    """``text`` as E.164 if it is a valid number (US national forms accepted, as Twilio does), else None."""
    try:
        parsed = phonenumbers.parse(text.strip(), "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def geo_fields(prefix: str, number: str) -> list[tuple[str, str]]:
    """``FromCity``, ``FromState``, ``FromZip``, ``FromCountry`` (or the ``To…`` ones) for ``number``."""
    city = state = zip_code = country = ""
    try:
        parsed = phonenumbers.parse(number, None)
        country = phonenumbers.region_code_for_number(parsed) or ""
        if country == "US":
            city, state, zip_code = _AREA_GEO.get(str(parsed.national_number)[:3], ("", "", ""))
    except phonenumbers.NumberParseException:
        pass
    return [
        (f"{prefix}City", city),
        (f"{prefix}State", state),
        (f"{prefix}Zip", zip_code),
        (f"{prefix}Country", country),
    ]


def _invalid_from(given: str) -> ApiError:
    return ApiError(
        400,
        21212,
        f"The 'From' number {given} is not a valid phone number, shortcode, or alphanumeric sender ID.",
    )


def guess_content_type(url: str) -> str:
    guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
    return guessed or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Media:
    """One piece of a text's media; ``sid`` names it as Twilio's Media subresource (``ME…``)."""

    url: str
    content_type: str
    sid: str = field(default_factory=lambda: new_sid("ME"))


@dataclass(slots=True)
class Message:
    """One Message resource, as the sandbox holds it; ``to_json`` gives Twilio's representation."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    direction: str
    status: str
    date_created: datetime
    date_updated: datetime
    num_segments: int
    media: tuple[Media, ...] = ()
    date_sent: datetime | None = None
    messaging_service_sid: str | None = None
    price: Decimal | None = None
    error_code: int | None = None
    status_callback: str | None = None
    send_at: datetime | None = None
    """When a ``scheduled`` text is due to be queued."""

    @property
    def uri(self) -> str:
        return f"{API_ROOT}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def media_item(self, sid: str) -> Media | None:
        return next((item for item in self.media if item.sid == sid), None)

    def media_json(self, item: Media) -> dict[str, Any]:
        """Every field of the OpenAPI ``api.v2010.account.message.media`` schema for one of its media."""
        return {
            "account_sid": self.account_sid,
            "content_type": item.content_type,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_created),
            "parent_sid": self.sid,
            "sid": item.sid,
            "uri": f"{API_ROOT}/Accounts/{self.account_sid}/Messages/{self.sid}/Media/{item.sid}.json",
        }

    def to_json(self) -> dict[str, Any]:
        """Every field of the OpenAPI ``api.v2010.account.message`` schema, typed as Twilio types them."""
        base = f"{API_ROOT}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822_or_none(self.date_sent),
            "date_updated": rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": CARRIER_ERRORS.get(self.error_code) if self.error_code else None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media)),
            "num_segments": str(self.num_segments),
            "price": None if self.price is None else f"{self.price:.5f}",
            "price_unit": None if self.price is None else "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
            "to": self.to,
            "uri": self.uri,
        }

    def sandbox_json(self) -> dict[str, Any]:
        """The resource plus its media URLs (a subresource at Twilio), for ``GET /sandbox/messages``."""
        return {
            **self.to_json(),
            "media": [{"url": m.url, "content_type": m.content_type} for m in self.media],
        }


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """How one outbound text's life will go, drawn when it is created so the seed alone decides it."""

    final_status: str
    error_code: int | None
    duplicate: tuple[bool, ...]
    """Per callback in order (queued, sent, final): whether that callback is delivered twice."""
    reorder: bool
    """Deliver the ``sent`` callback after the final one."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """What happened to one inbound text: the stored message and the bridge's answer to its webhook."""

    message: Message
    webhook: WebhookAttempt | None


DeliveredHook = Callable[[Message], None]


class Messaging:
    """Holds the messages, runs each outbound text's lifecycle, and delivers inbound texts to the bridge."""

    def __init__(self, config: SandboxConfig, webhooks: WebhookPoster) -> None:
        self.config = config
        self.webhooks = webhooks
        self.messages: dict[str, Message] = {}
        """Every message by SID, oldest first (dicts keep insertion order)."""
        self.opted_out: set[tuple[str, str]] = set()
        """(support number, customer) pairs where the customer texted STOP and not yet START."""
        self.sticky_sender: dict[str, str] = {}
        """The support number each customer last texted: a Messaging Service answers from it."""
        self.delivered_hooks: list[DeliveredHook] = []
        self._texts_to: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- queries --------------------------------------------------------------------------------------------

    def get(self, sid: str) -> Message | None:
        return self.messages.get(sid)

    def newest_first(self, to: str | None = None, from_: str | None = None) -> list[Message]:
        return [
            m
            for m in reversed(self.messages.values())
            if (to is None or m.to == to) and (from_ is None or m.from_ == from_)
        ]

    # --- outbound -------------------------------------------------------------------------------------------

    def create(self, form: Form) -> Message:
        """Validate a ``POST Messages.json`` as Twilio does, store the message and start its delivery."""
        to_given = (form.get("To") or "").strip()
        from_given = (form.get("From") or "").strip()
        service = (form.get("MessagingServiceSid") or "").strip() or None
        body = form.get("Body") or ""
        media_urls = [url for url in form.getlist("MediaUrl") if url]
        if not to_given:
            raise ApiError(400, 21604, "A 'To' phone number is required.")
        if not from_given and service is None:
            raise ApiError(400, 21603, "A 'From' phone number is required.")
        if not body and not media_urls:
            raise ApiError(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY_CHARS:
            raise ApiError(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        self._check_media(media_urls)
        status_callback = self._check_status_callback(form.get("StatusCallback") or None)
        if service is not None:
            self._check_service(service)
        send_at = self._check_schedule(form, service)
        to = self._check_to(to_given)
        from_number = self._check_from(from_given) if from_given else None
        if from_number == to:
            raise ApiError(400, 21266, "'To' and 'From' numbers cannot be the same.")
        self._check_reachable(to, from_number, service)

        now = self.config.clock()
        media = tuple(Media(url=url, content_type=guess_content_type(url)) for url in media_urls)
        # Through a Messaging Service Twilio first answers `accepted`, with no sender and 0 segments yet; a
        # scheduled text (always through a service) is `scheduled`, its segments counted, its sender not chosen.
        status = "scheduled" if send_at else "accepted" if service else "queued"
        message = Message(
            sid=new_sid("MM" if media else "SM"),
            account_sid=self.config.account_sid,
            to=to,
            from_=from_number,
            body=body,
            direction="outbound-api",
            status=status,
            date_created=now,
            date_updated=now,
            num_segments=0 if status == "accepted" else self._segments(body, media),
            media=media,
            messaging_service_sid=service,
            status_callback=status_callback,
            send_at=send_at,
        )
        self.messages[message.sid] = message
        self._start(message)
        return message

    @staticmethod
    def _check_media(urls: Sequence[str]) -> None:
        if len(urls) > MAX_MEDIA:
            raise ApiError(400, 21623, f"Number of media files exceeds allowed limit: at most {MAX_MEDIA}.")
        for url in urls:
            if not is_web_url(url):
                raise ApiError(400, 21620, f"Invalid media URL(s): {url[:200]}")

    @staticmethod
    def _check_status_callback(url: str | None) -> str | None:
        """Refused at create, as Twilio does, rather than failing every callback later (or not being sendable)."""
        if url is not None and not is_web_url(url):
            raise ApiError(400, 21609, f"The StatusCallback URL {url[:200]} is not a valid URL.")
        return url

    def _check_schedule(self, form: Form, service: str | None) -> datetime | None:
        """``ScheduleType=fixed`` with ``SendAt``: when the text is due, or None when it is not scheduled."""
        schedule_type = form.get("ScheduleType") or None
        if schedule_type is None:
            return None
        if schedule_type != "fixed":
            raise ApiError(400, 35126, f"The ScheduleType {schedule_type[:20]!r} is not supported: use 'fixed'.")
        if service is None:
            raise ApiError(400, 35118, "MessagingServiceSid is required to schedule a message")
        given = (form.get("SendAt") or "").strip()
        if not given:
            raise ApiError(400, 35111, "SendAt timestamp is missing")
        window = "SendAt time must be between 300 seconds and 35 days (3024000 seconds) in the future"
        try:
            send_at = datetime.fromisoformat(given.replace("Z", "+00:00"))
            if send_at.tzinfo is None:
                send_at = send_at.replace(tzinfo=UTC)
            ahead = send_at - self.config.clock()
        except (ValueError, OverflowError):
            raise ApiError(400, 35114, f"Scheduling does not support this timestamp: {window}.") from None
        if not SCHEDULE_SOONEST <= ahead <= SCHEDULE_LATEST:
            raise ApiError(400, 35114, f"Scheduling does not support this timestamp: {window}.")
        return send_at

    def _check_service(self, service: str) -> None:
        if not MESSAGING_SERVICE_PATTERN.match(service):
            raise ApiError(400, 21705, f"The Messaging Service Sid {service} is invalid.")
        if service != self.config.messaging_service_sid:
            raise ApiError(400, 21701, f"The Messaging Service {service} does not exist.")

    def _check_to(self, given: str) -> str:
        if MAGIC_TO_ERRORS.get(given) == 21211:
            raise ApiError(400, 21211, f"The 'To' number {given} is not a valid phone number.")
        if given in MAGIC_TO_ERRORS:
            return given
        to = normalize_number(given)
        if to is None:
            raise ApiError(400, 21211, f"The 'To' number {given} is not a valid phone number.")
        return to

    def _check_from(self, given: str) -> str:
        code = MAGIC_FROM_ERRORS.get(given)
        if code == 21212:
            raise _invalid_from(given)
        if code == 21611:
            message = "This 'From' number has exceeded the maximum number of queued messages"
            raise ApiError(400, 21611, message)
        if given == MAGIC_FROM_OK:
            return given
        number = normalize_number(given) if code is None else given
        if number is None:
            raise _invalid_from(given)
        if code == 21606 or number not in self.config.support_numbers:
            raise ApiError(
                400,
                21606,
                f"The 'From' phone number provided ({number}) is not a valid message-capable Twilio phone "
                "number for this destination/account.",
            )
        return number

    def _check_reachable(self, to: str, from_number: str | None, service: str | None) -> None:
        sender = from_number or "your Messaging Service"
        code = MAGIC_TO_ERRORS.get(to)
        if code == 21612:
            raise ApiError(
                400,
                21612,
                f"The 'To' phone number: {to}, is not currently reachable using the 'From' phone number: "
                f"{sender} via SMS.",
            )
        if code == 21408:
            why = "Permission to send an SMS has not been enabled for the region indicated by the 'To' number"
            raise ApiError(400, 21408, f"{why}: {to}.")
        if code == 21614:
            raise ApiError(400, 21614, f"'To' number {to} is not a valid mobile number.")
        # A Messaging Service's opt-outs cover all of its numbers; a single number's cover that number.
        senders = self.config.support_numbers if service else (from_number,)
        if code == 21610 or any((sender_number, to) in self.opted_out for sender_number in senders):
            raise ApiError(400, 21610, "Attempt to send to unsubscribed recipient")

    @staticmethod
    def _segments(body: str, media: Sequence[Media]) -> int:
        return 1 if media else max(1, analyze(body).segments)

    def _plan(self, to: str) -> DeliveryPlan:
        # One generator per (seed, recipient, nth text to them): outcomes do not depend on how concurrent
        # sends interleave, only on the seed and each recipient's own history.
        n = self._texts_to[to]
        self._texts_to[to] += 1
        rng = random.Random(f"{self.config.seed}|delivery|{to}|{n}")
        status, code = "delivered", None
        if to in self.config.unreachable_numbers:
            code = self.config.unreachable_numbers[to]
            status = "failed" if code in FAILED_CODES else "undelivered"
        elif rng.random() < self.config.undelivered_share:
            status, code = "undelivered", rng.choice(RANDOM_FAILURE_CODES)
        duplicate = tuple(rng.random() < self.config.duplicate_callback_share for _ in range(3))
        reorder = rng.random() < self.config.reorder_callback_share
        return DeliveryPlan(final_status=status, error_code=code, duplicate=duplicate, reorder=reorder)

    def _start(self, message: Message) -> None:
        plan = self._plan(message.to)
        task = asyncio.create_task(self._deliver(message, plan), name=f"deliver {message.sid}")
        self._track(task)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox task %s failed", task.get_name(), exc_info=task.exception())

    def _set_status(self, message: Message, status: str, error_code: int | None = None) -> None:
        now = self.config.clock()
        message.status = status
        message.date_updated = now
        if error_code is not None:
            message.error_code = error_code
        if status == "sent":
            message.date_sent = now
            message.price = MMS_PRICE if message.media else SMS_PRICE * message.num_segments

    async def _deliver(self, message: Message, plan: DeliveryPlan) -> None:
        """queued → sent → delivered (or failed / undelivered), with a status callback for each step."""
        if message.status in ("accepted", "scheduled"):
            waiting = message.status
            await asyncio.sleep(self._wait_to_queue(message))
            if message.status != waiting:
                return  # canceled meanwhile
            # Sticky sender: the service answers from the number this customer last texted.
            default = self.config.support_numbers[0]
            message.from_ = message.from_ or self.sticky_sender.get(message.to, default)
            message.num_segments = self._segments(message.body, message.media)
            self._set_status(message, "queued")
            await self._callback(message, duplicate=plan.duplicate[0])
        await asyncio.sleep(self.config.sent_delay)
        if message.status != "queued":
            return  # canceled meanwhile
        if plan.final_status == "failed":
            self._set_status(message, "failed", plan.error_code)
            await self._callback(message, duplicate=plan.duplicate[2])
            return
        self._set_status(message, "sent")
        held = self.status_params(message)
        if not plan.reorder:
            await self._callback(message, duplicate=plan.duplicate[1])
        await asyncio.sleep(self.config.delivered_delay)
        self._set_status(message, plan.final_status, plan.error_code)
        await self._callback(message, duplicate=plan.duplicate[2])
        if plan.reorder:
            await self._callback(message, duplicate=plan.duplicate[1], params=held)
        if message.status == "delivered":
            for hook in self.delivered_hooks:
                hook(message)

    def _wait_to_queue(self, message: Message) -> float:
        """Seconds an ``accepted`` text waits for its service, or a ``scheduled`` one for its ``SendAt``."""
        if message.send_at is None:
            return self.config.accepted_delay
        return max(0.0, (message.send_at - self.config.clock()).total_seconds())

    def status_params(self, message: Message) -> list[tuple[str, str]]:
        """A status callback's parameters for the message as it is now, as Twilio sends them."""
        params = [
            ("SmsSid", message.sid),
            ("SmsStatus", message.status),
            ("MessageStatus", message.status),
            ("To", message.to),
            ("MessageSid", message.sid),
            ("AccountSid", message.account_sid),
            ("From", message.from_ or ""),
            ("ApiVersion", API_VERSION),
        ]
        if message.messaging_service_sid:
            params.append(("MessagingServiceSid", message.messaging_service_sid))
        if message.status in ("failed", "undelivered") and message.error_code is not None:
            params.append(("ErrorCode", str(message.error_code)))
        if message.status in ("delivered", "undelivered"):
            # The carrier's delivery receipt "done date", YYMMDDhhmm.
            params.append(("RawDlrDoneDate", message.date_updated.strftime("%y%m%d%H%M")))
        return params

    async def _callback(
        self, message: Message, *, duplicate: bool = False, params: list[tuple[str, str]] | None = None
    ) -> None:
        if not message.status_callback:
            return
        payload = params if params is not None else self.status_params(message)
        # A duplicate is a second delivery with its own idempotency token, as when each segment of a long text
        # gets its own receipt: receivers must tolerate it by status, not by token.
        for _ in range(2 if duplicate else 1):
            await self.webhooks.post(message.status_callback, payload, MESSAGE_STATUS)

    def update(self, sid: str, form: Form, path: str) -> Message:
        """``POST Messages/{Sid}.json``: ``Body=""`` redacts; ``Status=canceled`` stops a scheduled text."""
        message = self.messages.get(sid)
        if message is None:
            raise not_found(path)
        body = form.get("Body")
        status = form.get("Status")
        if (body is None) == (status is None):
            raise ApiError(400, 30400, "Parameters are not valid: send Body (empty, to redact) or Status")
        if body is not None:
            if body != "":
                raise ApiError(400, 30400, "Parameters are not valid: Body must be empty to redact")
            message.body = ""
            message.date_updated = self.config.clock()
            return message
        if status != "canceled":
            raise ApiError(400, 30400, f"Parameters are not valid: Status {status!r} is not 'canceled'.")
        # Only a text still waiting for its SendAt: once queued it is Twilio's to send (error 30409's page).
        if message.status != "scheduled":
            raise ApiError(400, 30409, "This message cannot be canceled")
        self._set_status(message, "canceled")
        task = asyncio.create_task(self._callback(message), name=f"canceled {message.sid}")
        self._track(task)
        return message

    def delete(self, sid: str, path: str) -> None:
        """``DELETE Messages/{Sid}.json``: forget a text, and its media with it, once Twilio is done with it."""
        message = self._finished_message(sid, path)
        del self.messages[message.sid]

    def delete_media(self, message_sid: str, media_sid: str, path: str) -> None:
        """``DELETE Messages/{MessageSid}/Media/{Sid}.json``: the media goes, the text stays."""
        message = self._finished_message(message_sid, path)
        if message.media_item(media_sid) is None:
            raise not_found(path)
        message.media = tuple(item for item in message.media if item.sid != media_sid)

    def _finished_message(self, sid: str, path: str) -> Message:
        message = self.messages.get(sid)
        if message is None:
            raise not_found(path)
        # Twilio's 20009: "You attempted to delete a call or message resource before it was completed." The
        # sandbox reads "completed" as past every in-flight status (`sent` is only waiting for its receipt).
        if message.status in IN_FLIGHT:
            raise ApiError(400, 20009, "Cannot delete this resource before it is complete")
        return message

    # --- inbound --------------------------------------------------------------------------------------------

    async def receive(self, from_number: str, to: str, body: str, media: Sequence[Media] = ()) -> Inbound:
        """A customer's text arrives at one of the team's numbers: store it and post it to the bridge."""
        now = self.config.clock()
        segments = self._segments(body, media)
        message = Message(
            sid=new_sid("MM" if media else "SM"),
            account_sid=self.config.account_sid,
            to=to,
            from_=from_number,
            body=body,
            direction="inbound",
            status="received",
            date_created=now,
            date_updated=now,
            date_sent=now,
            num_segments=segments,
            media=tuple(media),
            messaging_service_sid=self.config.messaging_service_sid,
            price=MMS_PRICE if media else SMS_PRICE * segments,
        )
        self.messages[message.sid] = message
        self.sticky_sender[from_number] = to
        keyword = body.strip().upper()
        opt_out_type = None
        if keyword in STOP_KEYWORDS:
            self.opted_out.add((to, from_number))
            opt_out_type = "STOP"
        elif keyword in START_KEYWORDS:
            self.opted_out.discard((to, from_number))
            opt_out_type = "START"
        url = self.config.sms_url
        if url is None:
            return Inbound(message, None)
        attempt = await self.webhooks.post(url, self.inbound_params(message, opt_out_type), INCOMING_MESSAGE)
        if attempt.ok:
            self._reply_from_twiml(message, attempt)
        return Inbound(message, attempt)

    def inbound_params(self, message: Message, opt_out_type: str | None = None) -> list[tuple[str, str]]:
        """The messaging webhook's parameters, in the order Twilio sends them."""
        sid = message.sid
        from_number = message.from_ or ""
        to_geo = dict(geo_fields("To", message.to))
        from_geo = dict(geo_fields("From", from_number))
        params = [
            ("ToCountry", to_geo["ToCountry"]),
            ("ToState", to_geo["ToState"]),
            ("SmsMessageSid", sid),
            ("NumMedia", str(len(message.media))),
            ("ToCity", to_geo["ToCity"]),
            ("FromZip", from_geo["FromZip"]),
            ("SmsSid", sid),
            ("FromState", from_geo["FromState"]),
            ("SmsStatus", "received"),
            ("FromCity", from_geo["FromCity"]),
            ("Body", message.body),
            ("FromCountry", from_geo["FromCountry"]),
            ("To", message.to),
        ]
        if message.messaging_service_sid:
            params.append(("MessagingServiceSid", message.messaging_service_sid))
            # Advanced Opt-Out (a Messaging Service feature) tells the webhook which keyword matched.
            if opt_out_type:
                params.append(("OptOutType", opt_out_type))
        params += [("ToZip", to_geo["ToZip"]), ("NumSegments", str(message.num_segments))]
        for n, item in enumerate(message.media):
            params += [(f"MediaContentType{n}", item.content_type), (f"MediaUrl{n}", item.url)]
        params += [("MessageSid", sid), ("AccountSid", message.account_sid), ("From", from_number)]
        params.append(("ApiVersion", API_VERSION))
        return params

    def _reply_from_twiml(self, inbound: Message, attempt: WebhookAttempt) -> None:
        """Send the ``<Message>`` verbs of the bridge's TwiML answer, as Twilio does (``outbound-reply``)."""
        text = attempt.response_text.strip()
        if "xml" not in attempt.content_type.lower() or not text:
            return
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            log.warning("TwiML from %s does not parse (Twilio error 12100)", attempt.url)
            return
        if root.tag != "Response":
            return
        for verb in root.iter("Message"):
            body_el = verb.find("Body")
            body = (body_el.text if body_el is not None else verb.text) or ""
            media = tuple(
                Media(url=(el.text or "").strip(), content_type=guess_content_type(el.text or ""))
                for el in verb.findall("Media")
                if (el.text or "").strip()
            )
            to = verb.get("to") or inbound.from_ or ""
            from_number = verb.get("from") or inbound.to
            if not body.strip() and not media:
                continue
            if (from_number, to) in self.opted_out:
                # Twilio drops it with error 21610; a STOP is answered only by Twilio's own confirmation.
                log.info("TwiML reply to %s not sent: they opted out (21610)", to)
                continue
            now = self.config.clock()
            reply = Message(
                sid=new_sid("MM" if media else "SM"),
                account_sid=self.config.account_sid,
                to=to,
                from_=from_number,
                body=body.strip(),
                direction="outbound-reply",
                status="queued",
                date_created=now,
                date_updated=now,
                num_segments=self._segments(body, media),
                media=media,
                status_callback=verb.get("action") or verb.get("statusCallback"),
            )
            self.messages[reply.sid] = reply
            self._start(reply)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no delivery is in flight (for tests and demos); bounded by ``timeout``."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def messaging_of(conn: HTTPConnection) -> Messaging:
    return cast(Messaging, conn.state.messaging)


def _filters(form: Form) -> list[tuple[str, str]]:
    """The list filters the request used, in Twilio's order, for the page URIs."""
    names = ("To", "From", "DateSent", "DateSent<", "DateSent>")
    return [(name, value) for name in names if (value := form.get(name))]


# --- REST handlers (wrapped by api_endpoint: authenticated, account checked) --------------------------------


async def create_message(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Messages.json"""
    message = messaging_of(request).create(await read_form(request))
    return twilio_json(message.to_json(), status=201)


async def fetch_message(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"""
    message = messaging_of(request).get(request.path_params["sid"])
    if message is None:
        raise not_found(request.url.path)
    return twilio_json(message.to_json())


async def update_message(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"""
    form = await read_form(request)
    message = messaging_of(request).update(request.path_params["sid"], form, request.url.path)
    return twilio_json(message.to_json())


async def delete_message(request: Request) -> Response:
    """DELETE /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"""
    messaging_of(request).delete(request.path_params["sid"], request.url.path)
    return Response(status_code=204)


async def list_messages(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Messages.json: newest first, filtered, paged as Twilio pages."""
    form = query_form(request)
    query = PageQuery.from_form(form)
    messages = messaging_of(request).newest_first(to=form.get("To") or None, from_=form.get("From") or None)
    sent_on = day_filter(form, "DateSent")
    if sent_on is not None:
        messages = [m for m in messages if sent_on(m.date_sent)]
    page = paginate(messages, lambda m: m.sid, query)
    path = f"{API_ROOT}/Accounts/{request.path_params['account_sid']}/Messages.json"
    return twilio_json(page_json("messages", page, Message.to_json, lambda m: m.sid, path, _filters(form)))


def _parent(request: Request) -> Message:
    """The message a Media request is about; Twilio's 404 for the whole path when there is none."""
    message = messaging_of(request).get(request.path_params["message_sid"])
    if message is None:
        raise not_found(request.url.path)
    return message


async def list_media(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media.json: in the order they were given."""
    form = query_form(request)
    query = PageQuery.from_form(form)
    message = _parent(request)
    created_on = day_filter(form, "DateCreated")
    media = [m for m in message.media if created_on is None or created_on(message.date_created)]
    page = paginate(media, lambda m: m.sid, query)
    path = f"{API_ROOT}/Accounts/{message.account_sid}/Messages/{message.sid}/Media.json"
    names = ("DateCreated", "DateCreated<", "DateCreated>")
    filters = [(name, value) for name in names if (value := form.get(name))]
    return twilio_json(page_json("media_list", page, message.media_json, lambda m: m.sid, path, filters))


async def fetch_media(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{Sid}.json"""
    message = _parent(request)
    item = message.media_item(request.path_params["sid"])
    if item is None:
        raise not_found(request.url.path)
    return twilio_json(message.media_json(item))


async def delete_media(request: Request) -> Response:
    """DELETE /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{Sid}.json"""
    params = request.path_params
    messaging_of(request).delete_media(params["message_sid"], params["sid"], request.url.path)
    return Response(status_code=204)


# --- sandbox control endpoints (no Twilio equivalent; for tests, demos and people) --------------------------


class BadInjection(ValueError):
    """A ``POST /sandbox/sms`` the sandbox refuses; the message is the one-line reason."""


async def _injection_fields(request: Request) -> tuple[str, str, str, list[str]]:
    raw = await request.body()
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        try:
            payload = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BadInjection("body is not valid JSON") from None
        except RecursionError:
            raise BadInjection("body is nested too deeply") from None
        if not isinstance(payload, dict):
            raise BadInjection("a JSON body must be an object with from, to and body")
        media = payload.get("media_url") or []
        if isinstance(media, str):
            media = [media]
        if not isinstance(media, list) or not all(isinstance(m, str) for m in media):
            raise BadInjection("media_url must be a URL or a list of URLs")
        values = [payload.get(k, "") for k in ("from", "to", "body")]
        if not all(isinstance(v, str) for v in values):
            raise BadInjection("from, to and body must be strings")
        for name, value in (*zip(("from", "to", "body"), values, strict=True), *(("media_url", m) for m in media)):
            _check_unicode(name, value)
        return str(values[0]), str(values[1]), str(values[2]), list(media)
    try:
        form = Form(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
    except UnicodeDecodeError:
        raise BadInjection("body is not valid UTF-8") from None
    except ValueError:
        raise BadInjection("too many form fields") from None
    return form.get("from") or "", form.get("to") or "", form.get("body") or "", form.getlist("media_url")


def _check_unicode(name: str, value: str) -> None:
    """JSON's ``\\ud800`` escapes make lone surrogates, which no webhook (form-encoded UTF-8) can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInjection(f"{name} is not valid Unicode: it has a lone surrogate") from None


async def inject_sms(request: Request) -> Response:
    """POST /sandbox/sms: make a customer text one of the team's numbers now."""
    config = config_of(request)
    try:
        from_given, to_given, body, media_urls = await _injection_fields(request)
        from_number = normalize_number(from_given) if from_given else None
        if from_number is None:
            raise BadInjection(f"from {from_given[:40]!r} is not a valid phone number")
        to = normalize_number(to_given) if to_given else None
        if to is None:
            raise BadInjection(f"to {to_given[:40]!r} is not a valid phone number")
        if to not in config.support_numbers:
            ours = ", ".join(config.support_numbers)
            raise BadInjection(f"to {to} is not one of the team's numbers: {ours}")
        if not body and not media_urls:
            raise BadInjection("a text needs a body or a media_url")
        if len(body) > MAX_BODY_CHARS:
            raise BadInjection(f"body is over {MAX_BODY_CHARS} characters")
        if len(media_urls) > 10:
            raise BadInjection("at most 10 media_url")
    except BadInjection as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    media = [Media(url=url, content_type=guess_content_type(url)) for url in media_urls]
    inbound = await messaging_of(request).receive(from_number, to, body, media)
    webhook = inbound.webhook
    return JSONResponse(
        {
            "message_sid": inbound.message.sid,
            "webhook_url": webhook.url if webhook else None,
            "webhook_status": webhook.status_code if webhook else None,
            "webhook_error": webhook.error if webhook else None,
        }
    )


async def sandbox_messages(request: Request) -> Response:
    """GET /sandbox/messages: everything the sandbox holds, newest first; ``to`` / ``from`` filter."""
    to = request.query_params.get("to") or None
    from_ = request.query_params.get("from") or None
    messages = messaging_of(request).newest_first(to=to, from_=from_)
    return JSONResponse([m.sandbox_json() for m in messages])


def routes() -> list[Route]:
    account = f"{API_ROOT}/Accounts/{{account_sid}}"
    media = f"{account}/Messages/{{message_sid}}/Media"
    return [
        Route(f"{account}/Messages.json", api_endpoint(create_message), methods=["POST"]),
        Route(f"{account}/Messages.json", api_endpoint(list_messages), methods=["GET"]),
        Route(f"{account}/Messages/{{sid}}.json", api_endpoint(fetch_message), methods=["GET"]),
        Route(f"{account}/Messages/{{sid}}.json", api_endpoint(update_message), methods=["POST"]),
        Route(f"{account}/Messages/{{sid}}.json", api_endpoint(delete_message), methods=["DELETE"]),
        Route(f"{account}/Messages/{{message_sid}}/Media.json", api_endpoint(list_media), methods=["GET"]),
        Route(f"{media}/{{sid}}.json", api_endpoint(fetch_media), methods=["GET"]),
        Route(f"{media}/{{sid}}.json", api_endpoint(delete_media), methods=["DELETE"]),
        Route("/sandbox/sms", inject_sms, methods=["POST"]),
        Route("/sandbox/messages", sandbox_messages, methods=["GET"]),
    ]
