"""`switchboard`: the console. `switchboard login URL` stores a token; `switchboard demo` runs it all on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from console import locations
from console.cache import Cache
from console.config import ConfigError, ConsoleConfig, check_url, load, save_login

DEMO_START_TIMEOUT = 30.0


def _fail(message: str, code: int = 2) -> int:
    print(f"switchboard: {message}", file=sys.stderr)
    return code


def make_app(config: ConsoleConfig, cache: Cache) -> Any:
    from console.app import SwitchboardApp
    from console.client import BridgeLink

    def link(app: SwitchboardApp) -> BridgeLink:
        assert config.url is not None and config.token is not None
        return BridgeLink(
            config.url,
            config.token,
            cache,
            on_status=app.link_status,
            on_batch=app.link_batch,
            on_result=app.link_result,
            on_signal=app.link_signal,
            catch_up_helper=True,
        )

    return SwitchboardApp(cache, config, link_factory=link, freeze_heap=True)


def cmd_console(args: argparse.Namespace) -> int:
    try:
        config = load(url=args.url, token=args.token, region=args.region)
    except ConfigError as exc:
        return _fail(str(exc))
    if not config.url or not config.token:
        return _fail(
            "no bridge configured. Run `switchboard login URL` (asks for your agent token), pass --url and --token, "
            "or set SWITCHBOARD_URL and SWITCHBOARD_TOKEN. To try Switchboard with no Twilio account: switchboard demo"
        )
    path = locations.cache_file(config.url)
    try:
        cache = Cache(path, say=lambda text: print(text, file=sys.stderr, flush=True))
    except (sqlite3.Error, RuntimeError, OSError) as exc:
        return _fail(
            f"could not open the cache at {path}: {exc}. If another console has it open, close that one; if the file "
            "is damaged, move it aside and start again: the console fills a new cache from the bridge."
        )
    try:
        make_app(config, cache).run()
    finally:
        cache.close()
    return 0


async def _check_token(url: str, token: str) -> str | None:
    """None if the bridge accepts the token; else a sentence saying what went wrong."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    from console.stream import stream_url

    try:
        async with asyncio.timeout(5.0):
            async with connect(
                stream_url(url, 0), additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5.0
            ):
                return None
    except InvalidStatus as exc:
        if exc.response.status_code in (401, 403):
            return (
                "the bridge refused this token (wrong, or revoked): "
                "ask for a new one with `switchboard-bridge agents add NAME`"
            )
        return f"the bridge answered HTTP {exc.response.status_code}"
    except (OSError, TimeoutError, WebSocketException) as exc:
        return f"could not reach {url} ({exc.__class__.__name__}); the token was saved untested"


def cmd_login(args: argparse.Namespace) -> int:
    try:
        url = check_url(args.url)
    except ConfigError as exc:
        return _fail(str(exc))
    token = args.token or getpass.getpass(f"Agent token for {url} (from `switchboard-bridge agents add NAME`): ")
    token = token.strip()
    if not token:
        return _fail("no token given; nothing was saved")
    problem = asyncio.run(_check_token(url, token))
    if problem and "refused" in problem:
        return _fail(problem + "; nothing was saved")
    path = save_login(url, token)
    print(f"Saved to {path} (readable only by you).{' Note: ' + problem if problem else ''}")
    print("Run `switchboard` to open the console.")
    return 0


@contextlib.contextmanager
def _demo_backend(rate: float) -> Iterator[dict[str, str]]:
    """The bridge and the sandbox in a child process (the console stays free of bridge code); yields URL and token."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "demo", "--for-console", "--rate", str(rate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stdout is not None
        line = _read_line(child, DEMO_START_TIMEOUT)
        if not line:
            err = child.stderr.read() if child.stderr and child.poll() is not None else ""
            raise RuntimeError(f"the demo bridge did not start: {err.strip()[-500:] or 'no output'}")
        yield json.loads(line)
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


def _read_line(child: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    assert child.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(child.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return child.stdout.readline().strip()


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        with _demo_backend(args.rate) as backend, tempfile.TemporaryDirectory(prefix="switchboard-console-") as tmp:
            config = ConsoleConfig(url=backend["url"], token=backend["token"], bell=False)
            cache = Cache(Path(tmp) / "cache.db")
            try:
                make_app(config, cache).run()
            finally:
                cache.close()
    except RuntimeError as exc:
        return _fail(str(exc), 1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="The Switchboard support console.")
    parser.add_argument("--url", help="the bridge's base URL (or SWITCHBOARD_URL, or `switchboard login`)")
    parser.add_argument("--token", help="your agent token (or SWITCHBOARD_TOKEN, or `switchboard login`)")
    parser.add_argument("--region", help="show numbers from this region in national format (default US)")
    parser.set_defaults(func=cmd_console)
    sub = parser.add_subparsers(dest="command")
    login = sub.add_parser("login", help="store the bridge URL and your agent token (mode 0600)")
    login.add_argument("url", help="the bridge's base URL, e.g. https://bridge.example.com")
    login.add_argument("--token", help=argparse.SUPPRESS)  # for scripts; people are asked, so it stays off screen
    login.set_defaults(func=cmd_login)
    demo = sub.add_parser("demo", help="bridge, sandbox and console together on loopback: no Twilio account needed")
    demo.add_argument("--rate", type=float, default=6.0, help="simulated customer texts per minute (default 6)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
