"""What the bridge holds while it runs: settings, the store, the hub, the REST client and the command runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import httpx
from starlette.requests import HTTPConnection

from bridge.commands import CommandRunner
from bridge.handoff import Handoff
from bridge.hub import Hub
from bridge.settings import Settings
from bridge.store import SqliteStore


@dataclass(slots=True)
class Bridge:
    """The lifespan state, reachable from every request as ``bridge_of(request)``."""

    settings: Settings
    store: SqliteStore
    hub: Hub
    http: httpx.AsyncClient
    commands: CommandRunner
    voice: Handoff | None = None
    """Calls: handoff commands, REST intents, presence (None only in apps built without voice)."""
    ready: bool = False


def bridge_of(conn: HTTPConnection) -> Bridge:
    return cast(Bridge, conn.state.bridge)
