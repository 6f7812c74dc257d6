"""Serve any ASGI app (the sandbox, the bridge, a test receiver) on an ephemeral loopback port in a thread."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket on a free port, so a URL can be known before the app that serves it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@contextmanager
def run_app_in_thread(
    app: ASGIApp, *, sock: socket.socket | None = None, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn (lifespan on) in a daemon thread; yield its base URL, e.g. http://127.0.0.1:5123.

    Pass ``sock`` (from ``bound_socket()``) when the app must know its own URL before it starts; the server
    owns it from then on and closes it. On exit the server shuts down gracefully (its lifespan shutdown runs)
    within ``startup_timeout`` seconds.
    """
    listener = bound_socket() if sock is None else sock
    url = socket_url(listener)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    serve = functools.partial(server.run, sockets=[listener])
    thread = threading.Thread(target=serve, name=f"uvicorn {url}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the app at {url} did not start (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the app at {url} did not start within {startup_timeout} s")
        time.sleep(0.005)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        listener.close()
        if thread.is_alive():
            raise RuntimeError(f"the app at {url} did not shut down within {startup_timeout} s")
