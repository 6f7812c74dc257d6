"""Twilio's SMS webhooks: read the body within limits, check the signature, store, then acknowledge.

The two SMS endpoints are bare ASGI apps (``Webhook``): they take what they need from the ASGI scope and answer
with prebuilt messages, skipping Starlette's Request and Response objects and their send wrappers, a sizeable
share of a webhook's cost on the event loop (see README, Performance). Voice webhooks use ``verified``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from bridge import signature
from bridge.messaging import BadWebhook, InboundMessage, StatusCallback, record_inbound, record_status
from bridge.settings import Settings
from bridge.state import Bridge, bridge_of
from bridge.store import StoredEvent, Tx

log = logging.getLogger("switchboard.bridge.webhooks")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_FIELDS = 500
MAX_TOKEN = 200

Item = TypeVar("Item")
Params = list[tuple[str, str]]


class Refusal(Exception):
    """A request refused with a 4xx and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> Response:
        return PlainTextResponse(self.reason + "\n", status_code=self.status)


def twiml(body: str = EMPTY_TWIML) -> Response:
    return Response(body, media_type="text/xml; charset=utf-8")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise Refusal(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise Refusal(413, f"body is over {limit // 1024} KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refusal(413, f"body is over {limit // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_params(content_type: str, body: bytes) -> tuple[Params, bytes | None]:
    """Form fields (repeated keys kept, in order) and, for a JSON body, the raw bytes its signature covers."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == FORM:
        try:
            return parse_form(body.decode("utf-8")), None
        except UnicodeDecodeError:
            raise Refusal(400, "body is not valid UTF-8") from None
        except ValueError:
            raise Refusal(400, f"more than {MAX_FIELDS} form fields") from None
    if media_type == JSON:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Refusal(400, "body is not valid JSON") from None
        if not isinstance(payload, dict) or len(payload) > MAX_FIELDS:
            raise Refusal(400, "a JSON body must be one object of fields")
        pairs = []
        for key, value in payload.items():
            if isinstance(value, (dict, list)):
                raise Refusal(400, f"field {key[:40]!r} must be a plain value")
            pairs.append((str(key), "" if value is None else str(value)))
        if any(_has_surrogate(k) or _has_surrogate(v) for k, v in pairs):
            # "\ud800" is valid JSON but no text: it could be neither stored nor streamed as UTF-8.
            raise Refusal(400, "body has a \\u escape for a lone surrogate, which is not text")
        return pairs, body
    raise Refusal(415, f"content type must be {FORM}")


def parse_form(text: str) -> Params:
    """A form body's fields, in order, blank values kept: exactly ``parse_qsl(text, keep_blank_values=True,
    errors="strict", max_num_fields=MAX_FIELDS)``, and raising as it does (ValueError, UnicodeDecodeError).

    When no name or value holds an escaped ``&`` or ``=`` (so decoding cannot create a separator), the whole body
    is decoded at once and then split, which is about twice as fast as decoding each field on its own. Both give
    the same text: ``&`` and ``=`` are ASCII, so they never fall inside a UTF-8 sequence, and cutting the bytes
    at them cannot make valid UTF-8 invalid or the reverse.
    """
    if text.count("&") >= MAX_FIELDS:
        raise ValueError(f"more than {MAX_FIELDS} fields")
    escaped = "%" in text
    if escaped and ("%26" in text or "%3D" in text or "%3d" in text):
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    text = text.replace("+", " ")
    if escaped:
        # A form body is ASCII (its other characters percent-encoded): then unquote's split of the text into ASCII
        # runs, by regular expression, finds one run, the whole text, and decodes its bytes; this does the same
        # without the split: 16.7k fewer instructions in an inbound text's ~572k through the bridge's app
        # (callgrind).
        if text.isascii():
            text = unquote_to_bytes(text).decode("utf-8", "strict")
        else:
            text = unquote(text, encoding="utf-8", errors="strict")
    pairs = []
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((name, value))
    return pairs


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def signed_url(request: Request, settings: Settings) -> str:
    """The URL Twilio requested, as it signed it: the public base URL, the raw path and the raw query string."""
    raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    path = raw_path.decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    if settings.public_url:
        base = settings.public_url
    else:
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        base = f"{request.url.scheme}://{host}"
    return base + path + (f"?{query}" if query else "")


def check_signature(request: Request, settings: Settings, params: Params, raw_body: bytes | None) -> None:
    sig = request.headers.get("x-twilio-signature")
    if not sig:
        raise Refusal(403, "missing X-Twilio-Signature")
    _verify(
        settings,
        signed_url(request, settings),
        params,
        raw_body,
        sig,
        request.headers.get("x-twilio-webhooks-signature-settings"),
    )


async def accept_webhook(
    request: Request,
    parse: Callable[[Sequence[tuple[str, str]]], Item],
    record: Callable[[Tx, Item, str | None], list[StoredEvent] | None],
) -> Response:
    """The shape of every Twilio webhook: read, verify, parse, commit, and only then acknowledge.

    ``Webhook`` does the same as a bare ASGI app, faster: the SMS endpoints use it.
    """
    bridge = bridge_of(request)
    try:
        item, token = await verified(request, parse)
    except Refusal as refusal:
        return refusal.response()
    await bridge.store.write(lambda tx: record(tx, item, token))
    return twiml()


async def verified(request: Request, parse: Callable[[Sequence[tuple[str, str]]], Item]) -> tuple[Item, str | None]:
    """Read a webhook within limits, check its signature and parse it; returns it with its idempotency token.

    Raises Refusal (logged here) for anything Twilio would not have sent. Voice webhooks use it too.
    """
    bridge = bridge_of(request)
    try:
        try:
            body = await read_body(request, bridge.settings.max_body_bytes)
        except ClientDisconnect:  # Twilio gave up (or shut down) mid-body: nobody is left to answer
            raise Refusal(400, "the client went away before sending the whole body") from None
        params, raw_body = parse_params(request.headers.get("content-type", ""), body)
        check_signature(request, bridge.settings, params, raw_body)
        try:
            item = parse(params)
        except BadWebhook as exc:
            raise Refusal(400, str(exc)) from None
        token = request.headers.get("i-twilio-idempotency-token") or None
        if token is not None and len(token) > MAX_TOKEN:
            raise Refusal(400, "I-Twilio-Idempotency-Token is too long")
    except Refusal as refusal:
        log.info("refused %s %s: %s", request.method, request.url.path, refusal.reason)
        raise
    return item, token


_WANTED = frozenset(
    {
        b"content-length",
        b"content-type",
        b"host",
        b"x-twilio-signature",
        b"x-twilio-webhooks-signature-settings",
        b"i-twilio-idempotency-token",
    }
)
_TWIML_BODY = EMPTY_TWIML.encode("utf-8")
_TWIML_HEADERS = (
    (b"content-length", str(len(_TWIML_BODY)).encode("ascii")),
    (b"content-type", b"text/xml; charset=utf-8"),
)


class Webhook(Generic[Item]):
    """A Twilio webhook endpoint as a bare ASGI app: read, verify, parse, commit, and only then acknowledge.

    Behaves as ``accept_webhook`` does (same checks in the same order, same answers), reading the headers it needs
    straight from the scope in one pass and sending prebuilt answers.
    """

    def __init__(
        self,
        parse: Callable[[Sequence[tuple[str, str]]], Item],
        record: Callable[[Tx, Item, str | None], list[StoredEvent] | None],
    ) -> None:
        self.parse = parse
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bridge: Bridge = scope["state"]["bridge"]
        settings = bridge.settings
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in headers:  # the first of a repeated header, as Starlette's .get()
                headers[name] = value.decode("latin-1")
        try:
            body = await _receive_body(receive, headers.get(b"content-length"), settings.max_body_bytes)
            params, raw_body = parse_params(headers.get(b"content-type", ""), body)
            sig = headers.get(b"x-twilio-signature")
            if not sig:
                raise Refusal(403, "missing X-Twilio-Signature")
            if settings.public_url:
                query = scope.get("query_string", b"").decode("latin-1")
                raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
                url = settings.public_url + raw_path.decode("latin-1") + (f"?{query}" if query else "")
            else:
                url = signed_url(Request(scope), settings)
            _verify(settings, url, params, raw_body, sig, headers.get(b"x-twilio-webhooks-signature-settings"))
            try:
                item = self.parse(params)
            except BadWebhook as exc:
                raise Refusal(400, str(exc)) from None
            token = headers.get(b"i-twilio-idempotency-token") or None
            if token is not None and len(token) > MAX_TOKEN:
                raise Refusal(400, "I-Twilio-Idempotency-Token is too long")
        except Refusal as refusal:
            log.info("refused %s %s: %s", scope["method"], scope["path"], refusal.reason)
            await _answer(send, refusal.status, b"text/plain; charset=utf-8", (refusal.reason + "\n").encode("utf-8"))
            return
        record = self.record
        await bridge.store.write(lambda tx: record(tx, item, token))
        await send({"type": "http.response.start", "status": 200, "headers": list(_TWIML_HEADERS)})
        await send({"type": "http.response.body", "body": _TWIML_BODY})


async def _receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The raw body, refusing anything over ``limit`` bytes before reading it all (as ``read_body``)."""
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise Refusal(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise Refusal(413, f"body is over {limit // 1024} KiB")
    message: Message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual case: one message
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise Refusal(413, f"body is over {limit // 1024} KiB")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":  # Twilio gave up (or shut down) mid-body: as ``verified`` does
            raise Refusal(400, "the client went away before sending the whole body")
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"body is over {limit // 1024} KiB")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        message = await receive()


def _verify(
    settings: Settings, url: str, params: Params, raw_body: bytes | None, sig: str, settings_header: str | None
) -> None:
    ok = signature.validate(
        url,
        params,
        sig,
        settings.auth_token,
        raw_body=raw_body,
        settings_header=settings_header,
        shared_keys=settings.shared_keys or None,
    )
    if not ok:
        raise Refusal(403, "X-Twilio-Signature does not match: check TWILIO_AUTH_TOKEN and SWITCHBOARD_PUBLIC_URL")


async def _answer(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode("ascii")), (b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


sms_webhook = Webhook(InboundMessage.from_params, record_inbound)
"""POST /twilio/sms: an inbound text or MMS."""

sms_status_webhook = Webhook(StatusCallback.from_params, record_status)
"""POST /twilio/sms/status: a delivery status callback for one of our messages."""

FAST_PATHS: dict[str, Webhook[Any]] = {"/twilio/sms": sms_webhook, "/twilio/sms/status": sms_status_webhook}
"""The POST paths ``bridge.app.BridgeApp`` hands straight to their ``Webhook``."""
