"""The call engine: runs a call's TwiML verb by verb, in simulated time, against the sandbox's voice world."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from bridge.sandbox import twiml
from bridge.sandbox.calls import RECORDING_STATUS, VOICE_REQUEST, CallerBehaviour, Recording
from bridge.sandbox.rest import new_sid, rfc2822
from bridge.sandbox.twiml import (
    MAX_TWIML_BYTES,
    MUSIC_VERBS,
    WAIT_VERBS,
    Dial,
    Enqueue,
    Gather,
    Hangup,
    Leave,
    Pause,
    Play,
    Record,
    Redirect,
    Reject,
    Say,
    TwimlError,
    Verb,
)
from bridge.sandbox.webhooks import is_web_url

if TYPE_CHECKING:
    from bridge.sandbox.calls import Bridge, Call, Member, Participant
    from bridge.sandbox.voice import Voice

log = logging.getLogger("switchboard.sandbox.voice")

APPLICATION_ERROR = "We are sorry, an application error has occurred. Goodbye."
MAX_QUIET_DOCUMENTS = 10
"""Documents in a row that take no time at all (redirect loops): Twilio stops after 10 (error 11215)."""
BEEP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Fetch:
    """TwiML to ask a URL for, with the parameters this request adds to the standard ones."""

    url: str
    method: str = "POST"
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Inline:
    """TwiML given directly (the ``Twiml`` parameter of a REST create or update)."""

    twiml: str


@dataclass(frozen=True, slots=True)
class Loaded:
    """A document already parsed, and the URL its relative URLs resolve against."""

    verbs: tuple[Verb, ...]
    url: str | None


@dataclass(frozen=True, slots=True)
class Linger:
    """No TwiML at all: a ``<Dial>``'s child leg, on the line until one side hangs up."""


Source = Fetch | Inline | Loaded | Linger


def web_url(text: str) -> str | None:
    """``text`` if a webhook can be sent to it (http or https, a valid host and port), else None.

    The test is the webhook poster's own, so a URL taken here never fails later in a way nobody sees.
    """
    return text if is_web_url(text) else None


class _CallOver(Exception):
    """``<Hangup>``, a late ``<Reject>``, or the party hanging up from inside a verb."""


class Interpreter:
    """Executes TwiML for the calls of one ``Voice`` world."""

    def __init__(self, voice: Voice) -> None:
        self.voice = voice

    # --- documents ------------------------------------------------------------------------------------------

    @staticmethod
    def resolve(base: Call | str | None, url: str) -> str | None:
        """``url`` made absolute against the current document (Twilio resolves relative URLs that way)."""
        base_url = base if isinstance(base, str) or base is None else base.doc_url
        try:
            absolute = urljoin(base_url or "", url.strip())
        except ValueError:  # a base or URL urllib cannot split (an unclosed IPv6 bracket)
            return None
        return web_url(absolute)

    def _error(self, call: Call, code: int, detail: str, side: bool = False) -> Loaded:
        """What the caller gets when TwiML cannot be had: the apology, then the call ends.

        A failing side document (wait or hold music, an announcement) only costs the music: a pause instead.
        """
        log.warning("call %s: Twilio error %s: %s", call.sid, code, detail)
        call.errors.append(f"{code}: {detail}")
        if side:
            return Loaded((Pause(5.0),), None)
        return Loaded((Say(APPLICATION_ERROR), Hangup()), call.doc_url)

    async def load(self, call: Call, source: Source, base: str | None = None, side: bool = False) -> Loaded:
        """Turn ``source`` into verbs: parse inline TwiML, or request a URL with the call's parameters.

        ``base`` is the URL relative ones resolve against (default: the call's document); ``side`` marks a
        document played beside the call's own (music, announcements), whose failures do not end the call.
        Whatever else goes wrong on the way is the sandbox's fault, but the caller gets what Twilio gives
        for a document it cannot use (12100) rather than a call that dies without a word.
        """
        try:
            return await self._load(call, source, base, side)
        except Exception as exc:
            log.exception("call %s: loading TwiML failed", call.sid)
            return self._error(call, twiml.PARSE_ERROR, f"{type(exc).__name__}: {exc}"[:300], side)

    async def _load(self, call: Call, source: Source, base: str | None, side: bool) -> Loaded:
        if isinstance(source, Loaded):
            return source
        if isinstance(source, Linger):
            return Loaded((), call.doc_url)
        if isinstance(source, Inline):
            try:
                return Loaded(tuple(twiml.parse(source.twiml)), call.doc_url)
            except TwimlError as exc:
                return self._error(call, exc.code, exc.message, side)
        url = self.resolve(base if base is not None else call, source.url)
        if url is None:
            return self._error(call, 11100, f"invalid URL {source.url[:200]!r}", side)
        params = [*self.voice.call_params(call), *source.params]
        attempt, text = await self.voice.webhooks.request(
            url, params, VOICE_REQUEST, source.method, keep=MAX_TWIML_BYTES + 1
        )
        if attempt.status_code is None:
            return self._error(call, 11205, f"{url}: {attempt.error}", side)
        if not attempt.ok:
            return self._error(call, 11200, f"{url} answered HTTP {attempt.status_code}", side)
        content_type = attempt.content_type.split(";", 1)[0].strip().lower()
        if content_type.startswith("audio/"):
            # An audio answer is played, then the call ends; music and announcements may be audio files
            # too, and there it is just played (they may not hang up, and another one follows).
            return Loaded((Play(url),) if side else (Play(url), Hangup()), url)
        try:
            verbs = twiml.parse(text)
        except TwimlError as exc:
            if content_type == "text/plain" and text.strip():
                return Loaded((Say(text.strip()),), url)  # plain text that is not TwiML is read aloud
            return self._error(call, exc.code, f"{url}: {exc.message}", side)
        return Loaded(tuple(verbs), url)

    async def first_document(self, call: Call, url: str) -> Loaded:
        """The answer to an inbound call's first webhook, fetched while it is still ringing."""
        return await self.load(call, Fetch(url))

    @staticmethod
    def rejects(source: Source) -> bool:
        return isinstance(source, Loaded) and bool(source.verbs) and isinstance(source.verbs[0], Reject)

    # --- running a call -------------------------------------------------------------------------------------

    async def execute(self, call: Call, source: Source) -> None:
        """Run documents until they run out or say ``<Hangup>``; returning ends the call."""
        if isinstance(source, Linger):
            call.verb = "Dial"
            await asyncio.Event().wait()  # until the bridge ends or someone hangs up
        quiet = 0
        document = await self.load(call, source)
        while True:
            call.doc_url = document.url
            started = time.monotonic()
            try:
                after = await self.run(call, document)
            except _CallOver:
                return
            if after is None:
                return
            quiet = quiet + 1 if time.monotonic() - started < 0.001 else 0
            if quiet >= MAX_QUIET_DOCUMENTS:
                document = self._error(call, 11215, "too many redirects without anything played")
                continue
            document = await self.load(call, after)

    async def run(self, call: Call, document: Loaded) -> Source | None:
        for verb in document.verbs:
            call.verb = type(verb).__name__
            call.hearing = ""
            after = await self.verb(call, verb)
            if after is not None:
                return after
        return None

    async def verb(self, call: Call, verb: Verb) -> Source | None:
        match verb:
            case Say() | Play() | Pause():
                await self.play(call, verb)
                return None
            case Gather():
                return await self.gather(call, verb)
            case Enqueue():
                return await self.enqueue(call, verb)
            case Dial():
                return await self.dial(call, verb)
            case Record():
                return await self.record(call, verb)
            case Redirect():
                return Fetch(verb.url, verb.method)
            case Hangup() | Reject():
                raise _CallOver
            case Leave():
                return None  # outside a queue's wait music there is nothing to leave
        raise AssertionError(f"unhandled verb {verb!r}")

    def action(self, url: str | None, method: str, extra: Sequence[tuple[str, str]]) -> Source | None:
        """Go on with the action URL's TwiML, or (no action) with the next verb."""
        return None if url is None else Fetch(url, method, tuple(extra))

    # --- verbs that take time -------------------------------------------------------------------------------

    def seconds(self, verb: Say | Play | Pause) -> float:
        config = self.voice.config
        if isinstance(verb, Say):
            return max(0.5, len(verb.text) * config.speech_seconds_per_char)
        if isinstance(verb, Play):
            return 0.5 if verb.digits else config.play_seconds
        return verb.length

    async def play(self, call: Call, verb: Say | Play | Pause) -> None:
        call.hearing = call.hearing or type(verb).__name__
        loops = getattr(verb, "loop", 1)
        if loops == 0:
            await asyncio.Event().wait()  # loop="0": until something else happens to the call
        await self.voice.sleep(self.seconds(verb) * loops)

    async def gather(self, call: Call, verb: Gather) -> Source | None:
        for prompt in verb.prompts:
            await self.play(call, prompt)
        party = call.party
        pressed = party.digits if isinstance(party, CallerBehaviour) else ""
        target = verb.action or call.doc_url
        if pressed:
            assert isinstance(party, CallerBehaviour)
            party.digits = ""
            digits = pressed.split(verb.finish_on_key, 1)[0] if verb.finish_on_key else pressed
            if verb.num_digits is not None:
                digits = digits[: verb.num_digits]
            await self.voice.sleep(0.3 * len(pressed))
            return self.action(target, verb.method, [("Digits", digits), ("FinishedOnKey", "")])
        await self.voice.sleep(verb.timeout)
        if verb.action_on_empty_result:
            return self.action(target, verb.method, [("Digits", "")])
        return None

    # --- queues ---------------------------------------------------------------------------------------------

    async def enqueue(self, call: Call, verb: Enqueue) -> Source | None:
        voice = self.voice
        queue = voice.queue_named(verb.name) or voice.create_queue(verb.name, verb.max_queue_size or 1000)
        if len(queue.members) >= queue.max_size:
            return self.action(verb.action, verb.method, [("QueueResult", "queue-full")])
        member = voice.enqueue(call, queue, verb.action, verb.method)
        music = asyncio.create_task(self.wait_music(call, member, verb), name=f"wait music {call.sid}")
        try:
            result = await member.done
        finally:
            music.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await music
        if result == "bridged" and member.bridge is not None:
            call.verb, call.hearing = "Enqueue", "announcement" if member.dequeue_url else "talking"
            if member.dequeue_url:
                params = (
                    ("QueueSid", queue.sid),
                    ("QueueTime", str(member.waited)),
                    ("DequeingCallSid", member.dequeuer or ""),
                )
                announcement = await self.load(
                    call, Fetch(member.dequeue_url, member.dequeue_method, params), side=True
                )
                await self.music(call, announcement, MUSIC_VERBS)
                call.hearing = "talking"
            await member.bridge.ended.wait()
        call.member = None
        extra = [("QueueResult", result), ("QueueSid", queue.sid), ("QueueTime", str(member.waited))]
        return self.action(verb.action, verb.method, extra)

    async def wait_music(self, call: Call, member: Member, verb: Enqueue) -> None:
        """What a caller hears in the queue: waitUrl's TwiML, re-requested each time it runs out."""
        url = verb.wait_url
        if not url:
            call.hearing = "silence" if url == "" else "hold music"
            await asyncio.Event().wait()
            return
        base = call.doc_url
        method = verb.wait_url_method
        queue = member.queue
        while True:
            params = (
                ("QueuePosition", str(self.voice.position(member))),
                ("QueueSid", queue.sid),
                ("QueueTime", str(self.voice.elapsed(member.since))),
                ("AvgQueueTime", str(self.voice.average_wait(queue))),
                ("CurrentQueueSize", str(len(queue.members))),
                ("MaxQueueSize", str(queue.max_size)),
            )
            call.hearing = "wait music"
            document = await self.load(call, Fetch(url, method, params), base=base, side=True)
            started = time.monotonic()
            after = await self.music(call, document, WAIT_VERBS, member)
            if isinstance(after, Fetch):
                base, url, method = document.url, after.url, after.method
            if time.monotonic() - started < 0.001:
                await self.voice.sleep(1.0)  # an empty or failing wait document must not spin the loop

    async def music(
        self, call: Call, document: Loaded, allowed: tuple[type, ...], member: Member | None = None
    ) -> Source | None:
        """Play a side document (wait music, hold music, an announcement) with only the verbs it may use."""
        for verb in document.verbs:
            if not isinstance(verb, allowed):
                call.errors.append(f"{twiml.SCHEMA_ERROR}: <{type(verb).__name__}> is not allowed here")
                log.warning("call %s: <%s> is not allowed in this document", call.sid, type(verb).__name__)
                continue
            match verb:
                case Say() | Play() | Pause():
                    call.hearing = call.hearing or type(verb).__name__
                    await self.play(call, verb)
                case Gather():
                    for prompt in verb.prompts:
                        await self.play(call, prompt)
                    await self.voice.sleep(verb.timeout)
                case Leave() if member is not None:
                    self.voice.leave_queue(member, "leave")
                    await asyncio.Event().wait()  # the Enqueue verb takes over and stops this loop
                case Hangup():
                    self.voice.hangup(call)
                    await asyncio.Event().wait()
                case Redirect():
                    return Fetch(verb.url, verb.method)
        return None

    # --- dialing --------------------------------------------------------------------------------------------

    async def dial(self, call: Call, verb: Dial) -> Source | None:
        noun = verb.nouns[0]
        if isinstance(noun, twiml.Conference):
            return await self.conference(call, verb, noun)
        if isinstance(noun, twiml.QueueNoun):
            return await self.dial_queue(call, verb, noun)
        return await self.dial_endpoints(call, verb)

    def _dial_result(self, status: str, sid: str | None, seconds: int, bridged: bool) -> list[tuple[str, str]]:
        result = [("DialCallStatus", status)]
        if sid is not None:
            result.append(("DialCallSid", sid))
        result += [("DialCallDuration", str(seconds)), ("DialBridged", str(bridged).lower())]
        return result

    async def dial_endpoints(self, call: Call, verb: Dial) -> Source | None:
        """Ring every ``<Number>``/``<Client>``/``<Sip>`` at once; the first to answer is connected."""
        voice = self.voice
        children = []
        for noun in verb.nouns:
            assert isinstance(noun, twiml.Endpoint)
            child = voice.place_outbound(
                noun.address,
                verb.caller_id or call.from_,
                Linger(),
                direction="outbound-dial",
                parent=call,
                timeout=verb.timeout,
                status_callback=self.resolve(call, noun.status_callback) if noun.status_callback else None,
                status_callback_method=noun.status_callback_method,
                status_events=noun.status_callback_event,
            )
            call.children.append(child)
            children.append(child)
        call.hearing = "ringing"
        bridge: Bridge | None = None
        try:
            winner = await self._first_answer(children)
            for child in children:
                if child is not winner:
                    voice.hangup(child)
            if winner is None:
                await asyncio.sleep(0)  # let the children record how they ended
                first = children[0]
                status = first.status if first.ended else "no-answer"
                return self.action(verb.action, verb.method, self._dial_result(status, first.sid, 0, False))
            bridge = voice.bridge_calls(call, winner)
            call.hearing = "talking"
            await voice.talk(bridge, verb.time_limit)
            seconds = voice.elapsed(bridge.since)
            return self.action(verb.action, verb.method, self._dial_result("completed", winner.sid, seconds, True))
        finally:
            if bridge is not None:
                voice.end_bridge(bridge)  # decides the connected leg's fate: hung up, unless it was redirected
            for child in children:
                if bridge is None or child is not bridge.callee:
                    voice.hangup(child)
            call.children = [c for c in call.children if c not in children]

    @staticmethod
    async def _first_answer(children: list[Call]) -> Call | None:
        waiting = {child.answer: child for child in children if child.answer is not None}
        pending = set(waiting)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                if future.result():
                    return waiting[future]
        return None

    async def dial_queue(self, call: Call, verb: Dial, noun: twiml.QueueNoun) -> Source | None:
        """``<Dial><Queue>``: connect to the caller at the front of the queue."""
        voice = self.voice
        queue = voice.queue_named(noun.name)
        member = queue.members[0] if queue is not None and queue.members else None
        if member is None:
            # An empty queue ends the dial at once; the status Twilio reports for it is not documented.
            return self.action(verb.action, verb.method, self._dial_result("no-answer", None, 0, False))
        member.dequeue_url = self.resolve(call, noun.url) if noun.url else None
        member.dequeue_method = noun.method
        member.dequeuer = call.sid
        bridge = voice.bridge_member(call, member)
        call.hearing = "talking"
        try:
            await voice.talk(bridge, verb.time_limit)
        finally:
            voice.end_bridge(bridge)
        seconds = voice.elapsed(bridge.since)
        return self.action(verb.action, verb.method, self._dial_result("completed", member.call.sid, seconds, True))

    async def conference(self, call: Call, verb: Dial, noun: twiml.Conference) -> Source | None:
        participant = self.voice.join_conference(call, noun)
        music = asyncio.create_task(self.conference_music(call, participant), name=f"conference {call.sid}")
        started = time.monotonic()
        try:
            assert participant.done is not None
            await participant.done
        finally:
            music.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await music
        call.hearing = ""
        seconds = self.voice.elapsed(started)
        return self.action(verb.action, verb.method, self._dial_result("completed", None, seconds, True))

    async def conference_music(self, call: Call, participant: Participant) -> None:
        """Hold music while held, wait music before the conference starts, the conference otherwise."""
        while True:
            participant.changed.clear()
            if participant.hold:
                hearing, url, method = "hold music", participant.hold_url, participant.hold_method
            elif participant.conference.status == "init":
                hearing, url, method = "wait music", participant.wait_url, participant.wait_method
            else:
                hearing, url, method = "conference", None, "POST"
            call.hearing = hearing
            player = asyncio.create_task(self.loop_music(call, url, method, hearing)) if url else None
            try:
                await participant.changed.wait()
            finally:
                if player is not None:
                    player.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await player

    async def loop_music(self, call: Call, url: str, method: str, hearing: str) -> None:
        base = call.doc_url
        while True:
            document = await self.load(call, Fetch(url, method), base=base, side=True)
            started = time.monotonic()
            after = await self.music(call, document, MUSIC_VERBS)
            call.hearing = hearing
            if isinstance(after, Fetch):
                base, url, method = document.url, after.url, after.method
            if time.monotonic() - started < 0.001:
                await self.voice.sleep(1.0)

    async def announce(self, call: Call, url: str, method: str) -> bool:
        """Play an announcement to one call (participant or conference ``AnnounceUrl``); False if it failed."""
        failures = len(call.errors)
        document = await self.load(call, Fetch(url, method), side=True)
        if len(call.errors) > failures:
            return False
        previous = call.hearing
        call.hearing = "announcement"
        try:
            await self.music(call, document, MUSIC_VERBS)
        finally:
            if call.hearing == "announcement" and not call.ended:  # stopped early, the call may have moved on
                call.hearing = previous
        return True

    # --- recording ------------------------------------------------------------------------------------------

    async def record(self, call: Call, verb: Record) -> Source | None:
        voice = self.voice
        if verb.play_beep:
            await voice.sleep(BEEP_SECONDS)
        party = call.party
        if not isinstance(party, CallerBehaviour):
            # A phone says nothing: silence for `timeout` seconds ends the recording with no audio, and
            # Twilio then goes on with the next verb without requesting the action.
            call.hearing = "recording"
            await voice.sleep(verb.timeout)
            return None
        call.hearing = "recording"
        length = min(party.voicemail, verb.max_length)
        started = voice.config.clock()
        await voice.sleep(length)
        sid = new_sid("RE")
        recording = Recording(
            sid=sid,
            call_sid=call.sid,
            duration=max(1, round(length)),
            date_created=started,
            url=f"{voice.config.media_base_url}/sandbox/recordings/{sid}",
        )
        voice.recordings[sid] = recording
        extra = [
            ("RecordingUrl", recording.url),
            ("RecordingDuration", str(recording.duration)),
            ("RecordingSid", sid),
        ]
        if verb.recording_status_callback:
            target = self.resolve(call, verb.recording_status_callback)
            if target is not None:
                for event in ("in-progress", "completed"):
                    if event in verb.recording_status_callback_event:
                        params = self._recording_params(call, recording, event, rfc2822(started))
                        method = verb.recording_status_callback_method
                        voice.spawn(voice.webhooks.request(target, params, RECORDING_STATUS, method), f"rec {sid}")
        target_url = verb.action or call.doc_url
        if party.voicemail <= verb.max_length:
            # They said their piece and hung up: the action is still requested, its TwiML goes unheard.
            if target_url:
                voice.fire_and_forget(call, target_url, verb.method, [*extra, ("Digits", "hangup")])
            voice.hangup(call)
            raise _CallOver
        voice.timer(call, "voicemail", party.voicemail - verb.max_length)
        return self.action(target_url, verb.method, extra)

    @staticmethod
    def _recording_params(call: Call, recording: Recording, event: str, started: str) -> list[tuple[str, str]]:
        params = [
            ("AccountSid", call.account_sid),
            ("CallSid", call.sid),
            ("RecordingSid", recording.sid),
            ("RecordingUrl", recording.url),
            ("RecordingStatus", event),
            ("RecordingChannels", "1"),
            ("RecordingStartTime", started),
            ("RecordingSource", "RecordVerb"),
            ("RecordingTrack", "inbound"),
        ]
        if event == "completed":
            params.append(("RecordingDuration", str(recording.duration)))
        return params
