"""A yes/no question before something an agent might regret (replying where someone else is working)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from console.text import plain


class Confirm(ModalScreen[bool]):
    """Answer with y (yes) or n / escape (no)."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    DEFAULT_CSS = """
    Confirm {
        align: center middle;
        & > Vertical { width: 64; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
        & #confirm-keys { color: $text-muted; margin-top: 1; }
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self.question))
            yield Static("y  yes      n / esc  no", id="confirm-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
