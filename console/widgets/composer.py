"""The reply box: multi-line text, a live segment counter, and the opted-out block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static, TextArea

from bridge.protocol import MAX_NOTE_CHARS, MAX_SMS_CHARS
from bridge.segments import analyze


def counter_text(body: str) -> str:
    """ "142/160 · GSM-7 · 1 segment", or "UCS-2 · 2 segments · 61 left" once a body is split; past what Twilio
    takes, how far past."""
    if len(body) > MAX_SMS_CHARS:
        return f"{len(body)}/{MAX_SMS_CHARS} characters · too long to send"
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

    What is written belongs to the conversation it was written for, and to its mode: each (conversation, reply or
    note) keeps its own draft. Opening another conversation, or switching between reply and note, puts the text
    aside and brings back the one kept there, so a note never becomes a text to the customer and a reply never
    goes to another customer than the one it was written to.

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
    class DraftsChanged(Message):
        """What is written changed (in the box, or a draft put aside): time to save the drafts."""

        conversation_id: str | None
        """The conversation whose draft changed; None for many at once."""

    @dataclass
    class Sent(Message):
        """The agent sent what is in the composer (already checked for being non-empty)."""

        text: str
        note: bool
        conversation_id: str | None
        """The conversation the text was written for."""

    def __init__(self, *children: Widget, **options: Any) -> None:
        super().__init__(*children, **options)
        self.conversation_id: str | None = None
        """The conversation whose draft is in the box."""
        self._drafts: dict[tuple[str | None, bool], str] = {}
        """Drafts put aside, by (conversation, note)."""
        self.sending = False
        """A send is being queued: the send key waits for it (a second press would queue the text again)."""
        self.restored = ""
        """The text last brought back from a draft (not typed now: no "typing" signal for it)."""
        self._area: ReplyArea | None = None

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
        """The box (kept once mounted: what is in it can still be read, and saved, while the screen is taken
        down)."""
        if self._area is None:
            self._area = self.query_one(ReplyArea)
        return self._area

    @property
    def text(self) -> str:
        return self.area.text

    def set_text(self, text: str) -> None:
        self.area.load_text(text)
        self.area.move_cursor(self.area.document.end)

    def clear(self) -> None:
        self.area.load_text("")

    def show_conversation(self, conversation_id: str | None) -> None:
        """Put what is written aside for the conversation it was written for; bring back ``conversation_id``'s."""
        if conversation_id == self.conversation_id:
            return
        self._set_draft(self.conversation_id, self.note_mode, self.text, in_box=False)
        self.conversation_id = conversation_id
        self._bring_back(self.note_mode)

    def _bring_back(self, note: bool) -> None:
        text = self._drafts.pop((self.conversation_id, note), "")
        self.restored = text
        if text != self.text:
            self.set_text(text)

    def unsent(self) -> int:
        """How many drafts hold words (the one in the box and those put aside)."""
        return sum(1 for text in self._drafts.values() if text.strip()) + bool(self.text.strip())

    def drafts(self) -> dict[tuple[str, bool], str]:
        """Every draft that holds words, by (conversation, note): the one in the box and those put aside."""
        drafts = {(cid, note): text for (cid, note), text in self._drafts.items() if cid is not None}
        if self.conversation_id is not None and self.text.strip():
            drafts[(self.conversation_id, self.note_mode)] = self.text
        return drafts

    def keep(self, drafts: dict[tuple[str, bool], str]) -> None:
        """Take drafts saved by an earlier run: put aside, each back in its box when its conversation opens (one
        written since, in this run, stays as it is)."""
        for (cid, note), text in drafts.items():
            if text.strip() and not self.draft(cid, note).strip():
                self._drafts[(cid, note)] = text
        if (self.conversation_id, self.note_mode) in self._drafts:
            self._bring_back(self.note_mode)
        self.post_message(self.DraftsChanged(None))

    def discard(self, conversations: set[str]) -> None:
        """Forget the drafts put aside for ``conversations`` (the box's own draft is never among them: a
        conversation open here is in the cache)."""
        gone = [key for key in self._drafts if key[0] in conversations and key[0] != self.conversation_id]
        for key in gone:
            del self._drafts[key]
        if gone:
            self.post_message(self.DraftsChanged(None))

    def draft(self, conversation_id: str | None, note: bool = False) -> str:
        """What is written for that conversation in that mode, in the box or put aside."""
        if conversation_id == self.conversation_id and note == self.note_mode:
            return self.text
        return self._drafts.get((conversation_id, note), "")

    def _set_draft(self, conversation_id: str | None, note: bool, text: str, *, in_box: bool = True) -> None:
        """Make ``text`` that conversation's draft in that mode: in the box when it shows that draft (and
        ``in_box``), else put aside (an empty one forgotten)."""
        if in_box and conversation_id == self.conversation_id and note == self.note_mode:
            if text != self.text:
                self.set_text(text)
        elif text.strip():
            self._drafts[(conversation_id, note)] = text
            self.post_message(self.DraftsChanged(conversation_id))
        elif self._drafts.pop((conversation_id, note), None) is not None:
            self.post_message(self.DraftsChanged(conversation_id))

    def give_back(self, conversation_id: str, note: bool, text: str) -> None:
        """A text the bridge refused: back in its conversation's draft, before whatever was written there since."""
        held = self.draft(conversation_id, note)
        text = f"{text}\n{held}" if held.strip() else text
        self.restored = text
        self._set_draft(conversation_id, note, text)

    def sent(self, conversation_id: str | None, note: bool, text: str) -> None:
        """``text`` went into the outbox: take it out of that draft, keeping anything written after it meanwhile."""
        held = self.draft(conversation_id, note)
        if held.startswith(text):
            self._set_draft(conversation_id, note, held.removeprefix(text).lstrip("\n"))

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._update_counter()
        self.post_message(self.DraftsChanged(self.conversation_id))

    def _update_counter(self) -> None:
        counter = self.query_one("#composer-counter", Static)
        if not self.note_mode:
            counter.update(counter_text(self.text))
        elif len(self.text) > MAX_NOTE_CHARS:
            counter.update(f"{len(self.text)}/{MAX_NOTE_CHARS} characters · too long for a note")
        else:
            counter.update("internal note · not sent to the customer")

    def watch_note_mode(self, was_note: bool, note: bool) -> None:
        if was_note != note and self.is_mounted:
            self._set_draft(self.conversation_id, was_note, self.text, in_box=False)
            self._bring_back(note)
        self.set_class(note, "-note")
        self.query_one("#composer-mode", Static).update("note" if note else "reply")
        self._update_counter()

    def watch_opted_out(self, opted_out: bool) -> None:
        self.set_class(opted_out, "-opted-out")

    def on_reply_area_submitted(self, event: ReplyArea.Submitted) -> None:
        event.stop()
        if event.text.strip() and not self.sending:
            self.sending = True  # until the screen has queued it (or refused it)
            self.post_message(self.Sent(event.text, self.note_mode, self.conversation_id))
