"""Hostile input on the voice webhooks, property-tested: whatever a signed (or unsigned) request holds, in whatever
order requests come, the answer is TwiML or a one-line 4xx — never a 5xx or an exception — and what is stored
stays within the protocol (known states, changes and outcomes; one voicemail per recording)."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from bridge import protocol
from bridge.app import create_app
from bridge.queues import Queue, QueueConfig
from bridge.settings import Settings
from tests.conftest import BASE
from tests.support import ACCOUNT_SID, CUSTOMER, OUR_NUMBER, signed
from tests.test_hostile_input import hostile_text

PATHS = [
    "/twilio/voice",
    "/twilio/voice/status",
    "/twilio/voice/wait",
    "/twilio/voice/queue-exit",
    "/twilio/voice/join",
]
PATHS += ["/twilio/voice/conference", "/twilio/voice/recording"]
CALLS = ["CA" + c * 32 for c in "0123"]
LEGS = ["LG" + "a" * 32, "LG" + "0" * 31, "LG" + "A" * 32, "", "LG" + "a" * 32 + "\n"]
VALUES: dict[str, list[str]] = {
    "CallSid": CALLS + ["CA1", "ca" + "0" * 32, "CA" + "0" * 32 + "\n", "CA" + "٣" * 32],
    "From": [CUSTOMER, "client:ana", "sip:a@b.c", "anonymous", "+1 415", "+14155550123\n", "client:" + "x" * 300],
    "To": [OUR_NUMBER, "+14155550101", "client:desk", "41555501"],
    "CallStatus": ["ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled", "queued", "bad"],
    "SequenceNumber": ["0", "1", "2", "7", "-1", "²", "9" * 12, ""],
    "QueueSid": ["QU" + "1" * 32, "QU1", "XX" + "1" * 32],
    "QueueResult": ["leave", "hangup", "bridged", "redirected", "error", "queue-full", "nope"],
    "ConferenceSid": ["CF" + "1" * 32, "CF1"],
    "FriendlyName": CALLS + ["", "x" * 200],
    "StatusCallbackEvent": ["participant-join", "participant-leave", "conference-end", "participant-hold", ""],
    "ParticipantLabel": LEGS + ["customer"],
    "RecordingSid": ["RE" + "1" * 32, "RE" + "2" * 32, "RE1"],
    "RecordingUrl": ["https://api.twilio.com/Recordings/RE1", "javascript:alert(1)", "http://x/" + "y" * 600],
    "RecordingDuration": ["0", "12", "-3", "1.5", "²"],
    "RecordingStatus": ["completed", "in-progress", "absent", "failed", "weird"],
    "CallerName": ["ACME", "\x1b[31mred", "x" * 300],
}


def form_for(draw: st.DrawFn) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [("AccountSid", ACCOUNT_SID)]
    for key, values in VALUES.items():
        if draw(st.integers(0, 3)) == 0:
            continue  # absent
        value = draw(
            st.one_of(st.sampled_from(values), hostile_text(3)) if draw(st.booleans()) else st.sampled_from(values)
        )
        params.append((key, value))
    if draw(st.booleans()):
        params.append(draw(st.tuples(hostile_text(2), hostile_text(2))))
    return params


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], bool]:
    path = draw(st.sampled_from(PATHS))
    query = draw(
        st.sampled_from(["", "", "", f"?leg={LEGS[0]}", "?requeue=1", "?leg=LG1", "?requeue=2", "?x=1", "?leg="])
    )
    return BASE + path + query, form_for(draw), draw(st.integers(0, 9)) > 0


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    config = QueueConfig((Queue("support", catch_all=True, wait_music="", longest_wait=1),))
    with TestClient(create_app(settings, queues=config), base_url=BASE) as test_client:
        yield test_client


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(requests(), min_size=1, max_size=8))
def test_any_voice_webhook_gets_twiml_or_a_one_line_refusal(
    client: TestClient, settings: Settings, batch: list[tuple[str, list[tuple[str, str]], bool]]
) -> None:
    for url, params, sign in batch:
        body, headers = signed(url, params)
        if not sign:
            headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
        answer = client.post(url, content=body, headers=headers)
        assert answer.status_code in (200, 400, 403, 413, 415), (url, params, answer.status_code, answer.text)
        if answer.status_code == 200:
            assert answer.headers["content-type"].startswith("text/xml")
            assert ET.fromstring(answer.content).tag == "Response"
        else:
            text = answer.text.strip()
            assert text and "\n" not in text and len(text) < 300, text
        if not sign:
            assert answer.status_code == 403
    for state, outcome, agents in rows(settings.db_path, "SELECT state, outcome, agents FROM calls"):
        assert state in protocol.CALL_STATES
        assert outcome is None or outcome in protocol.CALL_OUTCOMES
        assert isinstance(json.loads(agents), list)
    for kind, data in rows(settings.db_path, "SELECT type, data FROM events"):
        assert kind in protocol.EVENT_TYPES
        if kind == protocol.CALL_UPDATED:
            assert json.loads(data)["change"] in protocol.CALL_CHANGES
    voicemails = rows(settings.db_path, "SELECT recording_sid, count(*) FROM voicemails GROUP BY recording_sid")
    assert all(count == 1 for _, count in voicemails)


def test_an_oversized_voice_webhook_is_refused_before_it_is_read(client: TestClient, settings: Settings) -> None:
    url = f"{BASE}/twilio/voice"
    body, headers = signed(url, [("CallSid", CALLS[0]), ("Pad", "x" * (settings.max_body_bytes + 1))])
    answer = client.post(url, content=body, headers=headers)
    assert answer.status_code == 413
    assert rows(settings.db_path, "SELECT count(*) FROM events") == [(0,)]
