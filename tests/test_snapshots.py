"""Snapshots of the console's screens (pytest-textual-snapshot). Update with `uv run pytest --snapshot-update`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests import snapshot_apps

Compare = Callable[..., bool]


def test_inbox(snap_compare: Compare) -> None:
    """The inbox by last activity: unread dots and counts, the opted-out ⊘, the failed-delivery !, the status line."""
    assert snap_compare(snapshot_apps.demo_app(), terminal_size=(120, 36), run_before=snapshot_apps.inbox_only)


def test_thread_with_statuses(snap_compare: Compare) -> None:
    """A thread with a day separator, the customer's texts and a reply marked "✗ undelivered — 30003: …"."""
    assert snap_compare(snapshot_apps.demo_app(), terminal_size=(120, 36), run_before=snapshot_apps.open_failed_thread)


def test_composer_counter(snap_compare: Compare) -> None:
    """A reply with an emoji: the counter reads UCS-2, and the footer offers send and new line."""
    assert snap_compare(snapshot_apps.demo_app(), terminal_size=(120, 36), run_before=snapshot_apps.composing)


def test_search(snap_compare: Compare) -> None:
    """Search for "order": hits newest first with time, customer and direction."""
    assert snap_compare(snapshot_apps.demo_app(), terminal_size=(120, 36), run_before=snapshot_apps.searching)


def test_help(snap_compare: Compare) -> None:
    """Help lists every binding with its id for [keymap]."""
    assert snap_compare(snapshot_apps.demo_app(), terminal_size=(120, 36), run_before=snapshot_apps.helping)


def test_small_terminal(snap_compare: Compare) -> None:
    """80×24 still shows the inbox, the thread, the composer, the status line and the footer."""
    run: Any = snapshot_apps.open_failed_thread
    assert snap_compare(snapshot_apps.demo_app(), terminal_size=(80, 24), run_before=run)


def test_calls_panel(snap_compare: Compare) -> None:
    """The calls panel: 4 waiting (longest 4:12, a named caller, one from GB, one in billing), the queue's last hour
    as a sparkline, 2 agents available; my call on hold for 0:47 (call 5:25); the footer offers hold, mute, transfer,
    hang up."""
    assert snap_compare(snapshot_apps.calls_app(), terminal_size=(120, 36), run_before=snapshot_apps.calls_waiting)


def test_calls_in_the_thread(snap_compare: Compare) -> None:
    """The caller on hold's conversation: the call in the timeline with each step (waiting, accepted, answered,
    on hold)."""
    assert snap_compare(snapshot_apps.calls_app(), terminal_size=(120, 36), run_before=snapshot_apps.my_callers_thread)


def test_calls_small_terminal(snap_compare: Compare) -> None:
    """80×24 with calls: the header (narrower sparkline), my call, three callers (the fourth scrolls), the inbox,
    the thread and the composer."""
    assert snap_compare(snapshot_apps.calls_app(), terminal_size=(80, 24), run_before=snapshot_apps.calls_waiting)
