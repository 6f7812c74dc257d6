"""Simulated callers and agent phones: control endpoints to place and end calls, and seeded call traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any, cast
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.sandbox.calls import CallerBehaviour, PhoneBehaviour
from bridge.sandbox.config import SandboxConfig, config_of
from bridge.sandbox.customers import AREA_CODES
from bridge.sandbox.messaging import normalize_number
from bridge.sandbox.voice import Voice, voice_of
from bridge.sandbox.voice_rest import parse_address

log = logging.getLogger("switchboard.sandbox.callers")


class BadControl(ValueError):
    """A control request the sandbox refuses; the message is the one-line reason."""


async def _fields(request: Request) -> dict[str, Any]:
    """A JSON object or a form, as a dict (form values are strings)."""
    raw = await request.body()
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        try:
            payload = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BadControl("body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise BadControl("a JSON body must be an object")
        return payload
    # Parsed by hand, as messaging's injection endpoint does: Starlette's form() needs python-multipart.
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except UnicodeDecodeError:
        raise BadControl("body is not valid UTF-8") from None
    except ValueError:
        raise BadControl("too many form fields") from None
    return dict(pairs)


def _seconds(fields: dict[str, Any], name: str, default: float | None) -> float | None:
    """Seconds from a field; absent: ``default``; null, "", "never": never (None)."""
    if name not in fields:
        return default
    value = fields[name]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "never", "none")):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadControl(f"{name} must be a number of seconds, or null for never") from None
    if seconds < 0:
        raise BadControl(f"{name} must not be negative")
    return seconds


def _flag(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise BadControl(f"{name} must be true or false")
    return text in ("true", "1", "yes")


def caller_behaviour(config: SandboxConfig, fields: dict[str, Any]) -> CallerBehaviour:
    voicemail = _seconds(fields, "voicemail", config.voicemail_seconds)
    return CallerBehaviour(
        patience=_seconds(fields, "patience", config.caller_patience),
        talk=_seconds(fields, "talk", config.caller_talk_seconds),
        voicemail=config.voicemail_seconds if voicemail is None else voicemail,
        digits=str(fields.get("digits") or ""),
    )


async def place_call(request: Request) -> Response:
    """POST /sandbox/call: a simulated caller calls one of the team's numbers now; answers its CallSid.

    Fields (form or JSON): from, to, and optionally patience, talk, voicemail (seconds; null: never) and
    digits (pressed at the first ``<Gather>``).
    """
    config = config_of(request)
    try:
        fields = await _fields(request)
        from_given = str(fields.get("from") or "")
        from_number = normalize_number(from_given) if from_given else None
        if from_number is None:
            raise BadControl(f"from {from_given[:40]!r} is not a valid phone number")
        to_given = str(fields.get("to") or "")
        to = normalize_number(to_given) if to_given else None
        if to is None or to not in config.support_numbers:
            raise BadControl(
                f"to {to_given[:40]!r} is not one of the team's numbers: {', '.join(config.support_numbers)}"
            )
        if config.voice_url is None:
            raise BadControl("the sandbox has no bridge_url, so nobody would answer the call")
        caller = caller_behaviour(config, fields)
    except BadControl as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    call = voice_of(request).place_inbound(from_number, to, caller)
    return JSONResponse({"call_sid": call.sid, "status": call.status, "voice_url": config.voice_url})


async def hang_up(request: Request) -> Response:
    """POST /sandbox/calls/{CallSid}/hangup: the person on that call hangs up."""
    voice = voice_of(request)
    call = voice.calls.get(request.path_params["call_sid"])
    if call is None:
        return PlainTextResponse("no such call\n", status_code=404)
    voice.hangup(call)
    await voice.settle(call)
    return JSONResponse({"call_sid": call.sid, "status": call.status})


async def press(request: Request) -> Response:
    """POST /sandbox/calls/{CallSid}/digits: what the caller will press at the next ``<Gather>``."""
    voice = voice_of(request)
    call = voice.calls.get(request.path_params["call_sid"])
    if call is None:
        return PlainTextResponse("no such call\n", status_code=404)
    if not isinstance(call.party, CallerBehaviour):
        return PlainTextResponse("only simulated callers press keys\n", status_code=400)
    try:
        digits = str((await _fields(request)).get("digits") or "")
    except BadControl as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    if not all(ch in "0123456789*#" for ch in digits):
        return PlainTextResponse("digits are 0-9, * and #\n", status_code=400)
    call.party.digits = digits
    return JSONResponse({"call_sid": call.sid, "digits": digits})


async def set_phone(request: Request) -> Response:
    """POST /sandbox/phones: how an endpoint (+1…, sip:…, client:…) behaves: answer (bool), ring (seconds)."""
    voice = voice_of(request)
    try:
        fields = await _fields(request)
        endpoint = parse_address(str(fields.get("endpoint") or ""))
        if endpoint is None:
            raise BadControl("endpoint must be a phone number, a sip: URI or a client: identity")
        ring = _seconds(fields, "ring", voice.config.ring_seconds)
        behaviour = PhoneBehaviour(
            answer=_flag(fields, "answer", True), ring=voice.config.ring_seconds if ring is None else ring
        )
    except BadControl as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    voice.phones[endpoint] = behaviour
    return JSONResponse({"endpoint": endpoint, **behaviour.to_json()})


async def list_phones(request: Request) -> Response:
    """GET /sandbox/phones: the endpoints told how to behave; the rest follow ring_seconds/phones_answer."""
    voice = voice_of(request)
    return JSONResponse([{"endpoint": e, **b.to_json()} for e, b in voice.phones.items()])


class CallerTraffic:
    """Simulated people calling the team's numbers at ``caller_rate`` per minute, seeded."""

    def __init__(self, config: SandboxConfig, voice: Voice) -> None:
        self.config = config
        self.voice = voice
        self.rng = random.Random(f"{config.seed}|callers")
        # Timing has its own generator so who calls, and how patient they are, depends only on the seed.
        self.timing = random.Random(f"{config.seed}|caller-timing")
        numbers = [f"+1{area}55501{n:02d}" for area in AREA_CODES for n in range(20, 100)]
        self.pool = [n for n in numbers if n not in config.support_numbers]
        self.task: asyncio.Task[None] | None = None

    def next_caller(self) -> tuple[str, str, CallerBehaviour]:
        """Who calls next, which number, and how they behave (patience and talk jittered ±50%)."""
        config = self.config

        def jitter(value: float | None) -> float | None:
            return None if value is None else round(value * self.rng.uniform(0.5, 1.5), 1)

        caller = CallerBehaviour(
            patience=jitter(config.caller_patience),
            talk=jitter(config.caller_talk_seconds),
            voicemail=jitter(config.voicemail_seconds) or config.voicemail_seconds,
        )
        return self.rng.choice(self.pool), self.rng.choice(config.support_numbers), caller

    def start(self) -> None:
        if self.config.caller_rate > 0 and self.config.voice_url is not None:
            self.task = asyncio.create_task(self._run(), name="caller traffic")

    async def _run(self) -> None:
        interval = 60.0 / self.config.caller_rate
        while True:
            await asyncio.sleep(interval * self.timing.uniform(0.5, 1.5))
            from_number, to, caller = self.next_caller()
            self.voice.place_inbound(from_number, to, caller)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def callers_of(conn: HTTPConnection) -> CallerTraffic:
    return cast(CallerTraffic, conn.state.callers)


def routes() -> list[Route]:
    return [
        Route("/sandbox/call", place_call, methods=["POST"]),
        Route("/sandbox/calls/{call_sid}/hangup", hang_up, methods=["POST"]),
        Route("/sandbox/calls/{call_sid}/digits", press, methods=["POST"]),
        Route("/sandbox/phones", set_phone, methods=["POST"]),
        Route("/sandbox/phones", list_phones, methods=["GET"]),
    ]


ENDPOINTS = [
    "POST /sandbox/call (from, to, patience, talk, voicemail, digits)",
    "POST /sandbox/calls/{CallSid}/hangup",
    "POST /sandbox/calls/{CallSid}/digits (digits)",
    "GET|POST /sandbox/phones (endpoint, answer, ring)",
    "GET /sandbox/calls (status)",
    "GET /sandbox/conferences",
    "GET /sandbox/recordings/{RecordingSid}.wav",
]
