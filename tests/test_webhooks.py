"""SMS webhooks: signature, idempotency, statuses by precedence, MMS, opt-out, and bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bridge.settings import Settings
from bridge.signature import compute_signature
from tests.conftest import BASE
from tests.support import AUTH_TOKEN, CUSTOMER, OUR_NUMBER, inbound_params, message_sid, signed, status_params

SMS = f"{BASE}/twilio/sms"
STATUS = f"{BASE}/twilio/sms/status"


def post(client: TestClient, url: str, params: list[tuple[str, str]], **header_overrides: str) -> Any:
    body, headers = signed(url, params)
    headers.update(header_overrides)
    return client.post(url, content=body, headers=headers)


def events(settings: Settings) -> list[tuple[int, str, dict[str, Any]]]:
    conn = sqlite3.connect(settings.db_path)
    try:
        rows = conn.execute("SELECT seq, type, data FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(seq, kind, json.loads(data)) for seq, kind, data in rows]


def query(path: Path, sql: str, *args: Any) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_inbound_text_is_logged_then_acknowledged_with_empty_twiml(client: TestClient, settings: Settings) -> None:
    response = post(client, SMS, inbound_params("Where is order #1234?"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    [(seq, kind, data)] = events(settings)
    assert (seq, kind) == (1, "message.received")
    assert data["body"] == "Where is order #1234?"
    assert data["customer_number"] == CUSTOMER and data["twilio_number"] == OUR_NUMBER
    assert data["message_sid"].startswith("SM")
    assert data["details"]["FromCity"] == "SAN FRANCISCO"


@pytest.mark.parametrize(
    ("signature", "reason"),
    [(None, "missing X-Twilio-Signature"), ("bm90IGEgc2lnbmF0dXJl", "does not match")],
)
def test_bad_or_missing_signature_is_403_and_stores_nothing(
    client: TestClient, settings: Settings, signature: str | None, reason: str
) -> None:
    body, headers = signed(SMS, inbound_params())
    if signature is None:
        del headers["X-Twilio-Signature"]
    else:
        headers["X-Twilio-Signature"] = signature
    response = client.post(SMS, content=body, headers=headers)
    assert response.status_code == 403
    assert reason in response.text
    assert events(settings) == []


def test_signature_from_another_token_or_url_is_refused(client: TestClient, settings: Settings) -> None:
    params = inbound_params()
    body, headers = signed(SMS, params, token="someone-elses-token")
    assert client.post(SMS, content=body, headers=headers).status_code == 403
    body, headers = signed(f"{BASE}/twilio/sms?x=1", params)
    assert client.post(SMS, content=body, headers=headers).status_code == 403
    assert events(settings) == []


def test_query_string_is_part_of_the_signed_url(client: TestClient, settings: Settings) -> None:
    url = f"{SMS}?team=billing&x=%20a+b"
    assert post(client, url, inbound_params()).status_code == 200
    assert len(events(settings)) == 1


def test_the_same_message_delivered_twice_is_one_event(client: TestClient, settings: Settings) -> None:
    params = inbound_params(sid=message_sid())
    first = post(client, SMS, params)
    again = post(client, SMS, params)
    assert first.status_code == again.status_code == 200
    assert len(events(settings)) == 1


def test_the_same_idempotency_token_is_one_event(client: TestClient, settings: Settings) -> None:
    assert post(client, SMS, inbound_params(), **{"I-Twilio-Idempotency-Token": "tok-1"}).status_code == 200
    assert post(client, SMS, inbound_params(), **{"I-Twilio-Idempotency-Token": "tok-1"}).status_code == 200
    assert len(events(settings)) == 1


def test_mms_keeps_every_media_url_and_type(client: TestClient, settings: Settings) -> None:
    media = [("https://api.twilio.com/m/1", "image/jpeg"), ("https://api.twilio.com/m/2", "application/pdf")]
    assert post(client, SMS, inbound_params("", media=media)).status_code == 200
    [(_, _, data)] = events(settings)
    assert data["media"] == [{"url": u, "content_type": t} for u, t in media]


def test_num_media_without_its_urls_is_refused(client: TestClient, settings: Settings) -> None:
    params = [(k, "2" if k == "NumMedia" else v) for k, v in inbound_params()]
    response = post(client, SMS, params)
    assert response.status_code == 400
    assert "MediaUrl0" in response.text
    assert events(settings) == []


@pytest.mark.parametrize(
    "word", ["STOP", "stop", " Unsubscribe ", "CANCEL", "END", "QUIT", "STOPALL", "REVOKE", "OPTOUT"]
)
def test_stop_keywords_opt_the_customer_out(client: TestClient, settings: Settings, word: str) -> None:
    assert post(client, SMS, inbound_params(word)).status_code == 200
    kinds = [(kind, data.get("opted_out")) for _, kind, data in events(settings)]
    assert kinds == [("message.received", None), ("optout.changed", True)]


def test_start_opts_back_in_and_repeats_change_nothing(client: TestClient, settings: Settings) -> None:
    for body in ["STOP", "STOP", "hello", "START", "UNSTOP", "stop", "yes"]:
        assert post(client, SMS, inbound_params(body)).status_code == 200
    changes = [data["opted_out"] for _, kind, data in events(settings) if kind == "optout.changed"]
    assert changes == [True, False, True, False]


def test_opt_out_type_from_advanced_opt_out(client: TestClient, settings: Settings) -> None:
    assert post(client, SMS, inbound_params("please stop texting me", OptOutType="STOP")).status_code == 200
    assert [kind for _, kind, _ in events(settings)] == ["message.received", "optout.changed"]


def test_opt_out_is_per_number_pair(client: TestClient, settings: Settings) -> None:
    assert post(client, SMS, inbound_params("STOP", to="+14155550101")).status_code == 200
    rows = query(settings.db_path, "SELECT twilio_number, customer_number, opted_out FROM opt_outs")
    assert rows == [("+14155550101", CUSTOMER, 1)]


@pytest.mark.parametrize("missing", ["From", "To", "MessageSid"])
def test_missing_required_field_is_400(client: TestClient, settings: Settings, missing: str) -> None:
    params = [(k, v) for k, v in inbound_params() if k not in (missing, "SmsSid", "SmsMessageSid")]
    response = post(client, SMS, params)
    assert response.status_code == 400
    assert missing in response.text
    assert "\n" not in response.text.strip()
    assert events(settings) == []


def test_oversized_body_is_413(client: TestClient, settings: Settings) -> None:
    response = post(client, SMS, inbound_params("x" * (65 * 1024)))
    assert response.status_code == 413
    assert events(settings) == []


def test_wrong_content_type_is_415(client: TestClient, settings: Settings) -> None:
    body, headers = signed(SMS, inbound_params())
    headers["Content-Type"] = "text/plain"
    assert client.post(SMS, content=body, headers=headers).status_code == 415
    assert events(settings) == []


def test_malformed_body_is_400(client: TestClient, settings: Settings) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}
    assert client.post(SMS, content=b"From=%ff%fe", headers=headers).status_code == 400
    assert events(settings) == []


def test_json_body_signed_with_body_sha256(client: TestClient, settings: Settings) -> None:
    import hashlib

    payload = {k: v for k, v in inbound_params("json hello")}
    raw = json.dumps(payload).encode()
    url = f"{SMS}?bodySHA256={hashlib.sha256(raw).hexdigest()}"
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": compute_signature(url, {}, AUTH_TOKEN)}
    assert client.post(url, content=raw, headers=headers).status_code == 200
    tampered = raw.replace(b"json hello", b"json HELLO")
    assert client.post(url, content=tampered, headers=headers).status_code == 403
    assert [data["body"] for _, _, data in events(settings)] == ["json hello"]


def test_shared_key_sha256_signature(settings: Settings, agent_token: str) -> None:
    from bridge.app import create_app

    keyed = settings.with_(shared_keys={"KY1": "shared-secret"})
    params = inbound_params()
    body, headers = signed(SMS, params)
    headers["X-Twilio-Signature"] = compute_signature(SMS, params, "shared-secret", "HMAC_SHA256")
    headers["X-Twilio-Webhooks-Signature-Settings"] = "key=KY1,algorithm=HMAC_SHA256"
    with TestClient(create_app(keyed), base_url=BASE) as client:
        assert client.post(SMS, content=body, headers=headers).status_code == 200
        headers["X-Twilio-Webhooks-Signature-Settings"] = "key=KY2,algorithm=HMAC_SHA256"
        assert client.post(SMS, content=body, headers=headers).status_code == 403


# -- status callbacks -------------------------------------------------------------------------------------------


def seed_outbound(settings: Settings, sid: str, status: str = "queued") -> None:
    """An outbound message as the bridge records it after Twilio accepted it."""
    from bridge.types import conversation_id

    cid = conversation_id(OUR_NUMBER, CUSTOMER)
    conn = sqlite3.connect(settings.db_path)
    with conn:
        conn.execute(
            "INSERT OR IGNORE INTO conversations (id, twilio_number, customer_number, created_at) VALUES (?,?,?,?)",
            (cid, OUR_NUMBER, CUSTOMER, "2026-01-01T00:00:00.000Z"),
        )
        conn.execute(
            "INSERT INTO messages (id, sid, conversation_id, direction, body, status, created_at, updated_at) "
            "VALUES (?, ?, ?, 'outbound', 'hi', ?, '', '')",
            ("OB" + sid[2:], sid, cid, status),
        )
    conn.close()


def message_status(settings: Settings, sid: str) -> tuple[str, int | None]:
    [(status, code)] = query(settings.db_path, "SELECT status, error_code FROM messages WHERE sid = ?", sid)
    return status, code


def test_statuses_only_move_forward(client: TestClient, settings: Settings) -> None:
    sid = message_sid()
    seed_outbound(settings, sid)
    for status in ["sent", "delivered", "sent", "queued", "failed"]:
        assert post(client, STATUS, status_params(sid, status)).status_code == 200
    assert message_status(settings, sid) == ("delivered", None)
    applied = [(d["reported"], d["status"], d["applied"]) for _, k, d in events(settings) if k == "message.status"]
    assert applied == [
        ("sent", "sent", True),
        ("delivered", "delivered", True),
        # the second "sent" is the same callback again: no event at all
        ("queued", "delivered", False),
        ("failed", "delivered", False),
    ]


def test_read_outranks_delivered(client: TestClient, settings: Settings) -> None:
    sid = message_sid()
    seed_outbound(settings, sid)
    for status in ["read", "delivered"]:
        post(client, STATUS, status_params(sid, status))
    assert message_status(settings, sid)[0] == "read"


def test_failure_keeps_twilio_error_code_and_meaning(client: TestClient, settings: Settings) -> None:
    sid = message_sid()
    seed_outbound(settings, sid, "sent")
    assert post(client, STATUS, status_params(sid, "undelivered", 30003)).status_code == 200
    assert message_status(settings, sid) == ("undelivered", 30003)
    [(_, _, data)] = events(settings)
    assert data["error_code"] == 30003
    assert data["error_message"] == "Unreachable destination handset"


def test_error_21610_opts_the_customer_out(client: TestClient, settings: Settings) -> None:
    sid = message_sid()
    seed_outbound(settings, sid)
    post(client, STATUS, status_params(sid, "failed", 21610))
    assert [k for _, k, _ in events(settings)] == ["message.status", "optout.changed"]


def test_duplicate_status_callback_is_one_event(client: TestClient, settings: Settings) -> None:
    sid = message_sid()
    seed_outbound(settings, sid)
    for _ in range(3):
        assert post(client, STATUS, status_params(sid, "delivered")).status_code == 200
    assert len(events(settings)) == 1


def test_unknown_status_is_400(client: TestClient, settings: Settings) -> None:
    response = post(client, STATUS, status_params(message_sid(), "exploded"))
    assert response.status_code == 400
    assert "MessageStatus" in response.text


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["ok"] is True
