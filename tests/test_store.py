"""The event log: group commit, gap-free seqs, one bad operation never harms its batch, early statuses, agents."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from unittest.mock import ANY

import pytest
import sqlite_utils

from bridge import protocol
from bridge.calls import HAS_VOICEMAIL
from bridge.commands import REPLIES_TO_CUSTOMER, UNFINISHED_SENDS
from bridge.handoff import QUEUE_WAITING
from bridge.messaging import (
    Conversation,
    InboundMessage,
    OutboundDraft,
    StatusCallback,
    record_inbound,
    record_outbound,
    record_status,
    record_submitted,
)
from bridge.store import (
    SqliteStore,
    StoredEvent,
    Tx,
    _encode_json,
    add_agent,
    agent_for_token,
    list_agents,
    open_database,
    revoke_agent,
)
from bridge.types import E164, conversation_id, new_id
from tests.support import CUSTOMER, OUR_NUMBER, inbound_params, message_sid, status_params


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "bridge.db")
    await store.start()
    return store


def appending(n: int) -> Callable[[Tx], StoredEvent]:
    def op(tx: Tx) -> StoredEvent:
        return tx.append("test", {"n": n})

    return op


async def test_concurrent_writes_share_commits_and_get_contiguous_seqs(store: SqliteStore) -> None:
    published: list[int] = []
    store.subscribe_commits(lambda events: published.extend(e.seq for e in events))
    results = await asyncio.gather(*(store.write(appending(n)) for n in range(300)))
    assert sorted(e.seq for e in results) == list(range(1, 301))
    assert published == list(range(1, 301))
    assert store.batches_committed < 300 / 2, "writes were not grouped into shared commits"
    assert await store.head() == 300
    await store.close()


async def test_a_failing_operation_is_undone_alone(store: SqliteStore) -> None:
    def bad(tx: Tx) -> None:
        tx.append("test", {"doomed": True})
        raise ValueError("no")

    good1 = store.write(appending(1))
    failing = store.write(bad)
    good2 = store.write(appending(2))
    first, second = await good1, await good2
    with pytest.raises(ValueError):
        await failing
    assert (first.seq, second.seq) == (1, 2), "the failed operation's event left a gap"
    assert [e.data for e in await store.read_after(0)] == [{"n": 1}, {"n": 2}]
    await store.close()


async def test_read_after_pages_in_order(store: SqliteStore) -> None:
    for n in range(25):
        await store.write(appending(n))
    page = await store.read_after(10, limit=5)
    assert [e.seq for e in page] == [11, 12, 13, 14, 15]
    assert page[0].frame().startswith('{"seq":11,"type":"test",')
    await store.close()


async def test_replayed_frames_are_the_frames_events_make(store: SqliteStore) -> None:
    """``read_frames_after`` (the stream's replay) builds in SQL what ``StoredEvent.frame`` builds: the same text,
    for any type and any data the log holds."""
    hostile = {"body": 'quote " backslash \\ \u2028 é 🙂 </script> \x1b[31m', "n": [1, 2.5, None, True], "": {}}

    def odd(tx: Tx) -> StoredEvent:
        return tx.append('type "with" quotes é', hostile)

    for n in range(7):
        await store.write(appending(n))
    await store.write(odd)
    await store.write(appending(8))
    expected = [(e.seq, e.frame()) for e in await store.read_after(0)]
    assert await store.read_frames_after(0) == expected
    assert await store.read_frames_after(3, limit=4) == expected[3:7]
    assert json.loads(expected[7][1]) == {"seq": 8, "type": 'type "with" quotes é', "ts": ANY, "data": hostile}
    await store.close()


async def test_a_status_before_the_send_is_recorded_is_applied_when_it_is(store: SqliteStore) -> None:
    sid = message_sid()
    conv = Conversation(conversation_id(OUR_NUMBER, CUSTOMER), E164(OUR_NUMBER), E164(CUSTOMER))
    draft = OutboundDraft("ana", "c-1", conv, "On its way", (), "GSM-7", 1)
    message_id, existing = await store.write(lambda tx: record_outbound(tx, draft, {}))
    assert existing is None
    # Twilio's "delivered" callback races ahead of our record of its answer to the create call.
    early = StatusCallback.from_params(status_params(sid, "delivered"))
    await store.write(lambda tx: record_status(tx, early, None))
    result = protocol.Result("c-1", True, {"message_sid": sid})
    await store.write(lambda tx: record_submitted(tx, "ana", "c-1", message_id, sid, "queued", result))
    types = [(e.type, e.data.get("status"), e.data.get("applied")) for e in await store.read_after(0)]
    assert types == [
        ("message.outbound", "sending", None),
        ("message.status", "delivered", False),
        ("message.submitted", "queued", None),
        ("message.status", "delivered", True),
    ]
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT status, sid FROM messages WHERE id = ?", (message_id,)).fetchone() == (
        "delivered",
        sid,
    )
    assert conn.execute("SELECT count(*) FROM early_statuses").fetchone() == (0,)
    conn.close()
    await store.close()


async def test_recording_the_same_command_twice_returns_the_first(store: SqliteStore) -> None:
    conv = Conversation(conversation_id(OUR_NUMBER, CUSTOMER), E164(OUR_NUMBER), E164(CUSTOMER))
    draft = OutboundDraft("ana", "c-9", conv, "hello", (), "GSM-7", 1)
    first_id, _ = await store.write(lambda tx: record_outbound(tx, draft, {}))
    again_id, existing = await store.write(lambda tx: record_outbound(tx, draft, {}))
    assert again_id == first_id and existing is not None and existing.state == "running"
    assert len(await store.read_after(0)) == 1
    await store.close()


def test_agents_tokens_are_hashed_and_revocable(tmp_path: Path) -> None:
    db = open_database(tmp_path / "bridge.db")
    token = add_agent(db, "ana")
    assert token.startswith("sb_") and len(token) > 40
    stored = db.execute("SELECT token_hash FROM agents").fetchone()[0]
    assert token not in stored
    assert agent_for_token(db.conn, token) == "ana"
    assert agent_for_token(db.conn, token + "x") is None
    with pytest.raises(ValueError, match="already exists"):
        add_agent(db, "ana")
    assert revoke_agent(db, "ana")
    assert not revoke_agent(db, "ana")
    assert agent_for_token(db.conn, token) is None
    fresh = add_agent(db, "ana")
    assert agent_for_token(db.conn, fresh) == "ana" and agent_for_token(db.conn, token) is None
    assert [a.name for a in list_agents(db)] == ["ana"]
    db.close()


def test_pragmas_make_commits_durable(tmp_path: Path) -> None:
    db = open_database(tmp_path / "bridge.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_the_sid_index_migration_keeps_every_message_and_its_dedupe(tmp_path: Path) -> None:
    """m006 rebuilds messages without the inline UNIQUE on sid: rows survive, an inbound SID already stored is
    still refused (by its id now), and an outbound message is still found by its SID."""
    path = tmp_path / "bridge.db"
    db = open_database_before(path, "m006_message_sids")
    assert "sid TEXT UNIQUE" in db.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
    conv = Conversation(conversation_id(OUR_NUMBER, CUSTOMER), E164(OUR_NUMBER), E164(CUSTOMER))
    inbound = InboundMessage.from_params(inbound_params(body="where is my order?"))
    out_sid = message_sid()
    with db.conn:
        tx = Tx(db.conn)
        assert record_inbound(tx, inbound, None)
        message_id, _ = record_outbound(tx, OutboundDraft("ana", "c-1", conv, "On its way", (), "GSM-7", 1), {})
        record_submitted(tx, "ana", "c-1", message_id, out_sid, "queued", protocol.Result("c-1", True, {}))
    before = db.execute("SELECT * FROM messages ORDER BY rowid").fetchall()
    db.close()

    db = open_database(path)
    schema = [row[0] for row in db.execute("SELECT sql FROM sqlite_master WHERE tbl_name = 'messages'")]
    assert not any("UNIQUE" in (sql or "") and "sid" in (sql or "") and "outbound" not in sql for sql in schema)
    assert "CREATE UNIQUE INDEX messages_by_sid ON messages (sid) WHERE direction = 'outbound'" in schema
    assert db.execute("SELECT * FROM messages ORDER BY rowid").fetchall() == before
    with db.conn:
        tx = Tx(db.conn)
        assert record_inbound(tx, inbound, None) is None  # the same MessageSid again: nothing new
        assert record_status(tx, StatusCallback.from_params(status_params(out_sid, "delivered")), None)
        assert record_status(tx, StatusCallback.from_params(status_params(inbound.sid, "delivered")), None)
    statuses = dict(db.execute("SELECT direction, status FROM messages").fetchall())
    assert statuses == {"inbound": "received", "outbound": "delivered"}  # a status for an inbound SID moves nothing
    assert [tuple(row) for row in db.execute("SELECT sid FROM early_statuses")] == [(inbound.sid,)]
    db.close()


def test_a_send_reads_only_its_customer_s_replies_through_indexes(tmp_path: Path) -> None:
    """m007: the SIDs a send must not take for its own are the customer's replies, from every one of the team's
    numbers, found through indexes (before it, SQLite walked every reply in the log); a text coming in is not in
    the conversation index any more. A database from before m007 comes through with its rows."""
    path = tmp_path / "bridge.db"
    db = open_database_before(path, "m007_replies_by_customer")
    other_number, other_customer = E164("+14155550111"), E164("+14155550199")
    sids: dict[tuple[str, str], str] = {}
    with db.conn:
        tx = Tx(db.conn)
        for n, (ours, theirs) in enumerate(
            [(OUR_NUMBER, CUSTOMER), (other_number, CUSTOMER), (OUR_NUMBER, other_customer)]
        ):
            record_inbound(tx, InboundMessage.from_params(inbound_params(from_=theirs, to=ours)), None)
            conv = Conversation(conversation_id(ours, theirs), E164(ours), E164(theirs))
            draft = OutboundDraft("ana", f"c-{n}", conv, "On its way", (), "GSM-7", 1)
            message_id, _ = record_outbound(tx, draft, {})
            sids[(ours, theirs)] = message_sid()
            record_submitted(tx, "ana", f"c-{n}", message_id, sids[(ours, theirs)], "queued", protocol.Result("", True))
        unsent = OutboundDraft(
            "ana",
            "c-9",
            Conversation(conversation_id(OUR_NUMBER, CUSTOMER), E164(OUR_NUMBER), E164(CUSTOMER)),
            "Not yet sent",
            (),
            "GSM-7",
            1,
        )
        record_outbound(tx, unsent, {})
    before = db.execute("SELECT * FROM messages ORDER BY rowid").fetchall()
    db.close()

    db = open_database(path)
    assert db.execute("SELECT * FROM messages ORDER BY rowid").fetchall() == before
    plan = " ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + REPLIES_TO_CUSTOMER, [CUSTOMER]))
    assert "conversations_by_customer" in plan and "replies_by_conversation" in plan, plan
    db.execute("ANALYZE")  # with statistics too (a big log's), no walk of every reply by SID
    plan = " ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + REPLIES_TO_CUSTOMER, [CUSTOMER]))
    assert "messages_by_sid" not in plan and "SCAN" not in plan, plan
    found = {row[0] for row in db.execute(REPLIES_TO_CUSTOMER, [CUSTOMER])}
    assert found == {sids[(OUR_NUMBER, CUSTOMER)], sids[(other_number, CUSTOMER)]}
    indexed = db.execute(
        "SELECT count(*) FROM messages INDEXED BY replies_by_conversation WHERE direction = 'outbound'"
    )
    assert indexed.fetchone()[0] == 4  # the replies (one not sent yet); the three texts in are not indexed
    db.close()


@pytest.mark.parametrize(
    ("statement", "params", "index"),
    [
        (QUEUE_WAITING, ["support"], "calls_in_queue"),
        (HAS_VOICEMAIL, ["CA" + "0" * 32], "voicemails_by_call"),
        (UNFINISHED_SENDS, [], "commands_running"),
    ],
)
def test_statements_run_often_or_at_start_up_do_not_walk_history(
    tmp_path: Path, statement: str, params: list[str], index: str
) -> None:
    """m008: each goes through an index of the rows it wants (live calls, running commands) or looks one up, on a
    database from before it too; no table is walked whole, with statistics or without."""
    db = open_database_before(tmp_path / "bridge.db", "m008_no_walks_of_history")
    db.close()
    db = open_database(tmp_path / "bridge.db")
    for _ in range(2):
        plan = [str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + statement, params)]
        assert any(index in step for step in plan), plan
        assert not [step for step in plan if step.startswith("SCAN") and "USING" not in step], plan
        db.execute("ANALYZE")
    db.close()


def open_database_before(path: Path, migration: str) -> sqlite_utils.Database:
    """A bridge database as a release before ``migration`` left it."""
    from bridge.store import _connect, migrations

    db = sqlite_utils.Database(_connect(path))
    migrations.apply(db, stop_before=migration)
    return db


async def test_a_batch_whose_commit_fails_is_rolled_back_before_the_next_batch_begins(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollback of a failed commit runs in the writer thread, unawaited; the next batch's BEGIN must come after
    it (in the thread, not on the loop), or the rollback would undo the next batch instead."""
    commit = store._commit
    failures = iter([True])

    def slow_failing_commit() -> None:
        if next(failures, False):
            raise sqlite3.OperationalError("disk I/O error")
        commit()

    rollback = store._rollback

    def slow_rollback() -> None:
        time.sleep(0.2)  # still running when the next batch begins
        rollback()

    monkeypatch.setattr(store, "_commit", slow_failing_commit)
    monkeypatch.setattr(store, "_rollback", slow_rollback)
    with pytest.raises(sqlite3.OperationalError):
        await store.write(appending(1))
    event = await asyncio.wait_for(store.write(appending(2)), 10)
    assert event.seq == 1  # the failed batch left nothing behind, and this one was not rolled back
    assert [e.data for e in await store.read_after(0)] == [{"n": 2}]
    await store.close()


async def test_waiting_for_another_process_s_write_lock_does_not_stall_the_event_loop(store: SqliteStore) -> None:
    """The write lock is taken in the writer thread: while another process holds it, webhooks and streams go on."""
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    write = asyncio.ensure_future(store.write(appending(1)))
    ticks = 0
    for _ in range(10):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 10 and not write.done()
    other.execute("COMMIT")
    other.close()
    event = await asyncio.wait_for(write, 10)
    assert event.seq == 1
    await store.close()


def test_minted_ids_sort_by_time_and_do_not_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    # Replies', notes', legs' and voicemails' ids: the indexes keyed on them take a new one at their end.
    clock = [1_795_000_000_000 * 1_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: clock[0])
    same_ms = [new_id("OB") for _ in range(2_000)]
    clock[0] += 1_000_000  # one millisecond later
    later = new_id("OB")
    assert len(set(same_ms)) == len(same_ms)  # 80 random bits within one millisecond
    assert all(i < later for i in same_ms)
    assert all(re.fullmatch(r"OB[0-9a-f]{32}", i) for i in [*same_ms, later])
    assert later[2:14] == f"{1_795_000_000_001:012x}"


@pytest.mark.parametrize(
    "data",
    [
        {"body": "[bold]hi[/bold] \x1b[31mred\x1b[0m \u202e tab\t nl\n nul\x00 del\x7f \u2028 🚚 é", "media": []},
        {"num_segments": 3, "price": -0.0075, "big": 1.5e16, "none": None, "flag": True, "nested": {"a": [1, "b"]}},
        {"too_big_for_orjson": 2**70},  # the standard library's encoder writes it
    ],
)
def test_the_log_stores_event_data_as_the_standard_library_would_write_it(data: dict[str, object]) -> None:
    encoded = _encode_json(data)
    assert encoded == json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(encoded) == data
