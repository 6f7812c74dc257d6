"""What Twilio's error codes mean, in words an agent can act on."""

from __future__ import annotations

# code: (Twilio's meaning, what the agent can do about it)
_ERRORS: dict[int, tuple[str, str]] = {
    20003: ("Authentication failed", "The bridge's Twilio credentials are wrong: tell your team lead."),
    20404: ("The requested resource was not found", "Check the account SID the bridge is configured with."),
    20429: ("Too many requests", "Twilio is rate-limiting the account; the message can be retried shortly."),
    21211: ("Invalid 'To' phone number", "Check the customer's number and try again."),
    21212: ("Invalid 'From' phone number", "The team's number is not valid for sending: tell your team lead."),
    21214: ("'To' phone number cannot be reached", "The number cannot be called; check it with the customer."),
    21408: (
        "Permission to send an SMS has not been enabled for the region",
        "Ask your team lead to enable messaging to this country in Twilio's geo permissions.",
    ),
    21602: ("Message body is required", "Type a message or attach media."),
    21603: ("'From' phone number is required", "The bridge has no number to send from: tell your team lead."),
    21604: ("'To' phone number is required", "Say who the message is for."),
    21606: (
        "The 'From' phone number is not a valid, SMS-capable phone number for your account",
        "This team number cannot send texts: tell your team lead.",
    ),
    21610: (
        "Attempt to send to unsubscribed recipient",
        "The customer texted STOP; they must text START before you can message them. Call them or use another channel.",
    ),
    21611: (
        "This 'From' number has exceeded the maximum number of queued messages",
        "Twilio's queue for this number is full; wait a minute and resend.",
    ),
    21612: ("The 'To' phone number is not currently reachable via SMS", "Call the customer instead."),
    21614: ("'To' number is not a valid mobile number", "The number is probably a landline: call instead."),
    21617: ("The concatenated message body exceeds the 1600 character limit", "Shorten the message."),
    30001: ("Queue overflow", "Resend in a minute."),
    30002: ("Account suspended", "Tell your team lead: the Twilio account is suspended."),
    30003: ("Unreachable destination handset", "The phone is off or out of coverage; try again later."),
    30004: ("Message blocked", "The customer or their carrier blocked the message; try another channel."),
    30005: ("Unknown destination handset", "The number may no longer exist; confirm it with the customer."),
    30006: ("Landline or unreachable carrier", "The number cannot receive texts: call instead."),
    30007: ("Message filtered by the carrier", "The carrier flagged it as spam; rephrase without links."),
    30008: ("Unknown error", "Delivery failed for an unknown reason; resend once, then call."),
}


def describe_error(code: int | None) -> str | None:
    """Twilio's short meaning of ``code``, if we know it."""
    if code is None:
        return None
    known = _ERRORS.get(code)
    return known[0] if known else f"Twilio error {code}"


def hint_for(code: int | None) -> str:
    """A sentence an agent can act on for ``code``."""
    if code is not None and code in _ERRORS:
        return _ERRORS[code][1]
    if code is not None:
        return f"See https://www.twilio.com/docs/errors/{code} for what Twilio error {code} means."
    return "Try again; if it keeps failing, tell your team lead."
