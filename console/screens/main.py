"""The working screen: the calls panel on top; the inbox on the left; the open conversation, its header and the
composer on the right."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer

from bridge import protocol
from bridge.protocol import MAX_NOTE_CHARS, MAX_SMS_CHARS
from console import messages
from console.cache import OWNERS, STATUSES, ConversationRow, InboxFilter
from console.phones import display_number
from console.screens.call_controls import CALL_ACTIONS, CALL_BINDINGS, CallControls
from console.screens.confirm import Confirm
from console.screens.picker import Choice, Picker
from console.screens.search import Hit, SearchScreen
from console.text import one_line
from console.widgets.call_queue import CallQueue
from console.widgets.calls_panel import CallKeys, CallsPanel
from console.widgets.composer import Composer, ReplyArea
from console.widgets.conversation_header import ConversationHeader
from console.widgets.conversation_list import ConversationList
from console.widgets.key_bar import KeyBar
from console.widgets.status_line import StatusLine
from console.widgets.thread_view import ThreadView

if TYPE_CHECKING:
    from console.app import SwitchboardApp

NEEDS_CONVERSATION = {
    "reply",
    "add_note",
    "claim",
    "assign",
    "resolve",
    "reopen",
    "set_pending",
    "snooze",
    "mark_unread",
    "open_attachment",
}
TOASTS_PER_BATCH = 3
SHORT_SCREEN = 30
"""Lines under which a batch of texts gets one toast, not TOASTS_PER_BATCH: at 80×24 three toasts and the summary
stacked up over the whole thread."""
TOAST_GAP = 2.5
"""Seconds between toasts for new texts: at 20 texts a second a toast each buried the screen, and each toast's
arrival and departure laid the whole screen out again (~90 ms a text, measured). Texts in between are counted and
summed up in one toast when the gap ends; the inbox shows each of them at once anyway."""
RELOAD_EVERY = 0.05
"""While catching up, the inbox reloads at once for the first batch, then at most this often. Live, it reloads at
once unless a reload is on its way, and then once more when that one lands: a fixed 50 ms throttle, against texts
coming every 50 ms, kept deferring each reload a little more (latency crept from 20 to 100 ms and back, measured)."""
LETTER_KEYS = NEEDS_CONVERSATION | CALL_ACTIONS | {"search", "next_waiting", "cycle_status", "cycle_owner"}
VOICE_EVENTS = {protocol.CALL_UPDATED, protocol.VOICEMAIL_RECORDED, protocol.AGENT_PRESENCE}
SNOOZE_CHOICES = [("1h", "for an hour"), ("3h", "for 3 hours"), ("tomorrow", "until 9:00 tomorrow"), ("3d", "3 days")]


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SNOOZE_MORNING = 9
"""The hour a day-only snooze ("tomorrow", "friday") ends, in the console's time zone."""
SNOOZE_FORMATS = "30m, 2h, 3d, tomorrow, a weekday (fri) or a time (14:30)"


def snooze_until(choice: str, now: datetime, tz: tzinfo | None = None) -> datetime | None:
    """When a snooze typed as ``choice`` ends, as a UTC time; None if it can't be read or is not ahead.

    ``30m``, ``2h``, ``3d`` (up to 90 days); ``tomorrow`` or a weekday (``friday``, ``fri``, ``next fri``: the next
    such day, never today) at 9:00; a time of day (``14:30``, ``9:00``: today, or tomorrow once it has passed); or a
    day and a time (``tomorrow 14:00``, ``fri 8:30``). Days and times are in ``tz`` (the console's; else the
    machine's)."""
    words = choice.strip().lower().split()
    if words[:1] == ["next"]:
        words = words[1:]
    if len(words) == 1:
        units = {"m": 60, "h": 3600, "d": 86400}
        text = words[0]
        if len(text) >= 2 and text[-1] in units and text[:-1].isascii() and text[:-1].isdigit():
            seconds = int(text[:-1]) * units[text[-1]]
            return now + timedelta(seconds=seconds) if 0 < seconds <= 90 * 86400 else None
    if not 1 <= len(words) <= 2:
        return None
    local = now.astimezone(tz) if tz is not None else now.astimezone()
    day: str | None
    clock: str | None
    if len(words) == 2:
        day, clock = words
    elif ":" in words[0]:
        day, clock = None, words[0]
    else:
        day, clock = words[0], None
    if day is None:
        offset = 0
    elif day == "tomorrow":
        offset = 1
    else:
        matches = [n for n, name in enumerate(WEEKDAYS) if len(day) >= 3 and name.startswith(day)]
        if len(matches) != 1:
            return None
        offset = (matches[0] - local.weekday() - 1) % 7 + 1  # 1–7 days on: the next one, never today
    hour, minute = SNOOZE_MORNING, 0
    if clock is not None:
        hours, colon, minutes = clock.partition(":")
        if not (colon and hours.isascii() and hours.isdigit() and minutes.isascii() and minutes.isdigit()):
            return None
        hour, minute = int(hours), int(minutes)
        if hour > 23 or minute > 59 or len(minutes) != 2:
            return None
    at = (local + timedelta(days=offset)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    if day is None and at <= local:
        at += timedelta(days=1)  # a time that has passed today: tomorrow's
    return at.astimezone(UTC) if at > local else None


VIEWING_EVERY = 30.0
"""Seconds between the "viewing" signals a console sends while a conversation stays open; the others forget an agent
not heard from in three of them (a console that quit, or lost its link, says nothing more)."""
TYPING_FOR = 10.0
"""Seconds "typing…" shows after the last typing signal (a console sends one every 3 s while its agent types)."""
DRAFTS_SAVED_AFTER = 1.0
"""Seconds from a change in what is written to the drafts being saved: at most one save a second while typing."""


def _now() -> float:
    """The clock the others' presence is timed by (a test moves it)."""
    return time.monotonic()


class MainScreen(CallControls, Screen[None]):
    """Calls panel, inbox, thread and composer.

    | Key | Action |
    | :- | :- |
    | `A`, `D` | Accept the call waiting longest (or offered to you); decline an offered call. |
    | `h`, `M` | Hold / unhold the caller; mute / unmute your leg. |
    | `t`, `T`, `C` | Transfer (agent, queue or number; cold or warm); complete, cancel a warm transfer. |
    | `H`, `w` | Hang up; write the wrap-up note (required before the next call). |
    | `g`, `q`, `P` | The caller's conversation; the callers waiting; away / available. |
    | `/` | Search every message. |
    | `n` | Next needing attention: a waiting call first, then the oldest unanswered text. |
    | `r` / `m` | Write a reply / an internal note (`ctrl+r` canned reply, `ctrl+o` $EDITOR). |
    | `c`, `a` | Claim, assign. |
    | `x`, `o`, `p`, `z` | Resolve, reopen, pending, snooze. |
    | `u` | Mark unread. |
    | `f`, `F` | Cycle the status filter, the owner filter. |
    """

    BINDINGS = [
        *CALL_BINDINGS,  # first, so a narrow footer still shows them while a call is on
        Binding("slash", "search", "Search", id="search", tooltip="Search every cached message"),
        Binding("n", "next_waiting", "Next", id="next-waiting", tooltip="Jump to the oldest unanswered conversation"),
        Binding("r", "reply", "Reply", id="reply", tooltip="Write a reply to the customer"),
        Binding("m", "add_note", "Note", id="add-note", tooltip="Write an internal note (never sent)"),
        Binding("c", "claim", "Claim", id="claim", tooltip="Assign this conversation to yourself"),
        Binding("a", "assign", "Assign", id="assign", tooltip="Assign this conversation to an agent"),
        Binding("x", "resolve", "Resolve", id="resolve", tooltip="Mark the conversation resolved"),
        Binding("o", "reopen", "Reopen", id="reopen", tooltip="Reopen the conversation"),
        Binding("p", "set_pending", "Pending", show=False, id="set-pending", tooltip="Mark it waiting on the customer"),
        Binding("z", "snooze", "Snooze", id="snooze", tooltip="Hide it until a time, then reopen"),
        Binding("u", "mark_unread", "Unread", show=False, id="mark-unread", tooltip="Mark the conversation unread"),
        Binding(
            "f", "cycle_status", "Status filter", show=False, id="filter-status", tooltip="Cycle the status filter"
        ),
        Binding("F", "cycle_owner", "Owner filter", show=False, id="filter-owner", tooltip="Cycle mine/unassigned/all"),
        Binding("O", "open_attachment", "Attachment", show=False, id="open-attachment", tooltip="Open an attachment"),
        Binding("ctrl+r", "canned", "Canned", id="canned-reply", tooltip="Insert a canned reply (fuzzy search)"),
        Binding("ctrl+o", "editor", "$EDITOR", id="editor", tooltip="Write the reply in $EDITOR"),
        Binding("escape", "back", "Back", show=False, id="back", tooltip="Back to the inbox"),
    ]

    DEFAULT_CSS = """
    MainScreen {
        & #panes { height: 1fr; }
        & #inbox-pane { width: 2fr; min-width: 30; max-width: 60; border-right: solid $primary 30%; }
        & #thread-pane { width: 3fr; }
        & ConversationList { height: 1fr; }
        & ThreadView { height: 1fr; }
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self._reload_timer: Timer | None = None
        self._thread_started: str | None = None
        """The conversation whose thread open_conversation began loading itself (the header need not)."""
        self._reloaded_at = 0.0
        self._reload_pending = False
        self._quiet_until = 0.0
        self._texts_unsaid = 0
        self._touched: set[str] = set()
        self._presence: dict[str, dict[str, tuple[str, float]]] = {}
        """Other agents here, by conversation: agent → (viewing or typing, when it was last said: monotonic)."""
        self._opening: str | None = None
        self._read_later: dict[str, int] = {}
        """Conversations opened while catching up, with the unread count each showed: marked read once caught up
        (see ``_load_header``)."""
        self._offered: tuple[bool, str] | None = None
        self._calls_dirty = False
        self._call_keys = CallKeys(False, None, None, False, None)
        self.call_commands: dict[str, tuple[str, dict[str, Any]]] = {}
        """Call commands this console sent and the bridge has not answered yet, by command id."""
        self._drafts_timer: Timer | None = None
        self._drafts_problem: str | None = None
        self._composer: Composer | None = None
        self.drafts_elsewhere: set[str] = set()
        """Conversations with a draft brought back from an earlier run that this cache does not have (yet)."""
        self.wrap_up_draft = ""
        self.hung_up = False
        """This agent hung up and the bridge said ok: the wrap-up dialog opens when the call is in wrap-up."""

    @property
    def console_app(self) -> SwitchboardApp:
        from console.app import SwitchboardApp

        assert isinstance(self.app, SwitchboardApp)
        return self.app

    def compose(self) -> ComposeResult:
        app = self.console_app
        yield CallsPanel(app.cache, region=app.config.region, clock=app.clock, id="calls")
        with Horizontal(id="panes"):
            with Vertical(id="inbox-pane"):
                yield ConversationList(app.cache, region=app.config.region, tz=app.tz, clock=app.clock, id="inbox")
            with Vertical(id="thread-pane"):
                yield ConversationHeader(app.config.region, id="header")
                yield ThreadView(app.cache, region=app.config.region, tz=app.tz, clock=app.clock, id="thread")
                yield Composer(id="composer")
        yield StatusLine(id="status")
        yield KeyBar()

    def on_resize(self) -> None:
        with contextlib.suppress(NoMatches):  # a resize before the panel is mounted: it sizes itself when loaded
            self.calls.size_queue()  # a taller terminal lists more waiting callers

    def on_mount(self) -> None:
        self.query_one(ConversationList).focus()
        self._refresh_status()
        self.calls.reload(self.console_app.agent)
        self.set_interval(1.0, self._forget_quiet_agents)
        self.set_interval(VIEWING_EVERY, self._still_viewing)
        self._load_drafts()

    def on_unmount(self) -> None:
        self.save_drafts()

    # -- shortcuts -------------------------------------------------------------------------------------------

    @property
    def inbox(self) -> ConversationList:
        return self.query_one(ConversationList)

    @property
    def thread(self) -> ThreadView:
        return self.query_one(ThreadView)

    @property
    def composer(self) -> Composer:
        """The composer (kept once found: its drafts are saved while the screen is taken down)."""
        if self._composer is None:
            self._composer = self.query_one(Composer)
        return self._composer

    @property
    def header(self) -> ConversationHeader:
        return self.query_one(ConversationHeader)

    @property
    def calls(self) -> CallsPanel:
        return self.query_one(CallsPanel)

    @property
    def current(self) -> ConversationRow | None:
        return self.header.conversation

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        row = self.current
        if action in NEEDS_CONVERSATION and row is None:
            return False
        if row is not None:
            if action == "claim" and row.assignee == self.console_app.agent:
                return False
            if action == "resolve" and row.status == "resolved":
                return False
            if action == "reopen" and row.status == "open":
                return False
        writing = self.composer.area.has_focus
        if action in ("canned", "editor") and not writing:
            return False
        if writing and action in LETTER_KEYS:
            return False  # those keys type into the reply while it has focus; don't offer them in the footer
        if action in CALL_ACTIONS:
            return self.check_call_action(action)
        return True

    # -- opening conversations -------------------------------------------------------------------------------

    @on(ConversationList.Selected)
    def _selected(self, event: ConversationList.Selected) -> None:
        self.open_conversation(event.conversation_id)
        self.composer.area.focus()

    @on(ConversationList.Highlighted)
    def _highlighted(self, event: ConversationList.Highlighted) -> None:
        if event.by_reload and self.composer.area.has_focus and self.composer.text.strip():
            return  # the agent is writing: the conversation stays put under the reply, whatever the inbox did
        if self._opening != event.conversation_id:
            self.open_conversation(event.conversation_id)

    def open_caller(self, conversation_id: str) -> None:
        """Open a caller's conversation from the calls panel, with the inbox's cursor on it (if the filter shows
        it), so the inbox and the thread agree."""
        self.open_conversation(conversation_id)
        self.inbox.select(conversation_id)

    def open_conversation(self, conversation_id: str, at_pos: int | None = None) -> None:
        self._opening = conversation_id
        self._thread_started = None
        row = self.inbox.highlighted
        if at_pos is None and row is not None and row.id == conversation_id:
            # The inbox already holds the row: start reading the thread now, beside the header's read, instead of
            # after it (one thread hop less between a key and the thread on screen).
            self.thread.show(row.id, _label(row), None)
            self._thread_started = row.id
        self._load_header(conversation_id, at_pos, mark_read=True)

    @work(thread=True, group="header")
    def _load_header(self, conversation_id: str, at_pos: int | None = None, mark_read: bool = False) -> None:
        app = self.console_app
        # While catching up, another process (the catch-up helper) may hold the cache's write lock for seconds: the
        # mark waits until then (``_read_later``), and the header does not wait for it (it did, showing the last
        # conversation's over the new thread until the helper committed).
        later = mark_read and app.catching_up
        if mark_read and not later:
            app.cache.mark_read(conversation_id)
        row = app.cache.conversation(conversation_id)
        self._to_ui(self._show_header, row, at_pos, mark_read, later)

    def _show_header(self, row: ConversationRow | None, at_pos: int | None, opened: bool, later: bool = False) -> None:
        if later and row is not None and row.unread:
            self._read_later[row.id] = max(row.unread, self._read_later.get(row.id, 0))
            if not self.console_app.catching_up:  # caught up while this was read
                self._mark_read_later()
        if opened and row is not None and self._opening is not None and row.id != self._opening:
            return  # the agent moved on while this was read: a later one is coming
        previous = self.current
        self.header.conversation = row
        self.composer.show_conversation(None if row is None else row.id)
        self.header.me = self.thread.me = self.console_app.agent or ""
        self.composer.opted_out = bool(row and row.opted_out)
        self._show_presence()
        if row is None:
            return
        if opened or previous is None or previous.id != row.id:
            label = _label(row)
            started, self._thread_started = self._thread_started, None
            if started != row.id or self.thread.conversation_id != row.id or self.thread.customer_label != label:
                self.thread.show(row.id, label, at_pos)
            self.console_app.send_signal(row.id, "viewing")
            if previous is not None and previous.id != row.id:
                self.console_app.send_signal(previous.id, "idle")
            if opened:  # marked read: the row's count and the total, not a reload of the inbox
                self.inbox.mark_read(row.id)
                if not later:
                    self._refresh_status()
        # Only when what the keys can do has changed (a footer refresh also re-checks every binding).
        offered = (row.assignee == self.console_app.agent, row.status)
        if offered != self._offered:
            self._offered = offered
            self.refresh_bindings()

    # -- calls -----------------------------------------------------------------------------------------------

    @on(CallQueue.Selected)
    def _caller_selected(self, event: CallQueue.Selected) -> None:
        self.open_caller(event.conversation_id)

    def on_calls_panel_changed(self, message: CallsPanel.Changed) -> None:
        before, self._call_keys = self._call_keys, message.keys
        self.refresh_bindings()
        state, previous = message.keys.state, before.state
        if state == previous:
            return
        mine = self.calls.mine
        if state == "wrap_up":
            if self.hung_up:  # this agent hung up: straight to the note
                self.hung_up = False
                self.action_wrap_up()
            else:
                self.notify("You are off the call. Press w for its wrap-up note.", title="Call", markup=False)
        elif state is not None and previous is None and mine is not None and mine.agent != self.console_app.agent:
            self.notify("A colleague is transferring a call to you: answer your phone.", title="Call", markup=False)
            self.open_caller(mine.conversation_id)

    def _announce_calls(self, voice: list[protocol.Event]) -> None:
        """Live (not while catching up): a bell and a toast for a call offered to this agent or newly queued."""
        me = self.console_app.agent
        offered = [
            e
            for e in voice
            if e.type == protocol.CALL_UPDATED
            and e.data.get("change") == "offered"
            and e.data.get("offered_to") == me
            and me
        ]
        # A new caller is news only to an agent who could take the call: during a call, or away, the panel says it.
        keys = self.calls.keys
        free = keys.state is None and keys.presence != "away"
        queued = [e for e in voice if free and e.type == protocol.CALL_UPDATED and e.data.get("change") == "queued"]
        region = self.console_app.config.region
        if offered:
            who = display_number(str(offered[-1].data.get("customer_number", "")), region)
            self.notify(f"A call from {who} is offered to you: A accepts, D declines.", title="Call", markup=False)
        elif queued:
            who = display_number(str(queued[-1].data.get("customer_number", "")), region)
            more = f" (and {len(queued) - 1} more)" if len(queued) > 1 else ""
            self.notify(f"{who} is waiting{more}. A takes the longest-waiting call.", title="Call", markup=False)
        if (offered or queued) and self.console_app.config.bell:
            self.app.bell()

    # -- live updates ----------------------------------------------------------------------------------------

    def on_events_applied(self, message: messages.EventsApplied) -> None:
        self._touched |= message.conversations
        voice = [e for e in message.events if e.type in VOICE_EVENTS]
        if voice or not message.events:  # no events: the cache was reset
            self._calls_dirty = True
        self._schedule_inbox_reload()
        if self.console_app.catching_up:
            return  # texts missed while away are in the inbox, marked unread; a toast each would bury the screen
        self._announce_calls(voice)
        current = self.current
        arrived = [
            e
            for e in message.events
            if e.type == "message.received" and e.data.get("conversation_id") != (current.id if current else None)
        ]
        if not arrived:
            return
        now = time.monotonic()
        if now < self._quiet_until:
            self._texts_unsaid += len(arrived)  # said in one toast when the gap ends
            return
        toasts = TOASTS_PER_BATCH if self.app.size.height >= SHORT_SCREEN else 1
        for event in arrived[:toasts]:
            who = display_number(str(event.data.get("customer_number", "")), self.console_app.config.region)
            self.notify(one_line(str(event.data.get("body", "")))[:80] or "(attachment)", title=f"Text from {who}")
        self._texts_unsaid = max(0, len(arrived) - toasts)
        self._quiet_until = now + TOAST_GAP
        self.set_timer(TOAST_GAP, self._say_unsaid)
        if self.console_app.config.bell:
            self.app.bell()

    def _say_unsaid(self) -> None:
        if self._texts_unsaid:
            count, self._texts_unsaid = self._texts_unsaid, 0
            self.notify(f"{count} more new text{'s' if count != 1 else ''} in the inbox")

    def _schedule_inbox_reload(self) -> None:
        # The first event shows at once; a burst coalesces (into the reload after the one on its way, or, while
        # catching up, one every RELOAD_EVERY), so a busy queue never stutters the UI.
        if self._reload_timer is not None:
            return
        if not self.console_app.catching_up:
            if self.inbox.reloading:
                self._reload_pending = True
            else:
                self._reload_now()
            return
        wait = RELOAD_EVERY - (time.monotonic() - self._reloaded_at)
        if wait <= 0:
            self._reload_now()
        else:
            self._reload_timer = self.set_timer(wait, self._reload_now)

    def on_conversation_list_reloaded(self, message: ConversationList.Reloaded) -> None:
        if self._reload_pending:
            self._reload_now()

    def _reload_now(self) -> None:
        self._reload_timer = None
        self._reload_pending = False
        self._reloaded_at = time.monotonic()
        touched, self._touched = self._touched, set()
        if self._calls_dirty:
            self._calls_dirty = False
            self.calls.reload(self.console_app.agent)
        self.inbox.reload(here=not self.console_app.catching_up)
        current = self.current
        if current is not None and current.id in touched:
            self.thread.refresh_thread()
            self._load_header(current.id, mark_read=self.thread.has_focus or self.composer.area.has_focus)
        self._refresh_status()

    def _mark_read_later(self) -> None:
        marks, self._read_later = self._read_later, {}
        if marks:
            self._mark_seen(marks)

    @work(thread=True, group="read-later")
    def _mark_seen(self, marks: dict[str, int]) -> None:
        self.console_app.cache.mark_seen(marks)
        self._to_ui(self._after_read_later)

    def _after_read_later(self) -> None:
        self.inbox.reload()
        self._refresh_status()

    @work(thread=True, group="status")
    def _refresh_status(self) -> None:
        total = self.console_app.cache.unread_total()
        self._to_ui(self._set_unread, total)

    def _set_unread(self, total: int) -> None:
        self.query_one(StatusLine).unread = total

    def _to_ui(self, callback: Callable[..., None], *args: Any) -> None:
        """From a thread worker: run ``callback`` on the UI loop, unless the app is closing under the worker."""

        def guarded() -> None:
            with contextlib.suppress(NoMatches):  # the screen's widgets are gone: the console is quitting
                callback(*args)

        with contextlib.suppress(RuntimeError):  # the app's loop has already stopped
            self.app.call_from_thread(guarded)

    def on_link_changed(self, message: messages.LinkChanged) -> None:
        status = self.query_one(StatusLine)
        changed = status.state != message.state
        if changed and message.state in ("offline", "connecting", "reconnecting") and self._presence:
            self._presence.clear()  # no word of the others comes while the link is down: say nothing of them
            self._show_presence()
        status.state, status.detail = message.state, message.text
        status.agent = self.console_app.agent or ""
        self.header.me = self.thread.me = self.console_app.agent or ""
        if self.calls.agent != (self.console_app.agent or ""):
            self.calls.reload(self.console_app.agent)  # "my call" is known once the bridge says who we are
        if changed:  # not for every progress update
            self.refresh_bindings()
        if self._read_later and not self.console_app.catching_up:
            self._mark_read_later()

    def on_signal_received(self, message: messages.SignalReceived) -> None:
        here = self._presence.setdefault(message.conversation_id, {})
        if message.signal == "idle":
            here.pop(message.agent, None)
        else:
            here[message.agent] = (message.signal, _now())
        self._show_presence()

    def _forget_quiet_agents(self) -> None:
        """An agent whose console stopped saying it is here (it quit, or lost its link) is not shown as here: typing
        for TYPING_FOR seconds after the last word of it, viewing for three of VIEWING_EVERY."""
        now, forgot = _now(), False
        for here in self._presence.values():
            for agent, (what, said) in list(here.items()):
                if what == "typing" and now - said > TYPING_FOR:
                    here[agent] = ("viewing", said)
                    forgot = True
                elif now - said > 3 * VIEWING_EVERY:
                    del here[agent]
                    forgot = True
        if forgot:
            self._show_presence()

    def _still_viewing(self) -> None:
        row = self.current
        if row is not None:
            self.console_app.send_signal(row.id, "viewing")

    def _show_presence(self) -> None:
        row = self.current
        others = self._presence.get(row.id, {}) if row else {}
        parts = [
            f"{one_line(agent)} is {'typing…' if what == 'typing' else 'viewing'}"
            for agent, (what, _said) in others.items()
        ]
        self.header.presence = " · ".join(parts)

    def on_command_settled(self, message: messages.CommandSettled) -> None:
        result = message.result
        call = self.call_commands.pop(result.id, None)
        if call is not None:
            self.call_settled(call[0], call[1], result)
        elif not result.ok:
            self._take_back(result)
            return
        if self.current is not None:
            self.thread.refresh_thread()

    @work(thread=True, group="take-back")
    def _take_back(self, result: protocol.Result) -> None:
        """A refused reply or note goes back into its draft, out of the outbox: the agent fixes and sends it again, or
        clears it (it used to stay in the thread as a failure with no way to retry it or dismiss it)."""
        taken = self.console_app.cache.take_back_refused(result.id)
        self._to_ui(self._taken_back, result, taken)

    def _taken_back(self, result: protocol.Result, taken: tuple[str, bool, str] | None) -> None:
        said = one_line(result.error_message or "The bridge refused the command.")
        if taken is not None:
            conversation_id, note, body = taken
            self.composer.give_back(conversation_id, note, body)
            here = self.current is not None and self.current.id == conversation_id
            where = "in the box below" if here else "in that conversation's box"
            said = f"{said.rstrip('.')}. The {'note' if note else 'reply'} is back {where}."
        self.notify(said, severity="error")
        if self.current is not None:
            self.thread.refresh_thread()

    # -- composing -------------------------------------------------------------------------------------------

    def _load_drafts(self) -> None:
        """Bring back the drafts the last run kept, each into its conversation's box when it is opened."""
        file = self.console_app.draft_file
        if file is None:
            return
        drafts = file.load()
        if file.problem is not None:
            self.notify(file.problem, severity="warning", timeout=10)
        if drafts:
            self.composer.keep(drafts)
            self._not_in_cache({cid for cid, _note in drafts}, functools.partial(self._drafts_back, len(drafts)))

    @work(thread=True, group="drafts-back")
    def _not_in_cache(self, conversations: set[str], then: Callable[[set[str]], None]) -> None:
        """Which of ``conversations`` the cache does not have, handed to ``then`` on the UI thread."""
        known = self.console_app.cache.conversation_labels(conversations)
        self._to_ui(then, conversations - known.keys())

    def _drafts_back(self, count: int, elsewhere: set[str]) -> None:
        self.drafts_elsewhere = elsewhere
        said = "A draft from last time is" if count == 1 else f"{count} drafts from last time are"
        said += " back in " + ("its conversation's box" if count == 1 else "their boxes") + " (✎ in the inbox)."
        if elsewhere:
            said += (
                f" {len(elsewhere)} {'is' if len(elsewhere) == 1 else 'are'} for a conversation this cache does not "
                "have (yet): kept until it comes in (ctrl+p: discard them)."
            )
        self.notify(said)

    def discard_drafts_elsewhere(self) -> None:
        """Forget the drafts of conversations this cache still does not have (one that came in meanwhile keeps its
        draft)."""
        self._not_in_cache(set(self.drafts_elsewhere), self._discarded)

    def _discarded(self, gone: set[str]) -> None:
        self.composer.discard(gone)
        self.drafts_elsewhere &= {cid for cid, _note in self.composer.drafts()} - gone
        self.save_drafts()
        self.notify(f"Discarded the drafts of {len(gone)} conversation(s) not in this cache.")

    def on_composer_drafts_changed(self, event: Composer.DraftsChanged) -> None:
        event.stop()
        if event.conversation_id is None:  # many at once (drafts brought back or discarded): every row's mark
            marked = {cid for cid, _note in self.composer.drafts()}
            self.inbox.show_drafts({cid: mark for cid in marked if (mark := self._draft_mark(cid)) is not None})
        else:  # one conversation's: its row only, drawn again if its mark changed
            self.inbox.set_draft(event.conversation_id, self._draft_mark(event.conversation_id))
        if self._drafts_timer is None:
            self._drafts_timer = self.set_timer(DRAFTS_SAVED_AFTER, self.save_drafts)

    def _draft_mark(self, conversation_id: str) -> str | None:
        """What the inbox shows of a conversation's drafts: the reply's, else the note's, else none."""
        reply, note = self.composer.draft(conversation_id, False), self.composer.draft(conversation_id, True)
        return reply if reply.strip() else note if note.strip() else None

    def save_drafts(self) -> None:
        """Save what is written now (a small file: see ``console.drafts``); a failure is said once, not per key."""
        if self._drafts_timer is not None:
            self._drafts_timer.stop()
            self._drafts_timer = None
        file = self.console_app.draft_file
        if file is None or not file.usable:
            return
        file.save(self.composer.drafts())
        if file.problem is not None and file.problem != self._drafts_problem and self.is_mounted:
            self.notify(f"{file.problem} Drafts are kept in this console until it quits.", severity="error")
        self._drafts_problem = file.problem

    def on_text_area_changed(self, event: ReplyArea.Changed) -> None:
        row = self.current
        text = event.text_area.text
        if row is not None and text and text != self.composer.restored:  # typed, not a draft brought back
            self.console_app.send_signal(row.id, "typing", throttle=True)

    def on_composer_sent(self, event: Composer.Sent) -> None:
        # In a worker: a reply where someone else has claimed the conversation waits for the agent's answer.
        self.run_worker(self._send_composed(event), group="send")

    async def _send_composed(self, event: Composer.Sent) -> None:
        """Queue what the composer sent; the composer takes the send key again once this is done, whatever came of
        it."""
        try:
            await self._queue_composed(event)
        finally:
            self.composer.sending = False

    async def _queue_composed(self, event: Composer.Sent) -> None:
        row = self.current
        if row is None:
            self.notify("Open a conversation first (enter in the inbox).", severity="warning")
            return
        if row.id != event.conversation_id:
            self.notify("That draft was written in another conversation; it is kept there. Nothing was sent.")
            return
        limit, what = (MAX_NOTE_CHARS, "note") if event.note else (MAX_SMS_CHARS, "reply")
        if len(event.text) > limit:
            self.notify(
                f"The {what} is {len(event.text)} characters; at most {limit} go in one. Shorten it: nothing was sent.",
                severity="error",
            )
            return
        if event.note:
            sent = await self.console_app.run_command(
                "add_note", {"conversation_id": row.id, "body": event.text}, row.id
            )
            if sent is None:
                return  # nothing queued: the draft stays
            self.composer.sent(row.id, True, event.text)
            if self.composer.conversation_id == row.id and not self.composer.text.strip():
                self.composer.note_mode = False  # back to replying
            self.save_drafts()  # now: a draft of what is already in the outbox must not outlive a crash
            self.thread.refresh_thread()
            return
        if row.opted_out:
            self.notify("This customer opted out (STOP). Texts are blocked until they text START.", severity="error")
            return
        me = self.console_app.agent
        if row.assignee is not None and me is not None and row.assignee != me:
            question = f"{row.assignee} has claimed this conversation. Send your reply anyway?"
            if not await self.app.push_screen_wait(Confirm(question)):
                return
        sent = await self.console_app.run_command("send_sms", {"conversation_id": row.id, "body": event.text}, row.id)
        if sent is None:
            return  # nothing queued: the draft stays
        self.composer.sent(row.id, False, event.text)
        self.save_drafts()  # now: a draft of what is already in the outbox must not outlive a crash
        self.console_app.send_signal(row.id, "idle")
        self.thread.refresh_thread()

    # -- actions ---------------------------------------------------------------------------------------------

    def action_search(self) -> None:
        app = self.console_app
        self.app.push_screen(SearchScreen(app.cache, app.config.region, app.tz, app.clock), self._jump_to_hit)

    def _jump_to_hit(self, hit: Hit | None) -> None:
        if hit is not None:
            self.open_conversation(hit.conversation_id, at_pos=hit.pos)
            self.inbox.set_filter(InboxFilter("all", "all", self.console_app.agent), keep=hit.conversation_id)
            self._update_filter_label()
            self.thread.focus()

    def action_next_waiting(self) -> None:
        # A caller on the line outranks any text, when this agent can take a call: the longest-waiting caller
        # first. Pressed again there, it goes on to the texts, so a queue never traps the agent.
        panel = self.calls
        free = panel.keys.state is None and panel.keys.presence != "away"
        current = self.current
        if free and panel.waiting:
            call = panel.board.offered if panel.board and panel.board.offered else panel.waiting[0]
            if current is None or current.id != call.conversation_id:
                self.open_caller(call.conversation_id)
                panel.queue.select(call.call_sid)
                panel.queue.focus()
                self.notify(
                    "A caller is waiting: A takes the call, n goes on to the texts.", title="Call", markup=False
                )
                return
        self._next_text()

    @work(thread=True, group="next")
    def _next_text(self) -> None:
        row = self.console_app.cache.next_needing_attention(self.console_app.agent)
        self._to_ui(self._go_next, row)

    def _go_next(self, row: ConversationRow | None) -> None:
        if row is None:
            self.notify("Nothing is waiting for an answer. 🎉")
            return
        self.open_conversation(row.id)
        if self.inbox.inbox.status not in (row.status, "all") or self.inbox.inbox.owner == "mine":
            self.inbox.set_filter(InboxFilter("all", "all", self.console_app.agent), keep=row.id)
            self._update_filter_label()
        else:
            self.inbox.select(row.id)
        self.composer.area.focus()

    def action_reply(self) -> None:
        self.composer.note_mode = False
        self.composer.area.focus()

    def action_add_note(self) -> None:
        self.composer.note_mode = True
        self.composer.area.focus()

    def action_back(self) -> None:
        self.composer.note_mode = False
        self.inbox.focus()

    async def _conversation_command(self, command: str, **args: Any) -> None:
        row = self.current
        if row is not None:
            await self.console_app.run_command(command, {"conversation_id": row.id, **args}, row.id)

    async def action_claim(self) -> None:
        await self._conversation_command("claim")

    async def action_resolve(self) -> None:
        await self._conversation_command("set_status", status="resolved")

    async def action_reopen(self) -> None:
        await self._conversation_command("set_status", status="open")

    async def action_set_pending(self) -> None:
        await self._conversation_command("set_status", status="pending")

    def action_snooze(self) -> None:
        choices = [Choice(hint, value) for value, hint in SNOOZE_CHOICES]
        picker = Picker("Snooze until…", choices, free_text="or type 30m, 2h, 3d, fri, 14:30")
        self.app.push_screen(picker, self._snooze_picked)

    def _snooze_picked(self, value: str | None) -> None:
        if value is None:
            return
        until = snooze_until(value, self.console_app.clock(), self.console_app.tz)
        if until is None:
            self.notify(f"Can't read {value!r} as a time ahead: use {SNOOZE_FORMATS}.", severity="error")
            return
        stamp = until.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.run_worker(self._conversation_command("set_status", status="snoozed", until=stamp), group="snooze")

    def action_assign(self) -> None:
        # In a worker: the keys go on working while the bridge is asked (up to 5 s on a link that went quiet).
        self.run_worker(self._assign(), group="ask", exclusive=True)

    async def _assign(self) -> None:
        agents = await self.console_app.list_agents()
        if agents is None:
            self.notify(f"Assigning needs the bridge: {self.console_app.why_no_answer()}", severity="warning")
            return
        choices = [Choice(name, name) for name in agents] + [Choice("Unassign", "", "nobody")]
        self.app.push_screen(Picker("Assign to…", choices), self._assign_picked)

    def _assign_picked(self, value: str | None) -> None:
        if value is not None:
            self.run_worker(self._conversation_command("assign", agent=value or None), group="assign")

    @work(thread=True, group="unread")
    def action_mark_unread(self) -> None:
        row = self.current
        if row is not None:
            self.console_app.cache.mark_unread(row.id)
            self._to_ui(self._after_unread)

    def _after_unread(self) -> None:
        self.inbox.reload()
        self._refresh_status()
        self.inbox.focus()

    def action_cycle_status(self) -> None:
        current = self.inbox.inbox
        status = STATUSES[(STATUSES.index(current.status) + 1) % len(STATUSES)]
        self.inbox.set_filter(InboxFilter(status, current.owner, self.console_app.agent))
        self._update_filter_label()

    def action_cycle_owner(self) -> None:
        current = self.inbox.inbox
        owner = OWNERS[(OWNERS.index(current.owner) + 1) % len(OWNERS)]
        self.inbox.set_filter(InboxFilter(current.status, owner, self.console_app.agent))
        self._update_filter_label()

    def _update_filter_label(self) -> None:
        self.query_one(StatusLine).inbox = self.inbox.inbox.describe()

    def action_open_attachment(self) -> None:
        found = self.thread.attachments()
        if not found:
            self.notify("No attachments in the loaded part of this thread.")
            return
        choices = [Choice(url, url, kind) for kind, url in found]
        self.app.push_screen(Picker("Open attachment", choices), self._open_url)

    def _open_url(self, url: str | None) -> None:
        if url:
            self.app.open_url(url)

    def action_canned(self) -> None:
        choices = [Choice(text, text) for text in self.console_app.config.canned_replies]
        self.app.push_screen(Picker("Canned reply", choices), self._insert_canned)

    def _insert_canned(self, text: str | None) -> None:
        if text:
            self.composer.area.insert(text)
            self.composer.area.focus()

    def action_editor(self) -> None:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w+", suffix=".txt", encoding="utf-8", delete=False) as draft:
            draft.write(self.composer.text)
            path = draft.name
        try:
            with self.app.suspend():
                completed = subprocess.run([*shlex.split(editor), path], check=False)
            if completed.returncode == 0:
                with open(path, encoding="utf-8") as edited:
                    self.composer.set_text(edited.read().rstrip("\n"))
            else:
                self.notify(f"{editor} exited with {completed.returncode}; the reply is unchanged.", severity="warning")
        except (OSError, ValueError) as exc:
            self.notify(f"Could not run {editor!r}: {exc}. Set $EDITOR.", severity="error")
        finally:
            os.unlink(path)
        self.composer.area.focus()


def _label(row: ConversationRow) -> str:
    """How the thread names the customer."""
    return one_line(row.customer_name) if row.customer_name else display_number(row.customer_number)
