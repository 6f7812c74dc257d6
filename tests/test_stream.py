"""The stream: auth, replay then caught_up then live, resume without gaps, revocation, signals, bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge import protocol
from bridge.app import create_app
from bridge.hub import Hub, Subscriber
from bridge.settings import Settings
from bridge.state import Bridge
from bridge.store import SqliteStore, Tx, add_agent, open_database, revoke_agent
from bridge.stream import _send_loop
from tests.conftest import BASE
from tests.support import inbound_params, signed

SMS = f"{BASE}/twilio/sms"


def send_texts(client: TestClient, bodies: list[str]) -> None:
    for body in bodies:
        data, headers = signed(SMS, inbound_params(body))
        assert client.post(SMS, content=data, headers=headers).status_code == 200


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_until_caught_up(ws: Any) -> tuple[list[dict[str, Any]], int]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = ws.receive_json()
        if frame["type"] == "caught_up":
            return frames, frame["cursor"]
        frames.append(frame)


def test_replays_then_caught_up_then_live(client: TestClient, agent_token: str) -> None:
    send_texts(client, ["one", "two"])
    with client.websocket_connect("/v1/stream?after=0", headers=auth(agent_token)) as ws:
        frames, cursor = read_until_caught_up(ws)
        assert [(f["seq"], f["type"], f["data"]["body"]) for f in frames] == [
            (1, "message.received", "one"),
            (2, "message.received", "two"),
        ]
        assert cursor == 2
        assert isinstance(frames[0]["data"]["message_sid"], str)
        send_texts(client, ["three"])
        live = ws.receive_json()
        assert (live["seq"], live["data"]["body"]) == (3, "three")


def test_resume_from_cursor_sends_only_later_events(client: TestClient, agent_token: str) -> None:
    send_texts(client, ["a", "b", "c", "d"])
    with client.websocket_connect("/v1/stream?after=2", headers=auth(agent_token)) as ws:
        frames, cursor = read_until_caught_up(ws)
    assert [f["seq"] for f in frames] == [3, 4]
    assert cursor == 4


def test_caught_up_on_an_empty_log(client: TestClient, agent_token: str) -> None:
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
        assert ws.receive_json() == {"type": "caught_up", "cursor": 0, "agent": "ana"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_missing_or_wrong_token_is_refused_before_any_event(
    client: TestClient, agent_token: str, headers: dict[str, str]
) -> None:
    send_texts(client, ["secret"])
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/v1/stream", headers=headers):
            pass  # pragma: no cover - the upgrade is refused
    assert refused.value.status_code == 401


def test_bad_cursor_is_refused(client: TestClient, agent_token: str) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/v1/stream?after=-1", headers=auth(agent_token)):
            pass  # pragma: no cover
    assert refused.value.status_code == 400


def test_revoked_agent_is_disconnected(client: TestClient, settings: Settings, agent_token: str) -> None:
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
        ws.receive_json()
        db = open_database(settings.db_path)
        assert revoke_agent(db, "ana")
        db.close()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == protocol.CLOSE_UNAUTHORIZED
    with pytest.raises(WebSocketDenialResponse):
        with client.websocket_connect("/v1/stream", headers=auth(agent_token)):
            pass  # pragma: no cover


@pytest.mark.timeout(30)
def test_a_replaced_token_closes_the_streams_opened_with_the_old_one(
    client: TestClient, settings: Settings, agent_token: str
) -> None:
    """Revoked and added again before the bridge looked (the way to give an agent a new token): the stream on
    the old token is closed all the same, and the new token lets the agent in."""
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
        ws.receive_json()
        db = open_database(settings.db_path)
        with db.conn:  # one transaction: no poll can fall between the two
            assert revoke_agent(db, "ana")
            fresh = add_agent(db, "ana")
        db.close()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == protocol.CLOSE_UNAUTHORIZED
    with client.websocket_connect("/v1/stream", headers=auth(fresh)) as ws:
        assert ws.receive_json()["type"] == "caught_up"


def test_signals_reach_other_consoles_and_are_not_logged(
    client: TestClient, settings: Settings, agent_token: str
) -> None:
    db = open_database(settings.db_path)
    other = add_agent(db, "ben")
    db.close()
    with (
        client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ana,
        client.websocket_connect("/v1/stream", headers=auth(other)) as ben,
    ):
        ana.receive_json()
        ben.receive_json()
        ana.send_json({"type": "signal", "conversation_id": "CVabc", "signal": "typing"})
        assert ben.receive_json() == {"type": "signal", "conversation_id": "CVabc", "signal": "typing", "agent": "ana"}
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as again:
        assert again.receive_json() == {"type": "caught_up", "cursor": 0, "agent": "ana"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"type": "dance"}', "bad_type"),
        ('{"type": "command", "command": "send_sms"}', "bad_id"),
        ('{"type": "command", "id": "c1", "command": "send_sms", "args": []}', "bad_args"),
        ('{"type": "signal", "conversation_id": "CV1", "signal": "shouting"}', "bad_signal"),
    ],
)
def test_bad_frames_get_an_error_and_the_stream_stays_open(
    client: TestClient, agent_token: str, frame: str, code: str
) -> None:
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
        ws.receive_json()
        ws.send_text(frame)
        reply = ws.receive_json()
        assert reply["type"] == "error" and reply["code"] == code
        send_texts(client, ["still here"])
        assert ws.receive_json()["data"]["body"] == "still here"


def test_unknown_command_is_an_error_result(client: TestClient, agent_token: str) -> None:
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
        ws.receive_json()
        ws.send_json({"type": "command", "id": "c-1", "command": "teleport", "args": {}})
        result = ws.receive_json()
        assert result["type"] == "result" and result["id"] == "c-1" and result["ok"] is False
        assert result["error"]["code"] == "unknown_command"


def test_resume_across_a_bridge_restart_has_no_gap_or_duplicate(settings: Settings, agent_token: str) -> None:
    seen: list[int] = []
    with TestClient(create_app(settings), base_url=BASE) as client:
        send_texts(client, [f"before {i}" for i in range(5)])
        with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
            frames, cursor = read_until_caught_up(ws)
            seen += [f["seq"] for f in frames]
    with TestClient(create_app(settings), base_url=BASE) as client:
        send_texts(client, [f"after {i}" for i in range(5)])
        with client.websocket_connect(f"/v1/stream?after={cursor}", headers=auth(agent_token)) as ws:
            frames, cursor = read_until_caught_up(ws)
            seen += [f["seq"] for f in frames]
    assert seen == list(range(1, 11))


def test_concurrent_writes_reach_every_console_in_order(client: TestClient, settings: Settings) -> None:
    import threading

    db = open_database(settings.db_path)
    tokens = [add_agent(db, f"agent{i}") for i in range(3)]
    db.close()
    sockets = [client.websocket_connect("/v1/stream", headers=auth(t)) for t in tokens]
    streams = [s.__enter__() for s in sockets]
    try:
        for ws in streams:
            ws.receive_json()
        threads = [
            threading.Thread(target=send_texts, args=(client, [f"t{n}-{i}" for i in range(10)])) for n in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        for ws in streams:
            assert [ws.receive_json()["seq"] for _ in range(40)] == list(range(1, 41))
    finally:
        for s in sockets:
            s.__exit__(None, None, None)


async def test_a_stalled_console_is_disconnected_without_delaying_others() -> None:
    from bridge.hub import Hub
    from bridge.store import StoredEvent

    hub = Hub(queue_size=5)
    stalled, reading = hub.connect("slow"), hub.connect("fast")
    hub.attach(stalled)
    hub.attach(reading)
    for seq in range(1, 31):
        hub.publish([StoredEvent(seq, "message.received", "2026-01-01T00:00:00.000Z", "{}")])
        assert reading.queue.get_nowait()[0] == seq  # the reading console keeps up, unaffected
    assert stalled.stop.is_set()
    assert stalled.close_code == protocol.CLOSE_OVERFLOW
    assert stalled.queue.qsize() == 5  # what it had; the rest it will replay from its cursor
    assert not reading.stop.is_set()


def test_event_frames_parse_with_the_protocol_module(client: TestClient, agent_token: str) -> None:
    send_texts(client, ["[bold]not markup[/bold] \x1b[31m"])
    with client.websocket_connect("/v1/stream", headers=auth(agent_token)) as ws:
        event = protocol.parse_server_frame(ws.receive_text())
        assert isinstance(event, protocol.Event)
        assert event.data["body"] == "[bold]not markup[/bold] \x1b[31m"
        assert json.loads(ws.receive_text())["type"] == "caught_up"


NOON = "2026-11-24T12:00:00.000Z"


def log_texts(settings: Settings, bodies: list[str]) -> None:
    """Append inbound texts to the bridge's log directly (a bridge that ran a long time)."""
    db = open_database(settings.db_path)
    try:
        with db.atomic():
            db.conn.executemany(
                "INSERT INTO events (type, ts, data) VALUES (?, ?, ?)",
                [
                    (protocol.MESSAGE_RECEIVED, NOON, json.dumps({"n": n, "body": body}, ensure_ascii=False))
                    for n, body in enumerate(bodies, 1)
                ],
            )
    finally:
        db.close()


def test_a_batched_replay_packs_consecutive_events_into_bounded_frames(
    client: TestClient, settings: Settings, agent_token: str
) -> None:
    """With batch=1 the replay comes in events frames, each within the byte limit even for non-ASCII text; an
    event too large to share a frame comes alone; caught_up and live events are single frames as before."""
    huge = "ü" * 50_000  # 100 kB of UTF-8: under the frame limit, counted as too large to share a frame
    bodies = [f"text {n} " + ("é" * (n % 300)) for n in range(2500)]
    bodies[1200] = huge
    log_texts(settings, bodies)
    with client.websocket_connect("/v1/stream?after=0&batch=1", headers=auth(agent_token)) as ws:
        seqs: list[int] = []
        sizes: list[int] = []
        alone: list[int] = []
        while True:
            text = ws.receive_text()
            assert len(text.encode()) <= protocol.MAX_FRAME_BYTES
            parsed = protocol.parse_server_frame(text)
            if isinstance(parsed, list):
                sizes.append(len(parsed))
                seqs += [event.seq for event in parsed]
            elif isinstance(parsed, protocol.Event):
                alone.append(parsed.seq)
                seqs.append(parsed.seq)
            else:
                assert parsed == {"type": "caught_up", "cursor": 2500, "agent": "ana"}
                break
        assert seqs == list(range(1, 2501))
        assert alone == [1201] and len(sizes) < 40 and max(sizes) > 100
        send_texts(client, ["live one"])
        live = protocol.parse_server_frame(ws.receive_text())
        assert isinstance(live, protocol.Event) and (live.seq, live.data["body"]) == (2501, "live one")


def test_batch_must_be_0_or_1(client: TestClient, agent_token: str) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/v1/stream?after=0&batch=yes", headers=auth(agent_token)):
            pass  # pragma: no cover
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "events", "events": []},
        {"type": "events", "events": "nope"},
        {"type": "events", "events": [1, 2]},
        {"type": "events", "events": [{"seq": 1, "type": "x", "data": {}}, {"seq": 3, "type": "x", "data": {}}]},
        {"type": "events", "events": [{"seq": 1, "type": "x", "data": []}]},
    ],
)
def test_a_bad_events_frame_is_a_protocol_error(frame: dict[str, Any]) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_server_frame(json.dumps(frame))


@pytest.mark.parametrize(
    "text",
    [
        '{"seq": 1, "type": "x", "data": {}',  # cut short
        "[" * 5000 + "]" * 5000,  # nested too deeply
        r'{"seq": 1, "type": "x", "data": {"body": "\ud800"}}',  # a lone surrogate (the standard library takes it)
        b'{"seq": 1, "type": "x", "data": {"body": "\xff"}}',  # not UTF-8
        "[1, 2]",
    ],
)
def test_the_consoles_faster_decoder_turns_what_it_cannot_read_into_protocol_errors(text: str | bytes) -> None:
    # The console decodes frames with orjson; whatever it refuses is a ProtocolError, as with the standard library.
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_server_frame(text, orjson.loads)


def test_the_consoles_faster_decoder_reads_frames_as_the_standard_library_does() -> None:
    frame = {
        "type": "events",
        "events": [
            {
                "seq": 7,
                "type": "message.received",
                "ts": "t",
                "data": {"body": "héllo 👋 [b]x[/b] \x1b[2J", "n": 2**62},
            },
            {"seq": 8, "type": "message.status", "ts": "t", "data": {"error_code": None, "ok": True, "x": 1.5}},
        ],
    }
    text = json.dumps(frame, ensure_ascii=False)
    assert protocol.parse_server_frame(text, orjson.loads) == protocol.parse_server_frame(text)


class _Socket:
    """What the send loop needs of a WebSocket: it keeps the texts sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.caught_up = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.sent.append(text)
        if '"caught_up"' in text:
            self.caught_up.set()


async def test_live_events_queued_together_go_in_one_events_frame_with_batch(tmp_path: Path) -> None:
    """Live, a batch=1 console gets the events of one commit in one frame, in order with ephemeral frames; a
    console without batch=1 gets them one frame each."""
    store = SqliteStore(tmp_path / "bridge.db")
    await store.start()
    hub = Hub()
    store.subscribe_commits(hub.publish)
    bridge = cast(Bridge, SimpleNamespace(store=store, hub=hub))

    def append(n: int) -> Callable[[Tx], None]:
        def op(tx: Tx) -> None:
            for i in range(n):
                tx.append(protocol.MESSAGE_RECEIVED, {"body": f"text {i}"})

        return op

    await store.write(append(3))
    sockets = {batched: _Socket() for batched in (True, False)}
    senders = []
    for batched, socket in sockets.items():
        sub = hub.connect("ana")
        senders.append(asyncio.create_task(_send_loop(bridge, cast(WebSocket, socket), sub, 0, batched)))
        await asyncio.wait_for(socket.caught_up.wait(), 5)
    await store.write(append(4))  # one commit: all four are queued before either sender runs
    hub.relay('{"type":"signal"}', sender=Subscriber("bob", asyncio.Queue()))
    await store.write(append(1))
    for _ in range(100):
        if all(json.loads(s.sent[-1]).get("seq") == 8 for s in sockets.values() if s.sent):
            break
        await asyncio.sleep(0.01)
    for task in senders:
        task.cancel()
    await store.close()

    def shape(socket: _Socket) -> list[Any]:
        out: list[Any] = []
        for text in socket.sent:
            parsed = protocol.parse_server_frame(text)
            if isinstance(parsed, list):
                out.append([event.seq for event in parsed])
            elif isinstance(parsed, protocol.Event):
                out.append(parsed.seq)
            else:
                out.append(json.loads(text)["type"])
        return out

    assert shape(sockets[True]) == [[1, 2, 3], "caught_up", [4, 5, 6, 7], "signal", 8]
    assert shape(sockets[False]) == [1, 2, 3, "caught_up", 4, 5, 6, 7, "signal", 8]


@pytest.mark.timeout(30)
async def test_a_console_that_goes_away_mid_send_ends_its_stream_without_stalling_the_bridge(
    settings: Settings, agent_token: str
) -> None:
    """A send to a console fails (it reset the connection) while one more of its frames is being delivered: the
    stream ends. (A receive loop that went round on the closed socket's error never yielded: the event loop froze,
    and every webhook and every other console with it; here the test timed out.)"""
    app = create_app(settings)
    sent: list[str] = []

    async with app.router.lifespan_context(app) as state:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        inbox.put_nowait({"type": "websocket.connect"})
        signal = {"type": "signal", "conversation_id": "CV" + "0" * 32, "signal": "typing"}

        async def receive() -> dict[str, Any]:
            return await inbox.get()

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message.get("text") or message["type"])
            if '"type":"result"' in message.get("text", ""):
                await asyncio.sleep(0)
                inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(signal)})
                raise ConnectionResetError("the console went away")  # uvicorn's ClientDisconnected is an OSError

        scope = {
            "type": "websocket",
            "path": "/v1/stream",
            "raw_path": b"/v1/stream",
            "query_string": b"after=0",
            "headers": [(b"authorization", f"Bearer {agent_token}".encode()), (b"host", b"testserver")],
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 5000),
            "root_path": "",
            "subprotocols": [],
            "state": dict(state or {}),
            "app": app,
            "extensions": {},
        }
        stream = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.2)
        command = {"type": "command", "id": "c1", "command": "list_agents", "args": {}}
        inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(command)})
        with contextlib.suppress(OSError):
            await asyncio.wait_for(stream, 5)
    assert any('"type":"caught_up"' in text for text in sent)
