"""The bottom line: connection state, the agent, unread total and what the inbox is filtered to."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from console.text import one_line


class StatusLine(Widget):
    """One line: ``● connected · ana · 3 unread · open · everyone's``."""

    DEFAULT_CSS = """
    StatusLine {
        height: 1;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """

    state: reactive[str] = reactive("offline")
    """The link's state, in words: connected, catching up, reconnecting, offline, token rejected, wrong bridge."""
    detail: reactive[str] = reactive("showing the cache")
    """A sentence on the state: "reconnecting in 3 s", "showing the cache" …"""
    agent: reactive[str] = reactive("")
    """The agent's name (from the bridge; empty until the first connection)."""
    unread: reactive[int] = reactive(0)
    """Unread texts across every conversation in the cache."""
    inbox: reactive[str] = reactive("")
    """The inbox filter, in words."""

    def render(self) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        colour = self.app.theme_variables.get("success", "green")
        if self.state in ("offline", "token rejected", "wrong bridge", "bad URL", "refused"):
            colour = self.app.theme_variables.get("error", "red")
        elif self.state != "connected":
            colour = self.app.theme_variables.get("warning", "yellow")
        line.append("● ", colour)
        line.append(self.state, f"bold {colour}")
        if self.detail:
            line.append(f" — {self.detail}")
        if self.agent:
            line.append(f" · {one_line(self.agent)}", "bold")
        line.append(f" · {self.unread} unread")
        if self.inbox:
            line.append(f" · inbox: {self.inbox}", "dim")
        return line
