"""Full-text search over every cached message, newest first; enter jumps to the hit in its thread."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from console import times
from console.cache import Cache, MessageRow
from console.phones import display_number
from console.text import one_line

RESULTS = 50
MIN_QUERY = 2


@dataclass(frozen=True)
class Hit:
    conversation_id: str
    pos: int


class SearchScreen(ModalScreen[Hit | None]):
    """Type words (prefixes match); up/down to move; enter opens the message in its thread; escape closes."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="search.close"),
        Binding("down", "move(1)", "Down", show=False, id="search.down"),
        Binding("up", "move(-1)", "Up", show=False, id="search.up"),
    ]

    DEFAULT_CSS = """
    SearchScreen {
        align: center top;
        & > Vertical { width: 90%; height: 80%; margin-top: 2; border: thick $primary; background: $surface; }
        & OptionList { height: 1fr; border: none; }
        & #search-summary { color: $text-muted; padding: 0 1; }
    }
    """

    @dataclass
    class _Results(Message, bubble=False):
        query: str
        rows: list[MessageRow]
        labels: dict[str, str]

    def __init__(self, cache: Cache, region: str, tz: tzinfo | None, clock: times.Clock) -> None:
        super().__init__()
        self.cache = cache
        self.phone_region = region
        self.tz = tz
        self.clock = clock
        self.rows: list[MessageRow] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Input(placeholder="search every message…", id="search-input")
            yield Static(  # says back what was typed: never markup
                "Type to search (two letters or more). Words match as prefixes; newest first.",
                id="search-summary",
                markup=False,
            )
            yield OptionList(id="search-results")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.cursor_blink = not getattr(self.app, "steady", False)
        field.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._search(event.value)

    @work(thread=True, exclusive=True, group="search")
    def _search(self, query: str) -> None:
        # One letter matches most of a big cache (every word starting with it): wait for a second one.
        rows = self.cache.search(query, RESULTS) if len(query.strip()) >= MIN_QUERY else []
        labels = {
            cid: one_line(name) if name else display_number(number, self.phone_region)
            for cid, (name, number) in self.cache.conversation_labels(r.conversation_id for r in rows).items()
        }
        self.post_message(self._Results(query, rows, labels))

    def on_search_screen__results(self, message: _Results) -> None:
        message.stop()
        if message.query != self.query_one(Input).value:
            return  # an older keystroke's answer
        self.rows = message.rows
        options = self.query_one(OptionList)
        options.clear_options()
        now = self.clock()
        found: list[Option] = []
        for n, row in enumerate(message.rows):
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(f"{times.short(row.at, now, self.tz):>9}  ", "dim")
            line.append(f"{message.labels.get(row.conversation_id, '?')[:18]:<18} ", "bold")
            line.append({"inbound": "◀ ", "outbound": "▶ ", "note": "✎ "}.get(row.direction, "  "))
            line.append(one_line(row.body))
            found.append(Option(line, id=str(n)))
        options.add_options(found)  # one layout for the whole list, not one per row
        if options.option_count:
            options.highlighted = 0
        summary = self.query_one("#search-summary", Static)
        if len(message.query.strip()) < MIN_QUERY:
            summary.update("Type to search (two letters or more). Words match as prefixes; newest first.")
        elif not message.rows:
            summary.update(f"No message matches {one_line(message.query)!r}.")
        else:
            more = "+" if len(message.rows) == RESULTS else ""
            count = len(message.rows)
            summary.update(f"{count}{more} {'match' if count == 1 else 'matches'}, newest first · enter opens one")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is not None and self.rows:
            self._open(options.highlighted)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._open(event.option_index)

    def _open(self, index: int) -> None:
        row = self.rows[index]
        self.dismiss(Hit(row.conversation_id, row.pos))

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            options.highlighted = max(0, min(options.option_count - 1, (options.highlighted or 0) + step))

    def action_close(self) -> None:
        self.dismiss(None)
