"""Every key binding, by where it applies, with its id for remapping in ``[keymap]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def keys_shown(app: App[Any], binding: Binding, keymap: Mapping[str, str]) -> str:
    """The keys that do it, as the key bar writes them ("? / f1"), as ``keymap`` (the config's ``[keymap]``, binding
    id → keys) remaps them."""
    keys = keymap.get(binding.id, binding.key) if binding.id else binding.key
    return " / ".join(app.get_key_display(Binding(key.strip(), "")) for key in keys.split(",") if key.strip())


class HelpScreen(ModalScreen[None]):
    """Escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="help.close")]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
        & > VerticalScroll { width: 90%; height: 90%; border: thick $primary; background: $surface; padding: 0 1; }
    }
    """

    def __init__(self, sections: list[tuple[str, list[Binding]]], keymap: Mapping[str, str] | None = None) -> None:
        """``keymap`` is the config's ``[keymap]`` (binding id → keys): a remapped binding is listed with its keys."""
        super().__init__()
        self.sections = sections
        self.keymap = dict(keymap or {})

    def keys_of(self, binding: Binding) -> str:
        return keys_shown(self.app, binding, self.keymap)

    def compose(self) -> ComposeResult:
        # Every cell is a Text: "[keymap]" and keys such as "[" are words here, never markup.
        table = Table(expand=True, box=None, show_header=True, header_style="bold", pad_edge=False)
        table.add_column(Text("Key"), no_wrap=True, style="bold")
        table.add_column(Text("Does"))
        table.add_column(Text("Binding id (for [keymap])"), style="dim", no_wrap=True)
        for title, bindings in self.sections:
            table.add_row(Text(f" {title} ", style="bold reverse"), "", "")
            for binding in bindings:
                table.add_row(
                    Text(self.keys_of(binding)), Text(binding.tooltip or binding.description), Text(binding.id or "")
                )
        with VerticalScroll():
            intro = "Switchboard keys — remap any in the config file's [keymap] by its id.  esc closes.\n"
            yield Static(intro, markup=False)
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)
