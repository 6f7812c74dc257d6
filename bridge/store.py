"""The event log and current state, in SQLite, with group commit.

Every accepted webhook and every agent command becomes an event with a gap-free, strictly increasing ``seq``,
given in the same commit that stores it. Writes are *operations* (plain functions over one transaction) handed
to a single writer, which drains its queue and commits a whole batch at once; each caller awaits its batch's
commit, so an acknowledgement always means the event survives ``kill -9`` while the fsync cost is shared.

``EventStore`` is the small interface the rest of the bridge uses (append, read after seq, state queries);
``SqliteStore`` implements it. A server database (PostgreSQL with LISTEN/NOTIFY) can implement it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import sqlite_utils
from sqlite_utils.migrations import Migrations

T = TypeVar("T")

# Delivery status precedence: a callback never moves a message to a lower rank. Terminal statuses share a
# rank, so the first one recorded wins (a late "failed" does not overwrite "delivered"); "read" outranks all.
STATUS_RANK: dict[str, int] = {
    "scheduled": 0,
    "accepted": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "canceled": 3,
    "partially_delivered": 3,
    "read": 4,
}


def utc_now() -> str:
    """Now, as the log writes times: ISO 8601 UTC with milliseconds."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def hash_token(token: str) -> str:
    """Agent tokens are 256-bit random strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class StoredEvent:
    """An event as committed: its frame is encoded once and sent to every console as is. Never changed once made
    (not declared frozen: see ``bridge.messaging.InboundMessage``)."""

    seq: int
    type: str
    ts: str
    data_json: str

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data_json)
        return value

    def frame(self) -> str:
        return f'{{"seq":{self.seq},"type":{_quoted(self.type)},"ts":"{self.ts}","data":{self.data_json}}}'


_quoted = functools.lru_cache(maxsize=256)(json.dumps)
"""An event type as a JSON string: the same few, again and again."""

_REPLAY = (
    "SELECT seq, type, ',\"ts\":\"' || ts || '\",\"data\":' || data || '}' "
    "FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
)
"""The events after a seq, each with what follows its type in its frame (``StoredEvent.frame``), put together by
SQLite: see ``SqliteStore.read_frames_after``."""


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    created_at: str
    revoked_at: str | None
    phone: str | None


class Tx:
    """One operation's view of the writer's transaction: append events and change state.

    ``now`` is read once per batch: every operation committed together shares it.
    """

    def __init__(self, conn: sqlite3.Connection, now: str | None = None) -> None:
        self.conn = conn
        self.events: list[StoredEvent] = []
        self.now = now or utc_now()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def claim_key(self, key: str) -> bool:
        """Record one idempotency key; False (and nothing recorded) if it was seen before."""
        cur = self.conn.execute("INSERT OR IGNORE INTO seen_keys (key, seen_at) VALUES (?, ?)", (key, self.now))
        return cur.rowcount == 1

    def claim_keys(self, keys: Iterable[str]) -> bool:
        """Record idempotency keys; False (and nothing recorded) if any was seen before."""
        keys = list(dict.fromkeys(k for k in keys if k))
        if not keys:
            return True
        if len(keys) == 1:
            return self.claim_key(keys[0])
        # One statement for all the keys; it returns the ones it inserted (the new ones).
        values = ",".join(["(?, ?)"] * len(keys))
        params = [value for key in keys for value in (key, self.now)]
        claimed = self.conn.execute(
            f"INSERT OR IGNORE INTO seen_keys (key, seen_at) VALUES {values} RETURNING key", params
        ).fetchall()
        if len(claimed) == len(keys):
            return True
        if claimed:  # some were new, some seen before: a duplicate, so the new ones are not kept either
            marks = ",".join("?" * len(claimed))
            self.conn.execute(f"DELETE FROM seen_keys WHERE key IN ({marks})", [row[0] for row in claimed])
        return False

    def append(self, type: str, data: dict[str, Any]) -> StoredEvent:
        data_json = _encode_json(data)
        cur = self.conn.execute("INSERT INTO events (type, ts, data) VALUES (?, ?, ?)", (type, self.now, data_json))
        seq = cur.lastrowid
        assert seq is not None
        event = StoredEvent(seq=seq, type=type, ts=self.now, data_json=data_json)
        self.events.append(event)
        return event


_json_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _encode_json(data: dict[str, Any]) -> str:
    """Events' data as the log stores it: compact JSON text, characters as they are (not escaped to ASCII).

    orjson writes the same JSON as the standard library's encoder for what events hold, 6× faster (an inbound
    text's data: 0.95 µs against 5.7 µs, timeit); the standard library's encoding was 6% of the bridge's samples
    under an inbound burst (py-spy, ``tests.bench.profile_ingest``). What orjson refuses (an integer beyond 64
    bits, a lone surrogate, a key that is not a string) goes to the standard library's encoder, which says what it
    says about it as before."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return _json_encoder.encode(data)


Operation = Callable[[Tx], T]


@dataclass(slots=True)
class _Pending:
    op: Operation[Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None
    events: list[StoredEvent] = field(default_factory=list)


class EventStore(Protocol):
    """What the bridge needs from a store. SQLite implements it here; PostgreSQL can later."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def subscribe_commits(self, callback: Callable[[list[StoredEvent]], None]) -> None: ...
    async def write(self, op: Operation[T]) -> T: ...
    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T: ...
    async def read_after(self, seq: int, limit: int = 1000) -> list[StoredEvent]: ...
    async def read_frames_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str]]: ...
    async def head(self) -> int: ...


migrations = Migrations("switchboard-bridge")


@migrations()
def m001_event_log(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,   -- rowid: max+1 inside the writer's transaction, so gap-free
            type TEXT NOT NULL,
            ts TEXT NOT NULL,
            data TEXT NOT NULL
        )"""
    )
    db.execute("CREATE TABLE seen_keys (key TEXT PRIMARY KEY, seen_at TEXT NOT NULL) WITHOUT ROWID")
    db.execute(
        """CREATE TABLE agents (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT,
            phone TEXT
        )"""
    )
    db.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            twilio_number TEXT NOT NULL,
            customer_number TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_message_at TEXT,
            last_preview TEXT,
            UNIQUE (twilio_number, customer_number)
        )"""
    )
    db.execute(
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            sid TEXT UNIQUE,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            direction TEXT NOT NULL,          -- inbound | outbound
            body TEXT NOT NULL,
            media TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL,
            error_code INTEGER,
            error_message TEXT,
            agent TEXT,
            command_id TEXT,
            encoding TEXT,
            segments INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at)")
    db.execute(
        """CREATE TABLE early_statuses (  -- callbacks for messages not yet recorded as sent
            id INTEGER PRIMARY KEY,
            sid TEXT NOT NULL,
            status TEXT NOT NULL,
            error_code INTEGER,
            error_message TEXT,
            received_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX early_statuses_by_sid ON early_statuses (sid)")
    db.execute(
        """CREATE TABLE opt_outs (
            twilio_number TEXT NOT NULL,
            customer_number TEXT NOT NULL,
            opted_out INTEGER NOT NULL,
            reason TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (twilio_number, customer_number)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE commands (
            agent TEXT NOT NULL,
            id TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            state TEXT NOT NULL,      -- running | done
            result TEXT,              -- the Result frame, once done
            message_id TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (agent, id)
        ) WITHOUT ROWID"""
    )


@migrations()
def m002_conversation_state(db: sqlite_utils.Database) -> None:
    """Who a conversation is assigned to and where it stands (bridge/conversations.py); agents' internal notes."""
    db.execute("ALTER TABLE conversations ADD COLUMN assignee TEXT")  # an agent's name; NULL: unassigned
    db.execute(
        "ALTER TABLE conversations ADD COLUMN status TEXT NOT NULL DEFAULT 'open' "
        "CHECK (status IN ('open', 'pending', 'resolved', 'snoozed'))"
    )
    db.execute("ALTER TABLE conversations ADD COLUMN snoozed_until TEXT")  # as utc_now() writes it; only when snoozed
    db.execute("CREATE INDEX conversations_snoozed ON conversations (snoozed_until) WHERE status = 'snoozed'")
    db.execute(
        """CREATE TABLE notes (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            body TEXT NOT NULL,
            agent TEXT NOT NULL,
            command_id TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX notes_by_conversation ON notes (conversation_id, created_at)")


@migrations()
def m003_voice(db: sqlite_utils.Database) -> None:
    """Voice (bridge/calls.py): calls, phone legs, voicemails, presence, REST intents."""
    db.execute(
        """CREATE TABLE calls (
            call_sid TEXT PRIMARY KEY,          -- the caller's CallSid; also the call's conference's name
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            twilio_number TEXT NOT NULL,
            customer_number TEXT NOT NULL,
            caller_name TEXT,
            from_city TEXT,
            from_state TEXT,
            from_country TEXT,
            queue TEXT,                         -- the queue it waits in (null once answered from it)
            last_queue TEXT NOT NULL,           -- the queue it last waited in (greeting, music, missed-call text)
            queue_sid TEXT,                     -- Twilio's QU… for last_queue, once a wait request told us
            state TEXT NOT NULL,
            agent TEXT,
            agent_leg TEXT,                     -- call_legs.leg_id of the agent's phone
            target_leg TEXT,                    -- call_legs.leg_id of a transfer target's phone
            on_hold INTEGER NOT NULL DEFAULT 0,
            muted INTEGER NOT NULL DEFAULT 0,
            transfer TEXT,                      -- JSON, as in call.updated
            offered_to TEXT,
            offer_expires_at TEXT,
            queued_at TEXT NOT NULL,            -- first queued: the queue's order, so a failed handoff keeps its place
            waiting_since TEXT NOT NULL,        -- queued this time: the longest wait counts from here
            answered_at TEXT,
            ended_at TEXT,
            outcome TEXT,
            agents TEXT NOT NULL DEFAULT '[]',  -- JSON list of every agent who talked to the caller
            reason TEXT,
            voicemail_reason TEXT,
            call_seq INTEGER NOT NULL DEFAULT -1,  -- last applied SequenceNumber of the caller's status callbacks
            conference_sid TEXT,
            conf_seq INTEGER NOT NULL DEFAULT -1,  -- unused: kept per conference in conference_seqs (m004)
            caller_joined INTEGER NOT NULL DEFAULT 0,  -- the caller was sent into the conference (join TwiML)
            updated_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX calls_waiting ON calls (last_queue, queued_at) WHERE state = 'queued'")
    db.execute(
        """CREATE TABLE call_legs (
            leg_id TEXT PRIMARY KEY,            -- ours: LG + 32 hex; the participant's label and in its callback URL
            call_sid TEXT NOT NULL REFERENCES calls(call_sid),
            role TEXT NOT NULL,                 -- agent | target
            agent TEXT,                         -- the agent whose phone it is (null: an external number)
            endpoint TEXT NOT NULL,
            leg_sid TEXT,                       -- Twilio's CallSid for the leg, once known
            status TEXT NOT NULL,               -- dialing | answered | ended
            last_seq INTEGER NOT NULL DEFAULT -1,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX call_legs_by_sid ON call_legs (leg_sid)")
    db.execute(
        """CREATE TABLE voicemails (
            id TEXT PRIMARY KEY,
            call_sid TEXT NOT NULL REFERENCES calls(call_sid),
            conversation_id TEXT NOT NULL,
            recording_sid TEXT NOT NULL UNIQUE,
            recording_url TEXT NOT NULL,
            duration INTEGER,
            reason TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE presence (
            agent TEXT PRIMARY KEY,
            presence TEXT NOT NULL,
            reason TEXT NOT NULL,
            call_sid TEXT,
            wrap_up_call TEXT,                  -- the call whose disposition note is owed
            since TEXT NOT NULL,
            idle_since TEXT NOT NULL            -- when they last became available: auto-offer's longest idle
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE voice_intents (
            id INTEGER PRIMARY KEY,
            call_sid TEXT NOT NULL,
            steps TEXT NOT NULL,                -- JSON list of REST steps, carried out in order
            state TEXT NOT NULL,                -- pending | done | failed
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX voice_intents_pending ON voice_intents (id) WHERE state = 'pending'")
    db.execute(
        "CREATE TABLE offer_declines (call_sid TEXT NOT NULL, agent TEXT NOT NULL, PRIMARY KEY (call_sid, agent))"
    )
    db.execute("ALTER TABLE notes ADD COLUMN call_sid TEXT")


@migrations()
def m004_conference_seqs(db: sqlite_utils.Database) -> None:
    """SequenceNumber per conference: a caller sent back to the queue joins a new conference (same name, new SID)
    whose numbers start again at 0."""
    db.execute(
        """CREATE TABLE conference_seqs (
            conference_sid TEXT PRIMARY KEY,
            call_sid TEXT NOT NULL,
            last_seq INTEGER NOT NULL,
            ended INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID"""
    )


@migrations()
def m005_caller_joined(db: sqlite_utils.Database) -> None:
    """calls.caller_joined joined m003 after it was first committed: add it to databases made before that."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(calls)").fetchall()}
    if "caller_joined" not in columns:
        db.execute("ALTER TABLE calls ADD COLUMN caller_joined INTEGER NOT NULL DEFAULT 0")


@migrations()
def m006_message_sids(db: sqlite_utils.Database) -> None:
    """Only outbound messages are looked up by SID (their status callbacks), and an inbound message's id is its
    SID already: the SID index keeps outbound rows only, so an inbound text writes one index fewer. The inline
    UNIQUE on ``sid`` can't be dropped in place, so the table is rebuilt (nothing references it)."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone()[0]
    if "sid TEXT UNIQUE" not in sql:
        return
    db.execute(
        sql.replace("CREATE TABLE messages", "CREATE TABLE messages_rebuilt", 1).replace(
            "sid TEXT UNIQUE", "sid TEXT", 1
        )
    )
    db.execute("INSERT INTO messages_rebuilt SELECT * FROM messages")
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE messages_rebuilt RENAME TO messages")
    db.execute("CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at)")
    db.execute("CREATE UNIQUE INDEX messages_by_sid ON messages (sid) WHERE direction = 'outbound'")


@migrations()
def m007_replies_by_customer(db: sqlite_utils.Database) -> None:
    """Before each send the bridge reads the SIDs of the replies already sent to that customer (commands.py,
    ``REPLIES_TO_CUSTOMER``). With no index on a conversation's customer, SQLite walked every reply in the log
    for it: a send's lookup grew with the log. Now it goes customer → conversations → their replies. Nothing
    else reads messages by conversation, so that index keeps replies only, and a text coming in writes one
    index entry fewer. (SQLite would use a full index on messages.conversation_id for its foreign key only when a
    conversation is deleted or its id changed, which the bridge never does.)"""
    db.execute("DROP INDEX IF EXISTS messages_by_conversation")
    db.execute("CREATE INDEX replies_by_conversation ON messages (conversation_id) WHERE direction = 'outbound'")
    db.execute("CREATE INDEX conversations_by_customer ON conversations (customer_number)")


@migrations()
def m008_no_walks_of_history(db: sqlite_utils.Database) -> None:
    """Statements that ran often or at start-up and read every row ever kept, found with EXPLAIN QUERY PLAN over
    the test suite's statements: each queue's waiting count (every call state change, on the event loop) walked
    every call ever taken; ending a call walked every voicemail; resuming sends at start-up walked every command.
    Each index holds the few rows those statements want (live calls, running commands) or is a plain lookup."""
    db.execute(
        "CREATE INDEX calls_in_queue ON calls (last_queue, waiting_since) WHERE state IN ('queued', 'ringing_agent')"
    )
    db.execute("CREATE INDEX voicemails_by_call ON voicemails (call_sid)")
    db.execute("CREATE INDEX commands_running ON commands (created_at) WHERE state = 'running'")


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY, or one of its extended codes (a lock another connection holds)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def open_database(path: Path | str) -> sqlite_utils.Database:
    """Open (creating and migrating if needed) the bridge database at ``path``."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path)
    db = sqlite_utils.Database(conn)
    migrations.apply(db)
    return db


READER_THREADS = 4
"""Reader connections (one per thread): enough for replays to several consoles while commands look things up."""
BUSY_WAIT_MS = 30_000
"""How long the writer waits for the write lock another process holds (``switchboard-bridge agents`` adding one)."""
WRITER_CACHE_KIB = 32 * 1024
"""The writer's page cache (SQLite's default is 2 MiB), so that on a large log the index pages a text touches stay
in memory instead of being read again from the OS for each statement."""


class SqliteStore:
    """The event log and current state in one SQLite file (WAL, synchronous=FULL), with group commit."""

    def __init__(self, path: Path | str, max_batch: int = 512) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._db = open_database(self.path)
        self._writer_conn = self._db.conn
        self._writer_conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        # The writer never waits inside SQLite for the lock: a taken lock fails BEGIN at once, and the wait
        # happens in the writer thread (see _begin).
        self._writer_conn.execute("PRAGMA busy_timeout = 0")
        self._thread_work: Future[Any] | None = None
        """The last thing handed to the writer thread without waiting (a rollback after a failed batch)."""
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Own pools, not asyncio's default: close() must be able to wait for every query still running on a
        # connection before closing it (a cancelled to_thread() leaves its query running in the thread).
        self._read_pool = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="store-read")
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[list[StoredEvent]], None]] = []
        self.batches_committed = 0
        self.ops_committed = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._writer(), name="store-writer")

    async def close(self) -> None:
        if self._queue is not None and self._writer_task is not None:
            await self._queue.put(None)
            await self._writer_task
        self._writer_task = None
        self._queue = None
        await asyncio.to_thread(self._read_pool.shutdown, True)
        await asyncio.to_thread(self._write_pool.shutdown, True)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer_conn.close()

    def subscribe_commits(self, callback: Callable[[list[StoredEvent]], None]) -> None:
        """Call ``callback`` in the event loop with each batch's events, in seq order, right after commit."""
        self._listeners.append(callback)

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, op: Operation[T]) -> Awaitable[T]:
        """Run ``op`` in the next batch; resolves once that batch is committed (or with op's exception)."""
        if self._queue is None:
            raise RuntimeError("the store is not started")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(op, future))
        return future

    async def _writer(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                outcomes = await self._commit_batch([p.op for p in batch])
            except BaseException as exc:  # the commit itself failed: nobody in the batch is acknowledged
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            events = [event for outcome in outcomes for event in outcome.events]
            if events:
                for listener in self._listeners:
                    listener(events)
            for pending, outcome in zip(batch, outcomes, strict=True):
                if pending.future.done():  # the caller went away; the work is committed all the same
                    continue
                if outcome.error is not None:
                    pending.future.set_exception(outcome.error)
                else:
                    pending.future.set_result(outcome.value)

    async def _commit_batch(self, ops: list[Operation[Any]]) -> list[_Outcome]:
        """Run a batch in one transaction and commit it. An operation that raises is undone alone: the batch is
        rolled back and run again with each operation in its own savepoint (so operations may run more than once,
        and must not act outside the transaction), which the usual batch, where nothing fails, does not pay for.

        Where each step runs is measured: the operations run here, on the event loop (a handful of short,
        in-memory statements each), and so does taking the write lock when it is free; waiting for it (another
        process holds it) and the commit (the WAL write and its fsync) run in the writer thread. Run in the thread
        too, the statements cost more in hand-offs of the GIL between it and the busy loop than they do
        themselves: 0.37 ms of CPU per acknowledged text against 0.32 ms (profile_ingest, closed loop, five runs
        each)."""
        conn = self._writer_conn
        now = utc_now()  # one clock reading per batch
        try:
            await self._begin()
            outcomes = self._run_ops(conn, ops, now)
            if outcomes is None:
                self._rollback()
                await self._begin()
                outcomes = self._run_ops_isolated(conn, ops, now)
            await asyncio.get_running_loop().run_in_executor(self._write_pool, self._commit)
        except BaseException:
            # Queued behind whatever the thread is running (a cancelled await does not stop it), so the
            # connection is never used by two threads at once, and before the next batch's BEGIN.
            with contextlib.suppress(RuntimeError):  # the pool is shut down: the store is closing anyway
                self._thread_work = self._write_pool.submit(self._rollback)
            raise
        self.batches_committed += 1
        self.ops_committed += len(ops)
        return outcomes

    async def _begin(self) -> None:
        """Take the write lock: here when it is free (BEGIN fails at once otherwise: the busy timeout is 0), which
        saves the batch a round trip to the writer thread (~60 µs of CPU on this machine, a tenth of a small
        batch's); else in the writer thread, waiting up to BUSY_WAIT_MS as SQLite's busy timeout would. Also in
        the thread while a rollback handed to it may still be running there."""
        if self._thread_work is None or self._thread_work.done():
            try:
                self._writer_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
        await asyncio.get_running_loop().run_in_executor(self._write_pool, self._waiting, "BEGIN IMMEDIATE")

    def _commit(self) -> None:
        """COMMIT (in the writer thread). In WAL mode it takes no lock it does not hold; should SQLite still say
        busy (a reader recovering the log's index, say), it is waited for."""
        try:
            self._writer_conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            self._waiting("COMMIT")

    def _waiting(self, sql: str) -> None:
        """Run ``sql`` in the writer thread, waiting for locks as long as BUSY_WAIT_MS."""
        conn = self._writer_conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_WAIT_MS}")
        try:
            conn.execute(sql)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _rollback(self) -> None:
        if self._writer_conn.in_transaction:
            self._writer_conn.execute("ROLLBACK")

    @staticmethod
    def _run_ops(conn: sqlite3.Connection, ops: list[Operation[Any]], now: str) -> list[_Outcome] | None:
        """Every operation in the open transaction; None as soon as one raises (the transaction is then dirty)."""
        outcomes: list[_Outcome] = []
        for op in ops:
            tx = Tx(conn, now)
            try:
                value = op(tx)
            except Exception:
                return None
            outcomes.append(_Outcome(value=value, events=tx.events))
        return outcomes

    @staticmethod
    def _run_ops_isolated(conn: sqlite3.Connection, ops: list[Operation[Any]], now: str) -> list[_Outcome]:
        """Every operation in its own savepoint: one that raises is undone alone; the rest of the batch commits."""
        outcomes: list[_Outcome] = []
        for op in ops:
            tx = Tx(conn, now)
            conn.execute("SAVEPOINT op")
            try:
                value = op(tx)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append(_Outcome(error=exc))
                continue
            conn.execute("RELEASE op")
            outcomes.append(_Outcome(value=value, events=tx.events))
        return outcomes

    # -- reading ---------------------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def read_sync(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only query on this thread's reader connection (a consistent WAL snapshot)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return query(conn)
        finally:
            conn.execute("COMMIT")

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only query off the event loop. Raises RuntimeError once the store is closing."""
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, self.read_sync, query)

    async def read_after(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        def query(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                "SELECT seq, type, ts, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            return [StoredEvent(r[0], r[1], r[2], r[3]) for r in rows]

        return await self.read(query)

    async def read_frames_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(seq, frame) of the events after ``seq``, in order: the frames ``StoredEvent.frame`` makes, with no
        StoredEvent made. A replay's 100k events took 0.20–0.26 s so against 0.41–0.62 s through ``read_after``
        (a one-off comparison on the bench's bridge log), CPU the bridge shares with the console catching up."""

        def query(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return [
                (n, f'{{"seq":{n},"type":{_quoted(kind)}{rest}')
                for n, kind, rest in conn.execute(_REPLAY, (seq, limit))
            ]

        return await self.read(query)

    async def head(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]))


# -- agents (also used by the CLI while a bridge runs: plain short transactions) --------------------------------


def add_agent(db: sqlite_utils.Database, name: str) -> str:
    """Create agent ``name`` (or give a revoked one a fresh start) and return its new token, shown only once."""
    token = "sb_" + secrets.token_urlsafe(32)
    now = utc_now()
    with db.atomic():
        row = db.execute("SELECT revoked_at FROM agents WHERE name = ?", [name]).fetchone()
        if row is not None and row[0] is None:
            raise ValueError(f"agent {name!r} already exists; revoke it first to issue a new token")
        db.execute(
            "INSERT INTO agents (name, token_hash, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at, "
            "revoked_at = NULL",
            [name, hash_token(token), now],
        )
    return token


def list_agents(db: sqlite_utils.Database) -> list[Agent]:
    rows = db.execute("SELECT name, created_at, revoked_at, phone FROM agents ORDER BY name").fetchall()
    return [Agent(*row) for row in rows]


def set_agent_phone(db: sqlite_utils.Database, name: str, endpoint: str | None) -> bool:
    """Set the phone ``name``'s calls ring (checked by the caller); False if there is no such active agent."""
    with db.atomic():
        cur = db.execute("UPDATE agents SET phone = ? WHERE name = ? AND revoked_at IS NULL", [endpoint, name])
    return bool(cur.rowcount)


def revoke_agent(db: sqlite_utils.Database, name: str) -> bool:
    """Revoke ``name``'s token; False if there is no such active agent."""
    with db.atomic():
        cur = db.execute("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", [utc_now(), name])
    return bool(cur.rowcount)


def agent_for_token(conn: sqlite3.Connection, token: str) -> str | None:
    """The active agent holding ``token``, if any."""
    row = conn.execute(
        "SELECT name FROM agents WHERE token_hash = ? AND revoked_at IS NULL", (hash_token(token),)
    ).fetchone()
    return None if row is None else str(row[0])


def is_revoked(conn: sqlite3.Connection, name: str) -> bool:
    """Whether ``name`` is an agent who has been revoked (and not added again). Commands check it in the
    transaction that would carry them out: a console keeps its stream until the revocation watcher's next tick,
    and nothing it sends meanwhile may take effect."""
    row = conn.execute("SELECT revoked_at FROM agents WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] is not None


REVOKED_SAID = "Your agent token was revoked, so the bridge carries out nothing more from this console."


def active_token_hashes(conn: sqlite3.Connection) -> set[str]:
    """The hashes of the tokens that let an agent in now."""
    return {str(r[0]) for r in conn.execute("SELECT token_hash FROM agents WHERE revoked_at IS NULL")}
