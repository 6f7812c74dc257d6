"""The sandbox's voice against independent oracles: the twilio SDK, its signature validator, Twilio's OpenAPI spec."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
from starlette.types import Receive, Scope, Send
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from bridge.sandbox import twiml
from bridge.sandbox.app import SandboxConfig, create_sandbox_app
from bridge.sandbox.callers import CallerTraffic
from bridge.sandbox.voice import Voice
from tests.sandbox_support.oai import schema_properties, validate_exchange
from tests.sandbox_support.receiver import Answer, Received, WebhookReceiver
from tests.sandbox_support.server import bound_socket, run_app_in_thread, socket_url

ACCOUNT_SID = "AC" + "5e" * 16
TOKEN = "sandbox-test-auth-token"
SUPPORT = "+14155550100"
CUSTOMER = "+12125550123"
AGENT = "+13125550150"
CALL_PROGRESS = {"CallSid", "CallStatus", "Timestamp", "CallbackSource", "SequenceNumber", "AccountSid", "From", "To"}
WAIT_PARAMS = {"QueuePosition", "QueueSid", "QueueTime", "AvgQueueTime", "CurrentQueueSize", "MaxQueueSize"}


def config(**changes: Any) -> SandboxConfig:
    """Voice at a hundredth of real time; callers who never give up and never hang up on their own."""
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": TOKEN,
        "support_numbers": (SUPPORT, "+14155550101"),
        "voice_time_scale": 0.01,
        "ring_seconds": 1.0,
        "caller_patience": None,
        "caller_talk_seconds": None,
        "webhook_timeout": 5.0,
    }
    values.update(changes)
    return SandboxConfig(**values)


def twiml_doc(body: str) -> Answer:
    return Answer(body=f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>')


def signature_ok(request: Received) -> bool:
    """Twilio's own validator, on the URL the receiver saw (query string included) and the form it got."""
    validator = RequestValidator(TOKEN)
    form = request.form if request.method == "POST" else {}
    return bool(validator.validate(request.url, form, request.headers.get("x-twilio-signature", "")))


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    hooks = WebhookReceiver()
    with run_app_in_thread(hooks.app()) as url:
        yield hooks, url


@dataclass
class Harness:
    """A sandbox per test, SDK clients whose every response is recorded, and paths on the shared receiver."""

    stack: contextlib.ExitStack
    receiver: WebhookReceiver
    receiver_url: str
    responses: list[requests.Response] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"/v{uuid.uuid4().hex[:8]}")
    url: str = ""
    voice: Voice | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def sandbox(self, **changes: Any) -> Client:
        sock = bound_socket()
        cfg = config(
            bridge_url=self.receiver_url,
            voice_path=self.path("voice"),
            voice_status_path=self.path("status"),
            public_url=socket_url(sock),
            **changes,
        )
        app = create_sandbox_app(cfg)

        async def spy(scope: Scope, receive: Receive, send: Send) -> None:
            # The sandbox's voice world, caught from a request, so a test can ask it whether it went idle.
            if scope["type"] == "http" and self.voice is None:
                self.voice, self.loop = scope["state"]["voice"], asyncio.get_running_loop()
            await app(scope, receive, send)

        self.url = self.stack.enter_context(run_app_in_thread(spy, sock=sock))
        http = TwilioHttpClient(request_hooks={"response": [self._record]})
        self.stack.callback(lambda: http.session.close() if http.session is not None else None)
        client = Client(ACCOUNT_SID, TOKEN, http_client=http)
        client.api.base_url = self.url
        return client

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses.append(response)

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def hook(self, name: str) -> str:
        return f"{self.receiver_url}{self.path(name)}"

    def answer(self, name: str, body: str) -> None:
        self.receiver.answers[self.path(name)] = twiml_doc(body)

    def seen(self, name: str) -> list[Received]:
        return self.receiver.snapshot(self.path(name))

    def wait(self, name: str, check: Callable[[list[Received]], bool], timeout: float = 5.0) -> list[Received]:
        return self.receiver.wait_for(check, path=self.path(name), timeout=timeout)

    def control(self, method: str, path: str, **data: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", json=data if method == "POST" else None, timeout=5.0)

    def call_in(self, **data: Any) -> str:
        """A simulated customer calls the support number; the CallSid."""
        answer = self.control("POST", "/sandbox/call", **{"from": CUSTOMER, "to": SUPPORT, **data})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["call_sid"])

    def state(self, call_sid: str) -> dict[str, Any]:
        return next(c for c in self.control("GET", "/sandbox/calls").json() if c["sid"] == call_sid)

    def idle(self, timeout: float = 3.0) -> None:
        """Wait until the sandbox's voice has no task left (calls, timers, callbacks); fail after ``timeout``."""
        self.control("GET", "/sandbox/calls")  # any request lets the spy catch the voice world
        assert self.voice is not None and self.loop is not None
        done = asyncio.run_coroutine_threadsafe(self.voice.idle(timeout), self.loop)
        done.result(timeout=timeout + 2.0)


@pytest.fixture
def harness(receiver: tuple[WebhookReceiver, str]) -> Iterator[Harness]:
    with contextlib.ExitStack() as stack:
        h = Harness(stack=stack, receiver=receiver[0], receiver_url=receiver[1])
        yield h
    # Every successful REST answer the SDK got must match Twilio's description of that operation.
    for response in h.responses:
        if 200 <= response.status_code < 300 and response.status_code != 204:
            validate_exchange(response)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def params(requests_: list[Received], name: str) -> list[str | None]:
    return [r.param(name) for r in requests_]


# --- Calls: REST and the call lifecycle ---------------------------------------------------------------------


def test_outbound_call_runs_its_twiml_and_reports_every_event_signed(harness: Harness) -> None:
    client = harness.sandbox()
    call = client.calls.create(
        to=AGENT,
        from_=SUPPORT,
        twiml="<Response><Say>Your order has shipped.</Say></Response>",
        status_callback=harness.hook("progress") + "?leg=agent",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
    )
    assert call.sid.startswith("CA") and (call.status, call.direction) == ("queued", "outbound-api")
    assert (call.to, call.to_formatted, call.from_formatted) == (AGENT, "(312) 555-0150", "(415) 555-0100")
    got = harness.wait("progress", lambda seen: len(seen) >= 4)
    assert params(got, "CallStatus") == ["initiated", "ringing", "in-progress", "completed"]
    assert params(got, "SequenceNumber") == ["0", "1", "2", "3"]
    for request in got:
        assert signature_ok(request) and request.url.endswith("?leg=agent")
        assert request.names >= CALL_PROGRESS and request.param("CallbackSource") == "call-progress-events"
        assert request.param("Direction") == "outbound-api" and request.param("CallSid") == call.sid
    assert "CallDuration" not in got[2].names and got[3].param("CallDuration") is not None
    ended = client.calls(call.sid).fetch()
    assert ended.status == "completed" and ended.end_time is not None and ended.duration is not None
    created = next(r for r in harness.responses if r.request.method == "POST")
    assert created.status_code == 201 and set(created.json()) == schema_properties("api.v2010.account.call")
    assert [c.sid for c in client.calls.list(to=AGENT, status="completed")] == [call.sid]
    assert client.calls.list(from_=CUSTOMER) == []
    client.calls(call.sid).delete()
    with pytest.raises(TwilioRestException) as raised:
        client.calls(call.sid).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)


def test_default_events_are_completed_only(harness: Harness) -> None:
    client = harness.sandbox()
    client.calls.create(to=AGENT, from_=SUPPORT, twiml="<Response/>", status_callback=harness.hook("only-end"))
    got = harness.wait("only-end", lambda seen: len(seen) >= 1)
    time.sleep(0.05)
    assert params(harness.seen("only-end"), "CallStatus") == ["completed"]
    assert got[0].param("SequenceNumber") == "0"


@pytest.mark.parametrize(
    ("to", "from_", "code"),
    [
        ("12345", SUPPORT, 21211),
        (AGENT, "+14155550188", 21210),
        (AGENT, "not a number", 21212),
        (AGENT, "+15005550001", 21212),
        ("+15005550001", SUPPORT, 21217),
        ("+15005550002", SUPPORT, 21214),
        ("+15005550004", SUPPORT, 21216),
    ],
)
def test_bad_numbers_get_twilios_codes(harness: Harness, to: str, from_: str, code: int) -> None:
    client = harness.sandbox()
    with pytest.raises(TwilioRestException) as raised:
        client.calls.create(to=to, from_=from_, url="http://127.0.0.1:9/never")
    assert (raised.value.status, raised.value.code) == (400, code)


def test_redirect_a_live_call_then_hang_it_up(harness: Harness) -> None:
    client = harness.sandbox()
    harness.answer("moved", "<Pause length='600'/>")
    call = client.calls.create(to="client:alice", from_=SUPPORT, twiml="<Response><Pause length='600'/></Response>")
    wait_until(lambda: client.calls(call.sid).fetch().status == "in-progress")
    client.calls(call.sid).update(url=harness.hook("moved"), method="POST")
    (moved,) = harness.wait("moved", lambda seen: len(seen) >= 1)
    assert moved.param("CallStatus") == "in-progress" and moved.param("To") == "client:alice"
    assert signature_ok(moved)
    assert client.calls(call.sid).update(status="completed").status == "completed"
    with pytest.raises(TwilioRestException) as raised:
        client.calls(call.sid).update(twiml="<Response><Say>too late</Say></Response>")
    assert (raised.value.status, raised.value.code) == (400, 21220)


def test_a_ringing_call_can_be_canceled_but_not_redirected(harness: Harness) -> None:
    client = harness.sandbox()
    harness.control("POST", "/sandbox/phones", endpoint="sip:desk@example.com", answer=False)
    call = client.calls.create(to="sip:desk@example.com", from_=SUPPORT, twiml="<Response/>")
    wait_until(lambda: client.calls(call.sid).fetch().status == "ringing")
    with pytest.raises(TwilioRestException) as raised:
        client.calls(call.sid).update(twiml="<Response/>")
    assert (raised.value.status, raised.value.code) == (400, 21220)
    with pytest.raises(TwilioRestException) as raised:
        client.calls(call.sid).delete()
    assert (raised.value.status, raised.value.code) == (400, 20009)
    assert client.calls(call.sid).update(status="canceled").status == "canceled"


def test_a_phone_that_never_answers_ends_no_answer(harness: Harness) -> None:
    client = harness.sandbox()
    harness.control("POST", "/sandbox/phones", endpoint=AGENT, answer=False)
    call = client.calls.create(
        to=AGENT, from_=SUPPORT, twiml="<Response/>", timeout=5, status_callback=harness.hook("missed")
    )
    (ended,) = harness.wait("missed", lambda seen: len(seen) >= 1)
    assert (ended.param("CallStatus"), ended.param("CallDuration")) == ("no-answer", "0")
    assert client.calls(call.sid).fetch().status == "no-answer"


# --- Queues and members -------------------------------------------------------------------------------------


def test_queue_resources_with_twilios_shapes(harness: Harness) -> None:
    client = harness.sandbox()
    queue = client.queues.create(friendly_name="billing", max_size=5)
    assert queue.sid.startswith("QU") and (queue.current_size, queue.max_size) == (0, 5)
    assert set(harness.responses[-1].json()) == schema_properties("api.v2010.account.queue")
    assert [q.sid for q in client.queues.list()] == [queue.sid]
    assert client.queues(queue.sid).update(friendly_name="billing-2", max_size=10).max_size == 10
    assert client.queues(queue.sid).fetch().friendly_name == "billing-2"
    assert client.queues(queue.sid).members.list() == []
    for bad in ({"friendly_name": "billing-2"}, {"friendly_name": "x", "max_size": 5001}):
        with pytest.raises(TwilioRestException) as raised:
            client.queues.create(**bad)
        assert raised.value.status == 400
    with pytest.raises(TwilioRestException) as raised:
        client.queues(queue.sid).members("Front").fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    client.queues(queue.sid).delete()
    assert client.queues.list() == []


def test_greeting_enqueue_wait_loop_and_dequeue_into_a_conference(harness: Harness) -> None:
    """The product's flow: greeted, queued with wait music, dequeued by REST into the call's conference."""
    client = harness.sandbox()
    harness.answer(
        "voice",
        f'<Say>Thanks for calling.</Say><Enqueue waitUrl="{harness.path("wait")}" action="{harness.path("left")}">'
        "support</Enqueue>",
    )
    harness.answer("wait", "<Say>You are first in line.</Say><Pause length='1'/>")
    harness.answer("left", "")
    harness.answer(
        "connect",
        f'<Dial action="{harness.path("after-dial")}"><Conference statusCallback="{harness.path("room")}" '
        'statusCallbackEvent="start end join leave hold mute" participantLabel="customer" '
        'endConferenceOnExit="true">room-1</Conference></Dial>',
    )
    harness.answer("after-dial", "<Hangup/>")
    sid = harness.call_in()
    waits = harness.wait("wait", lambda seen: len(seen) >= 3)
    assert all(r.names >= WAIT_PARAMS and signature_ok(r) for r in waits)
    assert params(waits, "QueuePosition")[:3] == ["1", "1", "1"] and waits[0].param("CurrentQueueSize") == "1"
    first = harness.seen("voice")[0]
    assert (first.param("CallStatus"), first.param("Direction"), first.param("From")) == (
        "ringing",
        "inbound",
        CUSTOMER,
    )
    assert harness.state(sid)["queue"]["name"] == "support" and harness.state(sid)["verb"] == "Enqueue"
    (queue,) = client.queues.list()
    assert queue.friendly_name == "support" and queue.current_size == 1
    (member,) = client.queues(queue.sid).members.list()
    assert member.call_sid == sid and member.position == 1
    assert set(harness.responses[-1].json()["queue_members"][0]) == schema_properties("api.v2010.account.queue.member")

    agent = client.conferences("room-1").participants.create(
        from_=SUPPORT, to="client:alice", label="agent", status_callback=harness.hook("agent")
    )
    assert agent.status == "queued" and agent.label == "agent"
    client.queues(queue.sid).members("Front").update(url=harness.hook("connect"), method="POST")
    (left,) = harness.wait("left", lambda seen: len(seen) >= 1)
    assert (left.param("QueueResult"), left.param("QueueSid")) == ("redirected", queue.sid)
    harness.wait("room", lambda seen: "conference-start" in params(seen, "StatusCallbackEvent"))
    (conference,) = client.conferences.list(friendly_name="room-1", status="in-progress")
    assert conference.sid == agent.conference_sid
    participants = client.conferences(conference.sid).participants.list()
    assert {(p.label, p.status) for p in participants} == {("agent", "connected"), ("customer", "connected")}
    assert client.queues(queue.sid).fetch().current_size == 0

    # The customer hangs up: endConferenceOnExit ends the room, and the agent's call with it.
    harness.control("POST", f"/sandbox/calls/{sid}/hangup")
    events = harness.wait("room", lambda seen: "conference-end" in params(seen, "StatusCallbackEvent"))
    end = events[-1]
    assert end.param("ReasonConferenceEnded") == "participant-with-end-conference-on-exit-left"
    assert end.param("CallSidEndingConference") == sid and end.param("ParticipantLabelEndingConference") == "customer"
    assert harness.wait("agent", lambda seen: len(seen) >= 1)[0].param("CallStatus") == "completed"
    assert client.conferences(conference.sid).fetch().status == "completed"
    statuses = harness.wait("status", lambda seen: "completed" in params(seen, "CallStatus"))
    assert params(statuses, "CallStatus") == ["initiated", "ringing", "in-progress", "completed"]


def _caller_in_sales_queue(harness: Harness, then: str = "") -> tuple[Client, str]:
    """A caller the voice webhook puts in the "sales" queue (``then``: TwiML after it leaves): (client, call SID)."""
    client = harness.sandbox()
    harness.answer("voice", f'<Enqueue action="{harness.path("after-queue")}">sales</Enqueue>{then}')
    harness.answer("after-queue", "")
    sid = harness.call_in()
    wait_until(lambda: harness.state(sid)["queue"] is not None)
    return client, sid


def test_dial_queue_bridges_the_front_caller_and_reports_bridged(harness: Harness) -> None:
    client, sid = _caller_in_sales_queue(harness, then="<Say>bye</Say>")
    agent = client.calls.create(
        to=AGENT,
        from_=SUPPORT,
        twiml=f'<Response><Dial action="{harness.hook("dialed")}"><Queue>sales</Queue></Dial></Response>',
    )
    wait_until(lambda: harness.state(sid)["bridged_with"] == agent.sid)
    harness.control("POST", f"/sandbox/calls/{agent.sid}/hangup")
    (after,) = harness.wait("after-queue", lambda seen: len(seen) >= 1)
    assert after.param("QueueResult") == "bridged" and after.param("QueueTime") is not None
    wait_until(lambda: harness.state(sid)["status"] == "completed")


def test_dial_number_rings_an_agent_and_the_action_gets_dial_status(harness: Harness) -> None:
    harness.sandbox()
    harness.answer("voice", f'<Dial action="{harness.path("dialed")}" timeout="20"><Number>{AGENT}</Number></Dial>')
    harness.answer("dialed", "<Say>The agent hung up.</Say>")
    sid = harness.call_in()
    wait_until(lambda: harness.state(sid)["bridged_with"] is not None)
    child = harness.state(sid)["bridged_with"]
    assert harness.state(child)["direction"] == "outbound-dial"
    assert harness.state(child)["parent_call_sid"] == sid
    harness.control("POST", f"/sandbox/calls/{child}/hangup")
    (dialed,) = harness.wait("dialed", lambda seen: len(seen) >= 1)
    assert (dialed.param("DialCallStatus"), dialed.param("DialCallSid"), dialed.param("DialBridged")) == (
        "completed",
        child,
        "true",
    )
    wait_until(lambda: harness.state(sid)["status"] == "completed")


# --- conferences and participants ---------------------------------------------------------------------------


def test_participants_by_name_hold_mute_kick(harness: Harness) -> None:
    client = harness.sandbox()
    harness.answer("hold-music", "<Play>http://example.invalid/music.mp3</Play>")
    harness.answer("voice", '<Dial action="{}"><Conference>desk-7</Conference></Dial>'.format(harness.path("after")))
    harness.answer("after", "<Say>You left the conference.</Say>")
    sid = harness.call_in()
    wait_until(lambda: harness.state(sid)["conference"] is not None)
    room = harness.hook("room")
    agent = client.conferences("desk-7").participants.create(
        from_=SUPPORT,
        to=AGENT,
        label="agent",
        conference_status_callback=room,
        conference_status_callback_event=["join", "leave", "hold", "mute", "end"],
    )
    conference_sid = agent.conference_sid
    wait_until(lambda: client.conferences(conference_sid).fetch().status == "in-progress")
    customer = client.conferences(conference_sid).participants(sid)
    customer.update(hold=True, hold_url=harness.hook("hold-music"), hold_method="GET")
    (music,) = harness.wait("hold-music", lambda seen: len(seen) >= 1)
    assert music.method == "GET" and music.param("CallSid") is None  # a GET carries its params in the URL
    assert f"CallSid={sid}" in music.url and signature_ok(music)
    assert harness.state(sid)["hearing"] == "hold music" and harness.state(sid)["conference"]["hold"] is True
    assert [p.call_sid for p in client.conferences(conference_sid).participants.list(hold=True)] == [sid]
    customer.update(hold=False)
    client.conferences(conference_sid).participants("agent").update(muted=True)
    assert client.conferences(conference_sid).participants("agent").fetch().muted is True
    fetched = harness.responses[-1].json()
    assert set(fetched) == schema_properties("api.v2010.account.conference.participant")
    # Kicking the customer: their call goes on with the verb after <Dial>, here the Dial action.
    customer.delete()
    (after,) = harness.wait("after", lambda seen: len(seen) >= 1)
    assert after.param("CallSid") == sid
    assert client.conferences(conference_sid).fetch().status == "in-progress"  # the agent is still in
    client.conferences(conference_sid).participants(agent.call_sid).delete()
    events = harness.wait("room", lambda seen: "conference-end" in params(seen, "StatusCallbackEvent"))
    names = params(events, "StatusCallbackEvent")
    assert names[:1] == ["participant-join"] and "participant-hold" in names and "participant-unhold" in names
    assert "participant-mute" in names and names.count("participant-leave") == 2
    assert events[-1].param("ReasonConferenceEnded") == "last-participant-kicked"
    wait_until(lambda: client.calls(agent.call_sid).fetch().status == "completed")
    sequence = [int(n or -1) for n in params(events, "SequenceNumber")]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)
    assert all(signature_ok(e) for e in events)
    assert next(e for e in events if e.param("CallSid") == agent.call_sid).param("ParticipantLabel") == "agent"


def test_a_participant_whose_phone_does_not_answer(harness: Harness) -> None:
    client = harness.sandbox()
    harness.control("POST", "/sandbox/phones", endpoint="client:bob", answer=False)
    harness.answer("voice", "<Dial><Conference>lonely</Conference></Dial>")
    sid = harness.call_in()
    wait_until(lambda: harness.state(sid)["conference"] is not None)
    assert harness.state(sid)["hearing"] == "wait music"
    bob = client.conferences("lonely").participants.create(
        from_=SUPPORT, to="client:bob", timeout=5, status_callback=harness.hook("bob"), label="bob"
    )
    (missed,) = harness.wait("bob", lambda seen: len(seen) >= 1)
    assert missed.param("CallStatus") == "no-answer"
    participants = client.conferences(bob.conference_sid).participants.list()
    assert [p.call_sid for p in participants] == [sid]
    client.conferences(bob.conference_sid).update(status="completed")
    wait_until(lambda: harness.state(sid)["status"] == "completed")
    assert client.conferences(bob.conference_sid).fetch().reason_conference_ended == "conference-ended-via-api"


# --- voicemail, patience, errors ----------------------------------------------------------------------------


def test_record_leaves_a_voicemail_that_can_be_played(harness: Harness) -> None:
    harness.sandbox()
    harness.answer(
        "voice",
        f'<Say>Please leave a message.</Say><Record maxLength="60" action="{harness.path("voicemail")}" '
        f'recordingStatusCallback="{harness.path("recording")}"/>',
    )
    harness.answer("voicemail", "<Say>never heard</Say>")
    sid = harness.call_in(voicemail=3)
    (action,) = harness.wait("voicemail", lambda seen: len(seen) >= 1)
    assert (action.param("RecordingDuration"), action.param("Digits")) == ("3", "hangup")
    assert (action.param("RecordingSid") or "").startswith("RE") and signature_ok(action)
    (status,) = harness.wait("recording", lambda seen: len(seen) >= 1)
    assert (status.param("RecordingStatus"), status.param("RecordingDuration")) == ("completed", "3")
    assert status.param("RecordingUrl") == action.param("RecordingUrl")
    audio = httpx.get(f"{action.param('RecordingUrl')}.wav", timeout=5.0)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/x-wav"
    with wave.open(io.BytesIO(audio.content)) as played:
        assert played.getnframes() == 3 * played.getframerate()
    wait_until(lambda: harness.state(sid)["status"] == "completed")
    assert httpx.get(f"{harness.url}/sandbox/recordings/RE{'0' * 32}.wav").status_code == 404


def test_an_impatient_caller_hangs_up_in_the_queue(harness: Harness) -> None:
    harness.sandbox()
    harness.answer("voice", f'<Enqueue action="{harness.path("gone")}">support</Enqueue>')
    sid = harness.call_in(patience=3)
    (gone,) = harness.wait("gone", lambda seen: len(seen) >= 1)
    assert gone.param("QueueResult") == "hangup" and int(gone.param("QueueTime") or "0") >= 3
    wait_until(lambda: harness.state(sid)["status"] == "completed")


def test_bad_twiml_is_an_application_error(harness: Harness) -> None:
    harness.sandbox()
    harness.receiver.answers[harness.path("voice")] = Answer(body="<Response><Say>unclosed</Response>")
    sid = harness.call_in()
    wait_until(lambda: harness.state(sid)["status"] == "completed")
    assert harness.state(sid)["errors"][0].startswith("12100")


def test_chaos_duplicates_and_reorders_call_progress(harness: Harness) -> None:
    client = harness.sandbox(voice_duplicate_callback_share=0.4, voice_reorder_callback_share=0.4, seed=3)
    sids = [
        client.calls.create(
            to=AGENT,
            from_=SUPPORT,
            twiml="<Response><Pause/></Response>",
            status_callback=harness.hook("chaos"),
            status_callback_event=["initiated", "ringing", "answered", "completed"],
        ).sid
        for _ in range(4)
    ]

    def all_done(seen: list[Received]) -> bool:
        done = {r.param("CallSid") for r in seen if r.param("CallStatus") == "completed"}
        return done >= set(sids) and len({(r.param("CallSid"), r.param("SequenceNumber")) for r in seen}) == 16

    harness.wait("chaos", all_done)
    time.sleep(0.1)  # a duplicate of the last callback may still be on its way
    got = harness.seen("chaos")
    assert len(got) > 16, "some callbacks arrive twice"
    out_of_order = False
    for sid in sids:
        numbers = [int(r.param("SequenceNumber") or -1) for r in got if r.param("CallSid") == sid]
        out_of_order = out_of_order or numbers != sorted(numbers)
        # Sorting by SequenceNumber and dropping repeats recovers the true order.
        ordered = {
            int(r.param("SequenceNumber") or -1): r.param("CallStatus") for r in got if r.param("CallSid") == sid
        }
        assert [ordered[n] for n in sorted(ordered)] == ["initiated", "ringing", "in-progress", "completed"]
    assert out_of_order, "some callbacks arrive after a later one"
    assert all(signature_ok(r) for r in got)


# --- pure pieces and the control surface --------------------------------------------------------------------


def test_twiml_parser_reads_twilio_sdk_documents_and_refuses_bombs() -> None:
    from twilio.twiml.voice_response import VoiceResponse

    response = VoiceResponse()
    response.say("Hello", loop=2)
    response.enqueue("support", action="/a", wait_url="/w", max_queue_size=10)
    dial = response.dial(action="/d", timeout=10)
    dial.conference(
        "room", start_conference_on_enter=False, end_conference_on_exit=True, status_callback_event="join leave"
    )
    response.record(max_length=30, play_beep=False)
    verbs = twiml.parse(str(response))
    assert verbs[0] == twiml.Say("Hello", loop=2)
    assert verbs[1] == twiml.Enqueue("support", action="/a", wait_url="/w", max_queue_size=10)
    assert isinstance(verbs[2], twiml.Dial) and verbs[2].timeout == 10
    room = verbs[2].nouns[0]
    assert isinstance(room, twiml.Conference) and room.end_conference_on_exit and not room.start_conference_on_enter
    assert room.status_callback_event == {"join", "leave"}
    assert verbs[3] == twiml.Record(max_length=30, play_beep=False)
    bomb = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><Response><Say>&a;</Say></Response>'
    for bad, code in (
        (bomb, 12100),
        ("<Response><Say>", 12100),
        ("<Reply/>", 12100),
        ("<Response><Dance/></Response>", 12200),
        ("<Response><Gather><Dial>1</Dial></Gather></Response>", 12200),
        ('<Response><Dial><Conference muted="maybe">r</Conference></Dial></Response>', 12200),
    ):
        with pytest.raises(twiml.TwimlError) as raised:
            twiml.parse(bad)
        assert raised.value.code == code


def test_control_endpoints_refuse_with_one_line(harness: Harness) -> None:
    harness.sandbox()
    for data, reason in (
        ({"from": "nope", "to": SUPPORT}, "from 'nope' is not a valid phone number"),
        ({"from": CUSTOMER, "to": AGENT}, f"to '{AGENT}' is not one of the team's numbers"),
        ({"from": CUSTOMER, "to": SUPPORT, "patience": "soon"}, "patience must be a number"),
    ):
        answer = harness.control("POST", "/sandbox/call", **data)
        assert answer.status_code == 400 and answer.text.startswith(reason) and answer.text.count("\n") == 1
    assert harness.control("POST", "/sandbox/phones", endpoint="mars").status_code == 400
    phone = harness.control("POST", "/sandbox/phones", endpoint="client:carol", answer=False, ring=2).json()
    assert phone == {"endpoint": "client:carol", "kind": "phone", "answer": False, "ring": 2.0}
    assert harness.control("GET", "/sandbox/phones").json() == [phone]
    assert harness.control("POST", f"/sandbox/calls/CA{'0' * 32}/hangup").status_code == 404
    info = harness.control("GET", "/sandbox").json()
    assert "POST /sandbox/call (from, to, patience, talk, voicemail, digits)" in info["endpoints"]
    assert info["voice_webhook"] == harness.hook("voice")


def test_caller_traffic_is_seeded() -> None:
    cfg = config(caller_rate=30.0, caller_patience=60.0)
    first = CallerTraffic(cfg, Voice.__new__(Voice))
    second = CallerTraffic(cfg, Voice.__new__(Voice))
    calls = [first.next_caller() for _ in range(5)]
    assert calls == [second.next_caller() for _ in range(5)]
    assert all(to in cfg.support_numbers and caller.patience is not None for _, to, caller in calls)
    other = CallerTraffic(dataclasses.replace(cfg, seed=8), Voice.__new__(Voice))
    assert [other.next_caller() for _ in range(5)] != calls


def test_config_refuses_nonsense_voice_settings() -> None:
    with pytest.raises(ValueError, match="voice_time_scale must be positive"):
        config(voice_time_scale=0)
    with pytest.raises(ValueError, match="caller_patience must not be negative"):
        config(caller_patience=-1.0)
    with pytest.raises(ValueError, match="voice_reorder_callback_share"):
        config(voice_reorder_callback_share=2.0)
    assert config(bridge_url="http://127.0.0.1:8080").voice_status_url == "http://127.0.0.1:8080/twilio/voice/status"


# --- edges: side documents, bad input, legs that move, limits, leaks ----------------------------------------


def _conference_of_two(harness: Harness, client: Client, **alice: Any) -> tuple[str, str, str]:
    """alice and bob, both phones, in a started room; (conference SID, alice's CallSid, bob's CallSid)."""
    first = client.conferences("room").participants.create(from_=SUPPORT, to="client:alice", label="alice", **alice)
    second = client.conferences("room").participants.create(from_=SUPPORT, to="client:bob", label="bob")
    sid = first.conference_sid
    wait_until(lambda: client.conferences(sid).fetch().status == "in-progress")
    return sid, first.call_sid, second.call_sid


def test_audio_hold_music_loops_without_schema_errors(harness: Harness) -> None:
    """A HoldUrl "may return an MP3 file, a WAV file, or a TwiML document": audio is music, not a hangup."""
    client = harness.sandbox()
    harness.receiver.answers[harness.path("music.mp3")] = Answer(body="ID3-not-really", content_type="audio/mpeg")
    conference_sid, alice, _ = _conference_of_two(harness, client)
    client.conferences(conference_sid).participants("alice").update(hold=True, hold_url=harness.hook("music.mp3"))
    harness.wait("music.mp3", lambda seen: len(seen) >= 3)
    state = harness.state(alice)
    assert (state["status"], state["hearing"], state["errors"]) == ("in-progress", "hold music", [])


@pytest.mark.parametrize(
    "body",
    [
        '<Say loop="inf">hi</Say>',
        '<Say loop="nan">hi</Say>',
        '<Play loop="1e400">x.mp3</Play>',
        '<Gather numDigits="inf"/>',
        '<Pause length="nan"/>',
        '<Dial timeLimit="inf">+13125550150</Dial>',
        "<Gather>" * 1200 + "</Gather>" * 1200,
    ],
)
def test_twiml_refuses_non_finite_numbers_and_nested_gathers(body: str) -> None:
    with pytest.raises(twiml.TwimlError) as raised:
        twiml.parse(f"<Response>{body}</Response>")
    assert raised.value.code == twiml.SCHEMA_ERROR


def test_unusable_urls_are_twilio_errors_not_crashes(harness: Harness) -> None:
    client = harness.sandbox()
    for url in ("http://[::1/status", "http://example.com:port/status", "http://127.0.0.1:99999/", "ftp://h/"):
        with pytest.raises(TwilioRestException) as raised:
            client.calls.create(to=AGENT, from_=SUPPORT, twiml="<Response/>", status_callback=url)
        assert (raised.value.status, raised.value.code) == (400, 21205)
    with pytest.raises(TwilioRestException) as raised:
        client.calls.create(to=AGENT, from_=SUPPORT, url="http://[::1/twiml")
    assert (raised.value.status, raised.value.code) == (400, 21205)
    documents = {
        "<Response><Redirect>http://[::1/x</Redirect></Response>": "11100",
        '<Response><Say loop="nan">hi</Say><Pause length="600"/></Response>': "12200",
    }
    calls = {client.calls.create(to=AGENT, from_=SUPPORT, twiml=doc).sid: code for doc, code in documents.items()}
    wait_until(lambda: all(harness.state(sid)["status"] == "completed" for sid in calls))
    assert {sid: harness.state(sid)["errors"][0][:5] for sid in calls} == calls


def test_a_sandbox_failure_while_loading_twiml_is_an_application_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong getting a document, the call hears the apology (12100) instead of going silent."""
    client = harness.sandbox()

    def broken(text: str | bytes) -> list[twiml.Verb]:
        raise RuntimeError("a bug in the sandbox")

    monkeypatch.setattr(twiml, "parse", broken)
    call = client.calls.create(to=AGENT, from_=SUPPORT, twiml="<Response><Pause length='600'/></Response>")
    wait_until(lambda: harness.state(call.sid)["status"] == "completed")
    assert harness.state(call.sid)["errors"][0].startswith("12100")


def test_redirecting_a_dial_child_leg_moves_it_and_ends_the_parents_dial(harness: Harness) -> None:
    client = harness.sandbox()
    harness.answer("moved", "<Say>You have been moved</Say><Pause length='600'/>")
    dial = f'<Response><Dial action="{harness.hook("dialed")}"><Client>bob</Client></Dial></Response>'
    parent = client.calls.create(to=AGENT, from_=SUPPORT, twiml=dial)
    wait_until(lambda: harness.state(parent.sid)["bridged_with"] is not None)
    child = harness.state(parent.sid)["bridged_with"]
    client.calls(child).update(url=harness.hook("moved"), method="POST")
    (moved,) = harness.wait("moved", lambda seen: len(seen) >= 1)
    assert (moved.param("CallSid"), moved.param("ParentCallSid")) == (child, parent.sid)
    (dialed,) = harness.wait("dialed", lambda seen: len(seen) >= 1)
    assert (dialed.param("DialCallStatus"), dialed.param("DialCallSid")) == ("completed", child)
    wait_until(lambda: harness.state(parent.sid)["status"] == "completed")
    time.sleep(0.05)
    assert client.calls(child).fetch().status == "in-progress"
    assert harness.state(child)["verb"] in ("Say", "Pause") and harness.state(child)["bridged_with"] is None
    client.calls(child).update(status="completed")


def test_an_announcement_ends_with_its_call_and_never_outlives_the_conference(harness: Harness) -> None:
    client = harness.sandbox()
    harness.answer("announce", '<Pause length="40"/>')
    harness.answer("forever", '<Play loop="0">http://example.com/a.mp3</Play>')
    events = ["join", "leave", "end", "announcement"]
    conference_sid, alice, bob = _conference_of_two(
        harness, client, conference_status_callback=harness.hook("room"), conference_status_callback_event=events
    )
    client.conferences(conference_sid).participants("alice").update(announce_url=harness.hook("announce"))
    client.conferences(conference_sid).participants("bob").update(announce_url=harness.hook("forever"))
    harness.wait("announce", lambda seen: len(seen) >= 1)
    harness.wait("forever", lambda seen: len(seen) >= 1)
    client.calls(alice).update(status="completed")
    client.calls(bob).update(status="completed")
    harness.wait("room", lambda seen: "conference-end" in params(seen, "StatusCallbackEvent"))
    harness.idle()  # nothing left playing to calls that are over
    names = params(harness.seen("room"), "StatusCallbackEvent")
    assert names[-1] == "conference-end" and "announcement-end" not in names


def test_dial_time_limit_cuts_the_bridge_and_runs_the_action(harness: Harness) -> None:
    client = harness.sandbox()
    dial = f'<Response><Dial timeLimit="5" action="{harness.hook("dialed")}"><Client>bob</Client></Dial></Response>'
    client.calls.create(to=AGENT, from_=SUPPORT, twiml=dial)
    (dialed,) = harness.wait("dialed", lambda seen: len(seen) >= 1)
    assert dialed.param("DialCallStatus") == "completed" and 5 <= int(dialed.param("DialCallDuration") or 0) < 10
    child = dialed.param("DialCallSid") or ""
    wait_until(lambda: client.calls(child).fetch().status == "completed")


def test_dial_queue_time_limit_cuts_the_bridge_and_both_actions_run(harness: Harness) -> None:
    client, sid = _caller_in_sales_queue(harness)
    dial = f'<Response><Dial timeLimit="3" action="{harness.hook("dialed")}"><Queue>sales</Queue></Dial></Response>'
    client.calls.create(to=AGENT, from_=SUPPORT, twiml=dial)
    (dialed,) = harness.wait("dialed", lambda seen: len(seen) >= 1)
    assert (dialed.param("DialCallStatus"), dialed.param("DialCallSid")) == ("completed", sid)
    (after,) = harness.wait("after-queue", lambda seen: len(seen) >= 1)
    assert after.param("QueueResult") == "bridged"
    wait_until(lambda: harness.state(sid)["status"] == "completed")


def test_a_held_back_callback_is_delivered_even_when_nothing_follows(harness: Harness) -> None:
    client = harness.sandbox(voice_reorder_callback_share=1.0)
    client.calls.create(
        to=AGENT,
        from_=SUPPORT,
        twiml="<Response><Say>hi</Say></Response>",
        status_callback=harness.hook("held"),
        status_callback_event=["initiated", "ringing", "answered"],
    )
    got = harness.wait("held", lambda seen: len(seen) >= 3)
    assert sorted(r.param("CallStatus") or "" for r in got) == ["in-progress", "initiated", "ringing"]
    harness.idle()


def test_a_refused_participant_creates_no_conference(harness: Harness) -> None:
    client = harness.sandbox()
    for n in range(3):
        with pytest.raises(TwilioRestException) as raised:
            client.conferences(f"room-{n}").participants.create(from_=SUPPORT, to="client:alice", muted="maybe")
        assert (raised.value.status, raised.value.code) == (400, 20001)
    assert client.conferences.list() == []


def test_duration_is_empty_until_the_call_ends(harness: Harness) -> None:
    """OpenAPI: duration is "empty for busy, failed, unanswered, or ongoing calls"."""
    client = harness.sandbox()
    call = client.calls.create(to=AGENT, from_=SUPPORT, twiml="<Response><Pause length='600'/></Response>")
    wait_until(lambda: client.calls(call.sid).fetch().status == "in-progress")
    time.sleep(0.05)
    assert client.calls(call.sid).fetch().duration is None
    ended = client.calls(call.sid).update(status="completed")
    assert ended.status == "completed" and ended.duration is not None
