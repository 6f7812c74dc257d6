"""Apps in fixed states for snapshots and screenshots: the demo's seeded morning, a frozen clock, no blinking."""

from __future__ import annotations

import tempfile
from datetime import UTC
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from console.app import SwitchboardApp
from console.cache import Cache
from console.config import ConsoleConfig
from console.widgets.conversation_list import ConversationList
from tests.console_support import calls_events, demo_events, fill, frozen_clock

_CACHES = tempfile.TemporaryDirectory(prefix="switchboard-snap-")
"""Where the apps' caches live: removed when the test process exits (an app outlives the call that makes it)."""


def _cache() -> Cache:
    return Cache(Path(tempfile.mkdtemp(dir=_CACHES.name)) / "cache.db")


def demo_app(config: ConsoleConfig | None = None) -> SwitchboardApp:
    """The console over the demo's seeded history, offline (a snapshot must not depend on a network)."""
    cache = _cache()
    fill(cache, demo_events())
    cache.set_meta("agent", "you")
    return SwitchboardApp(cache, config or ConsoleConfig(), clock=frozen_clock, tz=UTC, steady=True)


def calls_app(waiting: int = 4, mine: str | None = "on_hold") -> SwitchboardApp:
    """The demo's morning with voice: callers waiting, this agent's call (on hold), a voicemail, an hour of queue."""
    cache = _cache()
    texts = demo_events()
    fill(cache, texts + calls_events(texts, waiting=waiting, mine=mine))
    cache.set_meta("agent", "you")
    return SwitchboardApp(cache, ConsoleConfig(), clock=frozen_clock, tz=UTC, steady=True)


async def settle(pilot: Pilot[Any]) -> None:
    for _ in range(4):
        await pilot.pause(0.05)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.1)
    # An inbox reload asked for while one was on its way runs when that one lands: on a loaded machine that can
    # come late, so wait for it, boundedly.
    for _ in range(40):
        if not any(inbox.reloading for inbox in pilot.app.query(ConversationList)):
            break
        await pilot.pause(0.05)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.05)


async def open_failed_thread(pilot: Pilot[Any]) -> None:
    """The thread with an undelivered reply (Twilio's 30003), read from the inbox."""
    await settle(pilot)
    app = pilot.app
    assert isinstance(app, SwitchboardApp)
    failed = next(row for row in app.cache.conversations(100) if row.failed)
    app.main.inbox.select(failed.id)
    await settle(pilot)
    await pilot.press("enter")
    await settle(pilot)


async def composing(pilot: Pilot[Any]) -> None:
    await open_failed_thread(pilot)
    app = pilot.app
    assert isinstance(app, SwitchboardApp)
    await pilot.press(*"So sorry!")
    app.main.composer.set_text("So sorry! We'll resend it today 🙏 — could you confirm the address?")
    await settle(pilot)


async def searching(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("slash", *"order")
    await settle(pilot)


async def helping(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("f1")
    await settle(pilot)


async def inbox_only(pilot: Pilot[Any]) -> None:
    await settle(pilot)


async def calls_waiting(pilot: Pilot[Any]) -> None:
    await settle(pilot)


async def my_callers_thread(pilot: Pilot[Any]) -> None:
    """The caller on hold's conversation, opened with the caller key: the live call in the timeline."""
    await settle(pilot)
    await pilot.press("g")
    await settle(pilot)
