"""The wrap-up dialog: the call's disposition note, required before the agent takes the next call."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static, TextArea

from bridge import protocol


class WrapUpScreen(ModalScreen[str | None]):
    """A text area for the note; ctrl+s saves it, escape leaves it for later (the call stays in wrap-up)."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save note", id="wrap-up.save", tooltip="Save the disposition note"),
        Binding("escape", "cancel", "Later", id="wrap-up.cancel", tooltip="Close; the note is still due"),
    ]

    DEFAULT_CSS = """
    WrapUpScreen {
        align: center middle;
        & > Vertical { width: 80%; max-width: 90; height: auto; border: thick $warning; background: $surface;
                       padding: 0 1; }
        & #wrap-up-title { text-style: bold; padding: 0 0 1 0; }
        & TextArea { height: 6; }
        & #wrap-up-hint { color: $text-muted; }
        & #wrap-up-error { color: $text-error; }
    }
    """

    def __init__(self, caller: Text, draft: str = "") -> None:
        super().__init__()
        self.caller = caller
        self.draft = draft

    def compose(self) -> ComposeResult:
        with Vertical():
            title = Text("Wrap up the call with ", style="bold", end="")
            title.append_text(self.caller)
            yield Static(title, id="wrap-up-title")
            yield TextArea(self.draft, id="wrap-up-note", soft_wrap=True, show_line_numbers=False)
            yield Static("", id="wrap-up-error")
            yield Static("What happened and what's next (internal). ctrl+s save · esc later", id="wrap-up-hint")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.cursor_blink = not getattr(self.app, "steady", False)
        area.focus()

    def action_save(self) -> None:
        note = self.query_one(TextArea).text.strip()
        error = self.query_one("#wrap-up-error", Static)
        if not note:
            error.update("A note is required: say how the call ended.")
            return
        if len(note) > protocol.MAX_NOTE_CHARS:
            error.update(f"At most {protocol.MAX_NOTE_CHARS} characters ({len(note)} now).")
            return
        self.dismiss(note)

    def action_cancel(self) -> None:
        self.draft = self.query_one(TextArea).text
        self.dismiss(None)
