"""The reply box: multi-line text, a live segment counter, and the opted-out block."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static, TextArea

from bridge.segments import analyze


def counter_text(body: str) -> str:
    """ "142/160 · GSM-7 · 1 segment", or "UCS-2 · 2 segments · 61 left" once a body is split."""
    info = analyze(body)
    if info.segments == 1:
        return f"{info.units}/{info.per_segment} · {info.encoding} · 1 segment"
    return f"{info.encoding} · {info.segments} segments · {info.remaining} left"


class ReplyArea(TextArea):
    """A TextArea where enter sends and ctrl+j (or alt+enter) starts a new line."""

    BINDINGS = [
        Binding("enter", "submit", "Send", id="composer.send", tooltip="Send the reply to the customer"),
        Binding("ctrl+j,alt+enter", "newline", "New line", id="composer.newline", tooltip="Insert a line break"),
    ]

    @dataclass
    class Submitted(Message):
        """The agent pressed the send key."""

        text: str

    async def _on_key(self, event: events.Key) -> None:
        # TextArea inserts a newline for enter before any binding is looked at; our own keys (as remapped in
        # [keymap]) win here, and everything else types as usual.
        for binding in self._bindings.key_to_bindings.get(event.key, []):
            if binding.action in ("submit", "newline"):
                event.prevent_default()
                event.stop()
                await self.run_action(binding.action)
                return

    def action_submit(self) -> None:
        self.post_message(self.Submitted(self.text))

    def action_newline(self) -> None:
        self.insert("\n")


class Composer(Vertical):
    """Where replies and notes are written.

    | Key | Action |
    | :- | :- |
    | `enter` | Send (a reply, or a note in note mode). |
    | `ctrl+j`, `alt+enter` | New line. |
    """

    DEFAULT_CSS = """
    Composer {
        height: auto;
        max-height: 12;
        border-top: solid $primary 50%;
        & ReplyArea { height: auto; min-height: 3; max-height: 8; border: none; padding: 0 1; }
        & #composer-bar { height: 1; padding: 0 1; }
        & #composer-mode { width: auto; color: $text-muted; }
        & #composer-counter { width: 1fr; text-align: right; color: $text-muted; }
        & #composer-badge { width: auto; color: $text-error; text-style: bold; display: none; }
        &.-opted-out #composer-badge { display: block; }
        &.-note ReplyArea { background: $warning 10%; }
    }
    """

    note_mode: reactive[bool] = reactive(False)
    """True while the composer writes an internal note instead of a text to the customer."""

    opted_out: reactive[bool] = reactive(False)
    """The customer has opted out of texts from this number: replies are blocked until they text START."""

    @dataclass
    class Sent(Message):
        """The agent sent what is in the composer (already checked for being non-empty)."""

        text: str
        note: bool

    def compose(self) -> ComposeResult:
        yield ReplyArea(id="composer-input", soft_wrap=True, show_line_numbers=False, tab_behavior="focus")
        with Horizontal(id="composer-bar"):
            yield Static("reply", id="composer-mode")
            yield Static(" ⊘ OPTED OUT — replies blocked until they text START ", id="composer-badge")
            yield Static(counter_text(""), id="composer-counter")

    def on_mount(self) -> None:
        self.area.cursor_blink = not getattr(self.app, "steady", False)

    @property
    def area(self) -> ReplyArea:
        return self.query_one(ReplyArea)

    @property
    def text(self) -> str:
        return self.area.text

    def set_text(self, text: str) -> None:
        self.area.load_text(text)
        self.area.move_cursor(self.area.document.end)

    def clear(self) -> None:
        self.area.load_text("")

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._update_counter()

    def _update_counter(self) -> None:
        counter = self.query_one("#composer-counter", Static)
        counter.update("internal note · not sent to the customer" if self.note_mode else counter_text(self.text))

    def watch_note_mode(self, note: bool) -> None:
        self.set_class(note, "-note")
        self.query_one("#composer-mode", Static).update("note" if note else "reply")
        self._update_counter()

    def watch_opted_out(self, opted_out: bool) -> None:
        self.set_class(opted_out, "-opted-out")

    def on_reply_area_submitted(self, event: ReplyArea.Submitted) -> None:
        event.stop()
        if event.text.strip():
            self.post_message(self.Sent(event.text, self.note_mode))
