"""Times as an agent reads them: "14:05" today, "Tue 14:05" this week, "Nov 3" before; day separators."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def parse(iso: str) -> datetime | None:
    """An ISO-8601 timestamp from the bridge (``…Z`` or with an offset) as an aware datetime, or None."""
    try:
        value = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def short(iso: str, now: datetime, tz: tzinfo | None) -> str:
    when = parse(iso)
    if when is None:
        return ""
    local, today = when.astimezone(tz), now.astimezone(tz)
    if local.date() == today.date():
        return local.strftime("%H:%M")
    if today.date() - local.date() < timedelta(days=7):
        return local.strftime("%a %H:%M")
    if local.year == today.year:
        return local.strftime("%b %d").replace(" 0", " ")
    return local.strftime("%Y-%m-%d")


def ahead(iso: str, now: datetime, tz: tzinfo | None) -> str:
    """A time to come, in the agent's zone: "14:00", "tomorrow 09:00", "Fri 09:00", "Dec 24 09:00"."""
    when = parse(iso)
    if when is None:
        return ""
    local, today = when.astimezone(tz), now.astimezone(tz).date()
    days = (local.date() - today).days
    if days == 0:
        return local.strftime("%H:%M")
    if days == 1:
        return local.strftime("tomorrow %H:%M")
    if 1 < days < 7:
        return local.strftime("%a %H:%M")
    if local.year == today.year:
        return f"{local:%b} {local.day} {local:%H:%M}"
    return local.strftime("%Y-%m-%d %H:%M")


def day(iso: str, now: datetime, tz: tzinfo | None) -> str:
    """The label of a thread's day separator: "Today", "Yesterday", "Monday 23 November 2026"."""
    when = parse(iso)
    if when is None:
        return ""
    local, today = when.astimezone(tz).date(), now.astimezone(tz).date()
    if local == today:
        return "Today"
    if local == today - timedelta(days=1):
        return "Yesterday"
    return f"{local:%A} {local.day} {local:%B %Y}"


def waited(iso: str | None, now: datetime) -> str:
    """How long someone has been waiting: "4m", "2h 10m", "3d"."""
    when = parse(iso) if iso else None
    if when is None:
        return ""
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d"
