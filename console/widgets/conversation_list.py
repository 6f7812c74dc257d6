"""The inbox: every conversation by last activity, drawn line by line from windows of the cache.

Built-in list widgets make a widget per row (seconds for 100k rows); this is a ``ScrollView`` whose
``render_line`` draws row ``scroll_y + y`` from a window of rows fetched by an indexed query in a thread worker.
Rows not fetched yet draw as a dim placeholder for the few milliseconds the query takes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import date, tzinfo

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, work
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console import times
from console.cache import Cache, ConversationRow, InboxFilter
from console.phones import display_number
from console.text import one_line

WINDOW = 200
"""Rows fetched per query: a few screens' worth, so scrolling a page rarely waits."""
RELOAD_GIVE_UP = 2.0
"""Seconds after which a reload that never landed (its worker failed) no longer holds the next one back."""
DRAWN_KEPT = 2048
"""Drawn lines kept (see ConversationList._drawn); a few screens' worth, cleared whole when full."""
DRAFT_MARK_CHARS = 160
"""Most characters of a draft an inbox row shows (wider than any row)."""
TWO_LINES_BELOW = 44
"""Row width (cells) under which each conversation takes two lines, the preview under the customer: on one line,
the number, unread count and time left the preview no room at 80 or 100 columns (it showed as "…")."""


class ConversationList(ScrollView, can_focus=True):
    """Conversations, newest activity first, with unread counts and markers.

    | Key | Action |
    | :- | :- |
    | `up` / `k`, `down` / `j` | Move the cursor. |
    | `pageup`, `pagedown`, `home`, `end` | Move by a page, to the top or the bottom. |
    | `enter` | Open the conversation. |
    """

    BINDINGS = [
        Binding("up,k", "cursor_up", "Up", show=False, id="inbox.up"),
        Binding("down,j", "cursor_down", "Down", show=False, id="inbox.down"),
        Binding("pageup", "page_up", "Page up", show=False, id="inbox.page-up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="inbox.page-down"),
        Binding("home", "first", "First", show=False, id="inbox.first"),
        Binding("end", "last", "Last", show=False, id="inbox.last"),
        Binding("enter", "open", "Open", show=False, id="inbox.open"),
    ]

    COMPONENT_CLASSES = {
        "conversation-list--cursor",
        "conversation-list--unread",
        "conversation-list--dim",
        "conversation-list--alert",
        "conversation-list--placeholder",
        "conversation-list--draft",
    }

    DEFAULT_CSS = """
    ConversationList {
        background: $surface;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;  /* rows are cut to the width: never a horizontal scrollbar over the last row */
        & > .conversation-list--cursor { background: $accent 40%; }
        &:focus > .conversation-list--cursor { background: $accent; color: $text; }
        & > .conversation-list--unread { text-style: bold; }
        & > .conversation-list--dim { color: $text-muted; }
        & > .conversation-list--alert { color: $error; text-style: bold; }
        & > .conversation-list--placeholder { color: $text-disabled; }
        & > .conversation-list--draft { color: $warning; text-style: italic; }
    }
    """

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)
    """Index of the highlighted row in the current filter's order. Not a repainting reactive: ``watch_cursor``
    redraws the two rows that change (with repaint on, every move redrew the whole list: 33 lines, ~1.2 ms more a
    switch on the 1M cache, headless)."""

    @dataclass
    class Selected(Message):
        """The agent opened a conversation (enter or click)."""

        conversation_id: str

    @dataclass
    class Highlighted(Message):
        """The cursor moved onto a conversation."""

        conversation_id: str
        by_reload: bool = False
        """Not the agent's doing: a reload put another row under the cursor (the one it was on left the list)."""

    class Reloaded(Message):
        """The rows a ``reload()`` asked for are in (and the list is no longer ``reloading``)."""

    @dataclass
    class _Loaded(Message, bubble=False):
        generation: int
        count: int
        offset: int
        rows: list[ConversationRow]

    def __init__(
        self,
        cache: Cache,
        *,
        region: str = "US",
        tz: tzinfo | None = None,
        clock: times.Clock = times.system_clock,
        name: str | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id)
        self.cache = cache
        self.phone_region = region
        self.tz = tz
        self.clock = clock
        self.inbox = InboxFilter()
        self.count = 0
        self._rows: dict[int, ConversationRow] = {}
        self._generation = 0
        self._loading: tuple[int, int] | None = None
        self._loaded = False
        """A load has landed: an empty list then means nothing matches (and says so), not "not read yet"."""
        self._reload_since: float | None = None
        self._counted: tuple[InboxFilter, int, int] | None = None
        """(filter, the cache's inbox_version, count) of the last count taken."""
        self._follow: str | None = None
        self._follow_cursor = False
        self._now = clock()
        self.per_row = 1
        """Lines each conversation takes: 2 under TWO_LINES_BELOW cells (see ``on_resize``)."""
        self._frame: tuple[int, Style, date] | None = None
        """(width, style, today) while a frame's lines are drawn (see ``render_lines``)."""
        self.drafts: dict[str, str] = {}
        """What is written and not sent, by conversation (its first line, cut): shown in place of the preview."""
        self._drawn: dict[tuple[ConversationRow, int, Style, object, int, str | None], Strip] = {}
        """Each row's drawn lines by (row, width, style, today's date, which line): a frame redraws every visible
        line, and building the Rich text, number and time anew cost ~0.3 ms a line (~20 ms a frame on a tall
        terminal). The time shown depends on the clock only through the day (``times.short``), so after a reload
        only the rows that changed are drawn again."""

    # -- data ------------------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        # The first window is read here, on the UI thread, before the first frame: an exception to "SQLite work off
        # the UI loop" (as live reloads are, see ``reload``), taken because nothing is on screen yet for a query to
        # stutter, and the queries are the usual bounded ones (a count, a position, one window). Read in a worker,
        # they waited on the GIL behind the screen's start-up (styles, layout, first render) and the rows came
        # frames later. First paint with the 1M-message cache, medians of 11: 195–217 ms against 287–305 ms, and
        # 179–193 against 227–243 ms with an empty one (bench_console --only first_paint, three runs each, in turns).
        self.reload(here=True)

    def on_resize(self) -> None:
        per_row = 2 if self.scrollable_content_region.width < TWO_LINES_BELOW else 1
        if per_row != self.per_row:
            top = int(self.scroll_offset.y) // self.per_row
            self.per_row = per_row
            self._drawn.clear()
            self._size_to_rows()
            self.scroll_to(y=top * per_row, animate=False)
            self._scroll_cursor_into_view()
            self.refresh()

    def _size_to_rows(self) -> None:
        self.virtual_size = Size(self.size.width, self.count * self.per_row)

    def _refresh_row(self, index: int) -> None:
        self.refresh_lines(index * self.per_row, self.per_row)

    def set_filter(self, inbox: InboxFilter, keep: str | None = None) -> None:
        """Show another slice of the inbox; the cursor goes to ``keep`` if given (and shown), else to the top."""
        self.inbox = inbox
        self._rows = {}
        self.cursor = 0
        self.scroll_to(y=0, animate=False)
        self.reload(keep=keep or "")

    def mark_read(self, conversation_id: str) -> None:
        """The conversation was opened (and marked read in the cache): clear its unread count on its row here, a
        one-line repaint, instead of reloading the window (two queries and a whole-list repaint per switch)."""
        for index, row in self._rows.items():
            if row.id == conversation_id:
                if row.unread:
                    self._rows[index] = replace(row, unread=0)
                    self._refresh_row(index)
                return

    def show_drafts(self, drafts: dict[str, str]) -> None:
        """Mark the conversations with something written and not sent (``drafts``: conversation → its text)."""
        marks = {cid: _draft_mark(text) for cid, text in drafts.items()}
        changed = {cid for cid in marks.keys() | self.drafts.keys() if marks.get(cid) != self.drafts.get(cid)}
        self.drafts = marks
        self._refresh_conversations(changed)

    def set_draft(self, conversation_id: str, text: str | None) -> None:
        """One conversation's draft (None: it has none); its row is drawn again only if its mark changed."""
        mark = None if text is None else _draft_mark(text)
        if self.drafts.get(conversation_id) == mark:
            return
        if mark is None:
            del self.drafts[conversation_id]
        else:
            self.drafts[conversation_id] = mark
        self._refresh_conversations({conversation_id})

    def _refresh_conversations(self, ids: set[str]) -> None:
        if ids:
            for index, row in self._rows.items():
                if row.id in ids:
                    self._refresh_row(index)

    def reload(self, keep: str | None = None, *, here: bool = False) -> None:
        """Refetch the count and the visible window (after events, or a filter change).

        ``keep`` is a conversation id the cursor should stay on if it moved in the order. Without it, the cursor
        stays on the conversation it is on when the rows arrive, so a key pressed while they load is not undone.
        ``here`` reads on the calling (UI) thread instead of a worker: for the first window (see ``on_mount``) and
        for live events, whose reload is a few milliseconds of queries that, in a worker, wait on the GIL behind
        the UI's own drawing (an inbound text reached the screen with p99 42-50 ms read here, 59-93 ms read in a
        worker; bench_console, 1M cache).
        """
        self._generation += 1
        self._reload_since = time.monotonic()
        if keep is None and self._follow is not None and not self._follow_cursor:
            keep = self._follow  # a reload still on its way was taking the cursor there: this one replaces it
        self._follow = (keep or None) if keep is not None else self.highlighted_id
        self._follow_cursor = keep is None
        read = self._read if here else self._fetch
        read(self._generation, max(0, int(self.scroll_offset.y) // self.per_row - WINDOW // 4), self._follow)

    @work(thread=True, exclusive=True, group="inbox-fetch")
    def _fetch(self, generation: int, offset: int, follow: str | None = None) -> None:
        self._read(generation, offset, follow)

    def _read(self, generation: int, offset: int, follow: str | None = None) -> None:
        """Count, find ``follow`` and read the window starting near ``offset``; the rows come back as a message."""
        inbox, version = self.inbox, self.cache.inbox_version  # the version first: a later change recounts
        known = self._counted
        if known is not None and known[0] == inbox and known[1] == version:
            count = known[2]  # no conversation came or went since (a text in an existing one, say): ~4 ms saved
        else:
            count = self.cache.inbox_count(inbox)
            self._counted = (inbox, version, count)
        if follow is not None:
            at = self.cache.inbox_position(inbox, follow)
            if at is not None:
                offset = max(0, at - WINDOW // 4)
        rows = self.cache.inbox_window(inbox, offset, WINDOW)
        self.post_message(self._Loaded(generation, count, offset, rows))

    def on_conversation_list__loaded(self, message: _Loaded) -> None:
        message.stop()
        if message.generation != self._generation:
            return
        self._loading = None
        self._loaded = True
        previous = self.highlighted_id
        self.count = message.count
        self._rows = {message.offset + i: row for i, row in enumerate(message.rows)}
        self._now = self.clock()
        self._size_to_rows()
        follow, self._follow = self._follow, None
        if self._follow_cursor:
            follow, self._follow_cursor = previous, False
        if follow is not None:
            for index, row in self._rows.items():
                if row.id == follow:
                    if index != self.cursor:
                        self.cursor = index
                    break
        self.cursor = min(self.cursor, max(0, self.count - 1))
        self.refresh()
        if self.highlighted_id is not None and self.highlighted_id != previous:
            self.post_message(self.Highlighted(self.highlighted_id, by_reload=True))
        if self._reload_since is not None:
            self._reload_since = None
            self.post_message(self.Reloaded())

    @property
    def reloading(self) -> bool:
        """A ``reload()`` is on its way (its rows not yet in the list); ``Reloaded`` says when they land. One that
        has not landed in RELOAD_GIVE_UP seconds is given up on."""
        return self._reload_since is not None and time.monotonic() - self._reload_since < RELOAD_GIVE_UP

    def _want(self, index: int) -> None:
        if self._loading is not None and self._loading[0] <= index < self._loading[1]:
            return
        offset = max(0, index - WINDOW // 2)
        self._loading = (offset, offset + WINDOW)
        self._fetch(self._generation, offset)

    @property
    def highlighted(self) -> ConversationRow | None:
        return self._rows.get(self.cursor)

    @property
    def highlighted_id(self) -> str | None:
        row = self.highlighted
        return row.id if row is not None else None

    # -- drawing ---------------------------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        # What every line of this frame shares, read once: the widget's style alone walks its ancestors (~50 µs,
        # more than drawing a line that is already in ``_drawn``).
        self._frame = self._frame_facts()
        try:
            return super().render_lines(crop)
        finally:
            self._frame = None

    def _frame_facts(self) -> tuple[int, Style, date]:
        return self.scrollable_content_region.width, self.rich_style, self._now.astimezone(self.tz).date()

    def render_line(self, y: int) -> Strip:
        index, part = divmod(int(self.scroll_offset.y) + y, self.per_row)
        width, base, today = self._frame or self._frame_facts()
        if index >= self.count:
            if self.count == 0 and y in (1, 2) and self._loaded:
                hint = f"  No conversations: {self.inbox.describe()}." if y == 1 else "  f / F change what is shown."
                style = base + self.get_component_rich_style("conversation-list--dim", partial=True)
                return Strip([Segment(hint[:width].ljust(width), style)], width)
            return Strip.blank(width, base)
        row = self._rows.get(index)
        if row is None:
            self._want(index)
            style = base + self.get_component_rich_style("conversation-list--placeholder")
            return Strip([Segment(("  ·" if part == 0 else "").ljust(width), style)], width)
        if index == self.cursor:
            base = base + self.get_component_rich_style("conversation-list--cursor")
        key = (row, width, base, today, part, self.drafts.get(row.id))
        strip = self._drawn.get(key)
        if strip is None:
            if len(self._drawn) >= DRAWN_KEPT:
                self._drawn.clear()
            strip = self._drawn[key] = self._row_strip(row, width, base, part)
        return strip

    def _row_strip(self, row: ConversationRow, width: int, base: Style, part: int = 0) -> Strip:
        """One line of a row: the whole row on one line, or (two lines a row) the customer with the counts and
        time (``part`` 0), then the preview (``part`` 1)."""
        dim = self.get_component_rich_style("conversation-list--dim", partial=True)
        alert = self.get_component_rich_style("conversation-list--alert", partial=True)
        strong = self.get_component_rich_style("conversation-list--unread", partial=True) if row.unread else Style()
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        if row.failed:
            line.append("! ", alert)
        elif row.opted_out:
            line.append("⊘ ", alert)
        elif row.unread:
            line.append("● ", strong)
        else:
            line.append("  ")
        who = (
            one_line(row.customer_name) if row.customer_name else display_number(row.customer_number, self.phone_region)
        )
        when = times.short(row.last_at, self._now, self.tz)
        tail = Text(no_wrap=True, end="")
        if row.unread:
            tail.append(f" {row.unread}", strong)
        if row.assignee is not None:
            tail.append(f" @{one_line(row.assignee)[:10]}", dim)
        if row.status not in ("open",):
            tail.append(f" {row.status}", dim)
        tail.append(f" {when:>9}", dim)
        draft = self.drafts.get(row.id)
        if draft is not None:
            preview, shade = f"✎ {draft}", self.get_component_rich_style("conversation-list--draft", partial=True)
        else:
            preview = ("you: " if row.last_direction == "outbound" else "") + one_line(row.last_preview)
            shade = Style() if row.unread else dim
        if self.per_row == 1:
            line.append(f"{who[:18]:<18} ", strong)
            line.append(preview, shade)
        elif part == 0:
            line.append(who, strong)
        else:
            line = Text("  ", no_wrap=True, overflow="ellipsis", end="")
            line.append(preview, shade)
            tail = Text(end="")
        line.truncate(max(0, width - tail.cell_len), overflow="ellipsis", pad=True)
        line.append_text(tail)
        segments = [Segment(seg.text, base + seg.style if seg.style else base) for seg in line.render(self.app.console)]
        return Strip(segments).adjust_cell_length(width, base)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn.clear()
        self.refresh()

    # -- moving ----------------------------------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        top = self.scroll_offset.y
        self._scroll_cursor_into_view()
        if self.scroll_offset.y == top:
            # Only the two rows change: a whole-list repaint cost ~6 ms of the frame that shows the cursor move.
            self._refresh_row(old)
            self._refresh_row(new)
        else:
            self.refresh()
        row = self._rows.get(new)
        if row is not None and old != new:
            self.post_message(self.Highlighted(row.id))

    def _scroll_cursor_into_view(self) -> None:
        top, height = int(self.scroll_offset.y), self.scrollable_content_region.height
        if height <= 0:
            return
        first, last = self.cursor * self.per_row, (self.cursor + 1) * self.per_row - 1
        if first < top:
            self.scroll_to(y=first, animate=False)
        elif last >= top + height:
            # To the first line of a row, so the top line is never a preview without its customer (but never past
            # the cursor's own first line, on a list shorter than a row).
            top = -(-(last - height + 1) // self.per_row) * self.per_row
            self.scroll_to(y=min(top, first), animate=False)

    def _move(self, to: int) -> None:
        if self.count:
            self.cursor = max(0, min(self.count - 1, to))

    def action_cursor_up(self) -> None:
        self._move(self.cursor - 1)

    def action_cursor_down(self) -> None:
        self._move(self.cursor + 1)

    def _page(self) -> int:
        """Rows a page moves: those a screen shows, less one kept in sight."""
        return max(1, self.scrollable_content_region.height // self.per_row - 1)

    def action_page_up(self) -> None:
        self._move(self.cursor - self._page())

    def action_page_down(self) -> None:
        self._move(self.cursor + self._page())

    def action_first(self) -> None:
        self._move(0)

    def action_last(self) -> None:
        self._move(self.count - 1)

    def action_open(self) -> None:
        row = self.highlighted
        if row is not None:
            self.post_message(self.Selected(row.id))

    def select(self, conversation_id: str) -> None:
        """Move the cursor to a conversation (fetching its position if it is off-window)."""
        for index, row in self._rows.items():
            if row.id == conversation_id:
                self.cursor = index
                return
        self.reload(keep=conversation_id)

    def on_click(self, event: events.Click) -> None:
        self._move((int(self.scroll_offset.y) + event.y) // self.per_row)
        self.action_open()


def _draft_mark(text: str) -> str:
    """What a row shows of a draft: its first line with words, cut to what any row can show."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return one_line(first[:DRAFT_MARK_CHARS]).strip()
