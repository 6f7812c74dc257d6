"""Phone numbers as agents read them: national format for the team's region, international otherwise."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat


@lru_cache(maxsize=8192)
def display_number(number: str, region: str = "US") -> str:
    """``+14155550123`` → ``(415) 555-0123`` in the US, ``+1 415-555-0123`` elsewhere; anything else as given.

    Cached: parsing and formatting cost ~0.1 ms, and the inbox, the queue and the thread draw the same few hundred
    numbers over and over (a whole inbox window on every reorder)."""
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
