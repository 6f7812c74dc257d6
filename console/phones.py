"""Phone numbers as agents read them: national format for the team's region, international otherwise."""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat


def display_number(number: str, region: str = "US") -> str:
    """``+14155550123`` → ``(415) 555-0123`` in the US, ``+1 415-555-0123`` elsewhere; anything else as given."""
    try:
        parsed = phonenumbers.parse(number, region.upper())
    except NumberParseException:
        return number
    if not phonenumbers.is_possible_number(parsed):
        return number
    local = phonenumbers.region_code_for_number(parsed) == region.upper()
    return phonenumbers.format_number(parsed, PhoneNumberFormat.NATIONAL if local else PhoneNumberFormat.INTERNATIONAL)


def region_name(number: str) -> str | None:
    """Where a number is from, as phonenumbers knows it (``"GB"``), or None."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None)) or None
    except NumberParseException:
        return None
