"""The callers waiting in the queues, longest first, with wait times that tick every second.

A line-API view: a busy queue can hold hundreds of callers, and their wait times change every second, so only the
rows on screen are drawn, from rows held in memory (the calls panel refreshes them from the cache when calls change;
a tick re-reads nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console import times
from console.cache import CallRow, clock_time
from console.phones import display_number, region_name
from console.text import one_line


class CallQueue(ScrollView, can_focus=True):
    """Waiting callers: wait, caller, number, where from, queue.

    | Key | Action |
    | :- | :- |
    | `up` / `k`, `down` / `j` | Move the cursor. |
    | `enter` | Open the caller's conversation. |
    """

    BINDINGS = [
        Binding("up,k", "cursor_up", "Up", show=False, id="queue.up"),
        Binding("down,j", "cursor_down", "Down", show=False, id="queue.down"),
        Binding("enter", "open", "Caller's thread", id="queue.open", tooltip="Open the caller's conversation"),
    ]

    COMPONENT_CLASSES = {"call-queue--cursor", "call-queue--wait", "call-queue--long", "call-queue--dim"}

    DEFAULT_CSS = """
    CallQueue {
        height: auto;
        background: $surface;
        scrollbar-size-vertical: 1;
        &:focus > .call-queue--cursor { background: $accent; color: $text; }
        & > .call-queue--wait { color: $text; text-style: bold; }
        & > .call-queue--long { color: $warning; text-style: bold; }
        & > .call-queue--dim { color: $text-muted; }
    }
    """

    cursor: reactive[int] = reactive(0)
    """Index of the highlighted caller."""

    @dataclass
    class Selected(Message):
        """The agent asked for a waiting caller's conversation."""

        call_sid: str
        conversation_id: str

    def __init__(
        self, *, region: str = "US", long_wait: int = 120, name: str | None = None, id: str | None = None
    ) -> None:
        super().__init__(name=name, id=id)
        self.phone_region = region
        self.long_wait = long_wait
        """Seconds after which a wait is shown as long."""
        self.rows: list[CallRow] = []
        self.now: datetime | None = None
        self._since: list[datetime | None] = []
        self._labels: list[Text] = []

    def set_rows(self, rows: list[CallRow], now: datetime) -> None:
        """Hold a new list of callers (after the cache changed); the cursor stays on its caller if still there."""
        previous = self.highlighted
        self.rows = rows
        self.now = now
        # Everything but the wait is drawn once per change, not once per tick.
        self._since = [times.parse(r.queued_at or r.changed_at) for r in rows]
        self._labels = [self._label(r) for r in rows]
        self.virtual_size = Size(self.size.width, len(rows))
        if previous is not None:
            for n, row in enumerate(rows):
                if row.call_sid == previous.call_sid:
                    self.cursor = n
                    break
        self.cursor = min(self.cursor, max(0, len(rows) - 1))
        self.refresh()

    def tick(self, now: datetime) -> None:
        """A second passed: redraw the visible rows' wait times (no query, no layout)."""
        self.now = now
        if self.rows:
            self.refresh()

    @property
    def highlighted(self) -> CallRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def _label(self, row: CallRow) -> Text:
        dim = self.get_component_rich_style("call-queue--dim", partial=True)
        label = Text(no_wrap=True, overflow="ellipsis", end="")
        number = display_number(row.customer_number, self.phone_region)
        if row.caller_name:
            label.append(one_line(row.caller_name)[:24], Style(bold=True))
            label.append(f"  {number}")
        else:
            label.append(number, Style(bold=True))
        # Where from: Twilio's city and state; else the country, when it is not the team's own.
        place = one_line(", ".join(p for p in (row.from_city, row.from_state) if p))
        if not place:
            country = row.from_country or region_name(row.customer_number) or ""
            place = one_line(country) if country.upper() != self.phone_region.upper() else ""
        if place:
            label.append(f"  {place}", dim)
        if row.queue:
            label.append(f"  · {one_line(row.queue)}", dim)
        if row.offered_to:
            label.append(f"  · offered to {one_line(row.offered_to)}", dim)
        return label

    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_offset.y) + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if not 0 <= index < len(self.rows):
            return Strip.blank(width, base)
        if index == self.cursor and self.has_focus:  # unfocused, "accept" takes the longest-waiting, not this row
            base = base + self.get_component_rich_style("call-queue--cursor")
        since, now = self._since[index], self.now
        seconds = max(0, int((now - since).total_seconds())) if since is not None and now is not None else 0
        wait_style = self.get_component_rich_style(
            "call-queue--long" if seconds >= self.long_wait else "call-queue--wait", partial=True
        )
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        line.append(f" {index + 1:>3} ", self.get_component_rich_style("call-queue--dim", partial=True))
        line.append(f"{clock_time(seconds):>6}  ", wait_style)
        line.append_text(self._labels[index])
        line.truncate(width, overflow="ellipsis", pad=True)
        segments = [Segment(s.text, base + s.style if s.style else base) for s in line.render(self.app.console)]
        return Strip(segments).adjust_cell_length(width, base)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._labels = [self._label(r) for r in self.rows]
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- moving ----------------------------------------------------------------------------------------------

    def watch_cursor(self) -> None:
        top, height = int(self.scroll_offset.y), self.scrollable_content_region.height
        if height > 0:
            if self.cursor < top:
                self.scroll_to(y=self.cursor, animate=False)
            elif self.cursor >= top + height:
                self.scroll_to(y=self.cursor - height + 1, animate=False)
        self.refresh()

    def action_cursor_up(self) -> None:
        self.cursor = max(0, self.cursor - 1)

    def action_cursor_down(self) -> None:
        self.cursor = min(max(0, len(self.rows) - 1), self.cursor + 1)

    def action_open(self) -> None:
        row = self.highlighted
        if row is not None:
            self.post_message(self.Selected(row.call_sid, row.conversation_id))

    def select(self, call_sid: str) -> None:
        for n, row in enumerate(self.rows):
            if row.call_sid == call_sid:
                self.cursor = n
                return

    def on_click(self, event: events.Click) -> None:
        index = int(self.scroll_offset.y) + event.y
        if 0 <= index < len(self.rows):
            self.cursor = index
            self.action_open()
