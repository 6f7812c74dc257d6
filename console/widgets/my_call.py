"""This agent's call in one line: its state (ringing my phone, connected, on hold, consulting, transferring,
wrap-up), who is on it, and a timer that ticks every second; or a call the bridge is offering."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widget import Widget

from console import times
from console.cache import CallRow, clock_time
from console.phones import display_number
from console.text import one_line


def _seconds(since: str | None, now: datetime) -> int | None:
    when = times.parse(since) if since else None
    return None if when is None else max(0, int((now - when).total_seconds()))


def _target(transfer: dict[str, object]) -> str:
    target = str(transfer.get("target") or "")
    kind = transfer.get("target_kind")
    if kind == "number":
        return one_line(display_number(target))
    if kind == "queue":
        return f"the {one_line(target)} queue"
    return one_line(target)


class MyCallBar(Widget):
    """``‖ On hold 0:47 · Jordan Alvarez (415) 555-0114 · San Francisco, CA · call 5:25``."""

    DEFAULT_CSS = """
    MyCallBar {
        height: 1;
        padding: 0 1;
        background: $primary 25%;
        &.-wrap-up { background: $warning 25%; }
        &.-offered { background: $success 25%; }
    }
    """

    def __init__(self, *, region: str = "US", me: str = "", id: str | None = None) -> None:
        super().__init__(id=id)
        self.phone_region = region
        self.me = me
        self.call: CallRow | None = None
        self.since: str | None = None
        self.wrap_up = False
        self.offered = False
        self.now: datetime | None = None
        self._caller = Text()

    def show(self, call: CallRow | None, since: str | None, wrap_up: bool, offered: bool, now: datetime) -> None:
        self.call, self.since, self.wrap_up, self.offered, self.now = call, since, wrap_up, offered, now
        self._caller = self.caller(call) if call is not None else Text()  # formatted once, not once a second
        self.set_class(wrap_up, "-wrap-up")
        self.set_class(offered, "-offered")
        self.refresh()

    def tick(self, now: datetime) -> None:
        self.now = now
        if self.call is not None:
            self.refresh()

    def caller(self, call: CallRow) -> Text:
        who = Text(end="")
        number = one_line(display_number(call.customer_number, self.phone_region))
        if call.caller_name:
            who.append(one_line(call.caller_name), "bold")
            who.append(f" {number}")
        else:
            who.append(number, "bold")
        if call.place:
            who.append(f" · {one_line(call.place)}", "dim")
        return who

    def render(self) -> Text:
        call, now = self.call, self.now
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        if call is None or now is None:
            return line
        in_state = _seconds(self.since, now)
        # Talk time stops when the call ends, or when this agent left it (wrap-up after a transfer).
        end = times.parse(call.ended_at or "") or (times.parse(self.since or "") if self.wrap_up else None) or now
        talking = _seconds(call.answered_at, end)
        timer = f" {clock_time(in_state)}" if in_state is not None else ""
        transfer = call.transfer or {}
        if self.offered:
            line.append("📞 Offered to you", "bold")
            expires = times.parse(call.offer_expires_at or "")
            left = None if expires is None else max(0, int((expires - now).total_seconds()))
            line.append(" · ")
            line.append_text(self._caller)
            if left is not None:
                line.append(f" · {left}s to accept", "bold")
            return line
        if self.wrap_up:
            line.append("✎ Wrap-up", "bold")
            line.append(timer)
            line.append(" · ")
            line.append_text(self._caller)
            if talking is not None:
                line.append(f" · talked {clock_time(talking)}", "dim")
            line.append(" · a disposition note is due before the next call", "italic")
            return line
        if call.agent != self.me and transfer.get("target") == self.me:
            line.append("☎ Transfer for you", "bold")
            line.append(f" from {one_line(str(transfer.get('by') or call.agent or 'a colleague'))}{timer} · ")
            line.append_text(self._caller)
            return line
        labels = {
            "ringing_agent": "☎ Ringing your phone",
            "connected": "● Connected",
            "on_hold": "‖ On hold",
            "consulting": f"⇄ Consulting {_target(transfer)}" if transfer else "⇄ Consulting",
            "transferring": f"⇄ Transferring to {_target(transfer)}" if transfer else "⇄ Transferring",
        }
        line.append(labels.get(call.state, call.state), "bold")
        if call.state == "connected" and talking is not None:
            line.append(f" {clock_time(talking)}")
        else:
            line.append(timer)
        line.append(" · ")
        line.append_text(self._caller)
        if call.state == "consulting":
            line.append(" · caller on hold", "dim")
        if call.state != "connected" and talking is not None:
            line.append(f" · call {clock_time(talking)}", "dim")
        if call.muted:
            line.append(" · 🔇 muted", "bold")
        return line
