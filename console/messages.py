"""App-level messages: what happened, in the past tense. High-rate ones coalesce (``can_replace``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from bridge import protocol


@dataclass
class EventsApplied(Message, bubble=False):
    """A batch of the bridge's events is in the cache; ``conversations`` are the ids it touched."""

    events: list[protocol.Event]
    conversations: set[str] = field(default_factory=set)


@dataclass
class LinkChanged(Message, bubble=False):
    """The connection to the bridge changed state; ``text`` is the status line's sentence."""

    state: str
    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LinkChanged)


@dataclass
class SignalReceived(Message, bubble=False):
    """Another agent is viewing or typing in a conversation (ephemeral)."""

    agent: str
    conversation_id: str
    signal: str


@dataclass
class CommandSettled(Message, bubble=False):
    """The bridge answered one of our commands."""

    result: protocol.Result
