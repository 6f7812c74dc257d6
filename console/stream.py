"""Opening the bridge's stream: the URLs and settings every console connection uses, the catch-up helper's too.

Apart from console.client so that the helper (console/catchup.py), which needs only this, does not load (or, where
bytecode is not cached, compile) the whole link: ~20 ms of its ~0.27 s start, which the agent waits through.
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import SplitResult, urlsplit, urlunsplit

from websockets.asyncio.client import connect

OPEN_TIMEOUT: Final = 10.0

CATCH_UP_CACHE_KIB: Final = 32 * 1024
"""SQLite page cache of the link's connection while catching up (the default is 2 MiB): the indexes of a large cache
are mostly re-read otherwise. Measured on a 1M-message cache: 140k events in 4000-event batches took 24 s with the
default cache and automatic checkpoints, 18 s with this and no checkpoints until caught up."""


def stream_url(bridge_url: str, after: int) -> str:
    """``http(s)://host[:port][/prefix]`` (or ``ws(s)://``) → ``ws(s)://host[:port][/prefix]/v1/stream?after=N``,
    asking for the replay in ``events`` frames (``batch=1``).

    Raises ValueError with a sentence when the URL cannot be a bridge's.
    """
    parts = bridge_parts(bridge_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v1/stream", f"after={after}&batch=1", ""))


def open_stream(bridge_url: str, token: str, after: int, agent: str = "switchboard-console/0.1") -> connect:
    """The stream from ``after`` (``batch=1``), as every console connection opens it: ``await`` it, or use it as
    an async context manager. Raises what websockets raises (see ``BridgeLink._connect_once`` for what each means).

    Frames are compressed (permessage-deflate) unless the bridge is on this machine (see ``on_this_machine``)."""
    return connect(
        stream_url(bridge_url, after),
        additional_headers={"Authorization": f"Bearer {token}"},
        user_agent_header=agent,
        open_timeout=OPEN_TIMEOUT,
        ping_interval=20,
        ping_timeout=20,
        close_timeout=2,
        max_size=4 * 1024 * 1024,
        compression=None if on_this_machine(bridge_url) else "deflate",
    )


def on_this_machine(bridge_url: str) -> bool:
    """True for a bridge at a loopback address (``localhost``, 127.0.0.0/8, ``::1``). Over loopback, compressing
    the stream only costs CPU, on both sides of one machine: a 100k-event replay cost the bridge 1.3–1.5 CPU seconds
    with permessage-deflate against 0.6–0.8 without (``tests.bench.profile_catchup``, two runs of each, alternating)."""
    host = (bridge_parts(bridge_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def health_url(bridge_url: str) -> str:
    parts = bridge_parts(bridge_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/healthz", "", ""))


def bridge_parts(bridge_url: str) -> SplitResult:
    """A bridge URL's parts, its scheme in lower case; raises ValueError with a sentence saying what is wrong."""
    text = bridge_url.strip()
    example = "write it like http://127.0.0.1:8000 or https://bridge.example.com"
    if not text:
        raise ValueError(f"No bridge URL is set: {example}.")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https", "ws", "wss"):
        raise ValueError(f"{bridge_url!r} is not a bridge URL: {example}.")
    try:
        parts.port  # noqa: B018 - reading it is the check
    except ValueError:
        raise ValueError(f"{bridge_url!r} has a port that is not a number from 0 to 65535.") from None
    if not parts.hostname:
        raise ValueError(f"{bridge_url!r} names no host: {example}.")
    if parts.query or parts.fragment:
        raise ValueError(f"{bridge_url!r} has a query or fragment; a bridge URL has neither ({example}).")
    return parts._replace(scheme=parts.scheme.lower())
