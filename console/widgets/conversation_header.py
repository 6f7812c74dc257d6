"""The open conversation's title: who, which of our numbers, status, owner, and who else is here."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from console.cache import ConversationRow
from console.phones import display_number
from console.text import one_line
from console.times import ahead, system_clock


class ConversationHeader(Widget):
    """Two lines over the thread: the customer and the conversation's state; presence of other agents."""

    DEFAULT_CSS = """
    ConversationHeader {
        height: 2;
        background: $boost;
        padding: 0 1;
    }
    """

    conversation: reactive[ConversationRow | None] = reactive(None)
    """The conversation shown (None: nothing open)."""
    me: reactive[str] = reactive("")
    """This console's agent, to tell "claimed by you" from "claimed by someone else"."""
    presence: reactive[str] = reactive("")
    """Other agents viewing or typing here, in words."""

    def __init__(self, region: str = "US", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.phone_region = region

    def render(self) -> Text:
        row = self.conversation
        if row is None:
            return Text("No conversation open — pick one in the inbox (enter), or press n for the next waiting.", "dim")
        number = display_number(row.customer_number, self.phone_region)
        title = Text(no_wrap=True, overflow="ellipsis")
        if row.customer_name:
            title.append(one_line(row.customer_name), "bold")
            title.append(f"  {number}")
        else:
            title.append(number, "bold")
        title.append(f"  → {display_number(row.twilio_number, self.phone_region)}", "dim")
        title.append(f"  [{row.status}", "bold")
        if row.status == "snoozed" and row.snoozed_until:
            app = self.app
            clock, tz = getattr(app, "clock", system_clock), getattr(app, "tz", None)
            title.append(f" until {ahead(row.snoozed_until, clock(), tz)}", "bold")
        title.append("]", "bold")
        if row.assignee is None:
            title.append("  unassigned", "dim")
        elif row.assignee == self.me:
            title.append("  yours", "green")
        else:
            title.append(f"  claimed by {one_line(row.assignee)}", "bold yellow")
        if row.opted_out:
            title.append("  ⊘ opted out", "bold red")
        second = Text(no_wrap=True, overflow="ellipsis")
        if self.presence:
            second.append(self.presence, "italic cyan")
        return Text("\n").join([title, second])
