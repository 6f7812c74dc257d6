"""The footer's keys as one line of text: what the keys do here, redrawn (not rebuilt) when that changes.

Textual's ``Footer`` is a widget per key, recomposed whenever the bindings change: 30–110 ms here, on every
thread switch that changes what can be done (claim, resolve, reopen) and every focus change. This draws the same
line — each key and what it does, unavailable ones dimmed, help and the command palette's keys on the right — in
one render of about a millisecond (1.1 ms at 120 columns with the call keys, most of it Textual gathering the active
bindings). A click on a key presses it, as the footer's does.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import RenderResult
from textual.screen import Screen
from textual.widget import Widget

HELP = "help"
"""The action that lists every key: always shown, at the right."""


class KeyBar(Widget):
    """One line: `` h Hold  M Mute  / Search …   ? Help ▏^p palette``."""

    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        & > .key-bar--key { color: $footer-key-foreground; background: $footer-key-background; text-style: bold; }
        & > .key-bar--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
        & > .key-bar--rule { color: $foreground 20%; }
    }
    """
    COMPONENT_CLASSES = {"key-bar--key", "key-bar--description", "key-bar--rule"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._spans: list[tuple[int, int, str]] = []
        """Where each key was drawn (start and end cell, the key to press), for clicks."""

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[object]) -> None:
        if self.is_attached and screen is self.screen:
            self.refresh()

    def render(self) -> RenderResult:
        key_style = self.get_component_rich_style("key-bar--key")
        words = self.get_component_rich_style("key-bar--description")
        width = self.size.width
        active = self.screen.active_bindings
        palette = None
        if self.app.ENABLE_COMMAND_PALETTE:
            found = active.get(self.app.COMMAND_PALETTE_BINDING)
            palette = found.binding if found is not None else None
        # Help and the palette stay on the right whatever else fits: they are how every other key is found.
        help_binding = next((b.binding for b in active.values() if b.binding.action == HELP and b.binding.show), None)
        right = Text(no_wrap=True, end="")
        right_keys: list[tuple[int, int, str]] = []
        if help_binding is not None:
            right.append(f" {self.app.get_key_display(help_binding)} ", key_style)
            right.append(f"{help_binding.description} ", words)
            right_keys.append((0, right.cell_len, help_binding.key))
        if palette is not None:
            right.append("▏", self.get_component_rich_style("key-bar--rule"))
            start = right.cell_len
            right.append(self.app.get_key_display(palette), key_style)
            right.append(f" {palette.description} ", words)
            right_keys.append((start, right.cell_len, palette.key))
        line = Text(no_wrap=True, end="")
        spans: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        room = width - right.cell_len
        for _node, binding, enabled, _tooltip in active.values():
            if not binding.show or binding.action in seen or binding is palette or binding.action == HELP:
                continue
            seen.add(binding.action)  # one key per action, as the footer shows them
            item = Text(no_wrap=True, end="")
            item.append(f" {self.app.get_key_display(binding)} ", key_style)
            item.append(f"{binding.description} ", words)
            if not enabled:
                item.stylize("dim")
            if line.cell_len + item.cell_len > room:
                break
            spans.append((line.cell_len, line.cell_len + item.cell_len, binding.key))
            line.append_text(item)
        line.pad_right(max(0, room - line.cell_len))
        spans += [(line.cell_len + start, line.cell_len + end, key) for start, end, key in right_keys]
        line.append_text(right)
        self._spans = spans
        return line

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key.split(",")[0])
                return
