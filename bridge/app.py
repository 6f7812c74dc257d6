"""The bridge's Starlette app: Twilio's webhooks in, the event stream out, `/healthz` for operators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from bridge import protocol
from bridge.commands import CommandRunner
from bridge.conversations import SnoozeWaker
from bridge.hub import Hub
from bridge.settings import Settings
from bridge.state import Bridge, bridge_of
from bridge.store import SqliteStore, revoked_agents
from bridge.stream import stream_endpoint
from bridge.twilio_rest import TwilioRest
from bridge.webhooks import sms_status_webhook, sms_webhook

log = logging.getLogger("switchboard.bridge")


async def healthz(request: Request) -> Response:
    bridge = bridge_of(request)
    if not bridge.ready:
        return PlainTextResponse("starting\n", status_code=503)
    head = await bridge.store.head()
    return JSONResponse({"ok": True, "head": head, "consoles": len(bridge.hub.subscribers)})


async def _watch_revocations(bridge: Bridge) -> None:
    """Close the streams of agents revoked from the CLI (which writes to the same database)."""
    known: set[str] = await bridge.store.read(revoked_agents)
    while True:
        await asyncio.sleep(bridge.settings.revocation_poll)
        try:
            revoked = await bridge.store.read(revoked_agents)
        except Exception:  # a locked or busy database is retried on the next tick
            log.exception("could not read revoked agents")
            continue
        newly = revoked - known
        known = revoked
        if newly:
            bridge.hub.disconnect_agents(newly, protocol.CLOSE_UNAUTHORIZED, "agent token revoked")
        # An agent revoked and re-added gets a new token; streams opened with the old one are already closed.


def create_app(settings: Settings, http: httpx.AsyncClient | None = None) -> Starlette:
    """The bridge as an ASGI app. ``http`` lets tests route REST calls to an in-process sandbox."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = SqliteStore(settings.db_path)
        await store.start()
        hub = Hub(settings.stream_queue_size)
        store.subscribe_commits(hub.publish)
        snoozes = SnoozeWaker(store)
        client = http or httpx.AsyncClient(headers={"User-Agent": "switchboard-bridge/0.1"})
        runner = CommandRunner(settings, store, TwilioRest(settings, client))
        bridge = Bridge(settings=settings, store=store, hub=hub, http=client, commands=runner)
        resumed = await runner.recover()
        if resumed:
            log.info("resuming %d send(s) interrupted by the last shutdown", resumed)
        watcher = asyncio.create_task(_watch_revocations(bridge), name="revocation-watcher")
        waker = asyncio.create_task(snoozes.run(), name="snooze-waker")
        bridge.ready = True
        try:
            yield {"bridge": bridge}
        finally:
            bridge.ready = False
            hub.close_all(protocol.CLOSE_SHUTDOWN, "bridge shutting down")
            for task in (watcher, waker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runner.wait_idle()
            if http is None:
                await client.aclose()
            await store.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/twilio/sms", sms_webhook, methods=["POST"]),
        Route("/twilio/sms/status", sms_status_webhook, methods=["POST"]),
        WebSocketRoute("/v1/stream", stream_endpoint),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
