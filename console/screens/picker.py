"""A fuzzy-filtered list to pick one thing from: canned replies, agents, attachments, snooze times.

Lists here are short (tens of items), so a built-in ``OptionList`` is the right tool.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from console.text import one_line


@dataclass(frozen=True)
class Choice:
    """One pickable item: what is shown, and the value handed back."""

    label: str
    value: str
    hint: str = ""


class Picker(ModalScreen[str | None]):
    """Type to filter (fuzzy), up/down to move, enter to pick, escape to cancel.

    With ``free_text`` set, enter on text that matches nothing returns the typed text (e.g. a phone number or "2h").
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="picker.cancel"),
        Binding("down", "move(1)", "Down", show=False, id="picker.down"),
        Binding("up", "move(-1)", "Up", show=False, id="picker.up"),
    ]

    DEFAULT_CSS = """
    Picker {
        align: center middle;
        & > Vertical { width: 80%; max-width: 100; height: auto; max-height: 80%; border: thick $primary;
                       background: $surface; padding: 0 1; }
        & #picker-title { text-style: bold; padding: 0 0 1 0; }
        & OptionList { height: auto; max-height: 20; border: none; }
        & #picker-hint { color: $text-muted; }
    }
    """

    def __init__(self, title: str, choices: list[Choice], *, free_text: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices
        self.free_text = free_text

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, id="picker-title", markup=False)  # may carry typed or bridge text
            yield Input(placeholder=self.free_text or "type to filter", id="picker-input")
            yield OptionList(id="picker-options")
            yield Static("enter pick · esc cancel", id="picker-hint")

    def on_mount(self) -> None:
        self._fill("")
        field = self.query_one(Input)
        field.cursor_blink = not getattr(self.app, "steady", False)
        field.focus()

    def _fill(self, query: str) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        matcher = Matcher(query) if query else None
        scored: list[tuple[float, int, Choice]] = []
        for n, choice in enumerate(self.choices):
            score = matcher.match(choice.label + " " + choice.hint) if matcher else 1.0
            if score > 0:
                scored.append((-score, n, choice))
        scored.sort()
        for _, n, choice in scored:
            label = Text(one_line(choice.label), no_wrap=True, overflow="ellipsis")
            if choice.hint:
                label.append(f"  {one_line(choice.hint)}", "dim")
            options.add_option(Option(label, id=str(n)))
        if options.option_count:
            options.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is not None and options.option_count:
            option = options.get_option_at_index(options.highlighted)
            self.dismiss(self.choices[int(option.id or 0)].value)
        elif self.free_text and event.value.strip():
            self.dismiss(event.value.strip())

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[int(event.option.id or 0)].value)

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            current = options.highlighted or 0
            options.highlighted = max(0, min(options.option_count - 1, current + step))

    def action_cancel(self) -> None:
        self.dismiss(None)
