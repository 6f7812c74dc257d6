"""Phone numbers as agents type them, turned into the E.164 form Twilio wants — or a reason they can't be.

``parse_e164`` is the only door: everything stored or sent to Twilio has been through it. The reasons it gives are
sentences an agent can act on ("+1 415 555 01 is too short for a US number"), not the library's error codes.
"""

from __future__ import annotations

from typing import Final

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from bridge.types import E164

MAX_INPUT: Final = 40  # generous for "+1 (415) 555-0123 ext. 99"-style typing; anything longer is not a number

_PARSE_REASONS: Final = {
    NumberParseException.INVALID_COUNTRY_CODE: "has no country code we know; start it with + and the country code",
    NumberParseException.NOT_A_NUMBER: "is not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "is too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "is too short",
    NumberParseException.TOO_LONG: "is too long",
}
_LENGTH_REASONS: Final = {
    ValidationResult.TOO_SHORT: "is too short",
    ValidationResult.TOO_LONG: "is too long",
    ValidationResult.INVALID_LENGTH: "has the wrong number of digits",
    ValidationResult.INVALID_COUNTRY_CODE: "has no country code we know; start it with + and the country code",
}


class InvalidNumber(ValueError):
    """The text is not a dialable number. ``str(exc)`` is one sentence naming the input and what is wrong."""


def _shown(text: str) -> str:
    # Quote the input back without letting control characters or a huge paste through.
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:MAX_INPUT])
    return repr(clean + ("…" if len(text) > MAX_INPUT else ""))


def parse_e164(text: str, default_region: str = "US") -> E164:
    """``text`` as E.164 (``+14155550123``). A number without ``+`` is read as a ``default_region`` number."""
    stripped = text.strip()
    if not stripped:
        raise InvalidNumber("no phone number was given")
    if len(stripped) > MAX_INPUT or not stripped.isprintable():
        raise InvalidNumber(f"{_shown(stripped)} is not a phone number")
    region = default_region.upper()
    try:
        number = phonenumbers.parse(stripped, region)
    except NumberParseException as exc:
        raise InvalidNumber(
            f"{_shown(stripped)} {_PARSE_REASONS.get(exc.error_type, 'is not a phone number')}"
        ) from None
    where = phonenumbers.region_code_for_number(number) or region
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason in _LENGTH_REASONS:
        raise InvalidNumber(f"{_shown(stripped)} {_LENGTH_REASONS[reason]} for a {where} number")
    if not phonenumbers.is_valid_number(number):
        raise InvalidNumber(f"{_shown(stripped)} is not a number in use in {where}")
    return E164(phonenumbers.format_number(number, PhoneNumberFormat.E164))
