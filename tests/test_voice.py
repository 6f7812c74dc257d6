"""Voice, unit by unit: TwiML documents (parsed, never compared as strings), queue configuration and opening hours,
the voice webhooks in Twilio's documented shapes (signature, idempotency, SequenceNumber order, bad input), and the
REST requests the handoff commands make, against a recording stand-in for Twilio's API (crash recovery included).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from bridge import protocol, twiml
from bridge.app import create_app
from bridge.cli import main as cli_main
from bridge.handoff import parse_endpoint
from bridge.phones import InvalidNumber
from bridge.queues import ConfigError, Queue, QueueConfig, build_config, load_config
from bridge.settings import Settings
from bridge.store import add_agent, open_database, set_agent_phone
from bridge.types import conversation_id
from tests.conftest import BASE
from tests.support import ACCOUNT_SID, CUSTOMER, OUR_NUMBER, signed
from tests.test_conversation_commands import command, console

VOICE = f"{BASE}/twilio/voice"
STATUS = f"{BASE}/twilio/voice/status"
WAIT_URL = f"{BASE}/twilio/voice/wait"
EXIT = f"{BASE}/twilio/voice/queue-exit"
CONFERENCE = f"{BASE}/twilio/voice/conference"
RECORDING = f"{BASE}/twilio/voice/recording"
CALL = "CA" + "1" * 32
QUEUE_SID = "QU" + "2" * 32
CONF_SID = "CF" + "3" * 32
REC_SID = "RE" + "4" * 32
AGENT_LEG = "CA" + "5" * 32
ANA_PHONE = "+13125550150"


# -- TwiML ------------------------------------------------------------------------------------------------------


def parse(document: bytes) -> ET.Element:
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return root


def test_enqueue_greets_then_waits_in_the_named_queue() -> None:
    root = parse(twiml.enqueue("support", 'Hi <there> & "welcome"', "https://b/exit", "https://b/wait"))
    say, enqueue = list(root)
    assert (say.tag, say.text) == ("Say", 'Hi <there> & "welcome"')  # text stays text, whatever it holds
    assert (enqueue.tag, enqueue.text) == ("Enqueue", "support")
    assert enqueue.attrib == {
        "action": "https://b/exit",
        "method": "POST",
        "waitUrl": "https://b/wait",
        "waitUrlMethod": "POST",
    }
    assert [e.tag for e in parse(twiml.enqueue("support", None, "a", "w"))] == ["Enqueue"]


def test_wait_says_the_position_then_plays_music_or_pauses() -> None:
    say, play = list(parse(twiml.wait(3, "https://music/x.mp3")))
    assert say.text == "You are caller number 3 in line." and (play.tag, play.text) == ("Play", "https://music/x.mp3")
    [pause] = list(parse(twiml.wait(None, "")))
    assert pause.tag == "Pause" and int(pause.attrib["length"]) >= 1
    assert [e.tag for e in parse(twiml.leave())] == ["Leave"]


def test_voicemail_records_with_action_and_status_callback() -> None:
    say, record = list(parse(twiml.voicemail("Leave a message.", "https://b/rec", "https://b/rec")))
    assert say.text == "Leave a message."
    assert record.tag == "Record"
    assert record.attrib["action"] == record.attrib["recordingStatusCallback"] == "https://b/rec"
    assert record.attrib["playBeep"] == "true" and record.attrib["recordingStatusCallbackEvent"] == "completed"


def test_join_conference_ends_it_when_the_caller_leaves() -> None:
    [dial] = list(parse(twiml.join_conference(CALL, "https://b/conf", "")))
    [conference] = list(dial)
    assert (conference.tag, conference.text) == ("Conference", CALL)
    assert conference.attrib["endConferenceOnExit"] == "true"
    assert conference.attrib["startConferenceOnEnter"] == "true"
    assert conference.attrib["statusCallback"] == "https://b/conf"
    assert set(conference.attrib["statusCallbackEvent"].split()) >= {"join", "leave", "end"}


# -- queues -----------------------------------------------------------------------------------------------------


def test_default_is_one_support_queue_for_every_number_always_open() -> None:
    config = load_config(None)
    assert config.names() == ["support"]
    assert config.for_number("+15555550100").name == "support"
    assert config.queues[0].is_open(datetime(2026, 11, 29, 3, 0, tzinfo=UTC))


def test_queues_from_toml_with_hours_in_their_time_zone(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(
        """
[[queues]]
name = "support"
timezone = "America/New_York"
hours = ["mon-fri 09:00-17:00", "sat 22:00-02:00"]
longest_wait = 120
missed_call_text = "Sorry we missed you."

[[queues]]
name = "billing"
numbers = ["(415) 555-0101"]
""",
        encoding="utf-8",
    )
    config = load_config(path)
    support, billing = config.queues
    assert config.for_number("+14155550101") is billing and config.for_number("+14155550100") is support
    assert support.longest_wait == 120 and support.missed_call_text == "Sorry we missed you."
    # Wednesday 2026-11-25: 13:59 UTC is 08:59 in New York (closed), 14:00 UTC is 09:00 (open).
    assert not support.is_open(datetime(2026, 11, 25, 13, 59, tzinfo=UTC))
    assert support.is_open(datetime(2026, 11, 25, 14, 0, tzinfo=UTC))
    assert not support.is_open(datetime(2026, 11, 25, 22, 0, tzinfo=UTC))
    # The overnight Saturday span runs into Sunday 01:59 local (06:59 UTC), not Sunday night.
    assert support.is_open(datetime(2026, 11, 29, 6, 59, tzinfo=UTC))
    assert not support.is_open(datetime(2026, 11, 29, 7, 0, tzinfo=UTC))
    assert billing.is_open(datetime(2026, 11, 29, 7, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"name": "x", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"name": "x", "hours": ["weekdays 9-5"]}, "is not like"),
        ({"name": "x", "hours": ["mon 25:00-26:00"]}, "24-hour clock"),
        ({"name": "x", "numbers": ["12"]}, "is too short"),
        ({"name": "x", "longest_wait": 0}, "longest_wait"),
        ({"name": "x", "colour": "red"}, "unknown setting 'colour'"),
        ({"name": ""}, "name must be"),
    ],
)
def test_bad_queue_settings_say_what_to_fix(table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        build_config([table])


def test_a_number_rings_one_queue_and_names_are_unique() -> None:
    with pytest.raises(ConfigError, match="in both"):
        build_config([{"name": "a", "numbers": [OUR_NUMBER]}, {"name": "b", "numbers": [OUR_NUMBER]}])
    with pytest.raises(ConfigError, match="two queues are named"):
        build_config([{"name": "a"}, {"name": "a"}])


def test_agent_endpoints_are_numbers_sip_or_client() -> None:
    assert parse_endpoint("(312) 555-0150", "US") == ANA_PHONE
    assert parse_endpoint("sip:ana@example.sip.twilio.com", "US") == "sip:ana@example.sip.twilio.com"
    assert parse_endpoint("client:ana", "US") == "client:ana"
    for bad in ("sip:nohost", "client:", "client:a b", "12"):
        with pytest.raises(InvalidNumber):
            parse_endpoint(bad, "US")


def test_cli_set_phone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "d")
    assert cli_main(["agents", "add", "ana", "--data-dir", data]) == 0
    assert cli_main(["agents", "set-phone", "ana", "(312) 555-0150", "--data-dir", data]) == 0
    assert cli_main(["agents", "set-phone", "ana", "555", "--data-dir", data]) == 1
    assert "is too short" in capsys.readouterr().err
    assert cli_main(["agents", "set-phone", "nobody", "client:x", "--data-dir", data]) == 1
    assert cli_main(["agents", "list", "--data-dir", data]) == 0
    assert f"phone {ANA_PHONE}" in capsys.readouterr().out


# -- a recording stand-in for Twilio's REST API --------------------------------------------------------------------


class FakeTwilio:
    """Answers the bridge's REST requests as Twilio does, and keeps them (method, path, form) for the test."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.participants: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.refuse: Callable[[str, str, dict[str, list[str]]], bool] = lambda method, path, form: False
        """Requests for which this answers as Twilio refusing them (400)."""
        self.queues: dict[str, str] = {}
        """The queues Twilio lists (friendly name → QU… SID)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = urlsplit(str(request.url)).path.split(f"/Accounts/{ACCOUNT_SID}", 1)[1]
        form: dict[str, list[str]] = {}
        for key, value in parse_qsl(request.content.decode(), keep_blank_values=True):
            form.setdefault(key, []).append(value)
        with self.lock:
            self.requests.append((request.method, path, form))
        if self.refuse(request.method, path, form):
            return httpx.Response(400, json={"code": 20001, "message": "refused", "status": 400})
        if request.method == "POST" and path.endswith("/Participants.json"):
            participant = {"call_sid": AGENT_LEG, "conference_sid": CONF_SID, "label": form["Label"][0]}
            self.participants[form["Label"][0]] = participant
            return httpx.Response(201, json=participant)
        if request.method == "GET" and "/Participants/" in path:
            label = path.rsplit("/", 1)[1].removesuffix(".json")
            found = self.participants.get(label)
            return httpx.Response(200, json=found) if found else httpx.Response(404, json={"code": 20404})
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.method == "GET" and path == "/Queues.json":
            listed = [{"sid": sid, "friendly_name": name} for name, sid in self.queues.items()]
            return httpx.Response(200, json={"queues": listed})
        return httpx.Response(200, json={})

    def posts(self, suffix: str) -> list[dict[str, list[str]]]:
        with self.lock:
            return [form for method, path, form in self.requests if method == "POST" and path.endswith(suffix)]


def voice_settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "bridge",
        account_sid=ACCOUNT_SID,
        auth_token="test-auth-token-0123456789abcdef",
        public_url=BASE,
        api_base="https://api.twilio.test",
        rest_retries=0,
        rest_backoff=0.0,
        presence_grace=0.05,
        **changes,
    )


def agents(settings: Settings, phones: dict[str, str | None]) -> dict[str, str]:
    db = open_database(settings.db_path)
    try:
        tokens = {name: add_agent(db, name) for name in phones}
        for name, phone in phones.items():
            set_agent_phone(db, name, phone)
        return tokens
    finally:
        db.close()


@pytest.fixture
def fake() -> FakeTwilio:
    return FakeTwilio()


@pytest.fixture
def voice(tmp_path: Path, fake: FakeTwilio) -> Iterator[tuple[TestClient, Settings, dict[str, str]]]:
    settings = voice_settings(tmp_path)
    tokens = agents(settings, {"ana": ANA_PHONE, "ben": "client:ben", "cal": None})
    config = QueueConfig((Queue("support", catch_all=True, wait_music="", longest_wait=60),))
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    with TestClient(create_app(settings, http=http, queues=config), base_url=BASE) as client:
        yield client, settings, tokens


def post(client: TestClient, url: str, params: list[tuple[str, str]], **headers: str) -> Any:
    body, signed_headers = signed(url, params)
    signed_headers.update(headers)
    return client.post(url, content=body, headers=signed_headers)


def call_params(
    status: str = "ringing", sid: str = CALL, seq: int | None = None, **extra: str
) -> list[tuple[str, str]]:
    params = [
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", sid),
        ("CallStatus", status),
        ("Direction", "inbound"),
        ("From", CUSTOMER),
        ("To", OUR_NUMBER),
        ("Caller", CUSTOMER),
        ("Called", OUR_NUMBER),
        ("FromCity", "SAN FRANCISCO"),
        ("FromState", "CA"),
        ("FromCountry", "US"),
    ]
    if seq is not None:
        params += [("SequenceNumber", str(seq)), ("CallbackSource", "call-progress-events")]
    return params + list(extra.items())


def events(settings: Settings, type_: str | None = None) -> list[dict[str, Any]]:
    conn = sqlite3.connect(settings.db_path)
    try:
        rows = conn.execute("SELECT type, data FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(data) for kind, data in rows if type_ is None or kind == type_]


def changes(settings: Settings) -> list[str]:
    return [e["change"] for e in events(settings, protocol.CALL_UPDATED)]


# -- webhooks ----------------------------------------------------------------------------------------------------


def test_an_incoming_call_is_greeted_queued_and_logged(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, settings, _ = voice
    answer = post(client, VOICE, call_params(CallerName="ACME CORP"))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
    say, enqueue = list(parse(answer.content))
    assert say.tag == "Say" and enqueue.text == "support"
    assert enqueue.attrib["waitUrl"] == WAIT_URL and enqueue.attrib["action"] == EXIT
    [call] = events(settings, protocol.CALL_UPDATED)
    assert (call["change"], call["state"], call["queue"], call["caller_name"]) == (
        "queued",
        "queued",
        "support",
        "ACME CORP",
    )
    assert call["conversation_id"] == conversation_id(OUR_NUMBER, CUSTOMER) and call["from_city"] == "SAN FRANCISCO"
    # Twilio retrying the same request (same idempotency token) queues nothing twice, and gets its TwiML again;
    # so does the caller's join (a retry answered with nothing would hang the caller up).
    body, headers = signed(VOICE, call_params(CallerName="ACME CORP"))
    first = client.post(VOICE, content=body, headers=headers)
    again = client.post(VOICE, content=body, headers=headers)
    assert [e.tag for e in parse(first.content)] == [e.tag for e in parse(again.content)] == ["Say", "Enqueue"]
    assert changes(settings) == ["queued"]
    conn = sqlite3.connect(settings.db_path)  # an agent answered (a join is for a call in its conference)
    conn.execute("UPDATE calls SET state = 'connected'")
    conn.commit()
    conn.close()
    join_url = f"{BASE}/twilio/voice/join"
    body, headers = signed(join_url, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    for _ in range(2):
        [dial] = list(parse(client.post(join_url, content=body, headers=headers).content))
        assert dial.tag == "Dial" and dial[0].text == CALL


def test_voice_webhooks_check_the_signature(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, settings, _ = voice
    body, headers = signed(VOICE, call_params(), token="someone-elses-token")
    assert client.post(VOICE, content=body, headers=headers).status_code == 403
    body, headers = signed(VOICE, call_params())
    del headers["X-Twilio-Signature"]
    assert client.post(VOICE, content=body, headers=headers).status_code == 403
    assert events(settings) == []


@pytest.mark.parametrize(
    ("url", "params", "says"),
    [
        (VOICE, [("CallSid", "CA123"), ("From", CUSTOMER), ("To", OUR_NUMBER), ("CallStatus", "ringing")], "CallSid"),
        (VOICE, call_params(status="dancing"), "CallStatus"),
        (VOICE, [p if p[0] != "From" else ("From", "+1 415\n") for p in call_params()], "From"),
        (STATUS, call_params(status="completed", SequenceNumber="²"), "SequenceNumber"),
        (WAIT_URL, [("CallSid", CALL), ("QueueSid", "QU1")], "QueueSid"),
        (EXIT, [("CallSid", CALL), ("QueueResult", "teleported")], "QueueResult"),
        (CONFERENCE, [("ConferenceSid", "CF1"), ("FriendlyName", CALL)], "ConferenceSid"),
        (RECORDING, [("CallSid", CALL), ("RecordingSid", REC_SID), ("RecordingUrl", "javascript:x")], "RecordingUrl"),
        (f"{STATUS}?leg=LG123", call_params(status="completed"), "leg"),
        (f"{VOICE}?admin=1", call_params(), "unknown query parameter"),
    ],
)
def test_bad_voice_webhooks_are_refused_with_a_reason(
    voice: tuple[TestClient, Settings, dict[str, str]], url: str, params: list[tuple[str, str]], says: str
) -> None:
    client, settings, _ = voice
    answer = post(client, url, params)
    assert answer.status_code == 400 and says in answer.text
    assert events(settings) == []


def test_status_callbacks_apply_in_sequence_order(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, settings, _ = voice
    post(client, VOICE, call_params(seq=0))
    # "completed" (seq 3) first, then an older "in-progress" (seq 2) and a duplicate of seq 3: one end, no revival.
    assert post(client, STATUS, call_params("completed", seq=3, CallDuration="4")).status_code == 200
    post(client, STATUS, call_params("in-progress", seq=2))
    post(client, STATUS, call_params("completed", seq=3, CallDuration="4"))
    assert changes(settings) == ["queued", "ended"]
    [_, ended] = events(settings, protocol.CALL_UPDATED)
    assert (ended["state"], ended["outcome"]) == ("ended", "abandoned")


def test_longest_wait_leads_to_voicemail_stored_once(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, settings, _ = voice
    post(client, VOICE, call_params())
    waiting = post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID), ("QueuePosition", "1")])
    assert [e.tag for e in parse(waiting.content)] == ["Say", "Pause"]
    conn = sqlite3.connect(settings.db_path)
    conn.execute("UPDATE calls SET waiting_since = '2020-01-01T00:00:00.000Z'")
    conn.commit()
    conn.close()
    out = post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    assert [e.tag for e in parse(out.content)] == ["Leave"]
    record = post(client, EXIT, [("CallSid", CALL), ("QueueResult", "leave"), ("QueueSid", QUEUE_SID)])
    assert [e.tag for e in parse(record.content)] == ["Say", "Record"]
    url = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{REC_SID}"
    recording = [("CallSid", CALL), ("RecordingSid", REC_SID), ("RecordingUrl", url), ("RecordingDuration", "7")]
    action = post(client, RECORDING, [*recording, ("Digits", "hangup")])
    assert [e.tag for e in parse(action.content)] == ["Say", "Hangup"]
    post(client, RECORDING, [*recording, ("RecordingStatus", "completed"), ("RecordingChannels", "1")])
    [voicemail] = events(settings, protocol.VOICEMAIL_RECORDED)
    assert (voicemail["recording_url"], voicemail["duration"], voicemail["reason"]) == (url, 7, "longest wait")
    assert voicemail["conversation_id"] == conversation_id(OUR_NUMBER, CUSTOMER)
    post(client, STATUS, call_params("completed", seq=5))
    assert changes(settings) == ["queued", "voicemail_started", "ended"]
    assert events(settings, protocol.CALL_UPDATED)[-1]["outcome"] == "voicemail"


# -- handoff: the REST requests the commands make -------------------------------------------------------------------


def test_accept_dials_the_agent_and_dequeues_the_caller_only_when_they_answer(
    voice: tuple[TestClient, Settings, dict[str, str]], fake: FakeTwilio
) -> None:
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    with console(client, tokens["ana"]) as ws, contextlib.ExitStack() as later:
        result, _ = command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        assert result["ok"] is True, result
        # Ben stays connected to the end: the warm transfer below is to him, and with the tests' 50 ms grace a
        # console closed here made him offline before it whenever the steps between took longer (seen once in CI).
        other = later.enter_context(console(client, tokens["ben"]))
        lost, _ = command(other, "b-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        assert lost["error"]["code"] == "already_taken" and lost["data"] == {"agent": "ana"}
        [dial] = _until(lambda: fake.posts("/Participants.json"))
        assert dial["To"] == [ANA_PHONE] and dial["From"] == [OUR_NUMBER]
        assert dial["EndConferenceOnExit"] == ["true"] and dial["StartConferenceOnEnter"] == ["true"]
        leg_id = dial["Label"][0]
        assert dial["StatusCallback"] == [f"{STATUS}?leg={leg_id}"]
        assert set(dial["StatusCallbackEvent"]) == {"initiated", "ringing", "answered", "completed"}
        assert fake.posts(f"/Members/{CALL}.json") == []  # not before the agent answers

        leg = [("CallSid", AGENT_LEG), ("From", OUR_NUMBER), ("To", ANA_PHONE), ("CallStatus", "in-progress")]
        post(client, f"{STATUS}?leg={leg_id}", [*leg, ("SequenceNumber", "2")])
        [dequeue] = _until(lambda: fake.posts(f"/Queues/{QUEUE_SID}/Members/{CALL}.json"))
        assert dequeue["Url"] == [f"{BASE}/twilio/voice/join"]
        join = post(client, f"{BASE}/twilio/voice/join", [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
        [dial_conf] = list(parse(join.content))
        assert dial_conf[0].text == CALL

        held, _ = command(ws, "a-2", protocol.HOLD_CALL, {"call_sid": CALL, "hold": True})
        assert held["data"]["changed"] is True
        [hold] = _until(lambda: fake.posts(f"/Conferences/{CONF_SID}/Participants/{CALL}.json"))
        assert hold["Hold"] == ["true"]
        warm, _ = command(
            ws, "a-3", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "warm", "target": {"agent": "ben"}}
        )
        assert warm["ok"] is True, warm
        # The agent's leg stops ending the conference before the target is dialled.
        updates = _until(lambda: fake.posts(f"/Participants/{AGENT_LEG}.json"))
        assert updates[0]["EndConferenceOnExit"] == ["false"]
        target = _until(lambda: fake.posts("/Participants.json")[1:])[0]
        assert target["To"] == ["client:ben"] and target["EndConferenceOnExit"] == ["false"]
    assert changes(settings) == ["queued", "accepted", "connected", "held", "transfer_started"]


def test_refusals_name_the_problem(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, _, tokens = voice
    with console(client, tokens["cal"]) as ws:
        none, _ = command(ws, "c-1", protocol.ACCEPT_CALL, {})
        assert none["error"]["code"] == "no_calls_waiting"
        post(client, VOICE, call_params())
        phone, _ = command(ws, "c-2", protocol.ACCEPT_CALL, {"call_sid": CALL})
        assert phone["error"]["code"] == "no_phone" and "set-phone" in phone["error"]["message"]
        bad, _ = command(ws, "c-3", protocol.HOLD_CALL, {"call_sid": "CA1", "hold": True})
        assert bad["error"]["code"] == "bad_args"
        mine, _ = command(ws, "c-4", protocol.HOLD_CALL, {"call_sid": CALL, "hold": True})
        assert mine["error"]["code"] == "not_your_call"
        away, _ = command(ws, "c-5", protocol.SET_PRESENCE, {"presence": "away"})
        assert away["data"] == {"agent": "cal", "presence": "away", "changed": True}
        busy, _ = command(ws, "c-6", protocol.SET_PRESENCE, {"presence": "busy"})
        assert busy["error"]["code"] == "bad_args"
        queues, _ = command(ws, "c-7", protocol.LIST_QUEUES, {})
        [support] = queues["data"]["queues"]
        assert (support["name"], support["waiting"], support["open_now"], support["numbers"]) == (
            "support",
            1,
            True,
            ["*"],
        )
        number, _ = command(
            ws, "c-8", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "warm", "target": {"queue": "support"}}
        )
        assert number["error"]["code"] == "bad_args"
        listed, _ = command(ws, "c-9", protocol.LIST_AGENTS, {})
        assert {a["name"]: (a["presence"], a["has_phone"]) for a in listed["data"]["agents"]} == {
            "ana": ("offline", True),
            "ben": ("offline", True),
            "cal": ("away", False),
        }


def test_presence_follows_consoles_with_a_grace_period(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, settings, tokens = voice
    with console(client, tokens["ana"]):
        _until(lambda: events(settings, protocol.AGENT_PRESENCE))
    gone = _until(lambda: events(settings, protocol.AGENT_PRESENCE)[1:])
    assert [(e["presence"], e["reason"]) for e in events(settings, protocol.AGENT_PRESENCE)] == [
        ("available", "connected"),
        ("offline", "disconnected"),
    ]
    assert gone


def test_a_dial_interrupted_by_a_crash_is_looked_up_not_repeated(tmp_path: Path, fake: FakeTwilio) -> None:
    settings = voice_settings(tmp_path)
    tokens = agents(settings, {"ana": ANA_PHONE})
    config = QueueConfig((Queue("support", catch_all=True, wait_music=""),))
    with TestClient(
        create_app(settings, http=httpx.AsyncClient(transport=httpx.MockTransport(fake)), queues=config), base_url=BASE
    ) as client:
        post(client, VOICE, call_params())
        with console(client, tokens["ana"]) as ws:
            command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        _until(lambda: fake.posts("/Participants.json"))
    # As if the bridge died after Twilio dialled but before the intent was marked done:
    conn = sqlite3.connect(settings.db_path)
    conn.execute("UPDATE voice_intents SET state = 'pending'")
    conn.commit()
    conn.close()
    with TestClient(
        create_app(settings, http=httpx.AsyncClient(transport=httpx.MockTransport(fake)), queues=config), base_url=BASE
    ):
        _until(lambda: [r for r in fake.requests if r[0] == "GET"])
    assert len(fake.posts("/Participants.json")) == 1  # found by its label, not dialled again


def test_a_dial_whose_answer_is_lost_is_looked_up_not_called_failed(tmp_path: Path, fake: FakeTwilio) -> None:
    """Twilio dials the agent's phone but its answer never comes back: the leg is not called failed (the caller
    is not put back in the queue while the agent's phone rings into the call); the bridge asks Twilio, which
    has the participant, and the leg goes on from there."""
    settings = voice_settings(tmp_path)
    tokens = agents(settings, {"ana": ANA_PHONE})
    config = QueueConfig((Queue("support", catch_all=True, wait_music=""),))

    def answer_lost(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.method == "POST" and request.url.path.endswith("/Participants.json"):
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    with TestClient(
        create_app(settings, http=httpx.AsyncClient(transport=httpx.MockTransport(answer_lost)), queues=config),
        base_url=BASE,
    ) as client:
        post(client, VOICE, call_params())
        with console(client, tokens["ana"]) as ws:
            command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        _until(lambda: [r for r in fake.requests if r[0] == "GET" and "/Participants/" in r[1]])
        _until(lambda: _query(settings, "SELECT leg_sid FROM call_legs") == [(AGENT_LEG,)])
        assert _query(settings, "SELECT status FROM call_legs") == [("dialing",)]
        assert _query(settings, "SELECT state FROM calls") != [("queued",)]
    assert len(fake.posts("/Participants.json")) == 1


def _until(check: Any, timeout: float = 5.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"nothing after {timeout} s")


def test_conference_events_are_ordered_per_conference(voice: tuple[TestClient, Settings, dict[str, str]]) -> None:
    client, settings, _ = voice
    post(client, VOICE, call_params())
    first, second = "CF" + "a" * 32, "CF" + "b" * 32

    def event(conference: str, seq: int, name: str) -> None:
        params = [("ConferenceSid", conference), ("FriendlyName", CALL), ("SequenceNumber", str(seq))]
        assert post(client, CONFERENCE, [*params, ("StatusCallbackEvent", name)]).status_code == 200

    def current() -> Any:
        return _query(settings, "SELECT conference_sid FROM calls")[0][0]

    event(first, 1, "conference-start")
    assert current() == first
    event(first, 4, "conference-end")
    assert current() is None
    event(first, 2, "participant-join")  # late, from a conference that is over: changes nothing
    assert current() is None
    # The caller went back to the queue and joined a new conference of the same name: its numbers start at 0.
    event(second, 0, "conference-start")
    assert current() == second
    event(first, 3, "participant-leave")
    assert current() == second


def _query(settings: Settings, sql: str) -> list[Any]:
    conn = sqlite3.connect(settings.db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_an_agent_who_left_a_warm_transfer_and_wrapped_up_is_not_wrapped_up_again(
    voice: tuple[TestClient, Settings, dict[str, str]], fake: FakeTwilio
) -> None:
    """The agent hangs up while the warm-transfer target still rings, writes their note; the target answering later
    hands the caller over without putting the agent back into a wrap-up they already finished."""
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    with console(client, tokens["ana"]) as ws, console(client, tokens["ben"]):
        _until(lambda: len(events(settings, protocol.AGENT_PRESENCE)) >= 2)
        ok_accept, _ = command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        assert ok_accept["ok"] is True, ok_accept
        ana_leg = _until(lambda: fake.posts("/Participants.json"))[0]["Label"][0]
        leg = [("From", OUR_NUMBER), ("To", ANA_PHONE)]
        post(client, f"{STATUS}?leg={ana_leg}", [("CallSid", AGENT_LEG), *leg, ("CallStatus", "in-progress")])
        warm, _ = command(
            ws, "a-2", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "warm", "target": {"agent": "ben"}}
        )
        assert warm["ok"] is True, warm
        ben_leg = _until(lambda: fake.posts("/Participants.json")[1:])[0]["Label"][0]
        post(client, f"{STATUS}?leg={ana_leg}", [("CallSid", AGENT_LEG), *leg, ("CallStatus", "completed")])
        done, _ = command(ws, "a-3", protocol.WRAP_UP, {"call_sid": CALL, "note": "handed to ben"})
        assert done["ok"] is True, done
        ben = [("CallSid", "CA" + "6" * 32), ("From", OUR_NUMBER), ("To", "client:ben")]
        post(client, f"{STATUS}?leg={ben_leg}", [*ben, ("CallStatus", "in-progress")])
    assert changes(settings)[-1] == "transfer_completed"
    ana = [(e["presence"], e["reason"]) for e in events(settings, protocol.AGENT_PRESENCE) if e["agent"] == "ana"]
    assert ana.count(("busy", "wrap_up")) == 1 and ("available", "wrapped_up") in ana, ana
    assert _query(settings, "SELECT presence FROM presence WHERE agent = 'ben'") == [("busy",)]


def test_a_retried_wait_request_after_the_longest_wait_still_leaves_the_queue(
    voice: tuple[TestClient, Settings, dict[str, str]],
) -> None:
    """Twilio retries a wait request whose answer it did not get: the retry must say <Leave> too, or the caller,
    already bound for voicemail, would hear the wait music until they hang up."""
    client, settings, _ = voice
    post(client, VOICE, call_params())
    conn = sqlite3.connect(settings.db_path)
    conn.execute("UPDATE calls SET waiting_since = '2020-01-01T00:00:00.000Z'")
    conn.commit()
    conn.close()
    request = [("CallSid", CALL), ("QueueSid", QUEUE_SID)]
    token = {"I-Twilio-Idempotency-Token": "wait-1"}
    first = post(client, WAIT_URL, request, **token)
    again = post(client, WAIT_URL, request, **token)
    assert [e.tag for e in parse(first.content)] == [e.tag for e in parse(again.content)] == ["Leave"]
    assert changes(settings) == ["queued", "voicemail_started"]


@pytest.mark.parametrize("url", [VOICE, f"{VOICE}?requeue=1"])
def test_a_caller_reaching_the_voice_url_after_an_agent_accepted_is_queued_not_hung_up(
    voice: tuple[TestClient, Settings, dict[str, str]], url: str
) -> None:
    """A retried first webhook, or a caller sent back to the queue whose redirect lands after the next agent has
    already accepted: they must wait in the queue for that agent's phone, not be answered with nothing (a hang-up)."""
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    with console(client, tokens["ana"]) as ws:
        accepted, _ = command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        assert accepted["ok"] is True, accepted
    answer = post(client, url, call_params())
    assert [e.tag for e in parse(answer.content)][-1] == "Enqueue"
    assert changes(settings) == ["queued", "accepted"]


def test_a_late_event_from_the_previous_conference_does_not_take_the_call_back_to_it(
    voice: tuple[TestClient, Settings, dict[str, str]],
) -> None:
    """The caller went back to the queue and joined a new conference; the old one's last events land late (its
    end after its participant-leave): the call keeps the new conference, where holds and mutes must go."""
    client, settings, _ = voice
    post(client, VOICE, call_params())
    first, second = "CF" + "a" * 32, "CF" + "b" * 32

    def event(conference: str, seq: int, name: str) -> None:
        params = [("ConferenceSid", conference), ("FriendlyName", CALL), ("SequenceNumber", str(seq))]
        assert post(client, CONFERENCE, [*params, ("StatusCallbackEvent", name)]).status_code == 200

    event(first, 1, "conference-start")
    event(second, 0, "conference-start")
    event(first, 2, "participant-leave")
    event(first, 3, "conference-end")
    assert _query(settings, "SELECT conference_sid FROM calls") == [(second,)]


def test_a_call_with_an_unreadable_caller_name_or_city_is_still_queued(
    voice: tuple[TestClient, Settings, dict[str, str]],
) -> None:
    """Caller ID extras are for show: one that is too long or holds a non-printable character (a no-break space
    from a carrier's CNAM) is left out, and the call is queued; refusing it would hang up on the caller."""
    client, settings, _ = voice
    params = [p for p in call_params(CallerName="ACME\xa0CORP") if p[0] != "FromCity"] + [("FromCity", "x" * 300)]
    answer = post(client, VOICE, params)
    assert answer.status_code == 200 and [e.tag for e in parse(answer.content)][-1] == "Enqueue"
    [queued] = events(settings, protocol.CALL_UPDATED)
    assert (queued["caller_name"], queued["from_city"], queued["from_state"]) == (None, None, "CA")


def test_a_warm_transfer_cannot_be_cancelled_once_the_agent_has_hung_up(
    voice: tuple[TestClient, Settings, dict[str, str]], fake: FakeTwilio
) -> None:
    """After the agent's phone hung up mid-transfer, cancelling would unhold the caller into a conference with
    nobody in it and hang up the target: refused, and the target still takes the caller when they answer."""
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    with console(client, tokens["ana"]) as ws, console(client, tokens["ben"]):
        _until(lambda: len(events(settings, protocol.AGENT_PRESENCE)) >= 2)
        command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        ana_leg = _until(lambda: fake.posts("/Participants.json"))[0]["Label"][0]
        leg = [("CallSid", AGENT_LEG), ("From", OUR_NUMBER), ("To", ANA_PHONE)]
        post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "in-progress")])
        command(ws, "a-2", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "warm", "target": {"agent": "ben"}})
        ben_leg = _until(lambda: fake.posts("/Participants.json")[1:])[0]["Label"][0]
        post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "completed")])
        cancel, _ = command(ws, "a-3", protocol.CANCEL_TRANSFER, {"call_sid": CALL})
        assert cancel["ok"] is False and cancel["error"]["code"] == "no_transfer", cancel
        ben = [("CallSid", "CA" + "6" * 32), ("From", OUR_NUMBER), ("To", "client:ben")]
        post(client, f"{STATUS}?leg={ben_leg}", [*ben, ("CallStatus", "in-progress")])
    assert changes(settings)[-1] == "transfer_completed"


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_a_transfer_whose_agent_leg_cannot_stop_ending_the_conference_fails_and_keeps_the_agent(
    voice: tuple[TestClient, Settings, dict[str, str]], fake: FakeTwilio, mode: str
) -> None:
    """Twilio refuses EndConferenceOnExit=false on the agent's leg: kicking the agent (cold) would end the conference
    with the caller in it. The rest of the transfer is not carried out; it failed and the agent keeps the caller."""
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    fake.refuse = lambda method, path, form: (
        path.endswith(f"/Participants/{AGENT_LEG}.json") and form.get("EndConferenceOnExit") == ["false"]
    )
    with console(client, tokens["ana"]) as ws, console(client, tokens["ben"]):
        _until(lambda: len(events(settings, protocol.AGENT_PRESENCE)) >= 2)
        command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        ana_leg = _until(lambda: fake.posts("/Participants.json"))[0]["Label"][0]
        leg = [("CallSid", AGENT_LEG), ("From", OUR_NUMBER), ("To", ANA_PHONE)]
        post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "in-progress")])
        moved, _ = command(
            ws, "a-2", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": mode, "target": {"agent": "ben"}}
        )
        assert moved["ok"] is True, moved
        _until(lambda: "transfer_failed" in changes(settings))
        _until(lambda: [f for f in fake.posts(f"/Participants/{CALL}.json") if f.get("Hold") == ["false"]])
    assert [m for m, _, _ in fake.requests].count("DELETE") == 0  # nobody kicked
    assert len(fake.posts("/Participants.json")) == 1  # ben never dialled
    assert fake.posts(f"/Participants/{AGENT_LEG}.json")[-1]["EndConferenceOnExit"] == ["true"]
    [failed] = [e for e in events(settings, protocol.CALL_UPDATED) if e["change"] == "transfer_failed"]
    assert (failed["state"], failed["agent"], failed["on_hold"]) == ("connected", "ana", False)
    assert failed["transfer"]["state"] == "failed"
    assert _query(settings, "SELECT agent, presence, reason FROM presence ORDER BY agent") == [
        ("ana", "busy", "on_call"),
        ("ben", "available", "released"),
    ]
    assert _query(settings, f"SELECT status FROM call_legs WHERE leg_id = '{ana_leg}'") == [("answered",)]


def test_a_late_join_for_a_call_back_in_the_queue_waits_in_line_not_in_an_empty_conference(
    voice: tuple[TestClient, Settings, dict[str, str]], fake: FakeTwilio
) -> None:
    """The agent answered and the caller was dequeued, but the agent sent them back to the queue before the join
    request landed: joining would leave the caller alone in an empty conference; they are enqueued again."""
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    with console(client, tokens["ana"]) as ws:
        command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        ana_leg = _until(lambda: fake.posts("/Participants.json"))[0]["Label"][0]
        leg = [("CallSid", AGENT_LEG), ("From", OUR_NUMBER), ("To", ANA_PHONE)]
        post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "in-progress")])
        moved, _ = command(
            ws, "a-2", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "cold", "target": {"queue": "support"}}
        )
        assert moved["ok"] is True, moved
    answer = post(client, f"{BASE}/twilio/voice/join", [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    [enqueue] = list(parse(answer.content))
    assert (enqueue.tag, enqueue.text) == ("Enqueue", "support")
    assert _query(settings, "SELECT state, caller_joined FROM calls") == [("queued", 0)]


def test_hang_up_is_refused_once_the_agent_has_left_a_warm_transfer(
    voice: tuple[TestClient, Settings, dict[str, str]], fake: FakeTwilio
) -> None:
    """The agent's phone hung up while the warm-transfer target rings: the target is about to take the caller, and
    hanging up from the console would drop them. Refused; the target still takes the caller when they answer."""
    client, settings, tokens = voice
    post(client, VOICE, call_params())
    post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
    with console(client, tokens["ana"]) as ws, console(client, tokens["ben"]):
        _until(lambda: len(events(settings, protocol.AGENT_PRESENCE)) >= 2)
        command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
        ana_leg = _until(lambda: fake.posts("/Participants.json"))[0]["Label"][0]
        leg = [("CallSid", AGENT_LEG), ("From", OUR_NUMBER), ("To", ANA_PHONE)]
        post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "in-progress")])
        command(ws, "a-2", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "warm", "target": {"agent": "ben"}})
        ben_leg = _until(lambda: fake.posts("/Participants.json")[1:])[0]["Label"][0]
        post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "completed")])
        refused, _ = command(ws, "a-3", protocol.HANG_UP, {"call_sid": CALL})
        assert refused["ok"] is False and refused["error"]["code"] == "transfer_in_progress", refused
        assert "ended" not in changes(settings)
        ben = [("CallSid", "CA" + "6" * 32), ("From", OUR_NUMBER), ("To", "client:ben")]
        post(client, f"{STATUS}?leg={ben_leg}", [*ben, ("CallStatus", "in-progress")])
    assert changes(settings)[-1] == "transfer_completed"
    assert fake.posts(f"/Calls/{CALL}.json") == []  # the caller was never hung up


def test_a_caller_transferred_to_another_queue_is_dequeued_from_that_queue(tmp_path: Path, fake: FakeTwilio) -> None:
    """The call learnt its support queue's SID; sent to billing, the next agent's dequeue must go to billing's
    queue (looked up by name until the wait loop says), not to support's, where the caller no longer is."""
    billing_sid = "QU" + "7" * 32
    fake.queues = {"support": QUEUE_SID, "billing": billing_sid}
    settings = voice_settings(tmp_path)
    tokens = agents(settings, {"ana": ANA_PHONE, "ben": "client:ben"})
    config = QueueConfig((Queue("support", catch_all=True, longest_wait=60), Queue("billing", longest_wait=60)))
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    with TestClient(create_app(settings, http=http, queues=config), base_url=BASE) as client:
        post(client, VOICE, call_params())
        post(client, WAIT_URL, [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
        with console(client, tokens["ana"]) as ws, console(client, tokens["ben"]) as other:
            _until(lambda: len(events(settings, protocol.AGENT_PRESENCE)) >= 2)
            command(ws, "a-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
            ana_leg = _until(lambda: fake.posts("/Participants.json"))[0]["Label"][0]
            leg = [("CallSid", AGENT_LEG), ("From", OUR_NUMBER), ("To", ANA_PHONE)]
            post(client, f"{STATUS}?leg={ana_leg}", [*leg, ("CallStatus", "in-progress")])
            _until(lambda: fake.posts(f"/Queues/{QUEUE_SID}/Members/{CALL}.json"))
            post(client, f"{BASE}/twilio/voice/join", [("CallSid", CALL), ("QueueSid", QUEUE_SID)])
            moved, _ = command(
                ws, "a-2", protocol.TRANSFER_CALL, {"call_sid": CALL, "mode": "cold", "target": {"queue": "billing"}}
            )
            assert moved["ok"] is True, moved
            taken, _ = command(other, "b-1", protocol.ACCEPT_CALL, {"call_sid": CALL})
            assert taken["ok"] is True, taken
            ben_leg = _until(lambda: fake.posts("/Participants.json")[1:])[0]["Label"][0]
            ben = [("CallSid", "CA" + "6" * 32), ("From", OUR_NUMBER), ("To", "client:ben")]
            post(client, f"{STATUS}?leg={ben_leg}", [*ben, ("CallStatus", "in-progress")])
            _until(lambda: fake.posts(f"/Queues/{billing_sid}/Members/{CALL}.json"))
    assert len(fake.posts(f"/Queues/{QUEUE_SID}/Members/{CALL}.json")) == 1  # ana's dequeue only
