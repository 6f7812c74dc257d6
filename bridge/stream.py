"""`GET /v1/stream`: replay the log after the console's cursor, say `caught_up`, then stream live; take commands.

Gap-free and duplicate-free by construction: the console is attached to the hub (live events start queueing)
only after the replay, the log is read once more after attaching, and every event frame is sent only if its
seq is the next one (earlier ones are skipped, missing ones are read from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge import protocol
from bridge.hub import Subscriber
from bridge.state import Bridge, bridge_of
from bridge.store import agent_for_token, hash_token

log = logging.getLogger("switchboard.bridge.stream")

REPLAY_PAGE = 1000
LIVE_BATCH = 256
"""At most this many queued live items are taken at once (a console asking for ``batch=1`` gets them together)."""
CLOSE_TIMEOUT = 5.0
_CURSOR = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() also admits "²"


async def _refuse(websocket: WebSocket, status: int, reason: str) -> None:
    """Refuse the upgrade: an HTTP answer with the reason where the server allows it, else a plain 403."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(reason + "\n", status_code=status))
    else:
        await websocket.close(code=1008, reason=reason)


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def stream_endpoint(websocket: WebSocket) -> None:
    bridge = bridge_of(websocket)
    token = _bearer(websocket)
    if token is None:
        await _refuse(websocket, 401, "missing Authorization: Bearer <agent token>")
        return
    agent = await bridge.store.read(lambda conn: agent_for_token(conn, token))
    if agent is None:
        await _refuse(websocket, 401, "unknown or revoked agent token")
        return
    after_text = websocket.query_params.get("after", "0")
    if not _CURSOR.fullmatch(after_text):
        await _refuse(websocket, 400, "after must be a whole number (the last seq this console has)")
        return
    after = int(after_text)
    batch_text = websocket.query_params.get("batch", "0")
    if batch_text not in ("0", "1"):
        await _refuse(websocket, 400, "batch must be 0 or 1 (1: take events in events frames)")
        return
    batched = batch_text == "1"
    head = await bridge.store.head()
    if after > head:
        # A cursor from another bridge's log (or a restored backup): resuming from it would silently skip events.
        await _refuse(
            websocket,
            409,
            f"after={after} is beyond this bridge's log (its last event is #{head}); "
            "this console's cache belongs to another bridge: reset it and resume from 0",
        )
        return
    await websocket.accept()
    sub = bridge.hub.connect(agent, hash_token(token))
    log.info("%s connected, resuming after %d", agent, after)
    sender = asyncio.create_task(_send_loop(bridge, websocket, sub, after, batched), name=f"stream-send {agent}")
    receiver = asyncio.create_task(_receive_loop(bridge, websocket, sub), name=f"stream-recv {agent}")
    stopper = asyncio.create_task(sub.stop.wait(), name=f"stream-stop {agent}")
    try:
        await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        bridge.hub.detach(sub)
        for task in (sender, receiver, stopper):
            task.cancel()
        for task in (sender, receiver, stopper):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if sub.close_code is not None:
            # A stalled console never drains its socket, so the close frame may never go out: don't wait forever.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code=sub.close_code, reason=sub.close_reason), CLOSE_TIMEOUT)
        log.info("%s disconnected%s", agent, f" ({sub.close_reason})" if sub.close_reason else "")


async def _send_loop(bridge: Bridge, websocket: WebSocket, sub: Subscriber, after: int, batched: bool) -> None:
    cursor = await _replay(bridge, websocket, after, batched=batched)
    bridge.hub.attach(sub)
    cursor = await _replay(bridge, websocket, cursor, batched=batched)
    await websocket.send_text(protocol.encode(protocol.caught_up(cursor, sub.agent)))
    queue = sub.queue
    while True:
        items = [await queue.get()]
        if batched:  # what queued up meanwhile (a commit's events, usually) goes in one events frame
            while not queue.empty() and len(items) < LIVE_BATCH:
                items.append(queue.get_nowait())
        due: list[str] = []
        for seq, frame in items:
            if seq is None:
                await _send_events(websocket, due, batched)
                await websocket.send_text(frame)
                continue
            if seq <= cursor:
                continue
            if seq > cursor + 1:  # never expected; fill from the log rather than leave a hole
                await _send_events(websocket, due, batched)
                cursor = await _replay(bridge, websocket, cursor, until=seq - 1, batched=batched)
            due.append(frame)
            cursor = seq
        await _send_events(websocket, due, batched)


async def _send_events(websocket: WebSocket, frames: list[str], batched: bool) -> None:
    """Send (and clear) event frames: each as itself, or, for a ``batch=1`` console, more than one packed into
    ``events`` frames."""
    for text in _batches(frames) if batched and len(frames) > 1 else frames:
        await websocket.send_text(text)
    frames.clear()


async def _replay(
    bridge: Bridge, websocket: WebSocket, cursor: int, until: int | None = None, *, batched: bool = False
) -> int:
    """Send every logged event after ``cursor`` (up to ``until``); returns the new cursor."""
    while until is None or cursor < until:
        frames = await bridge.store.read_frames_after(cursor, REPLAY_PAGE)
        if until is not None:
            frames = [(seq, frame) for seq, frame in frames if seq <= until]
        if not frames:
            break
        await _send_events(websocket, [frame for _seq, frame in frames], batched)
        cursor = frames[-1][0]
    return cursor


def _batches(frames: list[str]) -> Iterator[str]:
    """Event frames packed into ``events`` frames of at most REPLAY_BATCH_BYTES (one too large goes alone)."""
    limit = protocol.REPLAY_BATCH_BYTES
    group: list[str] = []
    size = 0
    for text in frames:
        # Characters, not bytes: a frame of non-ASCII text is up to 4x larger on the wire; bound it by that.
        weight = len(text) if text.isascii() else 4 * len(text)
        if group and size + weight > limit:
            yield _EVENTS_HEAD + ",".join(group) + "]}"
            group, size = [], 0
        if weight > limit:
            yield text
            continue
        group.append(text)
        size += weight + 1
    if group:
        yield _EVENTS_HEAD + ",".join(group) + "]}"


_EVENTS_HEAD = f'{{"type":"{protocol.EVENTS}","events":['


async def _receive_loop(bridge: Bridge, websocket: WebSocket, sub: Subscriber) -> None:
    commands: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                text = await websocket.receive_text()
            except WebSocketDisconnect:
                return
            except RuntimeError:
                # Starlette's WebSocketDisconnected: a send to this console failed (it went away), so the socket is
                # closed on our side and every further receive raises at once. Going round again would spin the
                # event loop and stall the whole bridge; the endpoint's own teardown closes the rest.
                return
            except KeyError:  # a binary frame
                sub.offer((None, protocol.encode(protocol.error("bad_frame", "frames must be JSON text"))))
                continue
            try:
                frame = protocol.parse_client_frame(text)
            except protocol.ProtocolError as exc:
                sub.offer((None, protocol.encode(protocol.error(exc.code, str(exc)))))
                continue
            except Exception:  # a parser bug must cost one frame, not the agent's stream
                log.exception("could not read a frame from %s", sub.agent)
                sub.offer((None, protocol.encode(protocol.error("bad_frame", "the bridge could not read that frame"))))
                continue
            if isinstance(frame, protocol.Signal):
                relayed = protocol.Signal(frame.conversation_id, frame.signal, agent=sub.agent)
                bridge.hub.relay(protocol.encode(relayed.to_frame()), sub)
                continue
            task = asyncio.create_task(_run_command(bridge, sub, frame))
            commands.add(task)
            task.add_done_callback(commands.discard)
    finally:
        for task in commands:  # the commands themselves go on (they are shielded); only the replies stop
            task.cancel()


async def _run_command(bridge: Bridge, sub: Subscriber, cmd: protocol.Command) -> None:
    try:
        result = await bridge.commands.run(sub.agent, cmd)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("command %s from %s failed", cmd.id, sub.agent)
        result = protocol.Result.failure(
            cmd.id, "internal_error", "The bridge hit an error running this command; it was logged. Try again."
        )
    sub.offer((None, protocol.encode(result.to_frame())))
    if result.error_code == "agent_revoked":  # found out before the revocation watcher's next tick
        sub.disconnect(protocol.CLOSE_UNAUTHORIZED, "agent token revoked")
