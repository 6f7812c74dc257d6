"""One conversation's timeline: texts both ways, delivery states, attachments, internal notes, calls (who answered,
how long, holds, transfers, outcome), voicemails, day separators.

A line-API view like the inbox: it holds pages of the thread (200 messages each), draws them into lines once per
width, and loads the next older (or newer) page from the cache in a thread worker as the agent scrolls toward it,
so a thread of any length opens at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console import times
from console.cache import Cache, CallChange, CallRow, MessageRow, VoicemailRow, clock_time, talk_time
from console.phones import display_number
from console.text import inert, one_line

PAGE = 200
NEAR_EDGE = 5
"""Lines from the top (or bottom) at which the next page is fetched."""
REST_ROWS = 24
"""Rows of a page drawn at a time above those drawn, as the reader scrolls up to them (~12 ms at ~0.5 ms a row).

A thread opens with its last screenful drawn and the rest of its page drawn as it is scrolled to, as older pages
are fetched. Drawing the whole page at every switch, even spread over frames, cost the screen CPU the rest of the
machine wanted: with a key every 200 ms during bench_console's catch-up, the console used 1.0–1.9 CPU seconds with
it against 0.8–1.1 without, and most pages drawn were never looked at (an agent going down the inbox)."""

STATUS_MARK = {
    "sending": "…",
    "pending": "◷",
    "queued": "◷",
    "accepted": "◷",
    "scheduled": "◷",
    "sent": "✓",
    "delivered": "✓✓",
    "read": "✓✓",
    "received": "",
    "failed": "✗",
    "undelivered": "✗",
    "canceled": "✗",
}


@dataclass(frozen=True, slots=True)
class Pending:
    """A reply still in the local outbox (made offline, or not yet answered by the bridge)."""

    command_id: str
    body: str
    state: str
    error: str | None
    note: bool = False


OUTCOMES = {
    "answered": "answered",
    "abandoned": "caller hung up before anyone answered",
    "agent_hung_up": "hung up by the agent before anyone answered",
    "voicemail": "went to voicemail",
    "transferred_out": "transferred out",
    "failed": "failed",
}
VOICEMAIL_REASONS = {"longest wait": "nobody answered in time", "closed": "outside opening hours"}


def _seconds(start: str | None, end: str | None) -> int | None:
    a, b = times.parse(start or ""), times.parse(end or "")
    return None if a is None or b is None else max(0, int((b - a).total_seconds()))


def _target(transfer: dict[str, object] | None, region: str) -> str:
    if not transfer:
        return "someone"
    target = str(transfer.get("target") or "")
    kind = transfer.get("target_kind")
    if kind == "number":
        return one_line(display_number(target, region))
    if kind == "queue":
        return f"the {one_line(target)} queue"
    return one_line(target)


def change_words(change: CallChange, region: str, me: str = "") -> str:
    """One step of a call, as the thread says it (``me``: this console's agent, who reads "you")."""
    mine = bool(me) and change.agent == me
    agent = "you" if mine else one_line(change.agent or "an agent")
    whose = "your" if mine else f"{agent}'s"
    transfer = change.transfer or {}
    target = _target(change.transfer, region)
    words = {
        "queued": "waiting in the queue",
        "offered": "offered to an agent",
        "offer_declined": "offer declined",
        "accepted": f"accepted by {agent}: ringing {'your' if mine else 'their'} phone",
        "agent_no_answer": f"{whose} phone did not answer: back at the front of the queue",
        "connected": f"{agent} answered",
        "held": "caller on hold",
        "unheld": "caller off hold",
        "muted": f"{agent} muted {'your' if mine else 'their'} phone",
        "unmuted": f"{agent} unmuted {'your' if mine else 'their'} phone",
        "transfer_started": f"{one_line(str(transfer.get('mode') or ''))} transfer to {target}".strip(),
        "transfer_failed": f"{target} did not answer the transfer",
        "transfer_completed": f"transferred to {target}",
        "transfer_cancelled": f"transfer to {target} cancelled",
        "voicemail_started": "sent to voicemail",
        "ended": "ended",
    }.get(change.change, one_line(change.change.replace("_", " ")))
    if change.reason:
        words += f" — {one_line(change.reason)}"
    return words


def call_summary(call: CallRow, region: str = "US") -> str:
    """The call's header: "answered by ana → bob · 3m 12s", "missed · after 0:40", "live · on hold"."""
    if call.state != "ended":
        agent = one_line(call.agent or "an agent")
        return {
            "queued": f"waiting in {one_line(call.queue)}" if call.queue else "waiting",
            "ringing_agent": f"ringing {agent}",
            "connected": f"talking to {agent}",
            "on_hold": f"on hold with {agent}",
            "consulting": f"on hold: {agent} is consulting a colleague",
            "transferring": f"being transferred by {agent}",
            "voicemail": "leaving a voicemail",
        }.get(call.state, one_line(call.state)) + " · now"
    parts = []
    agents = [one_line(a) for a in call.agents]
    if agents:
        parts.append("answered by " + " → ".join(agents))
        talked = _seconds(call.answered_at, call.ended_at)
        if talked is not None:
            parts.append(talk_time(talked))
    else:
        parts.append(OUTCOMES.get(call.outcome or "", one_line(call.outcome or "ended")))
        waited = _seconds(call.queued_at, call.ended_at)
        if waited is not None:
            parts.append(f"after {clock_time(waited)}")
    if call.outcome == "transferred_out":
        parts.append(f"transferred to {_target(call.transfer, region)}")
    elif call.outcome == "failed":
        parts.append("failed")
    return " · ".join(parts)


class ThreadView(ScrollView, can_focus=True):
    """The open conversation, newest at the bottom.

    | Key | Action |
    | :- | :- |
    | `up` / `k`, `down` / `j` | Scroll a line. |
    | `pageup`, `pagedown`, `home`, `end` | Scroll a page, to the oldest loaded, to the newest. |
    """

    BINDINGS = [
        Binding("up,k", "scroll_up", "Up", show=False, id="thread.up"),
        Binding("down,j", "scroll_down", "Down", show=False, id="thread.down"),
        Binding("pageup", "page_up", "Page up", show=False, id="thread.page-up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="thread.page-down"),
        Binding("home", "scroll_home", "Oldest", show=False, id="thread.oldest"),
        Binding("end", "scroll_end", "Newest", show=False, id="thread.newest"),
    ]

    COMPONENT_CLASSES = {
        "thread-view--inbound",
        "thread-view--outbound",
        "thread-view--note",
        "thread-view--meta",
        "thread-view--failed",
        "thread-view--day",
        "thread-view--hit",
        "thread-view--call",
    }

    DEFAULT_CSS = """
    ThreadView {
        background: $surface;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        & > .thread-view--inbound { color: $text; }
        & > .thread-view--outbound { color: $text-primary; }
        & > .thread-view--note { color: $text-warning; text-style: italic; }
        & > .thread-view--meta { color: $text-muted; }
        & > .thread-view--failed { color: $text-error; text-style: bold; }
        & > .thread-view--day { color: $text-muted; text-style: bold; }
        & > .thread-view--hit { background: $warning 30%; }
        & > .thread-view--call { color: $text-accent; }
    }
    """

    @dataclass
    class _Page(Message, bubble=False):
        generation: int
        where: str  # "fresh" | "older" | "newer"
        rows: list[MessageRow]
        pending: list[Pending]
        has_older: bool
        has_newer: bool
        focus_pos: int | None
        calls: dict[str, tuple[CallRow, list[CallChange]]]
        voicemails: dict[str, VoicemailRow]

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
        self.conversation_id: str | None = None
        self.customer_label = ""
        self.rows: list[MessageRow] = []
        self.pending: list[Pending] = []
        self.has_older = False
        self.has_newer = False
        self.hit_pos: int | None = None
        self.calls: dict[str, tuple[CallRow, list[CallChange]]] = {}
        self.voicemails: dict[str, VoicemailRow] = {}
        self.me = ""
        """This console's agent, so a call's steps say "you"."""
        self._lines: list[Strip] = []
        self._line_of_pos: dict[int, int] = {}
        self._width = 0
        self._generation = 0
        self._busy = False
        self._pinned = True
        """The reader is at the newest line: a resize (the calls panel growing above, say) keeps them there."""
        self._first_row = 0
        """The first of ``rows`` drawn: a fresh page is drawn from the newest message up to a screenful, and the
        rows above as the reader scrolls up to them (see ``REST_ROWS``)."""
        self._more_asked = False
        """A step of those rows is on its way (``_draw_more_if_near_top``)."""
        self._styles: dict[tuple[str, bool], Style] = {}
        """Component styles read during the current rebuild (see ``_component_style``)."""
        self._frame_style: Style | None = None
        """The widget's style while a frame is drawn (see render_lines)."""

    # -- loading ---------------------------------------------------------------------------------------------

    def show(self, conversation_id: str | None, customer_label: str = "", at_pos: int | None = None) -> None:
        """Open a conversation at its newest message, or around ``at_pos`` (a search hit)."""
        self._generation += 1
        self.conversation_id = conversation_id
        self.customer_label = customer_label
        self.hit_pos = at_pos
        self._busy = True
        if conversation_id is None:
            self.rows, self.pending, self._lines = [], [], []
            self._set_virtual_size(Size(self.size.width, 0))
            self.refresh()
            return
        # Read here, not in a worker: a few milliseconds of queries that, in a worker, wait on the GIL behind the
        # UI's own drawing (a thread switch, key → thread painted: see bench_console).
        self._read(self._generation, conversation_id, "fresh", at_pos)

    def refresh_thread(self) -> None:
        """Re-read what is loaded (new messages, changed statuses), keeping the reader's place."""
        if self.conversation_id is None:
            return
        from_pos = self.rows[0].pos if self.rows else None
        self._fetch(self._generation, self.conversation_id, "fresh", None, from_pos)

    @work(thread=True, group="thread-fetch")
    def _fetch(
        self, generation: int, conversation_id: str, where: str, focus: int | None, from_pos: int | None = None
    ) -> None:
        self._read(generation, conversation_id, where, focus, from_pos)

    def _read(
        self, generation: int, conversation_id: str, where: str, focus: int | None, from_pos: int | None = None
    ) -> None:
        """Read a page of the thread (on whatever thread calls it); it comes back as a ``_Page`` message."""
        cache = self.cache
        has_newer = False
        rows: list[MessageRow]
        if where == "older":
            rows = cache.messages(conversation_id, PAGE, before_pos=from_pos)
            has_older = len(rows) == PAGE
            has_newer = self.has_newer
        elif where == "newer":
            rows = cache.messages_from(conversation_id, from_pos or 0, PAGE)
            has_newer = len(rows) == PAGE
            has_older = self.has_older
        elif focus is not None:
            earlier = cache.messages(conversation_id, PAGE // 4, before_pos=focus)
            after_rows = cache.messages_from(conversation_id, focus, PAGE)
            rows = earlier + after_rows
            has_older = len(earlier) == PAGE // 4
            has_newer = len(after_rows) == PAGE
        elif from_pos is not None:
            rows = cache.messages_from(conversation_id, from_pos, 100_000)
            has_older = self.has_older
        else:
            rows = cache.messages(conversation_id, PAGE)
            has_older = len(rows) == PAGE
        pending = [
            Pending(cid, str(args.get("body", "")), state, error, note=command == "add_note")
            for cid, command, args, state, error in cache.pending_outbox(conversation_id)
            if command in ("send_sms", "add_note")
        ]
        # Calls and voicemails sit in the thread as rows with no body; their details come in two more queries.
        calls = cache.calls(r.id for r in rows if r.direction == "call")
        voicemails = cache.voicemails(r.id for r in rows if r.direction == "voicemail")
        self.post_message(self._Page(generation, where, rows, pending, has_older, has_newer, focus, calls, voicemails))

    def on_thread_view__page(self, message: _Page) -> None:
        message.stop()
        self._busy = False
        if message.generation != self._generation:
            return
        at_bottom = self.is_vertical_scroll_end or not self._lines
        old_height = len(self._lines)
        old_y = self.scroll_offset.y
        if message.where == "older":
            self.rows = message.rows + self.rows
        elif message.where == "newer":
            self.rows = self.rows + message.rows
        else:
            self.rows = message.rows
            self.calls, self.voicemails = {}, {}
        self.calls.update(message.calls)
        self.voicemails.update(message.voicemails)
        self.pending = message.pending
        self.has_older, self.has_newer = message.has_older, message.has_newer
        to_bottom = message.where == "fresh" and message.focus_pos is None and (at_bottom or self.hit_pos is None)
        # At the bottom only the last screenful shows: draw that, and the rest as the reader scrolls up to it.
        first = self._last_screenful() if to_bottom else 0
        self._rebuild(first)
        if message.where == "older":
            self.scroll_to(y=old_y + len(self._lines) - old_height, animate=False)
        elif message.focus_pos is not None and message.focus_pos in self._line_of_pos:
            self.scroll_to(y=max(0, self._line_of_pos[message.focus_pos] - 2), animate=False)
        elif message.where == "fresh" and (at_bottom or self.hit_pos is None):
            self.scroll_end(animate=False, immediate=True)

    def _last_screenful(self) -> int:
        """The first row to draw so that the newest rows surely fill the view: counted by the fewest lines each row
        can take (a header, the body at the full width in code points, a line per attachment, a blank; a call or
        voicemail two).
        Wrapping costs ~0.5 ms a row here, so a switch's first frame draws ~10 rows (it drew ~20 before)."""
        region = self.scrollable_content_region
        # A line more than the view, and NEAR_EDGE more so that opening is not already scrolling up to the rest.
        width, need = max(10, region.width - 5), region.height + 1 + NEAR_EDGE
        lines = 0
        for index in range(len(self.rows) - 1, -1, -1):
            row = self.rows[index]
            if row.direction in ("call", "voicemail"):
                lines += 2
            else:
                lines += 2 + sum(max(1, -(-len(part) // width)) for part in row.body.split("\n")) + len(row.media)
            if lines >= need:
                return index
        return 0

    def _draw_more(self, rows: int = REST_ROWS) -> None:
        """Draw up to ``rows`` more of the page's rows above those drawn, keeping what is on screen where it is (a
        scroll on its way ends where it was going, at once)."""
        if not self._first_row:
            return
        at_bottom = self.is_vertical_scroll_end
        drawn, y = len(self._lines), self.scroll_target_y
        self._draw_above(max(0, self._first_row - rows))
        if at_bottom:
            self.scroll_end(animate=False, immediate=True)
        else:
            self.scroll_to(y=y + len(self._lines) - drawn, animate=False, immediate=True)

    def _draw_more_if_near_top(self, generation: int) -> None:
        self._more_asked = False
        if generation == self._generation and self.scroll_target_y < NEAR_EDGE:
            self._draw_more()

    def action_scroll_home(self) -> None:
        """To the oldest message loaded: the page's rows not drawn yet are drawn first."""
        self._draw_more(len(self.rows))
        super().action_scroll_home()

    def _maybe_page(self) -> None:
        if self._busy or self.conversation_id is None:
            return
        y, height = int(self.scroll_offset.y), self.scrollable_content_region.height
        if self._first_row and y < NEAR_EDGE:
            if not self._more_asked:  # not from inside the scroll, which an animation may be moving: right after
                self._more_asked = True
                self.call_next(self._draw_more_if_near_top, self._generation)
        elif self.has_older and y < NEAR_EDGE:
            self._busy = True
            self._fetch(self._generation, self.conversation_id, "older", None, self.rows[0].pos if self.rows else None)
        elif self.has_newer and y + height > len(self._lines) - NEAR_EDGE:
            self._busy = True
            self._fetch(
                self._generation, self.conversation_id, "newer", None, self.rows[-1].pos + 1 if self.rows else 0
            )

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._pinned = new >= self.max_scroll_y
        self._maybe_page()

    # -- drawing ---------------------------------------------------------------------------------------------

    def on_resize(self) -> None:
        pinned = self._pinned
        if self.scrollable_content_region.width != self._width:
            self._rebuild(self._first_row)
        if pinned and self._lines:
            self.scroll_end(animate=False, immediate=True)
            # A scrollbar coming or going changes the width again after this event: stay at the end through that.
            self.call_after_refresh(self._stay_pinned)

    def _stay_pinned(self) -> None:
        if self._pinned and self.scroll_offset.y != self.max_scroll_y:
            self.scroll_end(animate=False, immediate=True)

    def _rebuild(self, first_row: int = 0, *, again: bool = False) -> None:
        """Draw ``rows[first_row:]`` (all of them by default), the pending outbox and the markers."""
        width = max(20, self.scrollable_content_region.width)
        self._width = self.scrollable_content_region.width
        self._styles.clear()  # read afresh once per rebuild (the theme may have changed), then from memory
        lines, positions = self._draw_rows(first_row, len(self.rows), width)
        self._draw_pending(lines, width)
        self._show(first_row, lines, positions, width, again=again)

    def _draw_above(self, first_row: int) -> None:
        """Draw ``rows[first_row:]`` where only the rows from ``_first_row`` on are drawn: the rows above them are
        drawn and put before their lines (drawn as ``_rebuild(first_row)`` would draw them)."""
        if self.scrollable_content_region.width != self._width:
            self._rebuild(first_row)  # the width changed since: everything is drawn again at the new one
            return
        width = max(20, self._width)
        lines, positions = self._draw_rows(first_row, self._first_row, width)
        shift = len(lines)
        positions.update((pos, at + shift) for pos, at in self._line_of_pos.items())
        self._show(first_row, lines + self._lines, positions, width)

    def _show(
        self, first_row: int, lines: list[Strip], positions: dict[int, int], width: int, *, again: bool = False
    ) -> None:
        """Make ``lines`` (drawn from ``rows[first_row]``) what the view shows, and its scroll range theirs."""
        self._first_row = first_row
        self._lines = lines
        self._line_of_pos = positions
        self._set_virtual_size(Size(width, len(lines)))
        if self.scrollable_content_region.width != self._width and not again:
            # The scroll range just brought the scrollbar in (or took it away), so the width changed under the
            # lines; the size of the view did not, so no resize will come to redraw them: draw them again now.
            self._rebuild(first_row, again=True)
            return
        self.refresh()

    def _line_writer(self, lines: list[Strip], width: int) -> Callable[..., None]:
        """``add(text, indent=0, line_style=None)``: wrap ``text`` to ``width`` and append its lines to ``lines``."""
        console = self.app.console

        def add(text: Text, indent: int = 0, line_style: Style | None = None) -> None:
            for part in text.wrap(console, max(10, width - indent - 1)):
                segments = [Segment(" " * indent)] if indent else []
                segments += list(part.render(console))
                strip = Strip(segments)
                if line_style is not None:
                    strip = strip.apply_style(line_style)
                lines.append(strip.adjust_cell_length(width))

        return add

    def _draw_rows(self, first_row: int, stop: int, width: int) -> tuple[list[Strip], dict[int, int]]:
        """The lines of ``rows[first_row:stop]`` (with the marker for older messages above the first row), and the
        line each row starts at."""
        style = self._component_style
        meta, day_style = style("thread-view--meta", partial=True), style("thread-view--day", partial=True)
        now = self.clock()
        lines: list[Strip] = []
        positions: dict[int, int] = {}
        add = self._line_writer(lines, width)
        rows = self.rows[first_row:stop]
        last_day = times.day(self.rows[first_row - 1].at, now, self.tz) if first_row else ""

        if self.has_older and not first_row:
            add(Text("  ↑ older messages load as you scroll up", meta))
        for row in rows:
            label = times.day(row.at, now, self.tz)
            if label != last_day:
                last_day = label
                rule = f" {label} ".center(width - 2, "─")
                add(Text(rule, day_style))
            positions[row.pos] = len(lines)
            hit = style("thread-view--hit") if row.pos == self.hit_pos else None
            if row.direction in ("call", "voicemail"):
                self._voice(row, now, add)
                lines.append(Strip.blank(width))
                continue
            add(self._header(row, now), 0, hit)
            body_style = {
                "inbound": style("thread-view--inbound", partial=True),
                "outbound": style("thread-view--outbound", partial=True),
                "note": style("thread-view--note", partial=True),
            }.get(row.direction, Style())
            if row.body:
                add(Text(inert(row.body).expandtabs(4), body_style, end=""), 4 if row.direction != "note" else 6, hit)
            for item in row.media:
                kind = one_line(str(item.get("content_type") or "attachment"))
                add(Text(f"📎 {kind}  {one_line(str(item.get('url', '')))}", meta, end=""), 4)
            lines.append(Strip.blank(width))
        return lines, positions

    def _draw_pending(self, lines: list[Strip], width: int) -> None:
        """The outbox's replies and notes for this conversation, after the thread."""
        style = self._component_style
        meta = style("thread-view--meta", partial=True)
        add = self._line_writer(lines, width)
        for waiting in self.pending:
            failed = waiting.state == "failed"
            head = Text("  ", end="")
            head.append("✎ note " if waiting.note else "▶ you ", style("thread-view--outbound", partial=True))
            if failed:
                head.append(
                    f"· ✗ not sent: {one_line(waiting.error or 'refused')}", style("thread-view--failed", partial=True)
                )
            else:
                head.append("· ◷ waiting for the bridge (outbox)", meta)
            add(head)
            add(Text(inert(waiting.body), style("thread-view--outbound", partial=True), end=""), 4)
            lines.append(Strip.blank(width))

    def _component_style(self, name: str, partial: bool = False) -> Style:
        """``get_component_rich_style``, remembered for the rebuild: each lookup walks the widget's ancestors, and a
        rebuild asked for the same few styles ~5 times a row (about a quarter of a switch's first rebuild)."""
        key = (name, partial)
        found = self._styles.get(key)
        if found is None:
            found = self._styles[key] = self.get_component_rich_style(name, partial=partial)
        return found

    def _set_virtual_size(self, size: Size) -> None:
        """Change the scroll range without laying out the whole screen.

        ``virtual_size`` is a layout reactive: assigning it re-lays out every widget (~20 ms a switch here) though
        only this view's scroll range changed. It is set quietly and the scrollbars updated the way Textual's own
        resize path does (``_scroll_update``; textual is pinned). A scrollbar appearing or going still lays out,
        through ``show_vertical_scrollbar``."""
        if size != self.virtual_size:
            self.set_reactive(ThreadView.virtual_size, size)
            self._scroll_update(size)

    def _voice(self, row: MessageRow, now: datetime, add: Callable[..., None]) -> None:
        """A call with its timeline, or a voicemail with its length and recording."""
        style = self._component_style
        meta, accent = style("thread-view--meta", partial=True), style("thread-view--call", partial=True)
        head = Text("", end="")
        if row.direction == "voicemail":
            voicemail = self.voicemails.get(row.id)
            head.append("◀ Voicemail", accent + Style(bold=True))
            head.append(f" from {self.customer_label} · {times.short(row.at, now, self.tz)}", meta)
            if voicemail is None:
                add(head)
                return
            head.append(f" · {clock_time(voicemail.duration)}", Style(bold=True))
            why = VOICEMAIL_REASONS.get(voicemail.reason or "", one_line(voicemail.reason or ""))
            if why:
                head.append(f" · {why}", meta)
            add(head)
            add(Text(f"recording: {one_line(voicemail.recording_url)}.mp3", meta, end=""), 4)
            return
        found = self.calls.get(row.id)
        head.append("☎ Call", accent + Style(bold=True))
        head.append(f" from {self.customer_label} · {times.short(row.at, now, self.tz)}", meta)
        if found is None:
            add(head)
            return
        call, timeline = found
        head.append(f" · {call_summary(call, self.phone_region)}", Style(bold=True))
        add(head)
        for change in timeline:
            when = times.parse(change.at)
            stamp = when.astimezone(self.tz).strftime("%H:%M:%S") if when is not None else "        "
            add(Text(f"{stamp}  {change_words(change, self.phone_region, self.me)}", meta, end=""), 4)

    def _header(self, row: MessageRow, now: datetime) -> Text:
        style = self._component_style
        meta = style("thread-view--meta", partial=True)
        when = times.short(row.at, now, self.tz)
        head = Text("", end="")
        if row.direction == "inbound":
            head.append("◀ ", style("thread-view--inbound", partial=True))
            head.append(self.customer_label, Style(bold=True))
            head.append(f" · {when}", meta)
            return head
        if row.direction == "note":
            # A wrap-up note keeps its call's SID: it is that call's disposition.
            head.append("  ✎ wrap-up note" if row.sid else "  ✎ note", style("thread-view--note", partial=True))
            head.append(f" by {one_line(row.agent or 'someone')} · {when}", meta)
            return head
        head.append("  ▶ ", style("thread-view--outbound", partial=True))
        head.append(one_line(row.agent or "team"), Style(bold=True))
        head.append(f" · {when}", meta)
        status = row.status or "sending"
        mark = STATUS_MARK.get(status, "")
        if status in ("failed", "undelivered", "canceled"):
            failure = f" · {mark} {status}"
            if row.error_code:
                failure += f" — {row.error_code}"
            if row.error_message:
                failure += f": {one_line(row.error_message)}"
            head.append(failure, style("thread-view--failed", partial=True))
        else:
            head.append(f" · {mark} {status}".rstrip(), meta)
        return head

    def render_lines(self, crop: Region) -> list[Strip]:
        # The widget's style, read once a frame instead of for every line: each read walks the widget's ancestors.
        # Headless, 80 switches on the 1M cache: 40.6-42.3 ms of CPU a switch against 42.3-44.7 (three runs each).
        self._frame_style = self.rich_style
        try:
            return super().render_lines(crop)
        finally:
            self._frame_style = None

    def render_line(self, y: int) -> Strip:
        style = self.rich_style if self._frame_style is None else self._frame_style
        index = int(self.scroll_offset.y) + y
        if 0 <= index < len(self._lines):
            return self._lines[index].apply_style(style)
        return Strip.blank(self.scrollable_content_region.width, style)

    def attachments(self) -> list[tuple[str, str]]:
        """(content type, URL) of every attachment loaded, newest first."""
        found = [(str(m.get("content_type", "")), str(m.get("url", ""))) for r in self.rows for m in r.media]
        return list(reversed(found))
