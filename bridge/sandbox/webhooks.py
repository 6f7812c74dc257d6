"""Webhooks as Twilio sends them: form-encoded POSTs signed with the auth token, each attempt logged."""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import httpx

from bridge.sandbox.rest import rfc2822
from bridge.signature import compute_signature

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=UTF-8"
USER_AGENT = "TwilioProxy/1.1"
RESPONSE_KEEP_CHARS = 4000
MAX_URL_CHARS = 4000
# A DNS name: dot-separated labels of letters, digits and inner hyphens. No underscores: Twilio refuses them in
# a StatusCallback's host name (its error 21609 documentation).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")


def is_web_url(url: str) -> bool:
    """Whether Twilio could fetch or post to ``url``: http(s), a valid host name or IP address, a valid port.

    Parsed the way the poster's httpx will parse it, so a URL accepted here can always be sent (or at least
    fail as a connection would). Non-ASCII and spaces in the path or query are fine: httpx percent-encodes them.
    """
    if len(url) > MAX_URL_CHARS:
        return False
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError):  # UnicodeError: a lone surrogate, which UTF-8 cannot encode
        return False
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return False
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return False
    host = parsed.raw_host.decode("ascii", "replace")  # IDNA-encoded: xn--… for a non-ASCII name
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None
    return True


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST the sandbox made (or tried to make) to a webhook URL."""

    at: datetime
    kind: str
    """``incoming-message``, ``message-status``, or a voice kind (``voice-request``, ``call-status``…)."""
    url: str
    params: tuple[tuple[str, str], ...]
    """For a GET, the parameters Twilio appended to the URL's query string."""
    idempotency_token: str
    status_code: int | None
    """The HTTP status the receiver answered, or None when no answer came (see ``error``)."""
    ms: float
    error: str | None = None
    method: str = "POST"
    content_type: str = ""
    response_text: str = field(default="", repr=False)
    """The start of the receiver's answer (TwiML, for messaging webhooks)."""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": rfc2822(self.at),
            "kind": self.kind,
            "url": self.url,
            "message_sid": self.param("MessageSid"),
            "message_status": self.param("MessageStatus") or self.param("SmsStatus"),
            "call_sid": self.param("CallSid"),
            "conference_sid": self.param("ConferenceSid"),
            "method": self.method,
            "status_code": self.status_code,
            "ms": round(self.ms, 1),
            "error": self.error,
            "idempotency_token": self.idempotency_token,
            "params": [list(pair) for pair in self.params],
        }


class WebhookPoster:
    """Posts signed webhooks through one shared httpx client and remembers every attempt."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        auth_token: str,
        clock: Callable[[], datetime],
        *,
        timeout: float = 15.0,
        log_size: int = 10_000,
    ) -> None:
        self.http = http
        self.auth_token = auth_token
        self.clock = clock
        # Twilio gives a webhook 15 s in all, at most 10 s of it to connect (its error 11205 documentation).
        self.timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        self.log: deque[WebhookAttempt] = deque(maxlen=log_size)

    def headers_for(self, url: str, params: Sequence[tuple[str, str]], token: str) -> dict[str, str]:
        return {
            "Content-Type": FORM_CONTENT_TYPE,
            "Accept": "*/*",
            "User-Agent": USER_AGENT,
            "X-Twilio-Signature": compute_signature(url, params, self.auth_token),
            "I-Twilio-Idempotency-Token": token,
            "X-Home-Region": "us1",
        }

    async def post(self, url: str, params: Sequence[tuple[str, str]], kind: str) -> WebhookAttempt:
        """POST ``params`` to ``url``, signed for exactly that URL; failures are logged, never raised."""
        attempt, _ = await self.request(url, params, kind)
        return attempt

    async def request(
        self, url: str, params: Sequence[tuple[str, str]], kind: str, method: str = "POST", keep: int = 0
    ) -> tuple[WebhookAttempt, str]:
        """Send a webhook by POST (form body) or GET (query string); the attempt and up to ``keep`` chars of answer.

        For a GET, Twilio appends its parameters to the configured URL's query string and signs that whole URL
        with no body parameters (PROTOCOL.md 1.2), so that is what is signed here.
        """
        # A `#ct=…` connection-override fragment never reaches the receiver, so it is neither sent nor signed.
        target = url.split("#", 1)[0]
        body: bytes | None = urlencode(params).encode("utf-8")
        signed: Sequence[tuple[str, str]] = params
        if method == "GET":
            if params:
                target = f"{target}{'&' if '?' in target else '?'}{urlencode(params)}"
            body, signed = None, ()
        token = str(uuid.uuid4())
        at = self.clock()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        content_type = ""
        text = ""
        try:
            # Sign exactly the URL httpx sends: it percent-encodes spaces and non-ASCII in the path and query,
            # and a receiver can only rebuild the URL it received.
            target = str(httpx.URL(target))
            headers = self.headers_for(target, signed, token)
            if body is None:
                del headers["Content-Type"]
            response = await self.http.request(method, target, content=body, headers=headers, timeout=self.timeout)
            status = response.status_code
            content_type = response.headers.get("content-type", "")
            text = response.text
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            # InvalidURL is not an HTTPError (nor is the UnicodeError of a URL with a lone surrogate): a URL
            # httpx cannot parse must fail this attempt, not the delivery task or call that made it.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        attempt = WebhookAttempt(
            at=at,
            kind=kind,
            url=target,
            params=tuple(params),
            idempotency_token=token,
            status_code=status,
            ms=(time.perf_counter() - started) * 1000,
            error=error,
            method=method,
            content_type=content_type,
            response_text=text[:RESPONSE_KEEP_CHARS],
        )
        self.log.append(attempt)
        return attempt, text[: max(keep, 0)]

    def attempts(
        self, message_sid: str | None = None, kind: str | None = None, call_sid: str | None = None
    ) -> list[WebhookAttempt]:
        """Logged attempts in the order they were made, optionally for one message or call, or of one kind."""
        return [
            a
            for a in self.log
            if message_sid is None or a.param("MessageSid") == message_sid
            if call_sid is None or a.param("CallSid") == call_sid
            if kind is None or a.kind == kind
        ]
