"""The bridge's settings: environment first (12-factor), then flags; frozen once loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

DEFAULT_API_BASE = "https://api.twilio.com"


def default_data_dir() -> Path:
    """Where the bridge keeps its event log when neither a flag nor SWITCHBOARD_DATA_DIR says."""
    return Path(platformdirs.user_data_dir("switchboard-bridge", appauthor=False))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the bridge needs to run. Load with ``Settings.from_env()``; override with ``with_()``."""

    data_dir: Path = field(default_factory=default_data_dir)
    """Holds ``bridge.db``, the event log and current state (SWITCHBOARD_DATA_DIR)."""
    account_sid: str = ""
    """The Twilio account (TWILIO_ACCOUNT_SID)."""
    auth_token: str = ""
    """Signs Twilio's webhooks, and authenticates REST calls unless an API key is set (TWILIO_AUTH_TOKEN)."""
    api_key: str | None = None
    """An SK… API key used for REST calls instead of the auth token (TWILIO_API_KEY)."""
    api_secret: str | None = None
    """The API key's secret (TWILIO_API_SECRET)."""
    public_url: str | None = None
    """The base URL Twilio calls, e.g. https://support.example.com; signatures are checked against it. Unset:
    the URL the request arrived on (fine on loopback, wrong behind a proxy) (SWITCHBOARD_PUBLIC_URL)."""
    api_base: str = DEFAULT_API_BASE
    """Twilio's REST API; the sandbox's URL in demos and tests (TWILIO_API_BASE)."""
    messaging_service_sid: str | None = None
    """Send replies through this Messaging Service instead of from the conversation's number
    (TWILIO_MESSAGING_SERVICE_SID)."""
    region: str = "US"
    """The team's home region: how numbers typed without a country code are read (SWITCHBOARD_REGION)."""
    shared_keys: Mapping[str, str] = field(default_factory=dict)
    """SharedKey id → secret, for webhooks signed with X-Twilio-Webhooks-Signature-Settings
    (SWITCHBOARD_SHARED_KEYS="KEYID:secret,KEYID2:secret2")."""
    max_body_bytes: int = 64 * 1024
    """Webhook bodies larger than this are refused with 413."""
    stream_queue_size: int = 2048
    """Frames buffered per console before a stalled console is disconnected (it resumes from its cursor)."""
    rest_retries: int = 4
    """Retries of a REST call after connection errors, 429 and 5xx, with jittered exponential backoff."""
    rest_backoff: float = 0.25
    """First backoff delay in seconds; doubled each retry, with full jitter."""
    rest_timeout: float = 15.0
    """Seconds to wait for Twilio's REST API."""
    revocation_poll: float = 1.0
    """Seconds between checks for revoked agents (their open streams are closed)."""
    config_path: Path | None = None
    """A TOML file with the call queues, their opening hours and numbers (SWITCHBOARD_CONFIG; see bridge/queues.py).
    Unset: one "support" queue for every number, always open."""
    presence_grace: float = 30.0
    """Seconds an agent with no console connected stays available (or away) before going offline
    (SWITCHBOARD_PRESENCE_GRACE); a console that reconnects within it changes nothing."""
    ring_timeout: int = 20
    """Seconds an agent's or transfer target's phone rings before it counts as not answering."""
    auto_offer: bool = False
    """Offer the oldest waiting call to the longest-idle available agent (SWITCHBOARD_AUTO_OFFER=1)."""
    offer_timeout: float = 15.0
    """Seconds an auto-offer waits for the agent to accept before it goes to the next agent."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "bridge.db"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment; keyword overrides (from flags) win when not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("SWITCHBOARD_DATA_DIR"):
            values["data_dir"] = Path(env["SWITCHBOARD_DATA_DIR"])
        for key, name in (
            ("account_sid", "TWILIO_ACCOUNT_SID"),
            ("auth_token", "TWILIO_AUTH_TOKEN"),
            ("api_key", "TWILIO_API_KEY"),
            ("api_secret", "TWILIO_API_SECRET"),
            ("public_url", "SWITCHBOARD_PUBLIC_URL"),
            ("api_base", "TWILIO_API_BASE"),
            ("messaging_service_sid", "TWILIO_MESSAGING_SERVICE_SID"),
            ("region", "SWITCHBOARD_REGION"),
        ):
            if env.get(name):
                values[key] = env[name]
        if env.get("SWITCHBOARD_CONFIG"):
            values["config_path"] = Path(env["SWITCHBOARD_CONFIG"]).expanduser()
        if env.get("SWITCHBOARD_PRESENCE_GRACE"):
            values["presence_grace"] = float(env["SWITCHBOARD_PRESENCE_GRACE"])
        if env.get("SWITCHBOARD_AUTO_OFFER"):
            values["auto_offer"] = env["SWITCHBOARD_AUTO_OFFER"].strip().lower() in ("1", "true", "yes", "on")
        if env.get("SWITCHBOARD_SHARED_KEYS"):
            keys: dict[str, str] = {}
            for item in env["SWITCHBOARD_SHARED_KEYS"].split(","):
                key_id, _, secret = item.strip().partition(":")
                if key_id and secret:
                    keys[key_id] = secret
            values["shared_keys"] = keys
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"]).expanduser()
        if values.get("public_url"):
            values["public_url"] = str(values["public_url"]).rstrip("/")
        if values.get("api_base"):
            values["api_base"] = str(values["api_base"]).rstrip("/")
        return cls(**values)

    def problems(self) -> list[str]:
        """What is missing for the bridge to talk to Twilio, as sentences an operator can act on."""
        found = []
        if not self.account_sid:
            found.append("TWILIO_ACCOUNT_SID is not set: set it to your account's AC… id.")
        if not self.auth_token:
            found.append("TWILIO_AUTH_TOKEN is not set: webhooks cannot be verified without it.")
        if bool(self.api_key) != bool(self.api_secret):
            found.append("Set both TWILIO_API_KEY and TWILIO_API_SECRET, or neither.")
        return found
