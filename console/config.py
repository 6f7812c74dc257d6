"""The console's settings: flags, then ``SWITCHBOARD_*`` environment variables, then the TOML config file.

The file lives at ``$XDG_CONFIG_HOME/switchboard/config.toml``::

    url = "https://bridge.example.com"   # the bridge's base URL
    token = "…"                          # this agent's token (written by `switchboard login`, mode 0600)
    region = "US"                        # numbers from this region show in national format
    bell = false                         # ring the terminal bell on new texts elsewhere
    canned_replies = ["Thanks! …", …]    # picked by fuzzy search in the composer (ctrl+r)

    [keymap]                             # binding id = keys, e.g. remap sending to ctrl+s
    "composer.send" = "ctrl+s"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from console import locations

DEFAULT_CANNED = (
    "Thanks for reaching out! Let me look into that for you.",
    "Could you send me your order number?",
    "I've passed this to our team; you'll hear back within one business day.",
    "Sorry about the trouble! A replacement is on its way.",
    "Your refund has been issued; it takes 3–5 business days to appear.",
    "You're welcome! Is there anything else I can help with?",
)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class ConsoleConfig:
    url: str | None = None
    """The bridge's base URL, ``http(s)://host:port``."""
    token: str | None = None
    """This agent's token, from `switchboard-bridge agents add NAME`."""
    region: str = "US"
    """The team's region: its numbers show in national format, others in international format."""
    bell: bool = False
    """Ring the terminal bell when a text arrives in a conversation you are not looking at."""
    canned_replies: tuple[str, ...] = DEFAULT_CANNED
    """Replies offered by the canned-reply picker."""
    keymap: Mapping[str, str] = field(default_factory=dict)
    """Binding id → keys (comma-separated), applied over the defaults."""

    def with_(self, **changes: Any) -> ConsoleConfig:
        return replace(self, **changes)


def check_url(url: str) -> str:
    """The bridge URL without a trailing slash, or ConfigError saying what is wrong with it."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not a bridge URL: use http(s)://host:port, e.g. http://127.0.0.1:8080")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{url!r} has a port that is not a number from 1 to 65535") from None
    return url.strip().rstrip("/")


def load(path: Path | None = None, environ: Mapping[str, str] | None = None, **flags: Any) -> ConsoleConfig:
    """Settings from the file, overridden by the environment, overridden by flags (None flags are ignored)."""
    env = os.environ if environ is None else environ
    file = path if path is not None else locations.config_file()
    values: dict[str, Any] = {}
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        values.update(_from_file(raw, file))
    for name, key in (("url", "SWITCHBOARD_URL"), ("token", "SWITCHBOARD_TOKEN"), ("region", "SWITCHBOARD_REGION")):
        if env.get(key):
            values[name] = env[key]
    values.update({k: v for k, v in flags.items() if v is not None})
    if values.get("url"):
        values["url"] = check_url(str(values["url"]))
    values["region"] = check_region(str(values.get("region", "US")))
    return ConsoleConfig(**values)


def check_region(region: str) -> str:
    """A region as phonenumbers knows it (``US``, ``GB``…), upper-cased; ConfigError for anything else (numbers
    would silently show in international format)."""
    from phonenumbers import SUPPORTED_REGIONS

    code = region.strip().upper()
    if code not in SUPPORTED_REGIONS:
        raise ConfigError(f"{region!r} is not a region: use a two-letter country code such as US, GB or DE")
    return code


def _from_file(raw: dict[str, Any], file: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("url", "token", "region"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"{file}: {key} must be a string")
            out[key] = raw[key]
    if "bell" in raw:
        if not isinstance(raw["bell"], bool):
            raise ConfigError(f"{file}: bell must be true or false")
        out["bell"] = raw["bell"]
    if "canned_replies" in raw:
        replies = raw["canned_replies"]
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise ConfigError(f"{file}: canned_replies must be a list of strings")
        out["canned_replies"] = tuple(replies)
    if "keymap" in raw:
        keymap = raw["keymap"]
        if not isinstance(keymap, dict) or not all(isinstance(v, str) for v in keymap.values()):
            raise ConfigError(f'{file}: [keymap] maps binding ids to keys, e.g. "composer.send" = "ctrl+s"')
        out["keymap"] = dict(keymap)
    return out


def save_login(url: str, token: str, path: Path | None = None) -> Path:
    """Store the bridge URL and token in the config file (created with mode 0600), keeping its other settings."""
    file = path if path is not None else locations.config_file()
    lines: list[str] = []
    if file.exists():
        lines = [
            line
            for line in file.read_text(encoding="utf-8").splitlines()
            if line.split("=", 1)[0].strip() not in ("url", "token")
        ]
    head = [f"url = {_toml_string(check_url(url))}", f"token = {_toml_string(token)}"]
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(head + lines) + "\n")
    os.chmod(file, 0o600)
    return file


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
