"""Call queues as the team configures them: name, greeting, opening hours in a time zone, longest wait, numbers.

Loaded from the optional TOML file named by SWITCHBOARD_CONFIG; without one, every number rings one "support"
queue that is always open. Example::

    [[queues]]
    name = "support"
    numbers = ["+14155550100", "+14155550101"]   # "*" (the default) takes every number no other queue names
    greeting = "Thanks for calling Acme support."
    timezone = "America/Los_Angeles"
    hours = ["mon-fri 09:00-17:30", "sat 10:00-14:00"]   # absent or empty: always open
    longest_wait = 300                            # seconds in the queue before the caller is offered voicemail
    missed_call_text = "Sorry we missed your call: reply here and we'll get back to you."
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.phones import InvalidNumber, parse_e164

DEFAULT_QUEUE = "support"
DEFAULT_GREETING = "Thanks for calling. Please hold and the next available agent will be with you."
DEFAULT_CLOSED = "Thanks for calling. We are closed right now."
DEFAULT_VOICEMAIL_PROMPT = "Please leave a message after the tone, and we will get back to you."
DEFAULT_MUSIC = "http://com.twilio.sounds.music.s3.amazonaws.com/MARKOVICHAMP-Borghestral.mp3"
MAX_QUEUE_NAME = 64  # Twilio's limit on a queue's friendly name
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"([a-z]{3})(?:-([a-z]{3}))?\s+([0-9]{2}:[0-9]{2})-([0-9]{2}:[0-9]{2})")


class ConfigError(ValueError):
    """The queue configuration is wrong; the message names the file, the queue and what to fix."""


@dataclass(frozen=True, slots=True)
class OpeningSpan:
    """Open on ``days`` (0 = Monday) from ``start`` to ``end``, local time; end before start runs past midnight."""

    days: frozenset[int]
    start: time
    end: time

    def covers(self, local: datetime) -> bool:
        now = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= now < self.end
        # An overnight span belongs to the day it starts on.
        yesterday = (local.weekday() - 1) % 7
        return (local.weekday() in self.days and now >= self.start) or (yesterday in self.days and now < self.end)


@dataclass(frozen=True, slots=True)
class Queue:
    """One queue callers wait in."""

    name: str
    numbers: frozenset[str] = frozenset()
    """Our numbers that ring this queue (E.164); empty with ``catch_all``: every number no other queue names."""
    catch_all: bool = False
    greeting: str = DEFAULT_GREETING
    closed_message: str = DEFAULT_CLOSED
    voicemail_prompt: str = DEFAULT_VOICEMAIL_PROMPT
    timezone: str = "UTC"
    hours: tuple[OpeningSpan, ...] = ()
    """Empty: always open."""
    longest_wait: int = 300
    """Seconds a caller waits before being offered voicemail. Checked each time the wait loop asks for more (when
    the wait music ends), so a long track makes it late by up to the track's length: keep wait_music short."""
    wait_music: str = DEFAULT_MUSIC
    """What callers hear while they wait and while on hold; empty: a short pause instead (tests, the sandbox)."""
    missed_call_text: str | None = None
    """Texted to a caller who left a voicemail or hung up while waiting; None: no text."""

    def is_open(self, at: datetime) -> bool:
        if not self.hours:
            return True
        local = at.astimezone(ZoneInfo(self.timezone))
        return any(span.covers(local) for span in self.hours)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Every queue, and which one each of our numbers rings."""

    queues: tuple[Queue, ...] = field(default_factory=lambda: (Queue(DEFAULT_QUEUE, catch_all=True),))

    def for_number(self, number: str) -> Queue:
        for queue in self.queues:
            if number in queue.numbers:
                return queue
        for queue in self.queues:
            if queue.catch_all:
                return queue
        return self.queues[0]

    def named(self, name: str) -> Queue | None:
        for queue in self.queues:
            if queue.name == name:
                return queue
        return None

    def names(self) -> list[str]:
        return [queue.name for queue in self.queues]


def _parse_hours(spans: Any, where: str) -> tuple[OpeningSpan, ...]:
    if spans is None:
        return ()
    if not isinstance(spans, list) or not all(isinstance(s, str) for s in spans):
        raise ConfigError(f'{where}: hours must be a list like ["mon-fri 09:00-17:00"]')
    parsed = []
    for text in spans:
        match = _SPAN.fullmatch(text.strip().lower())
        if match is None:
            raise ConfigError(f'{where}: hours entry {text!r} is not like "mon-fri 09:00-17:00" or "sat 10:00-14:00"')
        first, last, start, end = match.groups()
        if first not in DAYS or (last is not None and last not in DAYS):
            raise ConfigError(f"{where}: hours entry {text!r} names a day not in {', '.join(DAYS)}")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days = frozenset(range(a, b + 1)) if a <= b else frozenset([*range(a, 7), *range(0, b + 1)])
        try:
            opening = OpeningSpan(days, time.fromisoformat(start), time.fromisoformat(end))
        except ValueError:
            raise ConfigError(
                f"{where}: hours entry {text!r} has a time that is not HH:MM on a 24-hour clock"
            ) from None
        if opening.start == opening.end:
            raise ConfigError(f"{where}: hours entry {text!r} opens and closes at the same minute")
        parsed.append(opening)
    return tuple(parsed)


def _text(table: Mapping[str, Any], key: str, default: str | None, where: str) -> str | None:
    value = table.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}: {key} must be non-empty text")
    return value


def parse_queue(table: Mapping[str, Any], index: int, region: str = "US") -> Queue:
    """One ``[[queues]]`` table, checked."""
    name = table.get("name")
    where = f"queue #{index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
    known = {
        "name",
        "numbers",
        "greeting",
        "closed_message",
        "voicemail_prompt",
        "timezone",
        "hours",
        "longest_wait",
        "wait_music",
        "missed_call_text",
    }
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}; queues take {', '.join(sorted(known))}")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_QUEUE_NAME or not name.isprintable():
        raise ConfigError(f"{where}: name must be 1–{MAX_QUEUE_NAME} printable characters")
    numbers_value = table.get("numbers", "*")
    catch_all = numbers_value == "*" or numbers_value == ["*"]
    numbers: set[str] = set()
    if not catch_all:
        if not isinstance(numbers_value, list) or not all(isinstance(n, str) for n in numbers_value):
            raise ConfigError(f'{where}: numbers must be a list of phone numbers, or "*" for every other number')
        for text in numbers_value:
            try:
                numbers.add(parse_e164(text, region))
            except InvalidNumber as exc:
                raise ConfigError(f"{where}: {exc}") from None
    timezone = table.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise ConfigError(f"{where}: timezone must be a name like America/New_York")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown timezone {timezone!r}; use a name like America/New_York") from None
    longest = table.get("longest_wait", 300)
    if not isinstance(longest, int) or isinstance(longest, bool) or not 1 <= longest <= 3600:
        raise ConfigError(f"{where}: longest_wait must be a whole number of seconds from 1 to 3600")
    music = table.get("wait_music", DEFAULT_MUSIC)
    if not isinstance(music, str) or (music and not music.startswith(("https://", "http://"))):
        raise ConfigError(f"{where}: wait_music must be an http(s) URL Twilio can fetch, or empty for silence")
    return Queue(
        name=name,
        numbers=frozenset(numbers),
        catch_all=catch_all,
        greeting=_text(table, "greeting", DEFAULT_GREETING, where) or DEFAULT_GREETING,
        closed_message=_text(table, "closed_message", DEFAULT_CLOSED, where) or DEFAULT_CLOSED,
        voicemail_prompt=_text(table, "voicemail_prompt", DEFAULT_VOICEMAIL_PROMPT, where) or DEFAULT_VOICEMAIL_PROMPT,
        timezone=timezone,
        hours=_parse_hours(table.get("hours"), where),
        longest_wait=longest,
        wait_music=music,
        missed_call_text=_text(table, "missed_call_text", None, where),
    )


def build_config(tables: Sequence[Mapping[str, Any]], region: str = "US") -> QueueConfig:
    if not tables:
        return QueueConfig()
    queues = tuple(parse_queue(table, i, region) for i, table in enumerate(tables))
    seen: set[str] = set()
    claimed: dict[str, str] = {}
    for queue in queues:
        if queue.name in seen:
            raise ConfigError(f"two queues are named {queue.name!r}: queue names must be unique")
        seen.add(queue.name)
        for number in queue.numbers:
            if number in claimed:
                raise ConfigError(
                    f"{number} is in both {claimed[number]!r} and {queue.name!r}: a number rings one queue"
                )
            claimed[number] = queue.name
    return QueueConfig(queues)


def load_config(path: Path | None, region: str = "US") -> QueueConfig:
    """The queues from ``path`` (a TOML file with ``[[queues]]`` tables); None: the default single queue."""
    if path is None:
        return QueueConfig()
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (SWITCHBOARD_CONFIG names it)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    tables = document.get("queues", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: queues must be [[queues]] tables")
    try:
        return build_config(tables, region)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
