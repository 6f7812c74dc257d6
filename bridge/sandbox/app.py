"""The sandbox as a Starlette app (REST subset, signed webhooks, simulated customers and callers), and ``serve()``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict, cast

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.sandbox import callers, media, messaging, voice_rest
from bridge.sandbox.callers import CallerTraffic
from bridge.sandbox.config import SandboxConfig, config_of
from bridge.sandbox.customers import CustomerTraffic
from bridge.sandbox.messaging import Messaging
from bridge.sandbox.rest import API_ROOT, api_endpoint, unknown_resource
from bridge.sandbox.voice import Voice
from bridge.sandbox.webhooks import WebhookPoster

__all__ = ["SandboxConfig", "SandboxState", "create_sandbox_app", "serve"]


class SandboxState(TypedDict):
    """What the sandbox holds while it runs; each request reaches it as ``request.state.<key>``."""

    config: SandboxConfig
    http: httpx.AsyncClient
    webhooks: WebhookPoster
    messaging: Messaging
    customers: CustomerTraffic
    voice: Voice
    callers: CallerTraffic


ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def webhooks_of(conn: HTTPConnection) -> WebhookPoster:
    return cast(WebhookPoster, conn.state.webhooks)


async def index(request: Request) -> Response:
    """GET /sandbox: who the sandbox is pretending to be, and where things are."""
    config = config_of(request)
    return JSONResponse(
        {
            "account_sid": config.account_sid,
            "support_numbers": list(config.support_numbers),
            "messaging_service_sid": config.messaging_service_sid,
            "sms_webhook": config.sms_url,
            "voice_webhook": config.voice_url,
            "voice_status_callback": config.voice_status_url,
            "api_base": str(request.base_url).rstrip("/"),
            "endpoints": [
                f"POST {API_ROOT}/Accounts/{{AccountSid}}/Messages.json",
                f"GET {API_ROOT}/Accounts/{{AccountSid}}/Messages.json",
                f"GET|POST|DELETE {API_ROOT}/Accounts/{{AccountSid}}/Messages/{{Sid}}.json",
                f"GET {API_ROOT}/Accounts/{{AccountSid}}/Messages/{{Sid}}/Media.json",
                f"GET|DELETE {API_ROOT}/Accounts/{{AccountSid}}/Messages/{{Sid}}/Media/{{MediaSid}}.json",
                *voice_rest.endpoint_list(),
                "POST /sandbox/sms (from, to, body, media_url)",
                "GET /sandbox/messages (to, from)",
                *callers.ENDPOINTS,
                "GET /sandbox/webhooks (message_sid, call_sid, kind)",
                "GET /sandbox/media/{name}.png",
            ],
        }
    )


async def webhook_log(request: Request) -> Response:
    """GET /sandbox/webhooks: each webhook delivery attempt, oldest first; filters: message_sid, call_sid, kind."""
    attempts = webhooks_of(request).attempts(
        message_sid=request.query_params.get("message_sid") or None,
        kind=request.query_params.get("kind") or None,
        call_sid=request.query_params.get("call_sid") or None,
    )
    return JSONResponse([attempt.to_json() for attempt in attempts])


def create_sandbox_app(config: SandboxConfig) -> Starlette:
    """The sandbox as an ASGI app. Its state lives in the lifespan, so run it with lifespan on."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[SandboxState]:
        # trust_env=False: webhooks go straight to the bridge, never through a proxy from the environment.
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as http:
            webhooks = WebhookPoster(
                http,
                config.auth_token,
                config.clock,
                timeout=config.webhook_timeout,
                log_size=config.webhook_log_size,
            )
            sms = Messaging(config, webhooks)
            customers = CustomerTraffic(config, sms)
            voice = Voice(config, webhooks)
            traffic = CallerTraffic(config, voice)
            customers.start()
            traffic.start()
            try:
                yield {
                    "config": config,
                    "http": http,
                    "webhooks": webhooks,
                    "messaging": sms,
                    "customers": customers,
                    "voice": voice,
                    "callers": traffic,
                }
            finally:
                await traffic.close()
                await customers.close()
                await voice.close()
                await sms.close()

    routes = [
        Route("/sandbox", index, methods=["GET"]),
        Route("/sandbox/webhooks", webhook_log, methods=["GET"]),
        *messaging.routes(),
        *voice_rest.routes(),
        *callers.routes(),
        *media.routes(),
        # Everything else under the API root, any method, after authentication: Twilio's 405 for one of the
        # account's paths served with other methods, its 404 for the rest (and for other accounts' paths).
        Route(f"{API_ROOT}/Accounts/{{account_sid}}/{{rest:path}}", api_endpoint(unknown_resource), methods=ANY_METHOD),
        Route(f"{API_ROOT}/{{rest:path}}", api_endpoint(unknown_resource), methods=ANY_METHOD),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _public_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


async def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8099) -> None:
    """Run the sandbox under uvicorn until interrupted (Ctrl-C) or cancelled; both shut it down cleanly."""
    if config.public_url is None:
        config = dataclasses.replace(config, public_url=_public_url(host, port))
    server = uvicorn.Server(
        uvicorn.Config(create_sandbox_app(config), host=host, port=port, log_level="info", lifespan="on")
    )
    running = asyncio.create_task(server.serve(), name=f"sandbox :{port}")
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        # Cancelling uvicorn mid-flight would skip the lifespan's shutdown (delivery tasks, the HTTP client);
        # ask it to stop instead, wait for that, then let the cancellation through.
        server.should_exit = True
        await running
        raise
