"""Numbers as agents type them become E.164, or a sentence saying what is wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.phones import InvalidNumber, parse_e164
from console.phones import display_number, region_name


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("+14155550123", "US", "+14155550123"),
        ("(415) 555-0123", "US", "+14155550123"),
        (" 415.555.0123 ", "us", "+14155550123"),
        ("1 415 555 0123", "US", "+14155550123"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+15005550006", "US", "+15005550006"),  # Twilio's magic test numbers pass: Twilio decides about them
    ],
)
def test_parses_to_e164(typed: str, region: str, e164: str) -> None:
    assert parse_e164(typed, region) == e164


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "no phone number was given"),
        ("   ", "no phone number was given"),
        ("hello", "'hello' is not a phone number"),
        ("+1 415 555", "'+1 415 555' is too short for a US number"),
        ("+1 415 555 01234567", "is too long for a US number"),
        ("+999 1234567", "has no country code we know"),
        ("+1 123 555 0123", "is not a number in use in US"),
        ("415\x1b[31m5550123", "is not a phone number"),
        ("1" * 200, "is not a phone number"),
    ],
)
def test_refusals_say_what_is_wrong(typed: str, reason: str) -> None:
    with pytest.raises(InvalidNumber) as caught:
        parse_e164(typed)
    message = str(caught.value)
    assert reason in message
    assert "\x1b" not in message and len(message) < 120
    assert "(1)" not in message  # not the library's numbered error codes


def test_display_and_region() -> None:
    assert display_number("+14155550123") == "(415) 555-0123"
    assert display_number("+442079460958") == "+44 20 7946 0958"
    assert display_number("+442079460958", "GB") == "020 7946 0958"
    assert display_number("whatsapp:+1415") == "whatsapp:+1415"
    assert region_name("+442079460958") == "GB"
    assert region_name("nonsense") is None


@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        number = parse_e164(text)
    except InvalidNumber as exc:
        assert str(exc)
    else:
        assert number.startswith("+") and number[1:].isdigit()
        assert parse_e164(number) == number
