"""Fan-out to connected consoles: each has its own bounded queue, so a stalled console never delays the others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.store import StoredEvent

# A queued item: an event (seq, frame) to send in order, or a control frame (seq None) to send as is.
Item = tuple[int | None, str]


@dataclass(eq=False)
class Subscriber:
    """One console's connection as the hub sees it."""

    agent: str
    queue: asyncio.Queue[Item]
    token_hash: str = ""
    """The hash of the token it was let in with: once that token is no longer an active agent's, it is closed."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    close_reason: str = ""
    live: bool = False
    """True once replay is done and live events are queued for it."""

    def offer(self, item: Item) -> bool:
        """Queue a frame; a full queue means the console has stalled, so it is told to go and resume later."""
        if self.stop.is_set():
            return False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.disconnect(4408, "too far behind: reconnect and resume from your cursor")
            return False
        return True

    def disconnect(self, code: int, reason: str) -> None:
        if not self.stop.is_set():
            self.close_code = code
            self.close_reason = reason
            self.stop.set()


class Hub:
    """Knows every connected console; publishes committed events and relays ephemeral signals."""

    def __init__(self, queue_size: int = 2048) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.published_seq = 0
        self.presence_listeners: list[Callable[[str, bool], None]] = []
        """Called with (agent, True) when an agent's first console connects, (agent, False) when its last leaves."""

    def connect(self, agent: str, token_hash: str = "") -> Subscriber:
        """A new console: known from now on (so it can be revoked), but sent live events only once attached."""
        sub = Subscriber(agent=agent, queue=asyncio.Queue(self.queue_size), token_hash=token_hash)
        first = agent not in self.agents_online()
        self.subscribers.add(sub)
        if first:
            for listener in self.presence_listeners:
                listener(agent, True)
        return sub

    def attach(self, sub: Subscriber) -> None:
        """Start queueing live events for a console that has replayed the log."""
        sub.live = True

    def detach(self, sub: Subscriber) -> None:
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        if sub.agent not in self.agents_online():
            for listener in self.presence_listeners:
                listener(sub.agent, False)

    def publish(self, events: list[StoredEvent]) -> None:
        """Called right after each commit, in seq order."""
        items = [(event.seq, event.frame()) for event in events]
        self.published_seq = events[-1].seq
        for sub in list(self.subscribers):
            if not sub.live:
                continue
            for item in items:
                if not sub.offer(item):
                    break

    def relay(self, frame: str, sender: Subscriber) -> None:
        """Send an ephemeral frame to every console but the sender's. Never blocks, never logged."""
        for sub in list(self.subscribers):
            if sub is not sender and sub.live:
                sub.offer((None, frame))

    def disconnect_tokens_except(self, active: set[str], code: int, reason: str) -> int:
        """Close every console let in with a token whose hash is not in ``active`` (revoked, or replaced)."""
        count = 0
        for sub in list(self.subscribers):
            if sub.token_hash and sub.token_hash not in active:
                sub.disconnect(code, reason)
                count += 1
        return count

    def agents_online(self) -> set[str]:
        return {sub.agent for sub in self.subscribers}

    def close_all(self, code: int, reason: str) -> None:
        for sub in list(self.subscribers):
            sub.disconnect(code, reason)
