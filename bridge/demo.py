"""`switchboard-bridge demo`: the sandbox, the bridge and one agent on loopback, with events printed as they flow."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import uvicorn
from websockets.asyncio.client import connect

from bridge import protocol
from bridge.app import create_app
from bridge.settings import Settings
from bridge.store import add_agent, open_database, set_agent_phone

DEMO_ACCOUNT_SID = "AC" + "d" * 32
DEMO_AUTH_TOKEN = "demo-auth-token-not-a-secret"
DEMO_CALL_RATE = 2.0
"""Simulated callers per minute in `demo --for-console` (the console's calls panel has something to show)."""
DEMO_OPENING_TEXTS = 3
"""Texts customers send the moment `demo --for-console` starts: the console opens on people waiting for an answer,
not on an empty inbox (at the default 6 texts a minute the first would otherwise come 5–15 s in)."""
CANNED_REPLIES = [
    "Thanks for reaching out! Let me look into that for you.",
    "Got it — I'm checking your order now.",
    "Sorry about that! I've flagged it with our team.",
    "You're welcome! Anything else I can help with?",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server(uvicorn.Server):
    """uvicorn without its own Ctrl-C handling: the demo stops its servers itself, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _serving(app: Any, port: int) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name=f"uvicorn :{port}")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"could not serve on port {port}")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def _line(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def describe(event: protocol.Event) -> str:
    """One line per event, for people watching the demo. Customer text is shown with escapes made visible."""
    d = event.data
    body = json.dumps(d.get("body", ""), ensure_ascii=False)[1:-1]
    if event.type == protocol.MESSAGE_RECEIVED:
        media = f" +{len(d['media'])} attachment(s)" if d.get("media") else ""
        return f"#{event.seq:<5} ← {d['customer_number']} → {d['twilio_number']}: {body}{media}"
    if event.type == protocol.MESSAGE_OUTBOUND:
        return (
            f"#{event.seq:<5} → {d['customer_number']} from {d['agent']}: {body} "
            f"({d['encoding']}, {d['segments']} segment{'s' if d['segments'] != 1 else ''})"
        )
    if event.type == protocol.MESSAGE_SUBMITTED:
        return f"#{event.seq:<5}   accepted by Twilio as {d['message_sid']} ({d['status']})"
    if event.type == protocol.MESSAGE_STATUS:
        error = f" — error {d['error_code']}: {d['error_message']}" if d.get("error_code") else ""
        return f"#{event.seq:<5}   {d['message_sid']} {d['reported']}{error}"
    if event.type == protocol.MESSAGE_REJECTED:
        return f"#{event.seq:<5}   refused: {d['error_message']} — {d['hint']}"
    if event.type == protocol.OPTOUT_CHANGED:
        state = "opted OUT" if d["opted_out"] else "opted back in"
        return f"#{event.seq:<5} ! {d['customer_number']} {state} of {d['twilio_number']} ({d['reason']})"
    if event.type == protocol.CALL_UPDATED:
        who = f" ({d['agent']})" if d.get("agent") else ""
        why = f" — {d['reason']}" if d.get("reason") else ""
        return f"#{event.seq:<5} ☎ {d['customer_number']} → {d['twilio_number']}: {d['change']}, {d['state']}{who}{why}"
    if event.type == protocol.VOICEMAIL_RECORDED:
        return f"#{event.seq:<5} ☎ voicemail from {d['customer_number']}, {d['duration']} s ({d['reason']})"
    if event.type == protocol.AGENT_PRESENCE:
        return f"#{event.seq:<5}   {d['agent']} is {d['presence']} ({d['reason']})"
    return f"#{event.seq:<5} {event.type}"


async def run_agent(bridge_url: str, token: str, out: TextIO, reply_delay: float = 1.5) -> None:
    """A minimal agent on the stream: prints every event and answers each customer text."""
    counter = itertools.count(1)
    replies = itertools.cycle(CANNED_REPLIES)
    ws_url = bridge_url.replace("http://", "ws://") + "/v1/stream?after=0"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        pending: set[asyncio.Task[None]] = set()

        async def answer(conversation: str) -> None:
            await asyncio.sleep(reply_delay)
            cmd = protocol.Command(
                id=f"demo-{next(counter)}",
                command=protocol.SEND_SMS,
                args={"conversation_id": conversation, "body": next(replies)},
            )
            await ws.send(protocol.encode(cmd.to_frame()))

        try:
            async for raw in ws:
                frame = protocol.parse_server_frame(raw)
                if isinstance(frame, protocol.Event):
                    _line(out, describe(frame))
                    keyword = frame.data.get("body", "").strip().upper()
                    if frame.type == protocol.MESSAGE_RECEIVED and keyword not in ("STOP", "START"):
                        task = asyncio.create_task(answer(frame.data["conversation_id"]))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                elif isinstance(frame, protocol.Result) and not frame.ok:
                    _line(out, f"        reply {frame.id} not sent: {frame.error_message}")
                elif isinstance(frame, dict) and frame.get("type") == protocol.CAUGHT_UP:
                    _line(out, f"        (caught up at #{frame['cursor']}; live from here)")
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def demo(
    data_dir: Path,
    rate: float,
    seconds: float | None,
    out: TextIO = sys.stdout,
    for_console: bool = False,
    call_rate: float = DEMO_CALL_RATE,
) -> None:
    from bridge.sandbox.app import SandboxConfig, create_sandbox_app

    bridge_port, sandbox_port = _free_port(), _free_port()
    bridge_url = f"http://127.0.0.1:{bridge_port}"
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    settings = Settings(
        data_dir=data_dir,
        account_sid=DEMO_ACCOUNT_SID,
        auth_token=DEMO_AUTH_TOKEN,
        public_url=bridge_url,
        api_base=sandbox_url,
    )
    db = open_database(settings.db_path)
    try:
        me = "you" if for_console else f"demo-agent-{bridge_port}"
        token = add_agent(db, me)
        if for_console:
            # Phones the sandbox plays (they ring, then answer), so calls can be accepted and transferred.
            set_agent_phone(db, me, "client:you")
            for teammate in ("ana", "ben"):  # someone to assign to, or transfer a call to
                add_agent(db, teammate)
                set_agent_phone(db, teammate, f"client:{teammate}")
    finally:
        db.close()
    sandbox = SandboxConfig(
        account_sid=DEMO_ACCOUNT_SID,
        auth_token=DEMO_AUTH_TOKEN,
        bridge_url=bridge_url,
        public_url=sandbox_url,
        customer_rate=rate,
        opening_texts=DEMO_OPENING_TEXTS if for_console and rate > 0 else 0,
        caller_rate=call_rate if for_console else 0.0,
    )
    async with _serving(create_app(settings), bridge_port), _serving(create_sandbox_app(sandbox), sandbox_port):
        if for_console:
            # One line for `switchboard demo`, which runs this in a child process and opens the console on it.
            ready = {"url": bridge_url, "token": token, "sandbox_url": sandbox_url, "data_dir": str(data_dir)}
            _line(out, json.dumps(ready))
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
            return
        _line(out, f"Switchboard demo — bridge {bridge_url}, Twilio sandbox {sandbox_url}, data in {data_dir}")
        _line(
            out,
            f"Customers text {', '.join(sandbox.support_numbers)} about {rate:g} times a minute; "
            "the demo agent answers each. Ctrl-C to stop.",
        )
        _line(
            out,
            f"Make a customer text now:  curl -d from=+14155550199 -d to={sandbox.support_numbers[0]} "
            f"-d body=hello {sandbox_url}/sandbox/sms",
        )
        agent = asyncio.create_task(run_agent(bridge_url, token, out))
        try:
            if seconds is None:
                await agent
            else:
                await asyncio.wait({agent}, timeout=seconds)
        finally:
            agent.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent


def run_demo(
    data_dir: Path | None = None,
    rate: float = 20.0,
    seconds: float | None = None,
    for_console: bool = False,
    call_rate: float = DEMO_CALL_RATE,
) -> int:
    # One line per event is the demo's output; per-request HTTP logs would drown it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchboard-demo-")))
        loop = asyncio.new_event_loop()
        main = loop.create_task(demo(data_dir, rate, seconds, for_console=for_console, call_rate=call_rate))
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, main.cancel)
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
        try:
            loop.run_until_complete(main)
        except asyncio.CancelledError:
            print("\nStopped.", file=sys.stderr)
        finally:
            loop.close()
    return 0
