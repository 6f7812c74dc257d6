"""The console's cache: events applied in seq order with the cursor, replays harmless, gaps refused, search."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from bridge import protocol
from bridge.types import conversation_id
from console import cache as cache_module
from console.cache import Cache, GapError
from tests.support import CUSTOMER, OUR_NUMBER

CID = conversation_id(OUR_NUMBER, CUSTOMER)


def received(seq: int, body: str, sid: str | None = None) -> protocol.Event:
    sid = sid or f"SM{seq:032x}"
    return protocol.Event(
        seq,
        protocol.MESSAGE_RECEIVED,
        f"2026-11-24T05:00:{seq % 60:02d}.000Z",
        {
            "message_id": sid,
            "message_sid": sid,
            "conversation_id": CID,
            "twilio_number": OUR_NUMBER,
            "customer_number": CUSTOMER,
            "body": body,
            "media": [],
            "received_at": f"2026-11-24T05:00:{seq % 60:02d}.000Z",
        },
    )


def test_apply_moves_the_cursor_with_the_events(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    assert cache.cursor() == 0
    cache.apply([received(1, "hello"), received(2, "[bold]where[/bold] is my order")])
    assert cache.cursor() == 2
    [conv] = cache.conversations()
    assert (conv.id, conv.unread, conv.last_preview) == (CID, 2, "[bold]where[/bold] is my order")
    assert [m.body for m in cache.messages(CID)] == ["hello", "[bold]where[/bold] is my order"]


def test_replayed_events_are_skipped_and_gaps_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    cache.apply([received(1, "a"), received(2, "b")])
    assert cache.apply([received(2, "b"), received(3, "c")]) == [received(3, "c")]
    with pytest.raises(GapError):
        cache.apply([received(5, "e")])
    assert cache.cursor() == 3
    assert len(cache.messages(CID)) == 3


def test_a_failed_batch_leaves_cache_and_cursor_untouched(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    bad = protocol.Event(2, protocol.MESSAGE_RECEIVED, "t", {"conversation_id": CID})  # missing fields
    with pytest.raises(KeyError):
        cache.apply([received(1, "a"), bad])
    assert cache.cursor() == 0 and cache.conversations() == []


def test_search_is_newest_first_and_treats_text_as_words(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    cache.apply([received(1, "refund please"), received(2, "where is my refund?"), received(3, 'NEAR "x" OR *')])
    assert [m.body for m in cache.search("refund")] == ["where is my refund?", "refund please"]
    assert [m.body for m in cache.search('NEAR "x" OR')] == ['NEAR "x" OR *']
    assert cache.search("   ") == []


def test_a_bulk_indexed_commit_is_searchable_and_leaves_merging_on(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    cache.bulk_search_index = True  # as the catch-up helper runs
    cache.apply([received(n, f"refund number {n}") for n in range(1, 2001)])
    conn = cache.conn()
    assert conn.execute("SELECT v FROM messages_fts_config WHERE k = 'automerge'").fetchone()[0] == 4
    assert [m.body for m in cache.search("refund 2000")] == ["refund number 2000"]
    assert len(cache.search("refund", limit=5000)) == 2000
    cache.bulk_search_index = False
    cache.apply([received(2001, "refund at last")])  # a live text: FTS5 merges as it goes
    assert [m.body for m in cache.search("refund last")] == ["refund at last"]
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")  # raises if it is damaged


def test_a_deferred_search_index_comes_in_a_transaction_of_its_own(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    cache.bulk_search_index = cache.defer_search_index = True  # as the catch-up helper runs
    cache.apply([received(n, f"refund number {n}") for n in range(1, 101)])
    assert cache.cursor() == 100 and cache.search("refund") == []  # committed, not yet searchable

    other = sqlite3.connect(tmp_path / "c.db", timeout=0)
    said: list[bool] = []

    def first() -> None:  # the helper says "done" here: the write lock is already this transaction's
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        said.append(cache.search("refund") == [])

    cache.index_search(first)
    assert said == [True]
    assert len(cache.search("refund", limit=500)) == 100
    cache.index_search()  # nothing new: nothing to do

    cache.apply([received(101, "refund again")])  # deferred, and never indexed by the helper (say, killed)…
    cache.defer_search_index = False
    cache.apply([received(102, "refund at last")])  # …a commit without deferral indexes what is missing
    assert len(cache.search("refund", limit=500)) == 102
    other.close()
    cache.conn().execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


def test_keyset_paging_of_the_inbox(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    events = []
    for n in range(5):
        customer = f"+1415555{n:04d}"
        cid = conversation_id(OUR_NUMBER, customer)
        sid = f"SM{n + 1:032x}"
        events.append(
            protocol.Event(
                n + 1,
                protocol.MESSAGE_RECEIVED,
                f"2026-11-24T05:00:0{n}.000Z",
                {
                    "message_id": sid,
                    "message_sid": sid,
                    "conversation_id": cid,
                    "twilio_number": OUR_NUMBER,
                    "customer_number": customer,
                    "body": str(n),
                    "media": [],
                    "received_at": f"2026-11-24T05:00:0{n}.000Z",
                },
            )
        )
    cache.apply(events)
    first = cache.conversations(limit=2)
    rest = cache.conversations(limit=10, before=(first[-1].last_at, first[-1].id))
    assert [c.last_preview for c in first + rest] == ["4", "3", "2", "1", "0"]


def team_event(seq: int, kind: str, **data: object) -> protocol.Event:
    return protocol.Event(seq, kind, f"2026-11-24T06:00:{seq % 60:02d}.000Z", {"conversation_id": CID, **data})


def test_assignment_status_and_notes_shape_the_inbox(tmp_path: Path) -> None:
    from console.cache import InboxFilter

    cache = Cache(tmp_path / "c.db")
    cache.apply([received(1, "hello")])
    assert cache.next_needing_attention("ana") is not None
    cache.apply(
        [
            team_event(2, protocol.CONVERSATION_ASSIGNED, assignee="ben", previous=None, by="ben"),
            team_event(3, protocol.NOTE_ADDED, note_id="NT" + "1" * 32, body="VIP, be quick", agent="ben", at="x"),
        ]
    )
    assert cache.inbox_count(InboxFilter("open", "mine", "ben")) == 1
    assert cache.inbox_count(InboxFilter("open", "mine", "ana")) == 0
    assert cache.inbox_count(InboxFilter("all", "unassigned")) == 0
    assert cache.next_needing_attention("ana") is None  # claimed by someone else
    assert [m.direction for m in cache.messages(CID)] == ["inbound", "note"]
    assert cache.search("VIP")[0].direction == "note"
    until = "2026-11-25T09:00:00.000Z"
    cache.apply(
        [team_event(4, protocol.CONVERSATION_STATUS, status="snoozed", snoozed_until=until, previous="open", by="ben")]
    )
    row = cache.conversation(CID)
    assert row is not None and (row.status, row.snoozed_until) == ("snoozed", until)
    assert cache.inbox_count(InboxFilter("open")) == 0 and cache.inbox_count(InboxFilter("snoozed")) == 1
    cache.apply([team_event(5, protocol.CONVERSATION_STATUS, status="resolved", snoozed_until=None, by="ben")])
    row = cache.conversation(CID)
    assert row is not None and row.status == "resolved" and row.waiting_since is None and row.snoozed_until is None


def test_read_and_unread_are_local(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    cache.apply([received(1, "one"), received(2, "two")])
    assert cache.unread_total() == 2
    cache.mark_read(CID)
    assert cache.unread_total() == 0
    cache.mark_unread(CID)
    assert cache.unread_total() == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_batching_of_the_same_events_gives_the_same_cache(tmp_path: Path, seed: int) -> None:
    """Texts, replies with their SIDs and statuses (folded into the row when they share a batch), failures, notes,
    calls and voicemails: applied one by one, all at once, or in random chunks, the tables come out the same."""
    import random

    from tests.console_support import calls_events, demo_events

    texts = demo_events()
    events = texts + calls_events(texts, waiting=4, mine="on_hold")
    rng = random.Random(seed)

    def dump(cache: Cache) -> dict[str, list[tuple[object, ...]]]:
        conn = cache.conn()
        return {
            table: [tuple(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
            for table in ("messages", "conversations", "calls", "call_changes", "voicemails")
        }

    one_by_one = Cache(tmp_path / "one.db")
    for event in events:
        one_by_one.apply([event])
    at_once = Cache(tmp_path / "all.db")
    at_once.apply(events)
    chunked = Cache(tmp_path / "chunks.db")
    i = 0
    while i < len(events):
        step = rng.randint(1, 40)
        chunked.apply(events[i : i + step])
        i += step
    held = Cache(tmp_path / "held.db")  # as the catch-up helper streams: chunks into transactions left open
    i = 0
    while i < len(events):
        step = rng.randint(1, 40)
        held.apply(events[i : i + step], commit=rng.random() < 0.2)
        i += step
    held.apply([])
    expected = dump(one_by_one)
    assert expected["messages"] and any(row[8] for row in expected["messages"])  # some with Twilio's error code
    assert dump(at_once) == expected
    assert dump(chunked) == expected
    assert dump(held) == expected


def test_a_transaction_left_open_is_committed_whole_or_rolled_back_whole(tmp_path: Path) -> None:
    import threading

    cache = Cache(tmp_path / "c.db")
    reader = Cache(tmp_path / "c.db")
    cache.apply([received(1, "one")])
    assert cache.apply([received(2, "two")], commit=False) == [received(2, "two")]
    cache.apply([received(3, "three")], commit=False)
    # Nobody sees it until it commits (the cursor is written at the commit, so even the writer's reads 1).
    assert cache.cursor() == 1 and len(cache.messages(CID)) == 3
    assert reader.cursor() == 1 and [m.body for m in reader.messages(CID)] == ["one"]
    # Another thread's apply waits for the write lock until the open transaction commits; by then its event is in.
    late: list[list[protocol.Event]] = []
    other = threading.Thread(target=lambda: late.append(cache.apply([received(4, "late")])))
    other.start()
    other.join(0.3)
    assert other.is_alive() and not late
    cache.apply([received(4, "four")])
    other.join(10)
    assert late == [[]]  # event 4 was already applied: skipped, as any replay overlap
    assert reader.cursor() == 4 and [m.body for m in reader.messages(CID)] == ["one", "two", "three", "four"]
    assert reader.conversations()[0].unread == 4  # the summary folded across the open transaction's calls

    cache.apply([received(5, "five")], commit=False)
    with pytest.raises(GapError):
        cache.apply([received(7, "seven")], commit=False)
    # The whole open transaction is gone, and the write lock with it: the next apply starts afresh.
    assert cache.cursor() == 4 and reader.cursor() == 4
    cache.apply([received(5, "five again")])
    assert [m.body for m in reader.messages(CID)][-1] == "five again" and reader.cursor() == 5
    reader.close()


def test_a_catch_up_sorts_the_inbox_once_at_its_commit_and_no_reader_sees_it_unsorted(tmp_path: Path) -> None:
    """The helper's transactions drop the inbox's indexes and make them again before they commit (``bulk_inbox``):
    another connection meanwhile reads through them, and after the commit, or a rollback, they are as they were,
    the inbox in the same order as a cache that kept them."""

    def text(seq: int, customer: int) -> protocol.Event:
        number = f"+1415555{customer:04d}"
        at = f"2026-11-24T05:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z"
        data = {"message_id": f"SM{seq:032x}", "message_sid": f"SM{seq:032x}", "twilio_number": OUR_NUMBER}
        data |= {"conversation_id": conversation_id(OUR_NUMBER, number), "customer_number": number}
        return protocol.Event(seq, protocol.MESSAGE_RECEIVED, at, {**data, "body": f"text {seq}", "media": []})

    def indexes(cache: Cache) -> list[tuple[str, str]]:
        sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'conversations' ORDER BY name"
        return [tuple(row) for row in cache.conn().execute(sql)]

    events = [text(seq, customer=(seq * 7) % 40) for seq in range(1, 301)]
    cache, reader, kept = Cache(tmp_path / "c.db"), Cache(tmp_path / "c.db"), Cache(tmp_path / "kept.db")
    cache.apply(events[:50])
    before = indexes(reader)
    assert {"conversations_by_activity", "conversations_by_status"} <= {name for name, _ in before}
    cache.bulk_inbox = True  # as the catch-up helper runs
    cache.apply(events[50:200], commit=False)
    dropped = {"conversations_by_activity", "conversations_by_status"}
    assert not dropped & {name for name, _ in indexes(cache)}  # set aside in the writer's transaction
    assert indexes(reader) == before  # the reader's snapshot has them, and its inbox reads through them
    window = "SELECT id FROM conversations ORDER BY last_at DESC, id DESC LIMIT 5"
    plan = [row[3] for row in reader.conn().execute("EXPLAIN QUERY PLAN " + window)]
    assert plan == ["SCAN conversations USING COVERING INDEX conversations_by_activity"], plan
    cache.apply(events[200:250])  # commits
    assert indexes(reader) == indexes(cache) == before

    cache.apply(events[250:280], commit=False)
    with pytest.raises(GapError):
        cache.apply([events[299]], commit=False)  # a gap: the whole open transaction is rolled back
    assert indexes(cache) == before and cache.cursor() == 250
    cache.apply(events[250:])

    kept.apply(events)
    everyone = cache_module.InboxFilter(status="all")
    assert [r.id for r in cache.inbox_window(everyone, 0, 100)] == [r.id for r in kept.inbox_window(everyone, 0, 100)]
    assert len(cache.inbox_window(everyone, 0, 100)) == 40
    assert tuple(cache.conn().execute("PRAGMA integrity_check").fetchone()) == ("ok",)
    reader.close()


def test_the_log_is_folded_into_the_file_in_the_background_not_by_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit checkpoints (an apply never waits for the file's fsync); the checkpointer thread does, soon after,
    and not while a catch-up has paused it."""
    monkeypatch.setattr(cache_module, "CHECKPOINT_DELAY", 0.01)
    path = tmp_path / "c.db"
    cache = Cache(path)
    assert cache.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size = path.stat().st_size
    cache.checkpoints.paused = True
    cache.apply([received(seq, "hello " * 200) for seq in range(1, 301)])
    time.sleep(0.2)
    assert path.stat().st_size == size  # everything is still in the log
    cache.checkpoints.paused = False
    deadline = time.monotonic() + 10
    while path.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.stat().st_size > size
    cache.close()
    assert cache.checkpoints._thread is not None and not cache.checkpoints._thread.is_alive()


def test_the_inbox_version_moves_when_a_conversation_comes_or_changes_status_or_owner(tmp_path: Path) -> None:
    """A text in a conversation the cache knows leaves the inbox's counts as they were: the version stays."""
    cache = Cache(tmp_path / "c.db")
    cache.apply([received(1, "hello")])  # a new conversation
    assert cache.inbox_version == 1
    cache.apply([received(2, "again"), received(3, "and again")])
    assert cache.inbox_version == 1
    at = "2026-11-24T05:01:00.000Z"
    cache.apply([protocol.Event(4, protocol.CONVERSATION_ASSIGNED, at, {"conversation_id": CID, "assignee": "ana"})])
    assert cache.inbox_version == 2
    cache.apply([protocol.Event(5, protocol.CONVERSATION_STATUS, at, {"conversation_id": CID, "status": "resolved"})])
    assert cache.inbox_version == 3
    cache.apply([received(6, "reopened by the bridge's own status event, not by this text")])
    assert cache.inbox_version == 3


def test_threads_are_read_through_the_short_index_and_kept_apart_when_their_keys_collide(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    # Two conversations whose ids share the eight characters the thread index is keyed on.
    ids = ["CVdeadbeef" + "1" * 24, "CVdeadbeef" + "2" * 24]
    events = []
    for seq in range(1, 41):
        event = received(seq, f"text {seq}")
        events.append(protocol.Event(event.seq, event.type, event.ts, {**event.data, "conversation_id": ids[seq % 2]}))
    cache.apply(events)
    odd = [m.body for m in cache.messages(ids[1], limit=100)]
    assert odd == [f"text {n}" for n in range(1, 41, 2)]
    assert [m.body for m in cache.messages(ids[0], limit=5, before_pos=30)] == [
        f"text {n}" for n in (20, 22, 24, 26, 28)
    ]
    assert [m.body for m in cache.messages_from(ids[1], from_pos=31, limit=3)] == ["text 31", "text 33", "text 35"]
    conn = cache.conn()
    for sql in (
        f"SELECT pos FROM messages m WHERE {cache_module._IN_THREAD} AND pos < ? ORDER BY pos DESC LIMIT 5",
        f"SELECT pos FROM messages m WHERE {cache_module._IN_THREAD} AND pos >= ? ORDER BY pos LIMIT 5",
    ):
        plan = " ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [ids[0], ids[0], 1]))
        assert "messages_by_thread" in plan and "TEMP B-TREE" not in plan, plan


def schema_before(path: Path, migration: Callable[..., None]) -> Path:
    """A new cache file at ``path`` with the schema as it was before ``migration`` (the migrations up to it)."""
    import sqlite3

    import sqlite_utils
    from sqlite_utils.migrations import Migrations

    old = Migrations("switchboard-console")
    for fn in cache_module._MIGRATIONS[: cache_module._MIGRATIONS.index(migration)]:
        old()(fn)
    conn = sqlite3.connect(path)
    old.apply(sqlite_utils.Database(conn))
    conn.close()
    return path


def test_a_cache_from_before_the_short_thread_index_keeps_its_threads(tmp_path: Path) -> None:
    path = schema_before(tmp_path / "old.db", cache_module.m006_short_thread_index)
    earlier = Cache(path, migrate=False)
    earlier.apply([received(n, f"text {n}") for n in range(1, 6)])
    earlier.close()

    cache = Cache(path)
    indexes = {row[0] for row in cache.conn().execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "messages_by_thread" in indexes and "messages_by_conversation" not in indexes
    assert [m.body for m in cache.messages(CID)] == [f"text {n}" for n in range(1, 6)]
    cache.apply([received(6, "text 6")])
    assert [m.body for m in cache.messages(CID, limit=2)] == ["text 5", "text 6"]


def test_a_cache_from_before_ids_were_indexed_by_kind_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m007 rebuilds the messages table: rows, positions, the full-text index and the threads come through, replies
    are still found by id, and a note applied twice is still one row."""
    from tests.console_support import demo_events

    path = schema_before(tmp_path / "old.db", cache_module.m007_ids_indexed_except_texts_in)
    events = demo_events()
    earlier = Cache(path, migrate=False)
    earlier.apply(events[:-5])
    before = [tuple(row) for row in earlier.conn().execute("SELECT * FROM messages ORDER BY pos")]
    objects = "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'messages' AND type != 'table' AND sql > ''"
    kept = {tuple(row) for row in earlier.conn().execute(objects)}  # the thread index, the full-text triggers
    hits = [m.pos for m in earlier.search("order")]
    earlier.close()

    monkeypatch.setattr(cache_module, "LONG_MIGRATION_MESSAGES", 10)
    said: list[str] = []
    cache = Cache(path, say=said.append)
    assert len(said) == 1 and said[0].startswith(f"Updating the cache of {len(before)} messages")
    assert [tuple(row) for row in cache.conn().execute("SELECT * FROM messages ORDER BY pos")] == before
    assert hits and [m.pos for m in cache.search("order")] == hits
    table = cache.conn().execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
    assert "UNIQUE" not in table
    cache.apply(events[-5:])  # replies' statuses among them find their rows by id
    fresh = Cache(tmp_path / "fresh.db", say=said.append)  # a new cache has nothing to update: nothing said
    fresh.apply(events)
    assert len(said) == 1
    everything = "SELECT * FROM messages ORDER BY pos"
    assert [tuple(r) for r in cache.conn().execute(everything)] == [tuple(r) for r in fresh.conn().execute(everything)]
    made = {tuple(row) for row in cache.conn().execute(objects)}
    assert {name for _, name, _ in kept} == {"messages_by_thread", "messages_fts_delete", "messages_fts_update"}
    assert made - kept == {row for row in made if row[1] == "messages_by_id"} and kept <= made
    assert made == {tuple(row) for row in fresh.conn().execute(objects)}
    note = protocol.Event(
        len(events) + 1, protocol.NOTE_ADDED, "2026-11-24T07:00:00.000Z",
        {"conversation_id": CID, "note_id": "NT" + "7" * 32, "body": "call back", "agent": "ana", "at": "x"},
    )  # fmt: skip
    again = protocol.Event(len(events) + 2, note.type, note.ts, note.data)
    cache.apply([note, again])
    count = cache.conn().execute("SELECT count(*) FROM messages WHERE id = ?", (note.data["note_id"],)).fetchone()[0]
    assert count == 1


def test_messages_are_found_by_id_through_the_index_for_replies_notes_calls_and_voicemails(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.db")
    conn = cache.conn()
    keyed = cache_module._KEYED
    for sql in (
        f"UPDATE messages SET status = ? WHERE id = ? AND {keyed}",
        f"SELECT pos FROM messages WHERE id = ? AND {keyed}",
    ):
        params = ["x", "y"] if sql.startswith("UPDATE") else ["y"]
        plan = " ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX messages_by_id" in plan, plan


def test_a_damaged_cache_file_gets_a_clear_message_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from console import cli, locations

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    url = "http://127.0.0.1:9"
    locations.cache_file(url).write_bytes(b"not a database " * 400)
    assert cli.main(["--url", url, "--token", "t"]) == 2
    said = capsys.readouterr().err
    assert said.startswith("switchboard: could not open the cache at ") and "move it aside" in said


def test_an_unknown_region_is_refused_with_what_to_use(tmp_path: Path) -> None:
    from console.config import ConfigError, load

    nothing = tmp_path / "none.toml"
    assert load(nothing, {}, region="gb").region == "GB"
    assert load(nothing, {"SWITCHBOARD_REGION": "de"}).region == "DE"
    for bad in ("ZZ", "USA", ""):
        with pytest.raises(ConfigError, match="is not a region: use a two-letter country code"):
            load(nothing, {}, region=bad)


def test_a_catch_up_inserting_its_texts_in_a_thread_writes_what_a_plain_apply_writes(tmp_path: Path) -> None:
    """``bulk_texts`` (the helper's): each hand-over's texts are moved into ``messages`` in a thread while the next
    is applied. The statements after them wait for them (a reply's status coming in the next hand-over updates the
    row), and the cache ends as one applied the plain way: same rows in the same order, same conversations,
    same search."""
    from tests.console_support import NOW, EventLog, customer, demo_events

    log = EventLog(seq=0, ids="bulk texts")
    log.events = demo_events()
    log.seq = log.events[-1].seq
    for n in range(400):
        at = NOW + timedelta(seconds=n)
        if n % 3:
            log.inbound(customer(n % 37), f"parcel question {n}", at)
        else:
            log.outbound(customer(n % 37), f"parcel answer {n}", at, status="delivered" if n % 2 else "queued")
    events = log.events
    replayed = events[40:95]  # a reply's row and its status in different hand-overs, and an overlap skipped
    plain, bulk = Cache(tmp_path / "plain.db"), Cache(tmp_path / "bulk.db")
    plain.apply(events)
    bulk.bulk_texts = True
    for start in range(0, len(events), 37):
        bulk.apply(events[start : start + 37], commit=False)
        if start == 111:
            bulk.apply(replayed, commit=False)
    bulk.apply([], commit=True)

    def table(cache: Cache, sql: str) -> list[tuple[object, ...]]:
        return [tuple(row) for row in cache.conn().execute(sql)]

    assert bulk.cursor() == plain.cursor() == events[-1].seq
    messages = (
        "SELECT pos, id, sid, conversation_id, direction, body, media, status, error_code, agent, at, seq FROM messages"
    )
    assert table(bulk, messages + " ORDER BY pos") == table(plain, messages + " ORDER BY pos")
    assert table(bulk, "SELECT * FROM conversations ORDER BY id") == table(
        plain, "SELECT * FROM conversations ORDER BY id"
    )
    assert [m.id for m in bulk.search("parcel")] == [m.id for m in plain.search("parcel")]
    assert any(row[7] == "delivered" for row in table(bulk, messages + " WHERE direction = 'outbound'"))
    assert tuple(bulk.conn().execute("PRAGMA integrity_check").fetchone()) == ("ok",)
    bulk.close()
    plain.close()


def test_a_failed_insert_in_the_texts_thread_rolls_the_whole_transaction_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The texts' thread's error comes out of the next apply, and nothing of the open transaction stays."""
    cache = Cache(tmp_path / "c.db")
    cache.apply([received(1, "before")])
    cache.bulk_texts = True
    monkeypatch.setattr(
        cache_module, "_MOVE_STAGED", cache_module._MOVE_STAGED.replace("ORDER BY rowid", "ORDER BY nope")
    )
    cache.apply([received(2, "lost")], commit=False)
    with pytest.raises(sqlite3.OperationalError, match="nope"):
        cache.apply([received(3, "lost too")], commit=True)
    assert cache.cursor() == 1
    assert [m.body for m in cache.messages(CID)] == ["before"]
    monkeypatch.undo()
    cache.apply([received(2, "again"), received(3, "and again")])
    assert [m.body for m in cache.messages(CID)] == ["before", "again", "and again"]
    cache.close()
