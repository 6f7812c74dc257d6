"""The Textual app: wiring only. The cache, the bridge link and the screens do the work."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import tzinfo
from typing import Any

from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.worker import WorkerCancelled, WorkerFailed

from bridge import protocol
from console import messages, times
from console.cache import Cache
from console.client import AppliedBatch, BridgeLink, LinkState, LinkStatus
from console.config import ConsoleConfig
from console.drafts import DraftFile, drafts_file
from console.screens.help import HelpScreen, keys_shown
from console.screens.main import MainScreen
from console.text import one_line

log = logging.getLogger("switchboard.console.app")

LinkFactory = Callable[["SwitchboardApp"], BridgeLink]
TYPING_EVERY = 3.0
"""Seconds between "typing" signals while an agent keeps typing."""
FREEZE_AFTER = 2.0
"""Seconds after start before the heap is frozen (see SwitchboardApp.freeze_heap)."""
QUIET_BEFORE_COLLECTING = 0.3
"""Seconds without a key, click or scroll before the garbage collector may run (see SwitchboardApp.freeze_heap)."""
COLLECT_TICK = 0.25
"""Seconds between looks at whether it is quiet enough to collect."""
COLLECT_AT_LEAST = 5.0
"""Most seconds between collections, quiet or not (an agent typing without a pause still has garbage collected)."""
FULL_COLLECT_EVERY = 60.0
"""Seconds between collections of the oldest generation too (what the frozen heap has not put out of sight)."""


class SwitchboardApp(App[None]):
    """Switchboard: the support console for texts and calls to a team's Twilio numbers."""

    TITLE = "Switchboard"
    CSS_PATH = "app.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    """Screens narrower than 100 cells get the class ``-narrow`` (app.tcss: smaller toasts)."""
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", id="help", tooltip="Every key, with its id for [keymap]"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True, tooltip="Quit Switchboard"),
    ]

    def __init__(
        self,
        cache: Cache,
        config: ConsoleConfig,
        *,
        link_factory: LinkFactory | None = None,
        clock: times.Clock = times.system_clock,
        tz: tzinfo | None = None,
        steady: bool = False,
        freeze_heap: bool = False,
    ) -> None:
        super().__init__()
        self.steady = steady
        """No blinking cursors: for snapshots and screenshots, which must not depend on when they are taken."""
        self.freeze_heap = freeze_heap
        """Keep the garbage collector out of the way of keys. Off in tests, which share one process.

        - What is alive once the console has loaded (and again after each catch-up) moves out of the collector's
          sight with ``gc.freeze()``: a full collection walks every object, and with the app, the cache rows and
          the stream code loaded that took 65–100 ms, always inside a frame (seen in the calls panel benchmark;
          ~7 ms frozen).
        - The collector does not run by itself: it runs between keys, once nothing was pressed, clicked or
          scrolled for QUIET_BEFORE_COLLECTING (and at least every COLLECT_AT_LEAST seconds). Left to itself it ran
          in the middle of a thread switch, whose rows and lines set it off every few hundred allocations: thread
          switch p95 53.7 ms with it against 45.5 ms without (bench_console, ``what-if: no cyclic GC``). Memory
          is still returned as it is freed: only reference cycles wait for the next collection."""
        self._last_input = 0.0
        self._last_collect = 0.0
        self._last_full_collect = 0.0
        self.cache = cache
        self.config = config
        self.clock = clock
        self.tz = tz
        self.agent: str | None = cache.meta("agent")
        self.link: BridgeLink | None = link_factory(self) if link_factory else None
        self._waiting: dict[str, asyncio.Future[protocol.Result]] = {}
        self._typing_sent: dict[str, float] = {}
        self._last_state: LinkState | None = None
        path = drafts_file(cache.path)
        self.draft_file: DraftFile | None = None if path is None else DraftFile(path)
        """Where drafts outlive the console (None for an in-memory cache)."""
        self.main = MainScreen()

    def get_default_screen(self) -> Screen[Any]:
        return self.main

    def on_mount(self) -> None:
        if self.freeze_heap:
            self.set_timer(FREEZE_AFTER, gc.freeze)  # once the first inbox window and thread are loaded
            gc.disable()
            self._last_collect = self._last_full_collect = time.monotonic()
            self.set_interval(COLLECT_TICK, self._collect_when_quiet)
        if self.config.keymap:
            self.set_keymap(dict(self.config.keymap))
        if self.link is not None:
            self.link.start()
            self.set_interval(1.0, self._tick)
        else:
            self.link_status(LinkStatus(LinkState.OFFLINE, "No bridge configured: showing the cache."))

    async def on_unmount(self) -> None:
        if self.freeze_heap:
            gc.enable()
        if self.link is not None:
            await self.link.aclose()
        if self.draft_file is not None:
            self.draft_file.close()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """A toast, always plain text: toasts carry customers' texts, the bridge's errors and what agents typed, and
        Textual would read "[b]" or "[link=…]" in them as markup (widgets' ``notify`` passes markup on as True)."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.MouseDown, events.MouseScrollDown, events.MouseScrollUp)):
            self._last_input = time.monotonic()
        await super().on_event(event)

    def _collect_when_quiet(self) -> None:
        """Collect garbage now if no input came for a moment (or it has waited too long): see ``freeze_heap``."""
        now = time.monotonic()
        if now - self._last_collect < COLLECT_AT_LEAST:
            if now - self._last_input < QUIET_BEFORE_COLLECTING:
                return
            if gc.get_count()[0] < gc.get_threshold()[0]:
                return  # little was made since the last collection: when the collector would not have run either
        if now - self._last_full_collect >= FULL_COLLECT_EVERY:
            gc.collect()
            self._last_full_collect = now
        else:
            gc.collect(1)  # the young and middle generations: what the last moments made
        self._last_collect = now

    def _tick(self) -> None:
        # The "retrying in N s" countdown moves once a second without the link having to say anything.
        if self.link is not None and self.link.status.retry_at is not None:
            self.link_status(self.link.status)

    # -- from the link (same event loop) ---------------------------------------------------------------------

    def link_status(self, status: LinkStatus) -> None:
        if self.freeze_heap and status.state is LinkState.CONNECTED and self._last_state is LinkState.CATCHING_UP:
            gc.freeze()  # what a catch-up loaded stays; freezing is cheap (no collection)
        self._last_state = status.state
        agent = getattr(self.link, "agent", None) if self.link else None
        if agent and agent != self.agent:
            self.agent = agent
            self._remember_agent(agent)
        detail = status.detail
        if status.state is LinkState.CATCHING_UP and status.progress is not None:
            detail = f"{detail} {status.progress:.0%}"
        if status.state == LinkState.RECONNECTING and status.retry_in is not None:
            detail = (
                f"next try in {status.retry_in:.0f} s — {detail}" if detail else f"next try in {status.retry_in:.0f} s"
            )
        self.main.post_message(messages.LinkChanged(status.state.value, detail))

    @work(thread=True, group="agent")
    def _remember_agent(self, agent: str) -> None:
        """Keep who this console is for its next start (offline, the cache says). In a thread: a write may wait for
        the cache's write lock, which the catch-up helper holds while it indexes its texts after saying it is done
        (a key pressed then waited 150–180 ms for the screen, ``bench_console --trace-loop``). Only the next start
        is at stake: a failure is logged, not left to end the console (a failed worker does)."""
        try:
            self.cache.set_meta("agent", agent)
        except sqlite3.Error:
            log.warning("could not keep the agent's name in the cache", exc_info=True)

    @property
    def catching_up(self) -> bool:
        return self.link is not None and self.link.status.state is LinkState.CATCHING_UP

    def link_batch(self, batch: AppliedBatch) -> None:
        self.main.post_message(messages.EventsApplied(list(batch.events), set(batch.conversation_ids)))

    def link_events(self, events: list[protocol.Event]) -> None:
        touched = {str(e.data["conversation_id"]) for e in events if e.data.get("conversation_id")}
        self.main.post_message(messages.EventsApplied(events, touched))

    def link_result(self, result: protocol.Result) -> None:
        waiter = self._waiting.pop(result.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
            return
        self.main.post_message(messages.CommandSettled(result))

    def link_signal(self, signal: protocol.Signal) -> None:
        if signal.agent and signal.agent != self.agent:
            self.main.post_message(messages.SignalReceived(signal.agent, signal.conversation_id, signal.signal))

    # -- to the link -----------------------------------------------------------------------------------------

    async def run_command(self, command: str, args: dict[str, Any], conversation_id: str | None = None) -> str | None:
        """Queue a command in the outbox (sent now if connected, else when the bridge is back)."""
        if self.link is None:
            self.notify(
                "No bridge is configured, so nothing can be sent. Run `switchboard login URL`.", severity="error"
            )
            return None
        try:
            return await self.link.command(command, args, conversation_id)
        except ValueError as exc:  # e.g. a body over the outbox's size limit: say so, keep the draft
            self.notify(f"Not sent: {exc}", severity="error")
            return None

    async def ask(self, command: str, args: dict[str, Any] | None = None) -> protocol.Result | None:
        """Ask the bridge a question now (``list_agents``, ``list_queues``), bypassing the outbox: an answer is
        worth nothing later. None when the bridge is not reachable or does not answer within 5 s."""
        if self.link is None or self.link.status.state != LinkState.CONNECTED:
            return None
        command_id = f"{command.replace('_', '-')}-{uuid.uuid4().hex[:12]}"
        waiter: asyncio.Future[protocol.Result] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = waiter
        try:
            await self.link.send_now(protocol.Command(command_id, command, args or {}))
            return await asyncio.wait_for(waiter, timeout=5.0)
        except (TimeoutError, ConnectionError, OSError):
            return None
        finally:
            self._waiting.pop(command_id, None)

    async def action_quit(self) -> None:
        """Quit. Drafts are saved first and kept for the next run; only if they cannot be (no file for them, it
        could not be written, or another console keeps this profile's) is the agent asked before they are lost.

        A reply being put in the outbox (waiting for the cache's write lock, which a catch-up holds for seconds)
        is waited for first: saved before it lands, the draft would still hold it, and the next run offer it again.
        """
        from console.screens.confirm import Confirm

        if isinstance(self.screen, Confirm):  # quit asked again at a question: quit, keeping what can be kept
            self.main.save_drafts()
            self.exit()
            return
        if self.main.is_mounted and self.main.composer.sending:
            self.notify("Quitting once the reply is in the outbox…")
            self.run_worker(self._quit_after_send(), group="quit", exclusive=True)
            return
        self._quit()

    async def _quit_after_send(self) -> None:
        for worker in [w for w in self.workers if w.group == "send"]:
            with contextlib.suppress(WorkerCancelled, WorkerFailed):
                await worker.wait()
        self._quit()

    def _quit(self) -> None:
        from console.screens.confirm import Confirm

        drafts = 0
        if self.main.is_mounted:
            self.main.save_drafts()
            kept = self.draft_file is not None and self.draft_file.usable and self.draft_file.problem is None
            drafts = 0 if kept else self.main.composer.unsent()
        if not drafts:
            self.exit()
            return
        some = "a draft" if drafts == 1 else f"{drafts} drafts"
        them = "it" if drafts == 1 else "them"
        question = f"You have {some} not sent, which could not be saved. Quit and lose {them}?"
        self.push_screen(Confirm(question), lambda yes: self.exit() if yes else None)

    def why_no_answer(self) -> str:
        """Why ``ask`` came back with nothing, as the end of a sentence."""
        if self.link is None or self.link.status.state != LinkState.CONNECTED:
            return "it is not connected."
        return "it did not answer within 5 s. Try again in a moment."

    async def list_agents(self) -> list[str] | None:
        """The team's active agents, asked of the bridge now (None when it is not reachable)."""
        result = await self.ask(protocol.LIST_AGENTS)
        if result is None or not result.ok:
            return None
        return [str(a["name"]) for a in result.data.get("agents", []) if a.get("active", True)]

    def send_signal(self, conversation_id: str, signal: str, *, throttle: bool = False) -> None:
        if self.link is None or self.link.status.state != LinkState.CONNECTED:
            return
        if throttle:
            now = time.monotonic()
            if now - self._typing_sent.get(conversation_id, 0.0) < TYPING_EVERY:
                return
            self._typing_sent[conversation_id] = now
        self.run_worker(self.link.signal(conversation_id, signal), group="signals", exit_on_error=False)

    # -- help and palette ------------------------------------------------------------------------------------

    def binding_sections(self) -> list[tuple[str, list[Binding]]]:
        from console.screens.call_controls import CALL_BINDINGS
        from console.screens.picker import Picker
        from console.screens.wrap_up import WrapUpScreen
        from console.widgets.call_queue import CallQueue
        from console.widgets.composer import ReplyArea
        from console.widgets.conversation_list import ConversationList
        from console.widgets.thread_view import ThreadView

        def own(bindings: Iterable[Binding | tuple[str, ...]]) -> list[Binding]:
            return [b for b in bindings if isinstance(b, Binding)]

        return [
            ("Everywhere", own(self.BINDINGS)),
            ("Conversations", [b for b in own(MainScreen.BINDINGS) if b not in CALL_BINDINGS]),
            ("Calls", CALL_BINDINGS),
            ("Callers waiting", own(CallQueue.BINDINGS)),
            ("Wrap-up note", own(WrapUpScreen.BINDINGS)),
            ("Inbox", own(ConversationList.BINDINGS)),
            ("Thread", own(ThreadView.BINDINGS)),
            ("Composer", own(ReplyArea.BINDINGS)),
            ("Pickers", own(Picker.BINDINGS)),
        ]

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.binding_sections(), self.config.keymap))

    async def reset_cache(self) -> None:
        """After "wrong bridge": forget this cache's events and load the bridge's own history."""
        if self.link is not None:
            taken = await self.link.reset_cache()
            self.link.start()
            self.main.post_message(messages.EventsApplied([], set()))
            if taken:
                for conversation_id, note, body in taken:
                    self.main.composer.give_back(conversation_id, note, body)
                self.main.save_drafts()
                some = "A reply" if len(taken) == 1 else f"{len(taken)} replies and notes"
                texts = "; ".join(f"“{one_line(body)[:60]}”" for _cid, _note, body in taken[:5])
                self.notify(
                    f"{some} not sent before the reset ({texts}{'; …' if len(taken) > 5 else ''}): back in "
                    f"{'its' if len(taken) == 1 else 'their'} conversation's box (✎ in the inbox once this bridge's "
                    "history has it), to send again here or clear.",
                    timeout=20,
                )

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self.link is not None and self.link.status.state is LinkState.WRONG_BRIDGE:
            yield SystemCommand(
                "Reset the cache",
                "This cache belongs to another bridge: forget it and load this bridge's history",
                lambda: self.run_worker(self.reset_cache(), group="reset"),
            )
        if self.link is not None and self.link.status.retry_at is not None:
            yield SystemCommand("Retry now", "Reconnect to the bridge without waiting", self.link.retry_now)
        if self.main.is_mounted and self.main.drafts_elsewhere:
            yield SystemCommand(
                "Discard drafts of conversations not here",
                f"{len(self.main.drafts_elsewhere)} saved draft(s) for conversations this cache does not have",
                self.main.discard_drafts_elsewhere,
            )
        for binding in MainScreen.BINDINGS:
            if not isinstance(binding, Binding):
                continue
            action = binding.action
            if self.main.check_action(action, ()) is False:
                continue
            yield SystemCommand(
                binding.description,
                f"{binding.tooltip} ({keys_shown(self, binding, self.config.keymap)})",
                lambda action=action: self.run_action(action, self.main),
            )
