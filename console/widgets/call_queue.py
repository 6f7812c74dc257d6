"""The callers waiting in the queues, longest first, with wait times that tick every second.

A line-API widget: a busy queue can hold hundreds of callers, and their wait times change every second, so only
the rows on screen are drawn, from rows held in memory (the calls panel refreshes them from the cache when calls
change; a tick re-reads nothing). It scrolls itself rather than being a ``ScrollView``: a scroll view's virtual size
changes with every caller who comes or goes, and each change costs the whole screen a layout pass (10–25 ms here),
where a fixed-height window over the rows costs none. The header says how many wait; the numbers say where the
window is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from console import times
from console.cache import CallRow, clock_time
from console.phones import display_number, region_name
from console.text import one_line


class CallQueue(Widget, can_focus=True):
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
        self.top = 0
        """The first caller shown."""
        self.now: datetime | None = None
        self._since: list[datetime | None] = []
        self._strips: dict[tuple[str, str, int], Strip] = {}
        """Each drawn caller's label (all but the wait), by (call, its last change, width): a tick only draws the
        wait, and a caller whose call did not change keeps its strip across reloads."""
        self._styles: tuple[Style, Style, Style, Style] | None = None

    def set_rows(self, rows: list[CallRow], now: datetime) -> None:
        """Hold a new list of callers (after the cache changed); the cursor stays on its caller if still there."""
        previous = self.highlighted
        self.rows = rows
        self.now = now
        self._since = [times.parse(r.queued_at or r.changed_at) for r in rows]
        if len(self._strips) > 4 * max(len(rows), 50):
            self._strips.clear()
        if previous is not None:
            for n, row in enumerate(rows):
                if row.call_sid == previous.call_sid:
                    self.cursor = n
                    break
        self.cursor = min(self.cursor, max(0, len(rows) - 1))
        self._keep_cursor_in_view()
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
        number = one_line(display_number(row.customer_number, self.phone_region))
        if row.caller_name:
            label.append(one_line(row.caller_name)[:24], Style(bold=True))
            label.append(f"  {number}")
        else:
            label.append(number, Style(bold=True))
        # Where from: Twilio's city and state; else the country, when it is not the team's own.
        place = one_line(row.place)
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

    def _line_styles(self) -> tuple[Style, Style, Style, Style]:
        """(base, dim, wait, long wait), each on the widget's own style; read once per style change."""
        if self._styles is None:
            base = self.rich_style
            style = self.get_component_rich_style
            self._styles = (
                base,
                base + style("call-queue--dim", partial=True),
                base + style("call-queue--wait", partial=True),
                base + style("call-queue--long", partial=True),
            )
        return self._styles

    def _label_strip(self, row: CallRow, width: int, base: Style) -> Strip:
        key = (row.call_sid, row.changed_at, width)
        strip = self._strips.get(key)
        if strip is None:
            label = self._label(row)
            label.truncate(width, overflow="ellipsis", pad=True)
            segments = [Segment(s.text, base + s.style if s.style else base) for s in label.render(self.app.console)]
            strip = self._strips[key] = Strip(segments).adjust_cell_length(width, base)
        return strip

    def render_line(self, y: int) -> Strip:
        # Called for the visible rows only, once a second each: the wait is the only part drawn anew.
        index = self.top + y
        width = self.content_region.width
        base, dim, wait, long = self._line_styles()
        if not 0 <= index < len(self.rows):
            return Strip.blank(width, base)
        since, now = self._since[index], self.now
        seconds = max(0, int((now - since).total_seconds())) if since is not None and now is not None else 0
        head = [
            Segment(f" {index + 1:>3} ", dim),
            Segment(f"{clock_time(seconds):>6}  ", long if seconds >= self.long_wait else wait),
        ]
        used = sum(len(s.text) for s in head)
        line = Strip.join([Strip(head, used), self._label_strip(self.rows[index], max(0, width - used), base)])
        if index == self.cursor and self.has_focus:  # unfocused, "accept" takes the longest-waiting, not this row
            line = line.apply_style(self.get_component_rich_style("call-queue--cursor"))
        return line.crop(0, width)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self._strips.clear()
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- moving ----------------------------------------------------------------------------------------------

    def watch_cursor(self) -> None:
        self._keep_cursor_in_view()
        self.refresh()

    def _keep_cursor_in_view(self) -> None:
        height = max(1, self.content_region.height)
        if self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + height:
            self.top = self.cursor - height + 1
        self.top = max(0, min(self.top, len(self.rows) - height))

    def on_resize(self) -> None:
        self._keep_cursor_in_view()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.top = max(0, min(self.top + 1, len(self.rows) - max(1, self.content_region.height)))
        self.refresh()

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.top = max(0, self.top - 1)
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
        index = self.top + event.y
        if 0 <= index < len(self.rows):
            self.cursor = index
            self.action_open()
