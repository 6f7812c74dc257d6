"""Test helpers: Twilio-shaped webhook parameters, signed as Twilio signs them."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from urllib.parse import urlencode

from bridge.signature import compute_signature

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
OUR_NUMBER = "+14155550100"
CUSTOMER = "+14155550123"


def message_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def inbound_params(
    body: str = "Hello, where is my order?",
    sid: str | None = None,
    from_: str = CUSTOMER,
    to: str = OUR_NUMBER,
    media: Sequence[tuple[str, str]] = (),
    **extra: str,
) -> list[tuple[str, str]]:
    """An inbound-SMS webhook's parameters, as Twilio sends them."""
    sid = sid or message_sid("MM" if media else "SM")
    params = [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", sid),
        ("NumMedia", str(len(media))),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", to),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", from_),
        ("ApiVersion", "2010-04-01"),
    ]
    for n, (url, content_type) in enumerate(media):
        params += [(f"MediaUrl{n}", url), (f"MediaContentType{n}", content_type)]
    params += list(extra.items())
    return params


def status_params(sid: str, status: str, error_code: int | None = None, to: str = CUSTOMER) -> list[tuple[str, str]]:
    params = [
        ("AccountSid", ACCOUNT_SID),
        ("From", OUR_NUMBER),
        ("To", to),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("ApiVersion", "2010-04-01"),
    ]
    if error_code is not None:
        params.append(("ErrorCode", str(error_code)))
    return params


def signed(url: str, params: Sequence[tuple[str, str]], token: str = AUTH_TOKEN) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook POST to ``url``, signed as Twilio would."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
        "X-Twilio-Signature": compute_signature(url, params, token),
        "I-Twilio-Idempotency-Token": secrets.token_hex(16),
        "User-Agent": "TwilioProxy/1.1",
    }
    return urlencode(params).encode(), headers
