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
