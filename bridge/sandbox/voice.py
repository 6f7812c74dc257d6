"""Programmable Voice in the sandbox: calls and their lifecycle, queues, conferences, and their status callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import HTTPConnection

from bridge.sandbox.calls import (
    CALL_EVENTS,
    CALL_STATUS,
    CONFERENCE_EVENTS,
    CONFERENCE_STATUS,
    DEFAULT_CONFERENCE_EVENTS,
    VOICE_REQUEST,
    Bridge,
    Call,
    CallerBehaviour,
    Conference,
    Member,
    Participant,
    Party,
    PhoneBehaviour,
    Queue,
    Recording,
)
from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.interpreter import Fetch, Interpreter, Source
from bridge.sandbox.messaging import geo_fields
from bridge.sandbox.rest import API_ROOT, API_VERSION, new_sid, rfc2822
from bridge.sandbox.twiml import Conference as ConferenceNoun
from bridge.sandbox.webhooks import WebhookPoster

log = logging.getLogger("switchboard.sandbox.voice")

ANNOUNCEMENT = "announcement"
"""The call timer an ``AnnounceUrl`` plays under."""

# --- status callbacks, in order, with optional chaos --------------------------------------------------------


HOLD_SECONDS = 2.0
"""Simulated seconds a held-back callback waits for a later one to overtake it before it goes anyway."""


@dataclass(frozen=True, slots=True)
class _Callback:
    url: str
    method: str
    params: list[tuple[str, str]]
    kind: str
    duplicate: bool
    reorder: bool
    final: bool


class CallbackLane:
    """Delivers one call's (or conference's) status callbacks one at a time, in the order they happened.

    Twilio sends them as separate requests with no promise of order; the chaos settings make that visible:
    a callback may go twice, or be held back and sent after the next one. SequenceNumber lets a receiver sort.
    """

    def __init__(self, voice: Voice, name: str, rng: random.Random) -> None:
        self.voice = voice
        self.name = name
        self.rng = rng
        self.items: asyncio.Queue[_Callback] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def send(self, url: str, method: str, params: list[tuple[str, str]], kind: str, final: bool = False) -> None:
        config = self.voice.config
        # Both draws happen for every callback so one setting does not shift the other's choices.
        duplicate = self.rng.random() < config.voice_duplicate_callback_share
        reorder = self.rng.random() < config.voice_reorder_callback_share
        self.items.put_nowait(_Callback(url, method, params, kind, duplicate, reorder, final))
        if self.task is None or self.task.done():
            self.task = self.voice.spawn(self._run(), f"callbacks {self.name}")

    async def _run(self) -> None:
        held: _Callback | None = None
        while True:
            try:
                item = self.items.get_nowait()
            except asyncio.QueueEmpty:
                if held is None:
                    return
                # A held callback goes after the next one, or after a moment if none comes: held forever,
                # it would never arrive at all, and this task would never end.
                try:
                    async with asyncio.timeout(HOLD_SECONDS * self.voice.config.voice_time_scale):
                        item = await self.items.get()
                except TimeoutError:
                    await self._deliver(held)
                    held = None
                    continue
            if item.reorder and held is None and not item.final:
                held = item
                continue
            await self._deliver(item)
            if held is not None:
                await self._deliver(held)
                held = None

    async def _deliver(self, item: _Callback) -> None:
        for _ in range(2 if item.duplicate else 1):
            await self.voice.webhooks.request(item.url, item.params, item.kind, item.method)


# --- the voice world ----------------------------------------------------------------------------------------


class Voice:
    """Holds calls, queues, conferences and recordings, and runs every call's life through the interpreter."""

    def __init__(self, config: SandboxConfig, webhooks: WebhookPoster) -> None:
        self.config = config
        self.webhooks = webhooks
        self.calls: dict[str, Call] = {}
        self.queues: dict[str, Queue] = {}
        self.conferences: dict[str, Conference] = {}
        self.recordings: dict[str, Recording] = {}
        self.phones: dict[str, PhoneBehaviour] = {}
        """Endpoints told how to behave through ``POST /sandbox/phones``."""
        self.interpreter = Interpreter(self)
        self._lanes = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- time -----------------------------------------------------------------------------------------------

    async def sleep(self, simulated: float) -> None:
        await asyncio.sleep(max(simulated, 0.0) * self.config.voice_time_scale)

    def elapsed(self, since: float | None) -> int:
        """Whole simulated seconds since a ``time.monotonic()`` reading."""
        if since is None:
            return 0
        # Rounded, not truncated: the event loop may wake a timer up to its clock resolution early.
        return round((time.monotonic() - since) / self.config.voice_time_scale)

    def duration(self, call: Call) -> int | None:
        """Twilio's ``duration``: none while the call goes on (OpenAPI: "empty for … ongoing calls")."""
        if not call.ended:
            return None
        return 0 if call.answered_at is None or call.ended_at is None else self._span(call)

    def _span(self, call: Call) -> int:
        assert call.answered_at is not None and call.ended_at is not None
        return round((call.ended_at - call.answered_at) / self.config.voice_time_scale)

    # --- tasks ----------------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox voice task %s failed", task.get_name(), exc_info=task.exception())

    def timer(self, call: Call, name: str, simulated: float, then: Coroutine[Any, Any, None] | None = None) -> None:
        """After ``simulated`` seconds the party hangs up (or ``then`` runs); replaces a timer of the same name."""
        self.cancel_timer(call, name)

        async def fire() -> None:
            await self.sleep(simulated)
            call.timers.pop(name, None)
            if then is not None:
                await then
            else:
                self.hangup(call)

        call.timers[name] = self.spawn(fire(), f"{name} {call.sid}")

    def cancel_timer(self, call: Call, name: str) -> None:
        task = call.timers.pop(name, None)
        if task is not None:
            task.cancel()

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no call is alive and no callback is in flight (for tests); bounded by ``timeout``."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        # Calls spawn follow-up tasks while they wind down, so cancel until nothing is left.
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # Awaiting a finished task does not yield, so its done-callback (which forgets it) may not have
            # run yet: forget them here, or this loop would spin without ever letting the loop run.
            self._tasks.difference_update(tasks)

    # --- webhook parameters ---------------------------------------------------------------------------------

    def call_params(self, call: Call, status: str | None = None) -> list[tuple[str, str]]:
        """The standard request parameters Twilio sends with every voice webhook for ``call``."""
        to_geo = dict(geo_fields("To", call.to))
        from_geo = dict(geo_fields("From", call.from_))
        params = [
            ("AccountSid", call.account_sid),
            ("ApiVersion", API_VERSION),
            ("CallSid", call.sid),
            ("CallStatus", status or call.status),
            ("Called", call.to),
            ("CalledCity", to_geo["ToCity"]),
            ("CalledCountry", to_geo["ToCountry"]),
            ("CalledState", to_geo["ToState"]),
            ("CalledZip", to_geo["ToZip"]),
            ("Caller", call.from_),
            ("CallerCity", from_geo["FromCity"]),
            ("CallerCountry", from_geo["FromCountry"]),
            ("CallerState", from_geo["FromState"]),
            ("CallerZip", from_geo["FromZip"]),
            ("Direction", call.direction),
            ("From", call.from_),
            *from_geo.items(),
            ("To", call.to),
            *to_geo.items(),
        ]
        if call.parent_call_sid:
            params.append(("ParentCallSid", call.parent_call_sid))
        return params

    def _lane(self, name: str) -> CallbackLane:
        self._lanes += 1
        return CallbackLane(self, name, random.Random(f"{self.config.seed}|voice-chaos|{self._lanes}"))

    def emit(self, call: Call, event: str) -> None:
        """Send call progress ``event`` (initiated, ringing, answered, completed) if the call subscribed to it."""
        if call.direction == "inbound":
            url, method, wanted = self.config.voice_status_url, "POST", set(CALL_EVENTS)
        else:
            url, method, wanted = call.status_callback, call.status_callback_method, set(call.status_events)
        if not url or event not in wanted:
            return
        # twilio-java#321: the initiated event carries CallStatus=initiated; answered carries in-progress.
        status = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}.get(event, call.status)
        params = self.call_params(call, status)
        if event == "completed":
            seconds = self.duration(call) or 0
            params += [("CallDuration", str(seconds)), ("Duration", str(math.ceil(seconds / 60)))]
        params += [
            ("Timestamp", rfc2822(self.config.clock())),
            ("CallbackSource", "call-progress-events"),
            ("SequenceNumber", str(call.sequence)),
        ]
        call.sequence += 1
        if call.lane is None:
            call.lane = self._lane(call.sid)
        call.lane.send(url, method, params, CALL_STATUS, final=event == "completed")

    def fire_and_forget(self, call: Call, url: str, method: str, extra: Sequence[tuple[str, str]]) -> None:
        """Request an action URL whose TwiML nobody will run (the call hung up or moved on), as Twilio does."""
        target = self.interpreter.resolve(call, url)
        if target is None:
            return
        params = [*self.call_params(call), *extra]
        self.spawn(self.webhooks.request(target, params, VOICE_REQUEST, method), f"action {call.sid}")

    # --- calls: creation and life ---------------------------------------------------------------------------

    def phone_for(self, address: str) -> PhoneBehaviour:
        configured = self.phones.get(address)
        if configured is not None:
            return PhoneBehaviour(answer=configured.answer, ring=configured.ring)
        return PhoneBehaviour(answer=self.config.phones_answer, ring=self.config.ring_seconds)

    def _new_call(self, to: str, from_: str, direction: str, status: str, party: Party, **more: Any) -> Call:
        now = self.config.clock()
        call = Call(
            sid=new_sid("CA"),
            account_sid=self.config.account_sid,
            to=to,
            from_=from_,
            direction=direction,
            status=status,
            date_created=now,
            date_updated=now,
            party=party,
            **more,
        )
        call.answer = asyncio.get_running_loop().create_future()
        self.calls[call.sid] = call
        return call

    def place_outbound(
        self,
        to: str,
        from_: str,
        source: Source | None,
        *,
        direction: str = "outbound-api",
        parent: Call | None = None,
        timeout: float = 60.0,
        status_callback: str | None = None,
        status_callback_method: str = "POST",
        status_events: frozenset[str] = frozenset({"completed"}),
    ) -> Call:
        """A call the team makes (REST, a participant, a ``<Dial>``): it rings the far end's phone."""
        call = self._new_call(
            to,
            from_,
            direction,
            "queued",
            self.phone_for(to),
            parent_call_sid=parent.sid if parent else None,
            timeout=timeout,
            status_callback=status_callback,
            status_callback_method=status_callback_method,
            status_events=status_events,
        )
        self.spawn(self._outbound_life(call, source), f"call {call.sid}")
        return call

    def place_inbound(self, from_: str, to: str, caller: CallerBehaviour) -> Call:
        """A simulated person calls one of the team's numbers: the bridge's voice URL is asked what to do."""
        call = self._new_call(to, from_, "inbound", "ringing", caller)
        self.spawn(self._inbound_life(call), f"call {call.sid}")
        return call

    async def _phase(self, call: Call, coro: Coroutine[Any, Any, None]) -> None:
        """Run one stretch of a call's life as its own task, so a hangup or redirect can stop just that."""
        if call.hangup_status is not None:
            coro.close()  # hung up before this stretch began (e.g. canceled right after it was created)
            return
        call.phase = asyncio.create_task(coro, name=f"phase {call.sid}")
        try:
            await call.phase
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the sandbox is shutting down, not just this phase being stopped
        finally:
            call.phase = None

    def _set_status(self, call: Call, status: str) -> None:
        call.status = status
        call.date_updated = self.config.clock()

    def _answered(self, call: Call) -> None:
        self._set_status(call, "in-progress")
        call.start_time = call.date_updated
        call.answered_at = time.monotonic()
        if call.answer is not None and not call.answer.done():
            call.answer.set_result(True)
        self.emit(call, "answered")

    async def _outbound_life(self, call: Call, source: Source | None) -> None:
        try:
            self.emit(call, "initiated")
            self._set_status(call, "ringing")
            self.emit(call, "ringing")
            await self._phase(call, self._ring(call))
            if call.hangup_status is not None:
                self._end(call, "canceled")
                return
            if call.status != "in-progress":
                self._end(call, "no-answer")
                return
            await self._run(call, source)
            self._end(call, "completed")
        finally:
            if not call.ended:
                self._end(call, "completed" if call.answered_at else "canceled")

    async def _ring(self, call: Call) -> None:
        party = call.party
        assert isinstance(party, PhoneBehaviour)
        if party.answer and party.ring < call.timeout:
            await self.sleep(party.ring)
            self._answered(call)
        else:
            await self.sleep(call.timeout)

    async def _inbound_life(self, call: Call) -> None:
        try:
            self.emit(call, "initiated")
            self.emit(call, "ringing")
            url = self.config.voice_url
            if url is None:
                self._end(call, "failed")
                return
            document: list[Any] = []

            async def ask() -> None:
                document.append(await self.interpreter.first_document(call, url))

            await self._phase(call, ask())
            if call.hangup_status is not None:
                self._end(call, "canceled")
                return
            source = document[0]
            if self.interpreter.rejects(source):
                # Not answering is the only way to turn a call away unbilled; what the caller gets is a busy
                # signal or "not in service". The status Twilio records for it is our reading (busy).
                self._end(call, "busy")
                return
            self._answered(call)
            await self._run(call, source)
            self._end(call, "completed")
        finally:
            if not call.ended:
                self._end(call, "completed" if call.answered_at else "canceled")

    async def _run(self, call: Call, source: Source | None) -> None:
        """Execute TwiML until it runs out or the call hangs up; a redirect swaps the document being run."""
        while source is not None and call.hangup_status is None:
            call.redirect_to = None
            call.leaving = ""
            await self._phase(call, self.interpreter.execute(call, source))
            source = call.redirect_to

    def _end(self, call: Call, status: str) -> None:
        if call.ended:
            return
        self._detach(call, "hangup")
        for name in list(call.timers):
            self.cancel_timer(call, name)
        for child in call.children:
            self.hangup(child)
        self._set_status(call, status)
        call.end_time = call.date_updated
        call.ended_at = time.monotonic()
        call.verb = call.hearing = ""
        if call.answer is not None and not call.answer.done():
            call.answer.set_result(False)
        if call.participant is not None:
            self._participant_failed(call.participant)
        call.finished.set()
        self.emit(call, "completed")

    async def settle(self, call: Call, timeout: float = 1.0) -> None:
        """Give a call that was just told to end the moment it needs to wind down, so answers show the end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await call.finished.wait()

    # --- calls: what can happen to them ---------------------------------------------------------------------

    def hangup(self, call: Call) -> None:
        """The far end hangs up, or the API ends the call: whatever it was doing stops."""
        if call.ended or call.hangup_status is not None:
            return
        call.hangup_status = "completed" if call.status == "in-progress" else "canceled"
        call.leaving = "hangup"
        self._detach(call, "hangup")
        if call.phase is not None:
            call.phase.cancel()

    def redirect(self, call: Call, source: Source) -> None:
        """Make a live call drop what it is doing and run ``source`` (REST update, queue dequeue)."""
        call.redirect_to = source
        call.leaving = "redirected"
        self._detach(call, "redirected")
        if call.phase is not None:
            call.phase.cancel()

    def _detach(self, call: Call, why: str) -> None:
        """Take a call out of its queue, conference or bridge, telling whoever needs to know."""
        member = call.member
        if member is not None:
            call.member = None
            result = "bridged" if member.bridge is not None else why
            self.leave_queue(member, result)
            if member.action:
                extra = [("QueueResult", result), ("QueueSid", member.queue.sid)]
                extra.append(("QueueTime", str(member.waited)))
                self.fire_and_forget(call, member.action, member.method, extra)
        if call.participant is not None and call.participant.status == "connected":
            self.leave_conference(call.participant, "left")
        if call.bridge is not None:
            self.end_bridge(call.bridge)

    # --- parties --------------------------------------------------------------------------------------------

    def connected(self, call: Call) -> None:
        """Someone is on the line with ``call``: a simulated caller starts talking, and will hang up after."""
        party = call.party
        if isinstance(party, CallerBehaviour) and not call.talking and party.talk is not None:
            call.talking = True
            self.timer(call, "talk", party.talk)

    # --- queues ---------------------------------------------------------------------------------------------

    def queue_named(self, name: str) -> Queue | None:
        return next((q for q in self.queues.values() if q.friendly_name == name), None)

    def create_queue(self, name: str, max_size: int = 1000) -> Queue:
        now = self.config.clock()
        queue = Queue(new_sid("QU"), self.config.account_sid, name, max_size, now, now)
        self.queues[queue.sid] = queue
        return queue

    def enqueue(self, call: Call, queue: Queue, action: str | None, method: str) -> Member:
        loop = asyncio.get_running_loop()
        member = Member(call, queue, self.config.clock(), time.monotonic(), action, method, loop.create_future())
        queue.members.append(member)
        queue.date_updated = member.date_enqueued
        call.member = member
        party = call.party
        if isinstance(party, CallerBehaviour) and party.patience is not None:
            self.timer(call, "patience", party.patience)
        return member

    def leave_queue(self, member: Member, result: str) -> None:
        queue = member.queue
        if member in queue.members:
            member.waited = self.elapsed(member.since)
            queue.members.remove(member)
            queue.date_updated = self.config.clock()
        self.cancel_timer(member.call, "patience")
        if not member.done.done():
            member.done.set_result(result)

    def position(self, member: Member) -> int:
        return member.queue.members.index(member) + 1 if member in member.queue.members else 0

    def average_wait(self, queue: Queue) -> int:
        """Twilio computes it over the calls waiting now, at the time of the request."""
        waits = [self.elapsed(m.since) for m in queue.members]
        return sum(waits) // len(waits) if waits else 0

    def queue_json(self, queue: Queue) -> dict[str, Any]:
        return {
            "date_updated": rfc2822(queue.date_updated),
            "current_size": len(queue.members),
            "friendly_name": queue.friendly_name,
            "uri": queue.uri,
            "account_sid": queue.account_sid,
            "average_wait_time": self.average_wait(queue),
            "sid": queue.sid,
            "date_created": rfc2822(queue.date_created),
            "max_size": queue.max_size,
        }

    def member_json(self, member: Member) -> dict[str, Any]:
        queue = member.queue
        return {
            "call_sid": member.call.sid,
            "date_enqueued": rfc2822(member.date_enqueued),
            "position": self.position(member),
            "uri": f"{API_ROOT}/Accounts/{queue.account_sid}/Queues/{queue.sid}/Members/{member.call.sid}.json",
            "wait_time": self.elapsed(member.since),
            "queue_sid": queue.sid,
        }

    def dequeue_to(self, member: Member, url: str, method: str) -> None:
        """``POST Members/{CallSid}.json`` with ``Url``: the call leaves the queue and runs that TwiML."""
        self.redirect(member.call, Fetch(url, method))

    def bridge_member(self, dialer: Call, member: Member) -> Bridge:
        """``<Dial><Queue>``: the front caller leaves the queue and is connected to ``dialer``."""
        bridge = Bridge(dialer=dialer, callee=member.call, since=time.monotonic())
        member.bridge = bridge
        dialer.bridge = bridge
        member.call.bridge = bridge
        self.leave_queue(member, "bridged")
        self.connected(member.call)
        self.connected(dialer)
        return bridge

    def bridge_calls(self, dialer: Call, callee: Call) -> Bridge:
        bridge = Bridge(dialer=dialer, callee=callee, since=time.monotonic())
        dialer.bridge = callee.bridge = bridge
        self.connected(dialer)
        self.connected(callee)
        return bridge

    def end_bridge(self, bridge: Bridge) -> None:
        if bridge.ended.is_set():
            return
        bridge.ended.set()
        for call in (bridge.dialer, bridge.callee):
            if call.bridge is bridge:
                call.bridge = None
        # A <Dial>'s own child leg has nothing left to do, unless it is the one being redirected (REST update
        # of the child): then it runs its new TwiML. A dequeued caller goes on with its own TwiML anyway.
        callee = bridge.callee
        if callee.direction == "outbound-dial" and callee.leaving != "redirected":
            self.hangup(callee)

    async def talk(self, bridge: Bridge, limit: float) -> None:
        """Until one side of the bridge leaves, or ``<Dial timeLimit>`` (simulated seconds) cuts it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(limit, 0.0) * self.config.voice_time_scale):
                await bridge.ended.wait()
        self.end_bridge(bridge)

    # --- conferences ----------------------------------------------------------------------------------------

    def conference_named(self, name: str, create: bool = True) -> Conference | None:
        """The live conference with that friendly name; a new one (``init``) when there is none."""
        for conference in self.conferences.values():
            if conference.friendly_name == name and conference.status != "completed":
                return conference
        if not create:
            return None
        now = self.config.clock()
        conference = Conference(new_sid("CF"), self.config.account_sid, name, "init", now, now)
        self.conferences[conference.sid] = conference
        return conference

    def subscribe(self, conference: Conference, url: str | None, method: str, events: frozenset[str]) -> None:
        if not url:
            return
        known_method, known = conference.subscriptions.get(url, (method, frozenset()))
        conference.subscriptions[url] = (known_method, known | (events or DEFAULT_CONFERENCE_EVENTS))

    def add_participant(
        self, conference: Conference, call: Call, noun: ConferenceNoun, status: str = "connected"
    ) -> Participant:
        now = self.config.clock()
        participant = Participant(
            call=call,
            conference=conference,
            label=noun.participant_label,
            muted=noun.muted,
            start_conference_on_enter=noun.start_conference_on_enter,
            end_conference_on_exit=noun.end_conference_on_exit,
            status=status,
            date_created=now,
            date_updated=now,
            wait_url=noun.wait_url,
            wait_method=noun.wait_method,
        )
        participant.done = asyncio.get_running_loop().create_future()
        conference.participants.append(participant)
        call.participant = participant
        # TwiML may give a relative statusCallback: it resolves against the document that joined the room.
        callback = self.interpreter.resolve(call, noun.status_callback) if noun.status_callback else None
        self.subscribe(conference, callback, noun.status_callback_method, noun.status_callback_event)
        return participant

    def join_conference(self, call: Call, noun: ConferenceNoun) -> Participant:
        """``<Dial><Conference>`` (or an answered REST participant): the call is in the room."""
        pending = call.participant
        if pending is not None and pending.status in ("queued", "ringing"):
            participant = pending
            conference = participant.conference
            participant.status = "connected"
            participant.date_updated = self.config.clock()
        else:
            found = self.conference_named(noun.name)
            assert found is not None
            conference = found
            participant = self.add_participant(conference, call, noun)
        conference.ever_joined = True
        self.conference_event(conference, "participant-join", participant)
        connected = conference.connected()
        if conference.status == "init" and len(connected) >= 2 and any(p.start_conference_on_enter for p in connected):
            conference.status = "in-progress"
            conference.date_updated = self.config.clock()
            self.conference_event(conference, "conference-start")
            for other in connected:
                other.changed.set()
        if conference.status == "in-progress":
            for other in connected:
                self.connected(other.call)
        return participant

    def leave_conference(self, participant: Participant, why: str) -> None:
        """A participant leaves (hung up, redirected: ``left``; REST delete: ``kicked``)."""
        conference = participant.conference
        if participant not in conference.participants:
            return
        was_connected = participant.status == "connected"
        conference.participants.remove(participant)
        participant.status = "complete"
        participant.date_updated = self.config.clock()
        if participant.call.participant is participant:
            participant.call.participant = None
        self.cancel_timer(participant.call, ANNOUNCEMENT)
        if was_connected:
            self.conference_event(conference, "participant-leave", participant)
        if participant.done is not None and not participant.done.done():
            participant.done.set_result(why)
        if conference.status == "completed":
            return
        how = "kicked" if why == "kicked" else "left"
        if was_connected and participant.end_conference_on_exit:
            self.end_conference(conference, f"participant-with-end-conference-on-exit-{how}", participant)
        elif not conference.participants and conference.ever_joined:
            self.end_conference(conference, f"last-participant-{how}", participant)

    def _participant_failed(self, participant: Participant) -> None:
        """A REST-created participant's call ended before it joined (no answer, canceled…)."""
        if participant.status in ("queued", "ringing"):
            conference = participant.conference
            if participant in conference.participants:
                conference.participants.remove(participant)
            participant.status = "failed"
            if participant.done is not None and not participant.done.done():
                participant.done.set_result("failed")
            if not conference.participants and conference.status != "completed":
                self.end_conference(conference, "last-participant-left", None)

    def end_conference(self, conference: Conference, reason: str, ending: Participant | None) -> None:
        if conference.status == "completed":
            return
        conference.status = "completed"
        conference.reason_ended = reason
        conference.call_sid_ending = ending.call.sid if ending else None
        conference.label_ending = ending.label if ending else None
        conference.date_updated = self.config.clock()
        for participant in list(conference.participants):
            if participant.status != "connected":
                self.hangup(participant.call)  # still ringing: nobody is left to join
            self.leave_conference(participant, "conference-ended")
        if conference.ever_joined:
            self.conference_event(conference, "conference-end")

    def set_hold(self, participant: Participant, hold: bool) -> None:
        if participant.hold != hold:
            participant.hold = hold
            self.conference_event(
                participant.conference, "participant-hold" if hold else "participant-unhold", participant
            )
        participant.changed.set()

    def set_muted(self, participant: Participant, muted: bool) -> None:
        if participant.muted != muted:
            participant.muted = muted
            event = "participant-mute" if muted else "participant-unmute"
            self.conference_event(participant.conference, event, participant)

    def announce(self, participant: Participant, url: str, method: str) -> None:
        """Play ``url``'s TwiML to one participant, then report ``announcement-end`` (or ``-fail``).

        The announcement is one of the call's timers, so it stops when the call ends, and when the participant
        leaves the room (``leave_conference``): nothing plays, or reports, after the conference is over.
        """
        call = participant.call
        self.cancel_timer(call, ANNOUNCEMENT)

        async def play() -> None:
            try:
                ok = await self.interpreter.announce(call, url, method)
            finally:
                if call.timers.get(ANNOUNCEMENT) is asyncio.current_task():
                    del call.timers[ANNOUNCEMENT]
            conference = participant.conference
            if participant in conference.participants and conference.status != "completed":
                event = "announcement-end" if ok else "announcement-fail"
                self.conference_event(conference, event, participant)

        call.timers[ANNOUNCEMENT] = self.spawn(play(), f"announce {call.sid}")

    def conference_event(self, conference: Conference, event: str, participant: Participant | None = None) -> None:
        """Post ``event`` to every status callback URL of the conference subscribed to it."""
        word = CONFERENCE_EVENTS[event]
        targets = [(url, method) for url, (method, words) in conference.subscriptions.items() if word in words]
        if not targets:
            return
        params = [
            ("AccountSid", conference.account_sid),
            ("ConferenceSid", conference.sid),
            ("FriendlyName", conference.friendly_name),
            ("SequenceNumber", str(conference.sequence)),
            ("StatusCallbackEvent", event),
            ("Timestamp", rfc2822(self.config.clock())),
        ]
        conference.sequence += 1
        if participant is not None:
            params += [
                ("CallSid", participant.call.sid),
                ("Coaching", "false"),
                ("EndConferenceOnExit", str(participant.end_conference_on_exit).lower()),
                ("Hold", str(participant.hold).lower()),
                ("Muted", str(participant.muted).lower()),
                ("StartConferenceOnEnter", str(participant.start_conference_on_enter).lower()),
            ]
            if participant.label:
                params.append(("ParticipantLabel", participant.label))
        if event == "conference-end":
            reason = conference.reason_ended or ""
            if conference.call_sid_ending:
                params.append(("CallSidEndingConference", conference.call_sid_ending))
            if conference.label_ending:
                params.append(("ParticipantLabelEndingConference", conference.label_ending))
            params += [("ReasonConferenceEnded", reason), ("Reason", _reason_sentence(reason))]
        if conference.lane is None:
            conference.lane = self._lane(conference.sid)
        for url, method in targets:
            conference.lane.send(url, method, params, CONFERENCE_STATUS, final=event == "conference-end")

    # --- views ----------------------------------------------------------------------------------------------

    def call_json(self, call: Call) -> dict[str, Any]:
        return call.to_json(self.duration(call))

    def sandbox_call_json(self, call: Call) -> dict[str, Any]:
        """A call as ``GET /sandbox/calls`` shows it: Twilio's fields plus what it is doing right now."""
        member = call.member
        participant = call.participant
        bridge = call.bridge
        other = None
        if bridge is not None:
            other = bridge.callee.sid if bridge.dialer is call else bridge.dialer.sid
        return {
            "sid": call.sid,
            "direction": call.direction,
            "from": call.from_,
            "to": call.to,
            "status": call.status,
            "parent_call_sid": call.parent_call_sid,
            "duration": self.duration(call),
            "verb": call.verb,
            "hearing": call.hearing,
            "queue": None
            if member is None or member.bridge is not None
            else {
                "sid": member.queue.sid,
                "name": member.queue.friendly_name,
                "position": self.position(member),
                "wait_time": self.elapsed(member.since),
            },
            "conference": None
            if participant is None
            else {
                "sid": participant.conference.sid,
                "name": participant.conference.friendly_name,
                "status": participant.status,
                "hold": participant.hold,
                "muted": participant.muted,
                "label": participant.label,
            },
            "bridged_with": other,
            "party": call.party.to_json(),
            "errors": list(call.errors),
        }

    def sandbox_conference_json(self, conference: Conference) -> dict[str, Any]:
        return {
            **conference.to_json(),
            "participants": [
                {**p.to_json(), "hearing": p.call.hearing, "to": p.call.to} for p in conference.participants
            ],
            "subscriptions": sorted(conference.subscriptions),
        }


def _reason_sentence(reason: str) -> str:
    return {
        "conference-ended-via-api": "Conference ended via API",
        "participant-with-end-conference-on-exit-left": "Participant with endConferenceOnExit left",
        "participant-with-end-conference-on-exit-kicked": "Participant with endConferenceOnExit kicked",
        "last-participant-left": "Last participant left",
        "last-participant-kicked": "Last participant kicked",
    }.get(reason, reason)


def voice_of(conn: HTTPConnection) -> Voice:
    return cast(Voice, conn.state.voice)
