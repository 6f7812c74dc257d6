"""Every key binding, by where it applies, with its id for remapping in ``[keymap]``."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    """Escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="help.close")]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
        & > VerticalScroll { width: 90%; height: 90%; border: thick $primary; background: $surface; padding: 0 1; }
    }
    """

    def __init__(self, sections: list[tuple[str, list[Binding]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table(expand=True, box=None, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("Key", no_wrap=True, style="bold")
        table.add_column("Does")
        table.add_column("Binding id (for [keymap])", style="dim", no_wrap=True)
        for title, bindings in self.sections:
            table.add_row(f"[b reverse] {title} [/]", "", "")
            for binding in bindings:
                keys = self.app.get_key_display(binding) if binding.key else ""
                table.add_row(keys, binding.tooltip or binding.description, binding.id or "")
        with VerticalScroll():
            yield Static("Switchboard keys — remap any in the config file's [keymap] by its id.  esc closes.\n")
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)
