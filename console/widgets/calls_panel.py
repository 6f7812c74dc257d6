"""The calls panel over the inbox and thread: the queue header, this agent's call, and the callers waiting.

It reads the cache (in a thread worker) only when calls, voicemails or presence change, and holds what it read;
once a second it redraws the wait times and timers from those rows, so the clock ticking costs no query and no
layout. With no call waiting and none of the agent's own, it is one line: the header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message

from console import times
from console.cache import Cache, CallBoard, CallRow
from console.widgets.call_queue import CallQueue
from console.widgets.my_call import MyCallBar
from console.widgets.queue_header import QueueHeader, depth_per_minute

MAX_QUEUE_ROWS = 6
"""Callers listed at most; more scroll (the header says how many wait)."""


@dataclass(frozen=True, slots=True)
class CallKeys:
    """What the call keys can do now: the screen refreshes its footer only when this changes."""

    waiting: bool
    state: str | None
    """My call's state, "wrap_up", or None."""
    transfer: str | None
    """My call's transfer: "warm" or "cold" while one is under way, else None."""
    offered: bool
    presence: str | None


class CallsPanel(Vertical):
    """Queue header, my call, waiting callers."""

    DEFAULT_CSS = """
    CallsPanel {
        height: auto;
        &.-waiting, &.-mine { border-bottom: solid $primary 30%; }
        & > MyCallBar { display: none; }
        &.-mine > MyCallBar { display: block; }
        & > CallQueue { display: none; }
        &.-waiting > CallQueue { display: block; }
    }
    """

    @dataclass
    class Changed(Message, bubble=True):
        """What the call keys can do changed (a call arrived, mine changed state, presence changed …)."""

        keys: CallKeys

    @dataclass
    class _Loaded(Message, bubble=False):
        generation: int
        board: CallBoard

    def __init__(
        self,
        cache: Cache,
        *,
        region: str = "US",
        clock: times.Clock = times.system_clock,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.cache = cache
        self.phone_region = region
        self.clock = clock
        self.agent: str = ""
        self.board: CallBoard | None = None
        self.keys = CallKeys(False, None, None, False, None)
        self._generation = 0
        self._minute: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield QueueHeader()
        yield MyCallBar(region=self.phone_region)
        yield CallQueue(region=self.phone_region, id="call-queue")

    def on_mount(self) -> None:
        self._show_header(self.clock())
        self.set_interval(1.0, self.tick)

    @property
    def queue(self) -> CallQueue:
        return self.query_one(CallQueue)

    @property
    def mine(self) -> CallRow | None:
        """My call (or the one wrapping up), as last read."""
        return self.board.mine if self.board else None

    @property
    def waiting(self) -> list[CallRow]:
        return self.board.waiting if self.board else []

    # -- reading the cache -----------------------------------------------------------------------------------

    def reload(self, agent: str | None) -> None:
        """Read the board again (after call, voicemail or presence events)."""
        self.agent = agent or ""
        self._generation += 1
        self._fetch(self._generation, self.agent)

    @work(thread=True, exclusive=True, group="calls-fetch")
    def _fetch(self, generation: int, agent: str) -> None:
        board = self.cache.call_board(agent or None, self.clock())
        self.post_message(self._Loaded(generation, board))

    def on_calls_panel__loaded(self, message: _Loaded) -> None:
        message.stop()
        if message.generation != self._generation:
            return
        board = self.board = message.board
        now = self.clock()
        self.set_class(bool(board.waiting), "-waiting")
        self.set_class(board.mine is not None or board.offered is not None, "-mine")
        bar = self.query_one(MyCallBar)
        bar.me = self.agent
        shown = board.mine or board.offered
        bar.show(shown, board.mine_since, board.wrap_up, board.mine is None and board.offered is not None, now)
        queue = self.queue
        self.size_queue()
        queue.set_rows(board.waiting, now)
        self._minute = None
        self._show_header(now)
        mine = board.mine
        keys = CallKeys(
            waiting=bool(board.waiting),
            state="wrap_up" if board.wrap_up else (mine.state if mine is not None else None),
            transfer=str((mine.transfer or {}).get("mode"))
            if mine is not None and mine.transfer and mine.transfer.get("state") in ("ringing", "consulting")
            else None,
            offered=board.offered is not None,
            presence=board.presence,
        )
        if keys != self.keys:
            self.keys = keys
            self.post_message(self.Changed(keys))

    def size_queue(self) -> None:
        """Show as many callers as the terminal's height allows (the screen calls this when it is resized)."""
        queue = self.queue
        rows = min(len(self.waiting), self._queue_rows())
        if queue.styles.height is None or queue.styles.height.value != rows:  # a new height means a layout pass
            queue.styles.height = rows

    def _queue_rows(self) -> int:
        # At 80×24 the thread still needs its lines: three callers there, up to six on a taller terminal.
        return max(2, min(MAX_QUEUE_ROWS, (self.app.size.height - 18) // 2))

    # -- ticking ---------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: wait times, the longest wait and my call's timer move; the sparkline each minute."""
        now = self.clock()
        self._show_header(now)
        self.query_one(MyCallBar).tick(now)
        self.queue.tick(now)

    def _show_header(self, now: datetime) -> None:
        board = self.board
        header = self.query_one(QueueHeader)
        if board is None:
            header.show(0, None, 0, None, now)
            return
        oldest = board.waiting[0] if board.waiting else None
        since = (oldest.queued_at or oldest.changed_at) if oldest is not None else None
        header.show(len(board.waiting), since, board.agents_available, board.presence, now)
        minute = (now.hour, now.minute)
        if minute != self._minute:
            self._minute = minute
            header.show_depth(depth_per_minute(board.depth, now))
