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
from starlette.types import Receive, Scope, Send

from bridge import protocol
from bridge import voice as voice_webhooks
from bridge.commands import CommandRunner
from bridge.conversations import SnoozeWaker
from bridge.handoff import Handoff
from bridge.hub import Hub
from bridge.queues import QueueConfig, load_config
from bridge.settings import Settings
from bridge.state import Bridge, bridge_of
from bridge.store import SqliteStore, active_token_hashes
from bridge.stream import stream_endpoint
from bridge.twilio_rest import TwilioRest
from bridge.webhooks import FAST_PATHS, sms_status_webhook, sms_webhook

log = logging.getLogger("switchboard.bridge")


async def healthz(request: Request) -> Response:
    bridge = bridge_of(request)
    if not bridge.ready:
        return PlainTextResponse("starting\n", status_code=503)
    head = await bridge.store.head()
    return JSONResponse({"ok": True, "head": head, "consoles": len(bridge.hub.subscribers)})


async def _watch_revocations(bridge: Bridge) -> None:
    """Close the streams of agents revoked from the CLI (which writes to the same database). Each tick compares
    every open stream's token with the tokens active now, not the revoked names with the last tick's: an agent
    revoked and added again between two ticks has a new token, and a stream let in just before a revocation may
    join the hub just after the tick that saw it."""
    while True:
        await asyncio.sleep(bridge.settings.revocation_poll)
        try:
            active = await bridge.store.read(active_token_hashes)
        except Exception:  # a locked or busy database is retried on the next tick
            log.exception("could not read the agents' tokens")
            continue
        bridge.hub.disconnect_tokens_except(active, protocol.CLOSE_UNAUTHORIZED, "agent token revoked")


def _presence_changed(voice: Handoff, agent: str, online: bool) -> None:
    if online:
        voice.console_connected(agent)
    else:
        voice.console_disconnected(agent)


class BridgeApp(Starlette):
    """The bridge's app: a POST to an SMS webhook's path goes straight to its ``Webhook`` (a bare ASGI app), past
    Starlette's middleware stack, router and route: about a tenth of a webhook's CPU on the event loop. Everything
    else, and those paths under a root path, take the usual way, where the same routes are declared. An error in a
    webhook reaches uvicorn as it would through Starlette's ``ServerErrorMiddleware``, which re-raises it: logged,
    and a 500 if nothing was sent yet."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = FAST_PATHS.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, http: httpx.AsyncClient | None = None, queues: QueueConfig | None = None
) -> Starlette:
    """The bridge as an ASGI app. ``http`` lets tests route REST calls to an in-process sandbox; ``queues``
    replaces the queue configuration (else read from settings.config_path)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = SqliteStore(settings.db_path)
        await store.start()
        hub = Hub(settings.stream_queue_size)
        store.subscribe_commits(hub.publish)
        snoozes = SnoozeWaker(store)
        client = http or httpx.AsyncClient(headers={"User-Agent": "switchboard-bridge/0.1"})
        rest = TwilioRest(settings, client)
        runner = CommandRunner(settings, store, rest)
        voice = Handoff(settings, store, rest, queues or load_config(settings.config_path, settings.region))
        runner.add_handlers(voice.handlers())
        voice.send_text = runner.run
        hub.presence_listeners.append(lambda agent, online: _presence_changed(voice, agent, online))
        bridge = Bridge(settings=settings, store=store, hub=hub, http=client, commands=runner, voice=voice)
        resumed = await runner.recover()
        if resumed:
            log.info("resuming %d send(s) interrupted by the last shutdown", resumed)
        resumed = await voice.recover()
        if resumed:
            log.info("resuming %d call operation(s) interrupted by the last shutdown", resumed)
        watcher = asyncio.create_task(_watch_revocations(bridge), name="revocation-watcher")
        waker = asyncio.create_task(snoozes.run(), name="snooze-waker")
        tasks = [watcher, waker]
        if settings.auto_offer:
            tasks.append(asyncio.create_task(voice.run_offers(), name="auto-offer"))
        bridge.ready = True
        try:
            yield {"bridge": bridge}
        finally:
            bridge.ready = False
            hub.close_all(protocol.CLOSE_SHUTDOWN, "bridge shutting down")
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runner.wait_idle()
            await voice.close()
            if http is None:
                await client.aclose()
            await store.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/twilio/sms", sms_webhook, methods=["POST"]),
        Route("/twilio/sms/status", sms_status_webhook, methods=["POST"]),
        Route("/twilio/voice", voice_webhooks.voice_webhook, methods=["POST"]),
        Route("/twilio/voice/status", voice_webhooks.voice_status_webhook, methods=["POST"]),
        Route("/twilio/voice/wait", voice_webhooks.voice_wait_webhook, methods=["POST"]),
        Route("/twilio/voice/queue-exit", voice_webhooks.voice_queue_exit_webhook, methods=["POST"]),
        Route("/twilio/voice/join", voice_webhooks.voice_join_webhook, methods=["POST"]),
        Route("/twilio/voice/conference", voice_webhooks.voice_conference_webhook, methods=["POST"]),
        Route("/twilio/voice/recording", voice_webhooks.voice_recording_webhook, methods=["POST"]),
        WebSocketRoute("/v1/stream", stream_endpoint),
    ]
    return BridgeApp(routes=routes, lifespan=lifespan)
