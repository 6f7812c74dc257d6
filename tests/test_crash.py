"""kill -9 of the bridge mid-burst: every acked webhook survives, seqs stay contiguous, streams resume exactly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from bridge.store import add_agent, open_database
from tests.processes import BridgeProcess
from tests.support import inbound_params, message_sid, signed

pytestmark = pytest.mark.slow

BURST = 600
CONCURRENCY = 24
KILL_AFTER_ACKS = 200


def logged(db_path: Path) -> tuple[list[int], list[str]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, data FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows], [json.loads(r[1])["message_sid"] for r in rows]


async def read_stream(
    url: str,
    token: str,
    after: int,
    frames: list[dict[str, object]],
    caught_up: asyncio.Event,
    stop_at_caught_up: bool = False,
) -> None:
    """Collect event frames until the connection drops (or, if asked, until caught_up)."""
    ws_url = url.replace("http://", "ws://") + f"/v1/stream?after={after}"
    with contextlib.suppress(Exception):
        async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as ws:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "caught_up":
                    caught_up.set()
                    if stop_at_caught_up:
                        return
                    continue
                if "seq" in frame:
                    frames.append(frame)


async def test_kill_9_during_a_burst_loses_no_acknowledged_webhook(tmp_path: Path) -> None:
    data_dir = tmp_path / "bridge"
    db = open_database(data_dir / "bridge.db")
    token = add_agent(db, "ana")
    db.close()
    bridge = BridgeProcess(data_dir)
    await asyncio.to_thread(bridge.start)
    acked: list[str] = []
    sent = 0
    killed = asyncio.Event()
    received: list[dict[str, object]] = []
    first_caught_up = asyncio.Event()
    reader = asyncio.create_task(read_stream(bridge.url, token, 0, received, first_caught_up))
    try:
        await asyncio.wait_for(first_caught_up.wait(), 10)
        sids = [message_sid() for _ in range(BURST)]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for sid in sids:
            queue.put_nowait(sid)

        async def sender(client: httpx.AsyncClient) -> None:
            nonlocal sent
            while not queue.empty() and not killed.is_set():
                sid = queue.get_nowait()
                body, headers = signed(f"{bridge.url}/twilio/sms", inbound_params(f"burst {sid}", sid=sid))
                sent += 1
                try:
                    response = await client.post(f"{bridge.url}/twilio/sms", content=body, headers=headers)
                except httpx.HTTPError:
                    continue  # not acknowledged: Twilio would count this as a failed delivery
                if response.status_code == 200:
                    acked.append(sid)
                    if len(acked) >= KILL_AFTER_ACKS and not killed.is_set():
                        killed.set()
                        bridge.kill()

        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            await asyncio.wait_for(asyncio.gather(*(sender(client) for _ in range(CONCURRENCY))), 60)
        assert killed.is_set(), "the burst finished before the kill"
        await asyncio.wait_for(reader, 10)  # the stream drops with the process

        # Restart on the same data: the log holds every acknowledged MessageSid, in contiguous seqs.
        await asyncio.to_thread(bridge.start)
        seqs, logged_sids = logged(data_dir / "bridge.db")
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(set(logged_sids)) == len(logged_sids), "a webhook was logged twice"
        assert set(acked) <= set(logged_sids), f"{len(set(acked) - set(logged_sids))} acknowledged webhooks lost"
        assert len(logged_sids) <= sent
        print(f"sent {sent}, acked {len(acked)}, logged {len(logged_sids)}, streamed before kill {len(received)}")

        # A console resuming from its cursor ends with exactly the log's events.
        cursor = max((int(str(f["seq"])) for f in received), default=0)
        resumed: list[dict[str, object]] = []
        done = asyncio.Event()
        await asyncio.wait_for(read_stream(bridge.url, token, cursor, resumed, done, stop_at_caught_up=True), 20)
        assert done.is_set()
        console = [int(str(f["seq"])) for f in received + resumed]
        assert console == seqs
        assert [str(f["data"]["message_sid"]) for f in received + resumed] == logged_sids  # type: ignore[index]
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        bridge.stop()
