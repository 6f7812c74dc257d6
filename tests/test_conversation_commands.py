"""Conversation commands through the real stream: assign, claim, set_status (snoozes wake), add_note, list_agents.

Every console sees the events; a resent command id gets its first answer and acts once; refusals say why with a
code; a customer's text reopens a resolved or snoozed conversation in the same commit as the text.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import sqlite_utils
from starlette.testclient import TestClient
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from bridge import protocol
from bridge.app import create_app
from bridge.settings import Settings
from bridge.store import add_agent, migrations, open_database, revoke_agent
from bridge.types import conversation_id
from tests.conftest import BASE
from tests.support import CUSTOMER, OUR_NUMBER, inbound_params, signed

SMS = f"{BASE}/twilio/sms"
CID = conversation_id(OUR_NUMBER, CUSTOMER)
NOWHERE = "CV" + "0" * 32  # well formed, but no such conversation
WAIT = 5.0
"""Seconds any frame may take; the bridge answers in milliseconds, so this bounds a failure, not a pass."""

Stream = Any  # starlette's WebSocketTestSession


# -- helpers -----------------------------------------------------------------------------------------------------


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def receive(ws: Stream, timeout: float = WAIT) -> dict[str, Any]:
    """The next frame, or a failure (never a hang) after ``timeout`` seconds."""

    async def next_message() -> Message:
        with anyio.fail_after(timeout):
            message: Message = await ws._send_rx.receive()
            return message

    try:
        message = ws.portal.call(next_message)
    except TimeoutError:
        raise AssertionError(f"the stream sent nothing for {timeout} s") from None
    if message["type"] == "websocket.close":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason", ""))
    frame = json.loads(message["text"])
    assert isinstance(frame, dict)
    return frame


@contextmanager
def console(client: TestClient, token: str, after: int = 0) -> Iterator[Stream]:
    """A console's stream, read up to caught_up."""
    with client.websocket_connect(f"/v1/stream?after={after}", headers=auth(token)) as ws:
        while receive(ws)["type"] != protocol.CAUGHT_UP:
            pass
        yield ws


def command(ws: Stream, cid: str, name: str, args: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send a command; its result frame and the events that came before it (a command's events precede it)."""
    ws.send_json({"type": "command", "id": cid, "command": name, "args": args})
    events: list[dict[str, Any]] = []
    while True:
        frame = receive(ws)
        if frame["type"] == protocol.RESULT:
            assert frame["id"] == cid
            return frame, events
        if "seq" in frame:
            events.append(frame)


def ok(ws: Stream, cid: str, name: str, args: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    result, events = command(ws, cid, name, args)
    assert result["ok"] is True, result
    return result["data"], events


def next_event(ws: Stream, timeout: float = WAIT) -> dict[str, Any]:
    while True:
        frame = receive(ws, timeout)
        if "seq" in frame:
            return frame


def text_in(client: TestClient, body: str = "Hello?", from_: str = CUSTOMER) -> None:
    data, headers = signed(SMS, inbound_params(body, from_=from_))
    assert client.post(SMS, content=data, headers=headers).status_code == 200


def query(settings: Settings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(settings.db_path)
    try:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def event_count(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM events")[0][0])


def state(settings: Settings, cid: str = CID) -> tuple[Any, ...]:
    return query(settings, "SELECT assignee, status, snoozed_until FROM conversations WHERE id = ?", cid)[0]


def add_agents(settings: Settings, *names: str, revoked: tuple[str, ...] = ()) -> dict[str, str]:
    db = open_database(settings.db_path)
    try:
        tokens = {name: add_agent(db, name) for name in names + revoked}
        for name in revoked:
            assert revoke_agent(db, name)
        return tokens
    finally:
        db.close()


def utc(seconds: float) -> str:
    """A time ``seconds`` from now, as a console would send it (ISO 8601 UTC, microseconds)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def ben(settings: Settings, agent_token: str) -> str:
    return add_agents(settings, "ben")["ben"]


# -- assign and claim --------------------------------------------------------------------------------------------


def test_claim_assign_and_unassign_reach_every_console(
    client: TestClient, settings: Settings, agent_token: str, ben: str
) -> None:
    text_in(client)
    with console(client, agent_token) as ana_ws, console(client, ben) as ben_ws:
        data, events = ok(ana_ws, "c-1", protocol.CLAIM, {"conversation_id": CID})
        assert data == {"conversation_id": CID, "assignee": "ana", "previous": None, "changed": True}
        expected = {"conversation_id": CID, "assignee": "ana", "previous": None, "by": "ana"}
        assert [(e["type"], e["data"]) for e in events] == [(protocol.CONVERSATION_ASSIGNED, expected)]
        seen = next_event(ben_ws)
        assert (seen["seq"], seen["type"], seen["data"]) == (events[0]["seq"], protocol.CONVERSATION_ASSIGNED, expected)
        assert state(settings)[0] == "ana"

        data, _ = ok(ben_ws, "b-1", protocol.ASSIGN, {"conversation_id": CID, "agent": "ben"})
        assert data == {"conversation_id": CID, "assignee": "ben", "previous": "ana", "changed": True}
        assert next_event(ana_ws)["data"] == {"conversation_id": CID, "assignee": "ben", "previous": "ana", "by": "ben"}

        data, _ = ok(ana_ws, "c-2", protocol.ASSIGN, {"conversation_id": CID, "agent": None})
        assert data == {"conversation_id": CID, "assignee": None, "previous": "ben", "changed": True}
        assert next_event(ben_ws)["data"] == {"conversation_id": CID, "assignee": None, "previous": "ben", "by": "ana"}
        assert state(settings)[0] is None


def test_assigning_to_the_current_assignee_is_a_no_op_without_an_event(
    client: TestClient, settings: Settings, agent_token: str, ben: str
) -> None:
    text_in(client)
    with console(client, agent_token) as ws:
        ok(ws, "c-1", protocol.ASSIGN, {"conversation_id": CID, "agent": "ben"})
        before = event_count(settings)
        data, events = ok(ws, "c-2", protocol.ASSIGN, {"conversation_id": CID, "agent": "ben"})
        assert data == {"conversation_id": CID, "assignee": "ben", "previous": "ben", "changed": False}
        assert events == []
        ok(ws, "c-3", protocol.ASSIGN, {"conversation_id": CID, "agent": None})
        data, events = ok(ws, "c-4", protocol.ASSIGN, {"conversation_id": CID, "agent": None})
        assert data["changed"] is False and events == []
        ok(ws, "c-5", protocol.CLAIM, {"conversation_id": CID})
        data, events = ok(ws, "c-6", protocol.CLAIM, {"conversation_id": CID})
        assert data["changed"] is False and events == []
    assert event_count(settings) == before + 2  # unassigned once, claimed once


def test_a_resent_command_id_gets_its_first_result_and_acts_once(
    client: TestClient, settings: Settings, agent_token: str, ben: str
) -> None:
    text_in(client)
    with console(client, agent_token) as ws:
        first, events = command(ws, "same", protocol.ASSIGN, {"conversation_id": CID, "agent": "ben"})
        assert first["ok"] and len(events) == 1
        note, _ = ok(ws, "note-1", protocol.ADD_NOTE, {"conversation_id": CID, "body": "VIP"})
        refused, _ = command(ws, "early", protocol.SET_STATUS, {"conversation_id": CID, "status": "closed"})
        assert refused["error"]["code"] == "bad_args"
    head = event_count(settings)
    with console(client, agent_token, after=head) as ws:  # a console resending its outbox after a reconnect
        again, events = command(ws, "same", protocol.ASSIGN, {"conversation_id": CID, "agent": None})
        assert (again, events) == (first, [])
        assert command(ws, "note-1", protocol.ADD_NOTE, {"conversation_id": CID, "body": "VIP"}) == (
            {"type": "result", "id": "note-1", "ok": True, "data": note},
            [],
        )
        assert command(ws, "early", protocol.SET_STATUS, {"conversation_id": CID, "status": "pending"})[0] == refused
    assert event_count(settings) == head
    assert state(settings)[0] == "ben"
    assert query(settings, "SELECT count(*) FROM notes") == [(1,)]


def test_command_ids_are_per_agent(client: TestClient, settings: Settings, agent_token: str, ben: str) -> None:
    text_in(client)
    with console(client, agent_token) as ana_ws, console(client, ben) as ben_ws:
        ok(ana_ws, "c-1", protocol.CLAIM, {"conversation_id": CID})
        data, _ = ok(ben_ws, "c-1", protocol.CLAIM, {"conversation_id": CID})
        assert data["assignee"] == "ben" and data["previous"] == "ana"


# -- refusals ----------------------------------------------------------------------------------------------------

REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    # arguments
    (protocol.ASSIGN, {"conversation_id": CID}, "bad_args"),  # agent: required, null to unassign
    (protocol.ASSIGN, {"agent": "ana"}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": "ana", "force": True}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": 7, "agent": "ana"}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID.upper(), "agent": "ana"}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID + "\n", "agent": "ana"}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": 1}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": ""}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": "x" * 65}, "bad_args"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": ["ana"]}, "bad_args"),
    (protocol.CLAIM, {}, "bad_args"),
    (protocol.CLAIM, {"conversation_id": CID, "agent": "ben"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "closed"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "OPEN"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": None}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": None}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "open", "until": "2030-01-01T00:00:00Z"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": 1900000000}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": "tomorrow"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": "2030-01-01T00:00:00"}, "bad_args"),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": "2030-01-01T02:00+02:00"}, "bad_args"),
    (
        protocol.SET_STATUS,
        {"conversation_id": CID, "status": "snoozed", "until": "2030-01-01T02:00:00+02:00"},
        "bad_args",
    ),
    (protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": "2030-02-30T00:00:00Z"}, "bad_args"),
    (
        protocol.SET_STATUS,
        {"conversation_id": CID, "status": "snoozed", "until": "２０３０-01-01T00:00:00Z"},
        "bad_args",
    ),
    (
        protocol.SET_STATUS,
        {"conversation_id": CID, "status": "snoozed", "until": "2020-01-01T00:00:00Z"},
        "until_in_past",
    ),
    (protocol.ADD_NOTE, {"conversation_id": CID}, "bad_args"),
    (protocol.ADD_NOTE, {"conversation_id": CID, "body": 5}, "bad_args"),
    (protocol.ADD_NOTE, {"conversation_id": CID, "body": None}, "bad_args"),
    (protocol.ADD_NOTE, {"conversation_id": CID, "body": "hi", "to": CUSTOMER}, "bad_args"),
    (protocol.ADD_NOTE, {"conversation_id": CID, "body": ""}, "empty_body"),
    (protocol.ADD_NOTE, {"conversation_id": CID, "body": " \n\t "}, "empty_body"),
    (protocol.ADD_NOTE, {"conversation_id": CID, "body": "x" * 4001}, "body_too_long"),
    (protocol.LIST_AGENTS, {"everyone": True}, "bad_args"),
    # state
    (protocol.ASSIGN, {"conversation_id": NOWHERE, "agent": "ana"}, "unknown_conversation"),
    (protocol.ASSIGN, {"conversation_id": NOWHERE, "agent": None}, "unknown_conversation"),
    (protocol.CLAIM, {"conversation_id": NOWHERE}, "unknown_conversation"),
    (protocol.SET_STATUS, {"conversation_id": NOWHERE, "status": "resolved"}, "unknown_conversation"),
    (protocol.ADD_NOTE, {"conversation_id": NOWHERE, "body": "hi"}, "unknown_conversation"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": "zed"}, "unknown_agent"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": "Ana"}, "unknown_agent"),
    (protocol.ASSIGN, {"conversation_id": CID, "agent": "cal"}, "agent_revoked"),
]


@pytest.mark.parametrize(("name", "args", "code"), REFUSALS)
def test_refusals_say_why_and_change_nothing(
    client: TestClient, settings: Settings, agent_token: str, name: str, args: dict[str, Any], code: str
) -> None:
    add_agents(settings, revoked=("cal",))
    text_in(client)
    before, conversation = event_count(settings), state(settings)
    with console(client, agent_token) as ws:
        result, events = command(ws, "c-1", name, args)
    assert result["ok"] is False and events == []
    assert result["error"]["code"] == code
    sentence = result["error"]["message"]
    assert isinstance(sentence, str) and sentence.endswith(".") and 10 < len(sentence) < 200
    assert (event_count(settings), state(settings)) == (before, conversation)
    assert query(settings, "SELECT count(*) FROM notes") == [(0,)]


def test_snoozing_for_more_than_90_days_is_refused(client: TestClient, agent_token: str) -> None:
    text_in(client)
    with console(client, agent_token) as ws:
        args = {"conversation_id": CID, "status": "snoozed", "until": utc(91 * 86400)}
        result, _ = command(ws, "c-1", protocol.SET_STATUS, args)
        assert result["error"]["code"] == "until_too_far"
        args["until"] = utc(89 * 86400)
        ok(ws, "c-2", protocol.SET_STATUS, args)


def test_lone_surrogates_are_refused_before_anything_is_stored(
    client: TestClient, settings: Settings, agent_token: str
) -> None:
    text_in(client)
    before = event_count(settings)
    with console(client, agent_token) as ws:
        frame = '{"type":"command","id":"c-1","command":"add_note","args":{"conversation_id":"%s","body":"\\ud800"}}'
        ws.send_text(frame % CID)
        result = receive(ws)
        assert (result["type"], result["ok"], result["error"]["code"]) == ("result", False, "bad_args")
    assert event_count(settings) == before


@pytest.mark.parametrize(
    ("name", "args"),
    [
        (protocol.CLAIM, {"conversation_id": CID}),
        (protocol.ADD_NOTE, {"conversation_id": CID, "body": "written after the revocation"}),
        (protocol.SET_STATUS, {"conversation_id": CID, "status": "resolved"}),
        (protocol.ASSIGN, {"conversation_id": CID, "agent": "ben"}),
        (protocol.SEND_SMS, {"conversation_id": CID, "body": "sent after the revocation"}),
        (protocol.HOLD_CALL, {"call_sid": "CA" + "0" * 32}),
    ],
)
def test_a_command_racing_the_callers_revocation_is_refused(
    settings: Settings, agent_token: str, name: str, args: dict[str, Any]
) -> None:
    """The revocation watcher closes a revoked agent's stream within a poll; any command sent before that is
    refused in the transaction that would carry it out (it used to go through, but for a claim), nothing of it is
    logged, and the stream is closed at once."""
    add_agents(settings, "ben")
    slow_watcher = settings.with_(revocation_poll=3600.0)  # the stream stays open: the race, made deterministic
    with TestClient(create_app(slow_watcher), base_url=BASE) as client, console(client, agent_token) as ws:
        text_in(client)
        before = event_count(settings)
        db = open_database(settings.db_path)
        try:
            assert revoke_agent(db, "ana")
        finally:
            db.close()
        result, _ = command(ws, "c-1", name, args)
        assert result["error"]["code"] == "agent_revoked"
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == protocol.CLOSE_UNAUTHORIZED
    assert event_count(settings) == before
    assert state(settings)[0] is None and state(settings)[1] == "open"
    assert query(settings, "SELECT count(*) FROM messages WHERE direction = 'outbound'") == [(0,)]


# -- status and snoozes ------------------------------------------------------------------------------------------


def test_set_status_reaches_every_console(client: TestClient, settings: Settings, agent_token: str, ben: str) -> None:
    text_in(client)
    with console(client, agent_token) as ana_ws, console(client, ben) as ben_ws:
        data, events = ok(ana_ws, "c-1", protocol.SET_STATUS, {"conversation_id": CID, "status": "pending"})
        assert data == {
            "conversation_id": CID,
            "status": "pending",
            "snoozed_until": None,
            "previous": "open",
            "changed": True,
        }
        expected = {
            "conversation_id": CID,
            "status": "pending",
            "snoozed_until": None,
            "previous": "open",
            "by": "ana",
            "reason": "agent",
        }
        assert [(e["type"], e["data"]) for e in events] == [(protocol.CONVERSATION_STATUS, expected)]
        assert next_event(ben_ws)["data"] == expected

        data, events = ok(ana_ws, "c-2", protocol.SET_STATUS, {"conversation_id": CID, "status": "pending"})
        assert data["changed"] is False and events == []

        data, _ = ok(ben_ws, "b-1", protocol.SET_STATUS, {"conversation_id": CID, "status": "resolved", "until": None})
        assert (data["previous"], data["status"]) == ("pending", "resolved")
        seen = next_event(ana_ws)["data"]
        assert (seen["status"], seen["by"], seen["previous"]) == ("resolved", "ben", "pending")
    assert state(settings) == (None, "resolved", None)


def test_a_snooze_ends_on_time_on_every_console(
    client: TestClient, settings: Settings, agent_token: str, ben: str
) -> None:
    text_in(client)
    with console(client, agent_token) as ana_ws, console(client, ben) as ben_ws:
        until = utc(0.5)
        data, events = ok(
            ana_ws, "c-1", protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": until}
        )
        stored = data["snoozed_until"]
        assert stored == until[:23] + "Z"  # milliseconds, as the log writes times
        assert events[0]["data"] == {
            "conversation_id": CID,
            "status": "snoozed",
            "snoozed_until": stored,
            "previous": "open",
            "by": "ana",
            "reason": "agent",
        }
        assert state(settings) == (None, "snoozed", stored)
        assert next_event(ben_ws)["data"]["status"] == "snoozed"
        for ws in (ana_ws, ben_ws):
            woke = next_event(ws, timeout=WAIT)
            assert woke["type"] == protocol.CONVERSATION_STATUS
            assert woke["data"] == {
                "conversation_id": CID,
                "status": "open",
                "snoozed_until": None,
                "previous": "snoozed",
                "by": None,
                "reason": "snooze ended",
            }
            assert woke["ts"] >= stored
            lag = datetime.fromisoformat(woke["ts"].replace("Z", "+00:00")) - datetime.fromisoformat(
                stored[:-1] + "+00:00"
            )
            assert lag < timedelta(seconds=1)
    assert state(settings) == (None, "open", None)


def test_resnoozing_moves_the_wake_up(client: TestClient, settings: Settings, agent_token: str) -> None:
    text_in(client)
    with console(client, agent_token) as ws:
        ok(ws, "c-1", protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": utc(3600)})
        data, _ = ok(ws, "c-2", protocol.SET_STATUS, {"conversation_id": CID, "status": "snoozed", "until": utc(0.5)})
        assert data["changed"] is True and data["previous"] == "snoozed"
        woke = next_event(ws)  # the waker was sleeping towards the hour; the new snooze cut that short
        assert (woke["data"]["reason"], woke["data"]["status"]) == ("snooze ended", "open")


def test_snoozes_survive_a_restart(settings: Settings, agent_token: str) -> None:
    with TestClient(create_app(settings), base_url=BASE) as client:
        text_in(client)
        text_in(client, from_="+14155550199")
        other = conversation_id(OUR_NUMBER, "+14155550199")
        with console(client, agent_token) as ws:
            args = {"conversation_id": CID, "status": "snoozed", "until": utc(1.0)}
            until = ok(ws, "c-1", protocol.SET_STATUS, args)[0]["snoozed_until"]
            ok(ws, "c-2", protocol.SET_STATUS, {"conversation_id": other, "status": "snoozed", "until": utc(3600)})
            head = event_count(settings)
    assert state(settings)[1] == "snoozed", "the bridge took a second to stop: the snooze ended before it did"
    left = (datetime.fromisoformat(until.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, left) + 0.05)  # the first snooze ends while the bridge is down
    with (
        TestClient(create_app(settings), base_url=BASE) as client,
        client.websocket_connect(f"/v1/stream?after={head}", headers=auth(agent_token)) as ws,
    ):
        woke = next_event(ws)  # replayed if the waker woke it before we connected, live otherwise
        assert woke["seq"] == head + 1
        assert (woke["data"]["conversation_id"], woke["data"]["reason"]) == (CID, "snooze ended")
    assert state(settings) == (None, "open", None)
    assert state(settings, other)[1] == "snoozed"


# -- a customer writes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["resolved", "snoozed"])
def test_a_customer_text_reopens_in_the_same_commit(
    client: TestClient, settings: Settings, agent_token: str, ben: str, status: str
) -> None:
    text_in(client)
    with console(client, agent_token) as ana_ws, console(client, ben) as ben_ws:
        args: dict[str, Any] = {"conversation_id": CID, "status": status}
        if status == "snoozed":
            args["until"] = utc(3600)
        ok(ana_ws, "c-1", protocol.SET_STATUS, args)
        next_event(ben_ws)
        text_in(client, "Any news?")
        for ws in (ana_ws, ben_ws):
            message, reopened = next_event(ws), next_event(ws)
            assert (message["type"], message["data"]["body"]) == (protocol.MESSAGE_RECEIVED, "Any news?")
            assert reopened["type"] == protocol.CONVERSATION_STATUS
            assert reopened["seq"] == message["seq"] + 1
            assert reopened["ts"] == message["ts"]  # one transaction: one time
            assert reopened["data"] == {
                "conversation_id": CID,
                "status": "open",
                "snoozed_until": None,
                "previous": status,
                "by": None,
                "reason": "customer wrote",
            }
    assert state(settings) == (None, "open", None)


@pytest.mark.parametrize("status", ["open", "pending"])
def test_a_customer_text_leaves_open_and_pending_alone(
    client: TestClient, settings: Settings, agent_token: str, status: str
) -> None:
    text_in(client)
    with console(client, agent_token) as ws:
        ok(ws, "c-1", protocol.CLAIM, {"conversation_id": CID})
        ok(ws, "c-2", protocol.SET_STATUS, {"conversation_id": CID, "status": status})
        before = event_count(settings)
        text_in(client, "Any news?")
        assert next_event(ws)["type"] == protocol.MESSAGE_RECEIVED
    assert event_count(settings) == before + 1
    assert state(settings) == ("ana", status, None)


# -- notes and agents --------------------------------------------------------------------------------------------


def test_notes_reach_every_console_and_never_twilio(
    client: TestClient, settings: Settings, agent_token: str, ben: str
) -> None:
    text_in(client)
    messages = query(settings, "SELECT count(*) FROM messages")
    body = "Called back, she wants a refund.\nVIP — be nice 🙂" + "x" * (protocol.MAX_NOTE_CHARS - 60)
    assert len(body) <= protocol.MAX_NOTE_CHARS
    with console(client, agent_token) as ana_ws, console(client, ben) as ben_ws:
        data, events = ok(ana_ws, "n-1", protocol.ADD_NOTE, {"conversation_id": CID, "body": body})
        assert data["note_id"].startswith("NT") and len(data["note_id"]) == 34
        assert data["conversation_id"] == CID
        expected = {"note_id": data["note_id"], "conversation_id": CID, "body": body, "agent": "ana", "at": data["at"]}
        assert [(e["type"], e["data"]) for e in events] == [(protocol.NOTE_ADDED, expected)]
        assert next_event(ben_ws)["data"] == expected
    assert query(settings, "SELECT id, conversation_id, body, agent FROM notes") == [
        (data["note_id"], CID, body, "ana")
    ]
    assert query(settings, "SELECT count(*) FROM messages") == messages  # no reply was sent, nothing to Twilio


def test_list_agents_names_them_without_tokens(client: TestClient, settings: Settings, agent_token: str) -> None:
    tokens = add_agents(settings, "ben", revoked=("cal",))
    before = event_count(settings)
    with console(client, agent_token) as ws:
        result, events = command(ws, "c-1", protocol.LIST_AGENTS, {})
    assert result["data"] == {
        "agents": [
            {"name": "ana", "active": True, "presence": "offline", "has_phone": False},
            {"name": "ben", "active": True, "presence": "offline", "has_phone": False},
            {"name": "cal", "active": False, "presence": "offline", "has_phone": False},
        ]
    }
    assert events == [] and event_count(settings) == before
    raw = json.dumps(result)
    assert agent_token not in raw and all(token not in raw for token in tokens.values())


# -- the schema --------------------------------------------------------------------------------------------------


def test_conversations_from_before_the_migration_are_open_and_unassigned(settings: Settings) -> None:
    settings.db_path.parent.mkdir(parents=True)
    db = sqlite_utils.Database(settings.db_path)
    migrations.apply(db, stop_before="m002_conversation_state")
    db.execute(
        "INSERT INTO conversations (id, twilio_number, customer_number, created_at) VALUES (?, ?, ?, ?)",
        [CID, OUR_NUMBER, CUSTOMER, "2026-01-01T00:00:00.000Z"],
    )
    db.conn.commit()
    db.close()
    open_database(settings.db_path).close()
    assert state(settings) == (None, "open", None)
