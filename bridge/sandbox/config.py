"""The sandbox's settings: who it plays, where its webhooks go, and how its simulated world behaves."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import phonenumbers
from starlette.requests import HTTPConnection

ACCOUNT_SID_PATTERN = re.compile(r"^AC[0-9a-fA-F]{32}$")
API_KEY_PATTERN = re.compile(r"^SK[0-9a-fA-F]{32}$")
MESSAGING_SERVICE_PATTERN = re.compile(r"^MG[0-9a-fA-F]{32}$")

DEFAULT_ACCOUNT_SID = "AC0ddba11c0ffee5a7db0c5e1ec7ab1e00"
DEFAULT_AUTH_TOKEN = "5a4db0c5a4db0c5a4db0c5a4db0c5a4d"
# San Francisco numbers in the 555-01xx block reserved for fiction: valid for `phonenumbers`, nobody's.
DEFAULT_SUPPORT_NUMBERS = ("+14155550100", "+14155550101")


def utc_now() -> datetime:
    return datetime.now(UTC)


def is_e164(number: str) -> bool:
    """True when ``number`` is a valid phone number already written in E.164 form."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return (
        phonenumbers.is_valid_number(parsed)
        and phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number
    )


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything the sandbox needs. Tests build one directly; the CLI uses ``SandboxConfig.from_env()``."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    """The account the sandbox plays: REST paths must name it and Basic auth must use it (or an API key)."""
    auth_token: str = DEFAULT_AUTH_TOKEN
    """Authenticates REST calls and signs every webhook, as Twilio's auth token does."""
    api_key_sid: str | None = None
    """An SK… API key also accepted for Basic auth (with ``api_key_secret``), as Twilio accepts API keys."""
    api_key_secret: str | None = None
    bridge_url: str | None = None
    """Base URL of the bridge; inbound texts go to ``{bridge_url}{sms_path}``. None: nothing is posted."""
    sms_path: str = "/twilio/sms"
    """The path of the team numbers' messaging webhook (Twilio's "A message comes in" URL) on the bridge."""
    public_url: str | None = None
    """The sandbox's own base URL, used in the MediaUrls it hands out. ``serve()`` fills it in when unset."""
    support_numbers: tuple[str, ...] = DEFAULT_SUPPORT_NUMBERS
    """The team's Twilio numbers (E.164): the only ``From`` for sends, the only ``To`` for inbound texts."""
    messaging_service_sid: str | None = None
    """An MG… Messaging Service owning every support number; sends may name it instead of ``From``."""
    sent_delay: float = 0.2
    """Seconds from ``queued`` to ``sent`` (or ``failed``)."""
    delivered_delay: float = 0.5
    """Seconds from ``sent`` to ``delivered`` (or ``undelivered``)."""
    accepted_delay: float = 0.05
    """Seconds from ``accepted`` to ``queued`` for sends through the Messaging Service."""
    customer_rate: float = 0.0
    """Simulated customers' unprompted texts per minute, across all customers; 0 turns them off."""
    opening_texts: int = 0
    """Texts simulated customers send as soon as the traffic starts (a second apart), before the ones at
    ``customer_rate``: a demo opens on customers already waiting rather than on an empty inbox."""
    customer_reply_delay: float = 2.0
    """Typical seconds before a simulated customer answers an agent's text (jittered ±50%)."""
    seed: int = 7
    """Seeds everything random the sandbox does, so the same seed gives the same customers and failures."""
    unreachable_numbers: Mapping[str, int] = field(default_factory=dict)
    """Numbers every text to which fails, with the error code it fails with (e.g. 30006 for a landline)."""
    undelivered_share: float = 0.05
    """Share (0-1) of other outbound texts that end ``undelivered`` with a carrier error (30003, 30005…)."""
    duplicate_callback_share: float = 0.0
    """Share (0-1) of status callbacks delivered twice, as multi-segment texts and carrier retries do."""
    reorder_callback_share: float = 0.0
    """Share (0-1) of texts whose ``sent`` callback arrives after the final one (Twilio promises no order)."""
    voice_path: str = "/twilio/voice"
    """The path of the team numbers' voice webhook (Twilio's "A call comes in" URL) on the bridge."""
    voice_status_path: str = "/twilio/voice/status"
    """Where inbound calls' progress goes (a number's "Call status changes" URL): initiated to completed."""
    voice_time_scale: float = 1.0
    """Real seconds per simulated second. Every voice duration below is simulated; tests run at 0.01 or so.
    Durations the sandbox reports (CallDuration, QueueTime, RecordingDuration…) are simulated seconds too."""
    speech_seconds_per_char: float = 0.07
    """How long ``<Say>`` takes per character: about 150 words a minute."""
    play_seconds: float = 8.0
    """How long one ``<Play>`` of an audio file lasts (the sandbox never downloads it)."""
    ring_seconds: float = 4.0
    """How long an agent's phone rings before it answers, unless ``POST /sandbox/phones`` says otherwise."""
    phones_answer: bool = True
    """Whether phones nobody configured answer at all; False leaves every call to them ringing out."""
    caller_patience: float | None = 90.0
    """Seconds a simulated caller waits in a queue before hanging up; None: they wait forever."""
    caller_talk_seconds: float | None = 45.0
    """Seconds a simulated caller talks once connected to someone, then hangs up; None: until hung up on."""
    voicemail_seconds: float = 6.0
    """Seconds a simulated caller speaks into ``<Record>`` before hanging up."""
    caller_rate: float = 0.0
    """Simulated callers' calls per minute to the team's numbers (seeded); 0 turns them off."""
    voice_duplicate_callback_share: float = 0.0
    """Share (0-1) of call and conference status callbacks delivered twice."""
    voice_reorder_callback_share: float = 0.0
    """Share (0-1) of call and conference status callbacks held back and delivered after the next one."""
    webhook_timeout: float = 15.0
    """Seconds the sandbox waits for the bridge to answer a webhook: Twilio's total budget is 15 s."""
    webhook_log_size: int = 10_000
    """How many webhook delivery attempts ``GET /sandbox/webhooks`` remembers."""
    clock: Callable[[], datetime] = utc_now
    """The wall clock used for resource dates (timezone-aware). Delays always use real time."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        found: list[str] = []
        if not ACCOUNT_SID_PATTERN.match(self.account_sid):
            found.append(f"account_sid {self.account_sid!r} is not AC followed by 32 hex digits")
        if not self.auth_token:
            found.append("auth_token is empty")
        if (self.api_key_sid is None) != (self.api_key_secret is None):
            found.append("set both api_key_sid and api_key_secret, or neither")
        if self.api_key_sid is not None and not API_KEY_PATTERN.match(self.api_key_sid):
            found.append(f"api_key_sid {self.api_key_sid!r} is not SK followed by 32 hex digits")
        service = self.messaging_service_sid
        if service is not None and not MESSAGING_SERVICE_PATTERN.match(service):
            found.append(f"messaging_service_sid {service!r} is not MG followed by 32 hex digits")
        if not self.support_numbers:
            found.append("support_numbers is empty")
        for number in (*self.support_numbers, *self.unreachable_numbers):
            if not is_e164(number):
                found.append(f"{number!r} is not a valid phone number in E.164 form")
        for name in (
            "undelivered_share",
            "duplicate_callback_share",
            "reorder_callback_share",
            "voice_duplicate_callback_share",
            "voice_reorder_callback_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                found.append(f"{name} must be between 0 and 1, not {value}")
        for name in (
            "sent_delay",
            "delivered_delay",
            "accepted_delay",
            "customer_rate",
            "customer_reply_delay",
            "speech_seconds_per_char",
            "play_seconds",
            "ring_seconds",
            "voicemail_seconds",
            "caller_rate",
            "opening_texts",
        ):
            if getattr(self, name) < 0:
                found.append(f"{name} must not be negative")
        for name in ("caller_patience", "caller_talk_seconds"):
            value = getattr(self, name)
            if value is not None and value < 0:
                found.append(f"{name} must not be negative")
        if self.voice_time_scale <= 0:
            # Zero would make every simulated wait instant, and wait-music loops would spin the event loop.
            found.append("voice_time_scale must be positive")
        if self.webhook_timeout <= 0:
            found.append("webhook_timeout must be positive")
        return found

    @property
    def sms_url(self) -> str | None:
        """Where inbound texts are posted, or None when there is no bridge."""
        return f"{self.bridge_url.rstrip('/')}{self.sms_path}" if self.bridge_url else None

    @property
    def voice_url(self) -> str | None:
        """Where inbound calls ask for their TwiML, or None when there is no bridge."""
        return f"{self.bridge_url.rstrip('/')}{self.voice_path}" if self.bridge_url else None

    @property
    def voice_status_url(self) -> str | None:
        """Where inbound calls' status callbacks go, or None when there is no bridge."""
        return f"{self.bridge_url.rstrip('/')}{self.voice_status_path}" if self.bridge_url else None

    @property
    def media_base_url(self) -> str:
        return (self.public_url or "http://127.0.0.1:8099").rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SandboxConfig:
        """The bridge's own Twilio variables, so one environment runs both; overrides win when not None.

        TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_API_KEY + TWILIO_API_SECRET,
        TWILIO_MESSAGING_SERVICE_SID, and SWITCHBOARD_SANDBOX_NUMBERS (comma-separated E.164 numbers).
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, name in (
            ("account_sid", "TWILIO_ACCOUNT_SID"),
            ("auth_token", "TWILIO_AUTH_TOKEN"),
            ("api_key_sid", "TWILIO_API_KEY"),
            ("api_key_secret", "TWILIO_API_SECRET"),
            ("messaging_service_sid", "TWILIO_MESSAGING_SERVICE_SID"),
        ):
            if env.get(name):
                values[key] = env[name]
        if env.get("SWITCHBOARD_SANDBOX_NUMBERS"):
            values["support_numbers"] = tuple(
                n.strip() for n in env["SWITCHBOARD_SANDBOX_NUMBERS"].split(",") if n.strip()
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def config_of(conn: HTTPConnection) -> SandboxConfig:
    """The running sandbox's config, from the lifespan state."""
    return cast(SandboxConfig, conn.state.config)
