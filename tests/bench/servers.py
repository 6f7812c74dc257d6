"""The servers the benchmarks run, each in its own process: the bridge and the ceiling (uvicorn), the peer (gunicorn).

``python -m tests.bench.servers bridge --port P --data-dir D [--queue-size N]`` runs the real bridge
(``bridge.app.create_app``) under uvicorn with the same options as ``switchboard-bridge serve``, but with the
loop and HTTP parser named explicitly (uvloop and httptools when installed) and the stream queue size settable.

``python -m tests.bench.servers ceiling --port P`` runs the ceiling: a bare Starlette app that reads and parses
the form body and answers empty TwiML, with nothing else (no signature check, no storage).

The peer (Flask, Twilio's RequestValidator and MessagingResponse) is ``tests.bench.peer_app:app`` on gunicorn.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.bench.common import SERVER_HTTP, SERVER_LOOP, python_module
from tests.support import ACCOUNT_SID, AUTH_TOKEN

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def ceiling_app() -> Starlette:
    async def sms(request: Request) -> Response:
        parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True)
        return Response(EMPTY_TWIML, media_type="text/xml")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(routes=[Route("/twilio/sms", sms, methods=["POST"]), Route("/healthz", healthz)])


def bridge_argv(port: int, data_dir: Path, queue_size: int | None = None, log_level: str = "warning") -> list[str]:
    argv = python_module("tests.bench.servers", "bridge", "--port", str(port), "--data-dir", str(data_dir))
    if queue_size is not None:
        argv += ["--queue-size", str(queue_size)]
    return [*argv, "--log-level", log_level]


def ceiling_argv(port: int) -> list[str]:
    return python_module("tests.bench.servers", "ceiling", "--port", str(port))


def peer_argv(port: int) -> list[str]:
    """Twilio's quickstart shape as deployed: gunicorn, one (sync) worker."""
    return python_module(
        "gunicorn",
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--timeout",
        "120",
        "tests.bench.peer_app:app",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.servers")
    parser.add_argument("kind", choices=["bridge", "ceiling"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--queue-size", type=int, help="the bridge's per-console send queue (default: Settings')")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.kind == "bridge":
        from bridge.app import create_app
        from bridge.settings import Settings

        if args.data_dir is None:
            parser.error("bridge needs --data-dir")
        # As `switchboard-bridge serve` does: the bridge's own loggers at INFO (console connects, disconnects and
        # why), uvicorn's at --log-level.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = Settings(
            data_dir=args.data_dir,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            public_url=f"http://127.0.0.1:{args.port}",
            api_base="http://127.0.0.1:9",  # nothing listens: the benchmarks send no replies
        )
        if args.queue_size is not None:
            settings = settings.with_(stream_queue_size=args.queue_size)
        app = create_app(settings)
    else:
        app = ceiling_app()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=SERVER_LOOP,
        http=SERVER_HTTP,
        log_level=args.log_level,
        ws_ping_interval=10.0,
        ws_ping_timeout=10.0,
        ws_max_size=1024 * 1024,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
