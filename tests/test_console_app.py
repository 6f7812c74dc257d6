"""Pilot tests of the console over a cache (no bridge): reading, searching, filters, keys, hostile text."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.pilot import Pilot
from textual.strip import Strip
from textual.worker import WorkerCancelled

from bridge import protocol
from console.app import SwitchboardApp
from console.cache import Cache, InboxFilter
from console.config import ConsoleConfig
from console.screens import main as main_screen
from console.screens.help import HelpScreen
from console.screens.search import SearchScreen
from console.widgets.composer import Composer, counter_text
from console.widgets.conversation_list import ConversationList
from console.widgets.status_line import StatusLine
from console.widgets.thread_view import REST_ROWS, ThreadView
from tests.console_support import NOW, EventLog, FakeLink, customer, demo_events, fill, frozen_clock, iso

SIZE = (120, 36)


def text_of(strips: list[Strip]) -> str:
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


def saved_drafts(path: Path | None) -> dict[tuple[str, bool], str]:
    """The drafts file's content, read past the lock the console under test holds on it."""
    assert path is not None
    document = json.loads(path.read_text()) if path.exists() else {"drafts": []}
    return {(d["conversation_id"], d["note"]): d["text"] for d in document["drafts"]}


def inbox_row(app: SwitchboardApp, conversation_id: str) -> str:
    """The inbox's line for that conversation, as drawn."""
    inbox = app.query_one(ConversationList)
    [index] = [i for i, row in inbox._rows.items() if row.id == conversation_id]
    return text_of([inbox.render_line(index * inbox.per_row - int(inbox.scroll_offset.y))])


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    cache = Cache(tmp_path / "cache.db")
    fill(cache, demo_events())
    return cache


@asynccontextmanager
async def running(
    cache: Cache, config: ConsoleConfig | None = None
) -> AsyncIterator[tuple[SwitchboardApp, Pilot[Any]]]:
    app = SwitchboardApp(cache, config or ConsoleConfig(), clock=frozen_clock, tz=UTC)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        yield app, pilot


@asynccontextmanager
async def linked(
    cache: Cache, size: tuple[int, int] = SIZE, *, notifications: bool = False
) -> AsyncIterator[tuple[SwitchboardApp, Pilot[Any], FakeLink]]:
    """The console over ``cache`` with a FakeLink standing in for the bridge (to deliver events live)."""
    app = SwitchboardApp(cache, ConsoleConfig(), link_factory=FakeLink.factory(), clock=frozen_clock, tz=UTC)
    async with app.run_test(size=size, notifications=notifications) as pilot:
        await settle(pilot)
        link = app.link
        assert isinstance(link, FakeLink)
        yield app, pilot, link


async def settle(pilot: Pilot[Any]) -> None:
    """Let thread workers answer and their messages repaint (bounded: every query here takes milliseconds)."""
    for _ in range(5):
        await pilot.pause(0.05)
        with contextlib.suppress(WorkerCancelled):  # an exclusive worker replaced by a newer one: as it should be
            await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.05)


async def test_opens_with_the_cached_history(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        inbox = app.query_one(ConversationList)
        assert inbox.count == cache.inbox_count(inbox.inbox) > 10
        assert inbox.highlighted is not None
        await pilot.press("enter")
        await settle(pilot)
        thread = app.query_one(ThreadView)
        assert thread.conversation_id == inbox.highlighted.id
        shown = text_of(thread._lines)
        assert "Photo of the damage attached" in shown
        assert "image/jpeg" in shown
        assert "offline" in str(app.query_one("#status").render())


async def test_thread_shows_delivery_failures_with_twilios_meaning(cache: Cache) -> None:
    failed = next(r for r in cache.conversations(100) if r.failed)
    async with running(cache) as (app, pilot):
        app.main.open_conversation(failed.id)
        await settle(pilot)
        shown = " ".join(text_of(app.query_one(ThreadView)._lines).split())  # the header may wrap
        assert "✗ undelivered — 30003: Unreachable destination handset" in shown


async def test_a_long_thread_opens_at_its_newest_and_draws_the_rest_as_it_is_scrolled_to(tmp_path: Path) -> None:
    """The first frame draws only the last screenful, and nothing more is drawn until the reader scrolls up: then
    REST_ROWS rows at a time, without moving what is on screen, and Home draws what is left. The lines end as one
    drawing of the whole page would make them."""
    cache = Cache(tmp_path / "cache.db")
    log = EventLog()
    for n in range(120):
        log.inbound(customer(7), f"text number {n}\nwith a second line", NOW - timedelta(days=6) + timedelta(hours=n))
    fill(cache, log.events)
    async with running(cache) as (app, pilot):
        thread = app.query_one(ThreadView)
        drawn_from: list[int] = []
        steps: list[int] = []
        rebuild, draw_above = thread._rebuild, thread._draw_above

        drawn_lines: list[int] = []

        def spy(first_row: int = 0, **kw: bool) -> None:
            drawn_from.append(first_row)
            rebuild(first_row, **kw)
            drawn_lines.append(len(thread._lines))

        def spy_above(first_row: int) -> None:
            steps.append(first_row)
            draw_above(first_row)

        thread._rebuild = spy  # type: ignore[method-assign]
        thread._draw_above = spy_above  # type: ignore[method-assign]
        app.main.open_conversation(log.events[0].data["conversation_id"])
        await settle(pilot)
        assert drawn_from[0] > 100  # the last screenful first
        height = thread.scrollable_content_region.height
        assert height <= drawn_lines[0] <= 2 * height  # and that first frame fills the view, with little more
        assert steps == [] and thread._first_row == drawn_from[0]  # the rest waits for the reader
        assert thread.is_vertical_scroll_end

        # Scrolling up a line at a time: as the top comes near, REST_ROWS more rows above, and the view moves by
        # the one line asked for, not by what was drawn.
        thread.focus()
        for _ in range(10):
            before = text_of([thread.render_line(y) for y in range(height)]).splitlines()
            await pilot.press("up")
            await pilot.pause()
            after = text_of([thread.render_line(y) for y in range(height)]).splitlines()
            assert after[1:] == before[:-1]
        assert len(steps) == 1 and 0 < drawn_from[0] - steps[0] <= REST_ROWS
        for _ in range(20):  # a page at a time: a step each time the top comes near
            if len(steps) >= 3:
                break
            await pilot.press("pageup")
            await pilot.pause()
        assert len(steps) >= 3 and all(0 < a - b <= REST_ROWS for a, b in zip(steps, steps[1:], strict=False))
        assert thread._first_row > 0  # only as far as the reader went

        await pilot.press("home")  # the oldest loaded: everything above is drawn
        await settle(pilot)
        assert steps[-1] == 0 and thread._first_row == 0 and thread.scroll_offset.y == 0
        shown = text_of(thread._lines)
        assert re.search(r"text number 0\b", shown) and "text number 119" in shown
        stepped = [list(strip) for strip in thread._lines], dict(thread._line_of_pos)
        rebuild(0)  # the whole page in one go: the same lines, day separators and positions
        assert ([list(strip) for strip in thread._lines], thread._line_of_pos) == stepped


async def test_while_catching_up_the_header_follows_the_keys_and_what_was_read_is_marked_once_caught_up(
    tmp_path: Path,
) -> None:
    """A long catch-up holds the cache's write lock in the helper process for seconds. A conversation opened
    meanwhile shows its header at once (it waited for the helper's commit), and is marked read once caught up:
    the texts the agent saw, not the ones the catch-up brought after."""
    from console.client import LinkState
    from console.widgets.conversation_header import ConversationHeader

    cache = Cache(tmp_path / "cache.db")
    events = demo_events()
    fill(cache, events)
    helper = Cache(tmp_path / "cache.db")  # the catch-up helper's connection

    def unread(conversation_id: str) -> int:
        row = cache.conversation(conversation_id)
        assert row is not None
        return row.unread

    async with linked(cache) as (app, pilot, link):
        current = app.main.current
        target = next(r for r in cache.conversations(100) if r.unread and (current is None or r.id != current.id))
        link._set(LinkState.CATCHING_UP, "Catching up…", retry_at=None)
        await settle(pilot)
        log = EventLog(seq=len(events), ids="caught up")
        log.inbound(target.customer_number, "and one more thing", NOW)
        helper.apply(log.events, commit=False)  # its transaction stays open, as the helper's does
        try:
            app.main.open_conversation(target.id)
            shown = None
            for _ in range(20):
                await pilot.pause(0.05)
                shown = app.query_one(ConversationHeader).conversation
                if shown is not None and shown.id == target.id:
                    break
            assert shown is not None and shown.id == target.id  # within a second, not at the helper's commit
            assert unread(target.id) == target.unread  # not written yet
        finally:
            helper.apply([])  # commits: the new text is in
        assert unread(target.id) == target.unread + 1
        link._set(LinkState.CONNECTED, "Connected.", retry_at=None)
        await settle(pilot)
        assert unread(target.id) == 1  # the text the agent had not seen stays unread
    helper.close()


async def test_a_thread_that_fits_stays_at_its_newest_when_the_window_shrinks(tmp_path: Path) -> None:
    """Opened whole in a tall window, then the window shrinks (or the calls panel grows above it): the reader
    stays at the newest line, and the lines are drawn again for the scrollbar that came, with no sideways scroll."""
    cache = Cache(tmp_path / "cache.db")
    log = EventLog()
    for n in range(6):
        log.inbound(customer(7), f"text number {n} " + "and some words to wrap " * 2, NOW - timedelta(minutes=60 - n))
    fill(cache, log.events)
    async with running(cache) as (app, pilot):
        thread = app.query_one(ThreadView)
        app.main.open_conversation(log.events[0].data["conversation_id"])
        await settle(pilot)
        assert thread.max_scroll_y == 0  # all of it fits
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert thread.max_scroll_y > 0 and thread.scroll_offset.y == thread.max_scroll_y
        width = thread.scrollable_content_region.width
        assert thread.virtual_size.width == width and all(line.cell_length == width for line in thread._lines)
        visible = text_of([thread.render_line(y) for y in range(thread.scrollable_content_region.height)])
        assert "text number 5" in visible


async def test_hostile_customer_text_is_shown_inert(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.db")
    log = EventLog()
    hostile = (
        "[bold red]FREE[/] \x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x1b[2J[link=https://evil.example]x[/link] \u202etxt"
    )
    log.inbound(customer(5), hostile, NOW - timedelta(minutes=1))
    fill(cache, log.events)
    async with running(cache) as (app, pilot):
        await pilot.press("enter")
        await settle(pilot)
        shown = text_of(app.query_one(ThreadView)._lines)
        assert "[bold red]FREE[/]" in shown
        assert "[link=https://evil.example]x[/link]" in shown
        assert "␛[31mred␛[0m" in shown and "␛]0;pwned␇" in shown
        assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
        row = text_of([app.query_one(ConversationList).render_line(0)])
        assert "[bold red]FREE[" in row and "\x1b" not in row
        svg = app.export_screenshot()
        assert "pwned" in svg and "evil.example" in svg  # drawn as text, not obeyed


async def test_search_jumps_to_the_hit_in_its_thread(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        await pilot.press("slash")
        await settle(pilot)
        assert isinstance(app.screen, SearchScreen)
        await pilot.press(*"replacem")
        await settle(pilot)
        search = app.screen
        assert isinstance(search, SearchScreen)
        assert search.rows and all("replacement" in r.body.lower() for r in search.rows)
        target = search.rows[0]
        await pilot.press("enter")
        await settle(pilot)
        thread = app.query_one(ThreadView)
        assert thread.conversation_id == target.conversation_id
        assert thread.hit_pos == target.pos


async def test_a_reload_during_a_filter_change_keeps_the_cursor_going_where_it_was_sent(cache: Cache) -> None:
    """The search jump sets the filter with the cursor kept on the hit's conversation; a reload that starts before
    those rows arrive (the header's, say) must not send the cursor, and the thread, to the top instead."""
    async with running(cache) as (app, pilot):
        inbox = app.query_one(ConversationList)
        target = app.cache.conversations(100)[7].id
        inbox.set_filter(InboxFilter("all", "all"), keep=target)
        inbox.reload()
        await settle(pilot)
        assert inbox.highlighted_id == target
        assert app.query_one(ThreadView).conversation_id == target


async def test_the_key_bar_shows_what_the_keys_do_and_a_click_presses_one(cache: Cache) -> None:
    from console.widgets.key_bar import KeyBar

    async with running(cache) as (app, pilot):
        bar = app.query_one(KeyBar)
        line = bar.render()
        assert isinstance(line, Text)
        assert " / Search " in line.plain and line.plain.rstrip().endswith("? Help ▏^p palette")
        assert line.plain.count("Help") == 1  # ? and f1 both open it: shown once
        start = next(start for start, _end, key in bar._spans if key == "slash")
        await pilot.click(KeyBar, offset=(start + 1, 0))
        await settle(pilot)
        assert isinstance(app.screen, SearchScreen)
        await pilot.press("escape")
        await pilot.resize_terminal(60, 24)  # too narrow for every key: help and the palette stay
        await settle(pilot)
        line = bar.render()
        assert isinstance(line, Text) and line.cell_len == 60
        assert " ? Help ▏^p palette" in line.plain and " / Search " in line.plain
        start = next(start for start, _end, key in bar._spans if key.startswith("question_mark"))
        await pilot.click(KeyBar, offset=(start + 1, 0))
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)


async def test_opening_a_conversation_clears_its_unread_count_without_reloading_the_inbox(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        inbox = app.query_one(ConversationList)
        index, row = next((i, r) for i, r in sorted(inbox._rows.items()) if r.unread and i > 0)
        total = app.cache.unread_total()
        reloads: list[str | None] = []
        reload = inbox.reload

        def counted(keep: str | None = None, *, here: bool = False) -> None:
            reloads.append(keep)
            reload(keep, here=here)

        inbox.reload = counted  # type: ignore[method-assign]
        inbox.cursor = index
        await settle(pilot)
        assert app.query_one(ThreadView).conversation_id == row.id
        assert inbox._rows[index].id == row.id and inbox._rows[index].unread == 0
        assert app.cache.conversation(row.id).unread == 0  # type: ignore[union-attr]
        assert reloads == []
        assert app.query_one(StatusLine).unread == total - row.unread


async def test_search_treats_syntax_as_words(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        await pilot.press("slash")
        await pilot.press(*'"OR* NEAR(a b) -x')
        await settle(pilot)
        assert isinstance(app.screen, SearchScreen)
        assert app.screen.rows == []


async def test_next_needing_attention_is_the_longest_waiting(cache: Cache) -> None:
    oldest = cache.next_needing_attention("you")
    assert oldest is not None
    async with running(cache) as (app, pilot):
        await pilot.press("n")
        await settle(pilot)
        assert app.query_one(ThreadView).conversation_id == oldest.id
        assert app.query_one(Composer).area.has_focus


async def test_filters_cycle_and_say_what_they_show(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        inbox = app.query_one(ConversationList)
        everything = inbox.count
        await pilot.press("f")  # open → pending
        await settle(pilot)
        assert inbox.inbox.status == "pending" and inbox.count == 0
        await pilot.press("f", "f", "f")  # → resolved → snoozed → all
        await settle(pilot)
        assert inbox.inbox.status == "all" and inbox.count == everything
        await pilot.press("F")  # all → mine
        await settle(pilot)
        assert inbox.inbox.owner == "mine" and inbox.count == 0
        assert "mine" in str(app.query_one("#status").render())


async def test_composer_counts_segments_live(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        await pilot.press("enter")
        await pilot.press(*"hello")
        await settle(pilot)
        counter = str(app.query_one("#composer-counter").render())
        assert counter == "5/160 · GSM-7 · 1 segment"
        app.query_one(Composer).set_text("x" * 150 + " 😀")
        await settle(pilot)
        assert str(app.query_one("#composer-counter").render()) == counter_text("x" * 150 + " 😀")
        assert "UCS-2 · 3 segments" in counter_text("x" * 150 + " 😀")


async def test_opted_out_customer_cannot_be_texted(cache: Cache) -> None:
    opted = next(r for r in cache.conversations(100) if r.opted_out)
    async with running(cache) as (app, pilot):
        app.main.open_conversation(opted.id)
        await settle(pilot)
        composer = app.query_one(Composer)
        assert composer.opted_out and composer.has_class("-opted-out")
        composer.area.focus()
        await pilot.press(*"hello", "enter")
        await settle(pilot)
        assert composer.text == "hello"  # not sent, not cleared
        assert any("opted out" in str(n.message) for n in app._notifications)


async def test_remapped_key(cache: Cache) -> None:
    async with running(cache, ConsoleConfig(keymap={"search": "ctrl+f"})) as (app, pilot):
        await pilot.press("slash")
        await settle(pilot)
        assert not isinstance(app.screen, SearchScreen)
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert isinstance(app.screen, SearchScreen)
        await pilot.press("escape", "f1")
        await settle(pilot)
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)  # it lists the keys as remapped, each key of a binding apart
        bindings = {b.id: b for _, section in app.binding_sections() for b in section}
        assert help_screen.keys_of(bindings["search"]) == app.get_key_display(Binding("ctrl+f", ""))
        either = " / ".join(app.get_key_display(Binding(key, "")) for key in ("question_mark", "f1"))
        assert help_screen.keys_of(bindings["help"]) == either
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}  # the palette says it too
        assert commands[bindings["search"].description].endswith(f"({app.get_key_display(Binding('ctrl+f', ''))})")


async def test_help_lists_every_binding_with_its_id(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        await pilot.press("f1")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        ids = {b.id for _, bindings in app.binding_sections() for b in bindings}
        assert {"search", "next-waiting", "claim", "snooze", "composer.send", "inbox.open", "help"} <= ids
        assert None not in ids
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_offline_actions_say_they_need_the_bridge(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        await pilot.press("enter")
        await pilot.press(*"on my way", "enter")
        await settle(pilot)
        assert any("No bridge is configured" in str(n.message) for n in app._notifications)
        assert app.query_one(Composer).text == "on my way"  # the draft is kept


async def test_a_burst_of_texts_gets_one_toast_and_a_summary(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 20 texts a second a toast each would bury the screen: one batch's toasts, then the rest summed up."""
    # A gap the burst fits in many times over, even on a loaded machine (0.3 s was once too short for it in CI).
    monkeypatch.setattr(main_screen, "TOAST_GAP", 1.5)
    async with linked(cache) as (app, pilot, link):
        log = EventLog(seq=cache.cursor(), ids="burst")
        for n in range(6):
            log.events = []
            log.inbound(customer(900 + n), f"burst text {n}", NOW)
            link.deliver(log.events)
            await pilot.pause(0.02)
        said = [str(n.message) for n in app._notifications]
        assert said == ["burst text 0"]
        for _ in range(100):  # the gap's end: at most 5 s
            if len(app._notifications) > 1:
                break
            await pilot.pause(0.05)
        said = [str(n.message) for n in app._notifications]
        assert said == ["burst text 0", "5 more new texts in the inbox"]


async def test_a_burst_of_texts_reloads_the_inbox_at_once_then_once_more_after_the_reload_on_its_way(
    cache: Cache,
) -> None:
    """The first text reloads the inbox at once; the texts that come while that reload is on its way share one
    more reload when it lands, and the inbox ends on the newest."""
    async with running(cache) as (app, pilot):
        inbox = app.query_one(ConversationList)
        reloads: list[int] = []
        reload = inbox.reload

        def counting(keep: str | None = None, *, here: bool = False) -> None:
            reloads.append(len(reloads))
            reload(keep, here=here)

        inbox.reload = counting  # type: ignore[method-assign]
        log = EventLog(seq=cache.cursor(), ids="more texts")
        for k in range(30):
            log.inbound(customer(500 + k), f"burst text {k}", NOW + timedelta(minutes=k + 1))
            app.link_events(cache.apply([log.events[-1]]))
        await pilot.pause()
        assert app.main._reload_timer is None  # live, no reload waits out a fixed throttle
        await settle(pilot)
        assert 2 <= len(reloads) <= 3
        top = inbox._rows[0]
        assert top.last_preview == "burst text 29" and inbox.count == cache.inbox_count(inbox.inbox)
        assert not inbox.reloading


async def test_garbage_is_collected_between_keys_not_during_them(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    from console import app as app_module

    monkeypatch.setattr(app_module, "FREEZE_AFTER", 3600.0)  # this process is pytest's: its heap stays as it is
    monkeypatch.setattr(app_module, "QUIET_BEFORE_COLLECTING", 0.3)
    monkeypatch.setattr(app_module, "COLLECT_TICK", 0.02)
    collections: list[float] = []
    real_collect = gc.collect

    def collect(generation: int = 2) -> int:
        collections.append(time.monotonic())
        return real_collect(generation)

    monkeypatch.setattr(gc, "collect", collect)
    app = SwitchboardApp(cache, ConsoleConfig(), clock=frozen_clock, tz=UTC, freeze_heap=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert not gc.isenabled()  # it runs when the console says, not in the middle of a key
        pressed = []
        for _ in range(6):  # keys 0.1 s apart: never quiet for long enough
            _ = [[] for _ in range(2000)]  # garbage enough for a collection
            pressed.append(time.monotonic())
            await pilot.press("j")
            await pilot.pause(0.1)
        during = [t for t in collections if pressed[0] + 0.05 < t < pressed[-1]]
        _ = [[] for _ in range(2000)]
        await pilot.pause(0.6)
        assert during == []
        assert any(t >= app._last_input + 0.3 for t in collections)  # once the keys stopped
    assert gc.isenabled()


@pytest.mark.parametrize(("size", "widest"), [((80, 24), 36), ((120, 36), 60)])
async def test_toasts_leave_the_status_line_readable_on_a_narrow_terminal(
    cache: Cache, size: tuple[int, int], widest: int
) -> None:
    from textual.widgets._toast import Toast

    app = SwitchboardApp(cache, ConsoleConfig(), clock=frozen_clock, tz=UTC)
    async with app.run_test(size=size, notifications=True) as pilot:
        await settle(pilot)
        app.notify("Can I change the delivery address on order #34286? I'm moving next week " * 2, title="Text")
        await pilot.pause(0.3)
        toasts = [node for node in app.screen.walk_children(with_self=False) if isinstance(node, Toast)]
        assert len(toasts) == 1
        toast = toasts[0]
        assert widest - 10 < toast.outer_size.width <= widest
        # Top right, under the calls bar: never over the composer or the status line at the bottom.
        region = toast.region
        assert region.y >= 1 and region.bottom <= size[1] // 2 and region.right >= size[0] - 4


async def test_help_and_search_say_brackets_as_written(cache: Cache) -> None:
    """ "[keymap]" in the help, and whatever the agent typed into search, are text: Rich markup would have eaten
    the brackets (the help said "remap any in the config file's  by its id")."""
    from textual.widgets import Static

    async with running(cache) as (app, pilot):
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        svg = app.export_screenshot()
        assert svg.count("[keymap]") >= 3  # the intro, the column heading, the help key's own line
        await pilot.press("escape", "slash")
        await settle(pilot)
        await pilot.press(*"[b]zz[/b]")
        await settle(pilot)
        summary = app.screen.query_one("#search-summary", Static)
        assert "No message matches '[b]zz[/b]'." in str(summary.render())
        await pilot.press(*["backspace"] * 9, *"photo")
        await settle(pilot)
        assert str(app.screen.query_one("#search-summary", Static).render()).startswith("1 match, newest first")


async def test_a_hostile_text_arriving_live_is_toasted_as_written(cache: Cache) -> None:
    from textual.widgets._toast import Toast

    async with linked(cache, notifications=True) as (app, pilot, link):
        log = EventLog(seq=cache.cursor(), ids="hostile")
        log.inbound(customer(950), "[bold red]FREE[/] [link=https://evil.example]x[/link]", NOW)
        link.deliver(log.events)
        await settle(pilot)
        toasts = [node for node in app.screen.walk_children(with_self=False) if isinstance(node, Toast)]
        assert len(toasts) == 1
        shown = str(toasts[0].render())
        assert "[bold red]FREE[/] [link=https://evil.example]x[/link]" in shown


def test_a_snooze_can_be_typed_as_a_duration_a_day_or_a_time() -> None:
    from datetime import datetime, timezone

    from console.screens.main import snooze_until

    here = timezone(timedelta(hours=-6))
    now = datetime(2026, 11, 25, 16, 0, tzinfo=here)  # a Wednesday, 16:00 here

    def until(text: str) -> str | None:
        at = snooze_until(text, now, here)
        return None if at is None else at.astimezone(here).strftime("%a %d %H:%M")

    assert until("30m") == "Wed 25 16:30" and until("2h") == "Wed 25 18:00" and until("3d") == "Sat 28 16:00"
    assert until("tomorrow") == "Thu 26 09:00" and until("Tomorrow 14:00") == "Thu 26 14:00"
    assert until("fri") == until("friday") == until("next Friday") == "Fri 27 09:00"
    assert until("wed") == "Wed 02 09:00"  # today's weekday: next week's
    assert until("fri 8:30") == "Fri 27 08:30"
    assert until("17:45") == "Wed 25 17:45" and until("9:00") == "Thu 26 09:00"  # passed today: tomorrow
    for bad in ("", "next", "soon", "t", "th", "0m", "91d", "25:00", "9:5", "9", "fri 9", "1h 2m", "mon tue", "x:00"):
        assert snooze_until(bad, now, here) is None, bad


async def test_a_narrow_inbox_gives_each_conversation_two_lines_with_its_preview(cache: Cache) -> None:
    """At 80 columns the number, unread count and time left the preview no room on one line: each conversation
    takes two, the preview under the customer. Keys, pages and clicks move by conversation; wider, one line again."""
    app = SwitchboardApp(cache, ConsoleConfig(), clock=frozen_clock, tz=UTC)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        inbox = app.query_one(ConversationList)
        assert inbox.per_row == 2
        assert inbox.virtual_size.height == 2 * inbox.count
        lines = [inbox.render_line(y).text for y in range(4)]
        first, second = inbox._rows[0], inbox._rows[1]
        assert first.customer_number[-4:] in lines[0] and "  " + first.last_preview[:10] in lines[1]
        assert second.customer_number[-4:] in lines[2]
        await pilot.press("down")
        assert inbox.cursor == 1
        await pilot.press("pagedown")  # a page: the rows a screen shows, less one
        assert inbox.cursor == 1 + inbox.scrollable_content_region.height // 2 - 1
        top = int(inbox.scroll_offset.y)
        assert top % 2 == 0  # scrolled to a row's first line: the top line is never a preview alone
        cursor_line = inbox.cursor * 2 + 1 - top  # the cursor's preview line is on screen
        assert 0 <= cursor_line < inbox.scrollable_content_region.height
        await pilot.click(ConversationList, offset=(5, 3))  # the second line of the second row shown
        await settle(pilot)
        opened = inbox._rows[top // 2 + 1]
        assert app.query_one(ThreadView).conversation_id == opened.id
        await pilot.resize_terminal(120, 36)
        await settle(pilot)
        assert inbox.per_row == 1 and inbox.virtual_size.height == inbox.count
        assert inbox.highlighted_id == opened.id
        line = inbox.render_line(inbox.cursor - int(inbox.scroll_offset.y)).text
        assert opened.customer_number[-4:] in line


@pytest.mark.parametrize(("size", "toasts"), [((80, 24), 1), (SIZE, 3)])
async def test_a_batch_of_texts_gets_fewer_toasts_on_a_short_terminal(
    cache: Cache, size: tuple[int, int], toasts: int
) -> None:
    """Three toasts and the summary stacked over the whole thread at 80×24: there, a batch gets one, and the rest
    are summed up when the gap ends."""
    async with linked(cache, size) as (app, pilot, link):
        log = EventLog(seq=cache.cursor(), ids="batch")
        for n in range(4):
            log.inbound(customer(900 + n), f"batch text {n}", NOW)
        link.deliver(log.events)
        await pilot.pause(0.05)
        said = [str(n.message) for n in app._notifications]
        assert said == [f"batch text {n}" for n in range(toasts)]
        assert app.screen._texts_unsaid == 4 - toasts  # type: ignore[attr-defined]


async def test_moving_the_inbox_cursor_redraws_only_the_two_rows_it_left_and_reached(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cursor is a reactive that would repaint the whole list at every move; the list redraws the two rows."""
    async with running(cache) as (app, pilot):
        inbox = app.query_one(ConversationList)
        drawn: list[int] = []
        draw = ConversationList.render_line

        def counted(self: ConversationList, y: int) -> Strip:
            drawn.append(y)
            return draw(self, y)

        monkeypatch.setattr(ConversationList, "render_line", counted)
        before = inbox.cursor
        await pilot.press("down")
        await settle(pilot)
        assert inbox.cursor == before + 1
        assert sorted(set(drawn)) == [before * inbox.per_row + k for k in range(2 * inbox.per_row)]


# -- what the composer holds belongs where it was written ------------------------------------------------------


async def _open_third(pilot: Pilot[Any], app: SwitchboardApp, *, reply: bool = True) -> str:
    """The inbox's third conversation open (and the reply box focused, with ``reply``)."""
    await pilot.press("down", "down", "down", *(["enter"] if reply else []))
    await settle(pilot)
    row = app.main.current
    assert row is not None
    return row.id


async def test_a_note_put_aside_never_goes_out_as_a_text(cache: Cache) -> None:
    """Escape from a note half written, open the conversation again, press enter: no text goes to the customer;
    the note is still there when the agent goes back to writing notes."""
    async with linked(cache) as (app, pilot, link):
        await _open_third(pilot, app, reply=False)
        await pilot.press("m", *"customer is rude, refund denied")
        await pilot.press("escape", "enter")
        await settle(pilot)
        assert not app.main.composer.note_mode
        await pilot.press("enter")
        await settle(pilot)
        assert link.sent == []
        await pilot.press("escape", "m")
        await settle(pilot)
        assert app.main.composer.text == "customer is rude, refund denied"


async def test_a_draft_stays_with_its_conversation(cache: Cache) -> None:
    """A draft goes with the conversation it was written for: moving to another leaves an empty box there and
    the draft comes back on return; sent, it goes to its own customer."""
    async with linked(cache) as (app, pilot, link):
        first = await _open_third(pilot, app)
        await pilot.press(*"Your refund is approved", "escape", "down")
        await settle(pilot)
        second = app.main.current
        assert second is not None and second.id != first
        assert app.main.composer.text == ""
        await pilot.press("up", "enter")
        await settle(pilot)
        assert app.main.composer.text == "Your refund is approved"
        await pilot.press("enter")
        await settle(pilot)
        assert [(c.command, c.args) for c in link.sent] == [
            ("send_sms", {"conversation_id": first, "body": "Your refund is approved"})
        ]
        assert app.main.composer.text == ""


async def test_a_conversation_leaving_the_inbox_does_not_take_the_reply_elsewhere(cache: Cache) -> None:
    """A colleague resolves the conversation an agent is answering: it leaves the open-only inbox and another row
    comes under the cursor, but the reply (and the thread) stay where the agent is writing."""
    async with linked(cache) as (app, pilot, link):
        first = await _open_third(pilot, app)
        await pilot.press(*"Your refund is approved")
        at = cache.cursor()
        resolved = {"conversation_id": first, "status": "resolved", "agent": "bob"}
        link.deliver([protocol.Event(at + 1, protocol.CONVERSATION_STATUS, iso(NOW), resolved)])
        await settle(pilot)
        assert app.main.inbox.highlighted_id != first
        row = app.main.current
        assert row is not None and row.id == first
        await pilot.press("enter")
        await settle(pilot)
        assert [(c.command, c.args["conversation_id"]) for c in link.sent] == [("send_sms", first)]


async def test_enter_pressed_again_while_a_reply_is_queued_sends_it_once_and_keeps_what_was_typed_since(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queueing a reply can wait (the cache busy with a catch-up): a second enter meanwhile does not queue it
    again, and what the agent typed meanwhile stays in the box."""
    async with linked(cache) as (app, pilot, link):
        await _open_third(pilot, app)
        queued = FakeLink.command
        release = asyncio.Event()

        async def slow_command(self: FakeLink, name: str, args: dict[str, Any], cid: str | None = None) -> str:
            await release.wait()
            return await queued(self, name, args, cid)

        monkeypatch.setattr(FakeLink, "command", slow_command)
        area = app.main.composer.area
        await pilot.press(*"On its way")
        area.post_message(events.Key("enter", "\r"))  # as the terminal delivers keys: not waiting for each
        await asyncio.sleep(0.2)
        area.post_message(events.Key("enter", "\r"))
        area.insert(" Also, your refund is approved.")
        await asyncio.sleep(0.2)
        release.set()
        await settle(pilot)
        assert [c.args["body"] for c in link.sent] == ["On its way"]
        assert app.main.composer.text == " Also, your refund is approved."


def test_a_snooze_shows_when_it_ends_in_the_agents_time_zone() -> None:
    """Snoozes are kept in UTC; the header says when they end where the agent is (it said the UTC time)."""
    from zoneinfo import ZoneInfo

    from console.times import ahead

    new_york = ZoneInfo("America/New_York")
    now = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)  # 10:30 in New York
    assert ahead("2026-11-24T20:00:00Z", now, new_york) == "15:00"
    assert ahead("2026-11-25T14:00:00Z", now, new_york) == "tomorrow 09:00"
    assert ahead("2026-11-27T14:00:00Z", now, new_york) == "Fri 09:00"
    assert ahead("2026-12-24T14:00:00Z", now, new_york) == "Dec 24 09:00"
    assert ahead("2027-01-04T14:00:00Z", now, new_york) == "2027-01-04 09:00"
    assert ahead("not a time", now, new_york) == ""


async def test_a_reply_too_long_for_twilio_is_not_sent_and_stays_in_the_box(cache: Cache) -> None:
    """The counter says a reply is over Twilio's 1,600 characters before it is sent; enter then keeps it, and
    says why (it used to go to the outbox, be refused by the bridge, and stay as a failure in the thread)."""
    async with linked(cache) as (app, pilot, link):
        await _open_third(pilot, app)
        composer = app.main.composer
        composer.set_text("x" * 1700)
        await settle(pilot)
        assert str(app.query_one("#composer-counter").render()) == "1700/1600 characters · too long to send"
        await pilot.press("enter")
        await settle(pilot)
        assert link.sent == []
        assert composer.text == "x" * 1700
        assert any("1700 characters" in str(n.message) for n in app._notifications)


async def test_the_agents_name_is_kept_for_the_next_start_and_failing_to_does_not_end_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written from a worker thread (the catch-up helper may hold the cache's write lock): a write that fails there
    would end the console, where on the link's callback it was logged."""
    cache = Cache(tmp_path / "cache.db")
    async with linked(cache) as (app, _pilot, link):
        assert app.agent == link.me and cache.meta("agent") == link.me

    def locked(key: str, value: str) -> None:
        raise sqlite3.OperationalError("database is locked")

    other = Cache(tmp_path / "other.db")
    monkeypatch.setattr(other, "set_meta", locked)
    async with linked(other) as (app, pilot, link):
        await settle(pilot)
        assert app.is_running and app.agent == link.me and other.meta("agent") is None


async def test_another_agent_who_stops_saying_so_is_no_longer_shown_typing_or_here(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A colleague's console that quit or lost its link sends no "idle": "typing…" fades to "viewing" after
    TYPING_FOR seconds without a word, and "viewing" goes after three VIEWING_EVERY; losing our own link forgets
    everyone at once (it used to say "bob is typing…" forever)."""
    clock = [1000.0]
    monkeypatch.setattr(main_screen, "_now", lambda: clock[0])
    async with linked(cache) as (app, pilot, link):
        cid = await _open_third(pilot, app, reply=False)
        app.link_signal(protocol.Signal(cid, "typing", agent="bob"))
        await settle(pilot)
        assert app.main.header.presence == "bob is typing…"
        clock[0] += main_screen.TYPING_FOR + 1
        app.main._forget_quiet_agents()
        assert app.main.header.presence == "bob is viewing"
        clock[0] += 3 * main_screen.VIEWING_EVERY
        app.main._forget_quiet_agents()
        assert app.main.header.presence == ""
        app.link_signal(protocol.Signal(cid, "viewing", agent="bob"))
        await settle(pilot)
        assert app.main.header.presence == "bob is viewing"
        link.go_offline()
        await settle(pilot)
        assert app.main.header.presence == ""


async def test_the_keys_go_on_while_the_bridge_is_asked_who_to_assign_to(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Assigning asks the bridge for its agents (up to 5 s when the link has gone quiet): the inbox keeps moving
    meanwhile, and no answer is said as such, not as "not connected"."""
    answered = asyncio.Event()

    async def no_answer(self: SwitchboardApp, command: str, args: dict[str, Any] | None = None) -> None:
        await answered.wait()

    monkeypatch.setattr(SwitchboardApp, "ask", no_answer)
    async with linked(cache, notifications=True) as (app, pilot, _link):
        await _open_third(pilot, app, reply=False)
        before = app.main.inbox.cursor
        await pilot.press("a", "down")
        await pilot.pause(0.2)  # (not settle: that waits for the question's worker)
        assert app.main.inbox.cursor == before + 1  # not waiting behind the question
        answered.set()
        await settle(pilot)
        assert any("did not answer" in str(n.message) for n in app._notifications)


async def test_a_draft_outlives_the_console(cache: Cache) -> None:
    """Quit with a reply and a note half written (no question asked): the next run says so and brings each back
    into its own box, in its own mode, when its conversation is opened; nothing was sent."""
    async with linked(cache) as (app, pilot, link):
        cid = await _open_third(pilot, app)
        await pilot.press(*"Half a repl", "escape", "m", *"a note to self", "ctrl+q")
        await settle(pilot)
        assert not app.is_running and link.sent == []
    async with linked(cache, notifications=True) as (app, pilot, link):
        assert any("A draft" in str(n.message) or "2 drafts" in str(n.message) for n in app._notifications)
        assert "✎ Half a repl" in inbox_row(app, cid)  # the inbox marks it, with the reply over the note
        assert await _open_third(pilot, app) == cid
        assert app.main.composer.text == "Half a repl" and not app.main.composer.note_mode
        await pilot.press("escape", "m")
        await settle(pilot)
        assert app.main.composer.text == "a note to self"
        assert link.sent == []


async def test_drafts_are_saved_while_typing(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A console that never quits (killed, its SSH session dropped) has still saved what was typed a moment ago;
    a reply once sent is out of the saved drafts at once, so a crash right after cannot offer it again."""
    from console.drafts import drafts_file
    from console.screens import main

    monkeypatch.setattr(main, "DRAFTS_SAVED_AFTER", 0.05)
    path = drafts_file(cache.path)
    assert path is not None
    async with linked(cache) as (app, pilot, link):
        cid = await _open_third(pilot, app)
        await pilot.press(*"Your refund is on its way")
        await settle(pilot)
        assert saved_drafts(path) == {(cid, False): "Your refund is on its way"}
        assert "✎ Your refund i" in inbox_row(app, cid)
        monkeypatch.setattr(main, "DRAFTS_SAVED_AFTER", 60.0)  # from here only a send saves at once
        await pilot.press("enter")
        await settle(pilot)
        assert [c.args["body"] for c in link.sent] == ["Your refund is on its way"]
        assert saved_drafts(path) == {}
        assert "✎" not in inbox_row(app, cid)


async def test_unreadable_saved_drafts_are_put_aside_and_said(cache: Cache) -> None:
    from console.drafts import drafts_file

    path = drafts_file(cache.path)
    assert path is not None
    path.write_text('{"version": 1, "drafts": [{"conversation_id": 7}]}')
    async with linked(cache, notifications=True) as (app, pilot, _link):
        assert any("could not be read" in str(n.message) for n in app._notifications)
        assert not path.exists() and path.with_name(path.name + ".unreadable").exists()
        await _open_third(pilot, app)
        await pilot.press(*"still works")
        await pilot.press("ctrl+q")
        await settle(pilot)
    assert "still works" in path.read_text()


async def test_quitting_asks_first_when_drafts_cannot_be_saved(cache: Cache) -> None:
    from console.drafts import drafts_file
    from console.screens.confirm import Confirm

    path = drafts_file(cache.path)
    assert path is not None
    path.mkdir()  # a directory where the file should go: every save fails
    async with linked(cache) as (app, pilot, _link):
        await _open_third(pilot, app)
        await pilot.press(*"Half a repl", "ctrl+q")
        await settle(pilot)
        assert isinstance(app.screen, Confirm)
        assert "could not be saved" in app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert app.is_running and app.main.composer.text == "Half a repl"
        await pilot.press("ctrl+q", "y")
        await settle(pilot)
        assert not app.is_running


async def test_an_empty_inbox_says_what_it_shows_and_how_to_change_it(cache: Cache) -> None:
    async with running(cache) as (app, pilot):
        inbox = app.main.inbox
        inbox.set_filter(InboxFilter("snoozed", "mine", "nobody-here"))
        await settle(pilot)
        assert inbox.count == 0
        shown = [text_of([inbox.render_line(y)]).strip() for y in (1, 2)]
        assert shown == ["No conversations: snoozed · mine.", "f / F change what is shown."]


async def test_a_refused_reply_comes_back_into_its_box_not_into_the_thread_for_good(cache: Cache) -> None:
    """The bridge refuses a reply (here: the customer opted out meanwhile): the toast says why, the reply is back in
    the box to fix or clear, and the thread no longer holds it as a failure nothing can retry or dismiss."""
    from console.client import BridgeLink, read_outbox

    class OutboxLink(FakeLink):
        command = BridgeLink.command  # the real outbox write

    app = SwitchboardApp(cache, ConsoleConfig(), link_factory=OutboxLink, clock=frozen_clock, tz=UTC)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot)
        link = app.link
        assert isinstance(link, OutboxLink)
        cid = await _open_third(pilot, app)
        await pilot.press(*"See you Monday", "enter")
        await settle(pilot)
        assert app.main.composer.text == ""
        [queued] = read_outbox(cache, cid)
        refused = protocol.Result.failure(queued.command_id, "opted_out", "This customer texted STOP.")
        link._settle_sync(refused)  # as the link settles a result from the bridge
        app.link_result(refused)
        await settle(pilot)
        assert app.main.composer.text == "See you Monday"
        assert read_outbox(cache, cid) == []
        assert "See you Monday" not in text_of(app.main.thread._lines)
        assert any("texted STOP. The reply is back in the box below" in str(n.message) for n in app._notifications)


async def test_replies_pending_at_a_cache_reset_come_back_as_drafts(cache: Cache) -> None:
    """A cache that belonged to another bridge is reset: the replies and notes still in its outbox were meant for
    that bridge, so they are not sent here, but they are not lost either: each is back in its conversation's box
    (and saved), for the agent to send again or clear."""
    from console.client import read_outbox
    from console.drafts import drafts_file

    async with linked(cache, notifications=True) as (app, pilot, link):
        cid = await _open_third(pilot, app, reply=False)
        link._enqueue_sync("c-old-1", protocol.SEND_SMS, {"conversation_id": cid, "body": "meant for the other"}, cid)
        link._enqueue_sync("c-old-2", protocol.ADD_NOTE, {"conversation_id": cid, "body": "old note"}, cid)
        await app.reset_cache()
        await settle(pilot)
        assert read_outbox(cache) == [] and link.sent == []
        assert app.main.composer.drafts() == {(cid, False): "meant for the other", (cid, True): "old note"}
        assert any("not sent before the reset" in str(n.message) for n in app._notifications)
        path = drafts_file(cache.path)
        assert path is not None and saved_drafts(path) == app.main.composer.drafts()


async def test_quitting_while_a_reply_is_queued_waits_for_it_and_keeps_no_draft_of_it(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enter, then ctrl+q while the reply waits for the outbox (a catch-up holds the cache's write lock): the
    console quits once it is queued, and the saved drafts do not hold it (the next run would offer it again)."""
    from console.drafts import drafts_file

    async with linked(cache) as (app, pilot, link):
        cid = await _open_third(pilot, app)
        queued = asyncio.Event()
        command = link.command

        async def slow_command(name: str, args: dict[str, Any], conversation_id: str | None = None) -> str:
            await queued.wait()
            return await command(name, args, conversation_id)

        monkeypatch.setattr(link, "command", slow_command)
        await pilot.press(*"Your refund is on its way", "enter", "ctrl+q")
        await pilot.pause(0.3)  # not settle(): it would wait for the send, held here
        assert app.is_running and app.main.composer.sending  # waiting for the outbox
        queued.set()
        await settle(pilot)
        assert not app.is_running
        assert [c.args["body"] for c in link.sent] == ["Your refund is on its way"]
    path = drafts_file(cache.path)
    assert path is not None and (cid, False) not in saved_drafts(path)


async def test_drafts_are_saved_however_the_console_ends(cache: Cache) -> None:
    """Not only through quit: the console taken down any other way saves what is in the box at that moment."""
    from console.drafts import drafts_file

    async with linked(cache) as (app, pilot, _link):
        cid = await _open_third(pilot, app)
        await pilot.press(*"typed just now")
        app.exit()
        await settle(pilot)
    path = drafts_file(cache.path)
    assert path is not None and saved_drafts(path) == {(cid, False): "typed just now"}


async def test_drafts_for_conversations_the_cache_lacks_are_kept_and_said(cache: Cache) -> None:
    from console.drafts import DraftFile, drafts_file

    path = drafts_file(cache.path)
    assert path is not None
    known = cache.conversations(3)[2].id
    saved = {(known, False): "for a customer we have", ("CVnot-here", False): "for one we do not"}
    assert DraftFile(path).save(saved)
    async with linked(cache, notifications=True) as (app, pilot, _link):
        said = [str(n.message) for n in app._notifications]
        assert any(
            "2 drafts from last time" in m and "1 is for a conversation this cache does not have" in m for m in said
        )
        assert app.main.composer.drafts() == saved
        await pilot.press("ctrl+q")
        await settle(pilot)
    assert saved_drafts(path) == saved  # kept for when it comes in
    async with linked(cache, notifications=True) as (app, pilot, _link):  # until the agent discards them
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert "Discard drafts of conversations not here" in titles
        app.main.discard_drafts_elsewhere()
        await settle(pilot)
        assert app.main.composer.drafts() == {(known, False): "for a customer we have"}
        assert "Discard drafts of conversations not here" not in [c.title for c in app.get_system_commands(app.screen)]
    assert saved_drafts(path) == {(known, False): "for a customer we have"}


async def test_many_drafts_brought_back_are_one_change(cache: Cache) -> None:
    """Drafts brought back at start are marked in the inbox in one go (a change per draft made a start with 2,000
    saved drafts take over ten seconds)."""
    async with linked(cache) as (app, _pilot, _link):
        composer = app.main.composer
        posted: list[object] = []
        post = composer.post_message
        composer.post_message = posted.append  # type: ignore[method-assign,assignment]
        try:
            composer.keep({(f"CV{n}", False): f"draft {n}" for n in range(2000)})
        finally:
            composer.post_message = post  # type: ignore[method-assign]
        assert len(posted) == 1 and len(composer.drafts()) == 2000
