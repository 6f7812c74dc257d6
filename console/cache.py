"""The console's local cache: the bridge's events applied in seq order, the cursor saved in the same transaction.

Everything on screen is read from here, so the console opens instantly with its history and stays readable when
the bridge is away. No textual import: screens call these functions from thread workers.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bridge import protocol

if TYPE_CHECKING:
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

_MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def _migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    _MIGRATIONS.append(fn)
    return fn


@functools.cache
def schema() -> Migrations:
    """The cache's migrations, in order, named after their functions. Built on first use: sqlite-utils takes ~0.3 s
    to import here, which the catch-up helper, opening a cache its console has already migrated, does not pay."""
    from sqlite_utils.migrations import Migrations

    migrations = Migrations("switchboard-console")
    for fn in _MIGRATIONS:
        migrations()(fn)
    return migrations


@_migration
def m001_cache(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    db.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            twilio_number TEXT NOT NULL,
            customer_number TEXT NOT NULL,
            customer_name TEXT,
            status TEXT NOT NULL DEFAULT 'open',
            assignee TEXT,
            last_at TEXT NOT NULL,
            last_preview TEXT NOT NULL DEFAULT '',
            last_direction TEXT,
            unread INTEGER NOT NULL DEFAULT 0,
            opted_out INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            waiting_since TEXT,              -- the oldest inbound text not yet answered
            message_count INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX conversations_by_activity ON conversations (last_at DESC, id DESC)")
    db.execute("CREATE INDEX conversations_waiting ON conversations (waiting_since) WHERE waiting_since IS NOT NULL")
    db.execute(
        """CREATE TABLE messages (
            pos INTEGER PRIMARY KEY,         -- local order; the full-text index's rowid
            id TEXT NOT NULL UNIQUE,
            sid TEXT,
            conversation_id TEXT NOT NULL,
            direction TEXT NOT NULL,         -- inbound | outbound
            body TEXT NOT NULL,
            media TEXT NOT NULL DEFAULT '[]',
            status TEXT,
            error_code INTEGER,
            error_message TEXT,
            agent TEXT,
            at TEXT NOT NULL,
            seq INTEGER
        )"""
    )
    db.execute("CREATE INDEX messages_by_conversation ON messages (conversation_id, pos)")
    db.execute("CREATE INDEX messages_by_sid ON messages (sid) WHERE sid IS NOT NULL")
    db.execute(
        "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', content_rowid='pos', "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    db.execute(
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
        "INSERT INTO messages_fts (rowid, body) VALUES (new.pos, new.body); END"
    )
    db.execute(
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
        "INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.pos, old.body); END"
    )
    db.execute(
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN "
        "INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.pos, old.body); "
        "INSERT INTO messages_fts (rowid, body) VALUES (new.pos, new.body); END"
    )
    db.execute(
        """CREATE TABLE outbox (
            command_id TEXT PRIMARY KEY,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            conversation_id TEXT,
            created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed
            error TEXT
        ) WITHOUT ROWID"""
    )


@_migration
def m002_team_state(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE conversations ADD COLUMN snoozed_until TEXT")
    db.execute("CREATE INDEX conversations_by_status ON conversations (status, last_at DESC, id DESC)")
    db.execute("CREATE INDEX messages_by_conversation_at ON messages (conversation_id, at)")


STATUSES = ("open", "pending", "resolved", "snoozed", "all")
OWNERS = ("mine", "unassigned", "all")


@dataclass(frozen=True, slots=True)
class InboxFilter:
    """Which conversations the inbox lists: by status and by owner (``agent`` is who "mine" means)."""

    status: str = "open"
    owner: str = "all"
    agent: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.status != "all":
            clauses.append("status = ?")
            params.append(self.status)
        if self.owner == "mine":
            clauses.append("assignee = ?")
            params.append(self.agent or "")
        elif self.owner == "unassigned":
            clauses.append("assignee IS NULL")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def describe(self) -> str:
        owner = {"mine": "mine", "unassigned": "unassigned", "all": "everyone's"}[self.owner]
        return f"{self.status} · {owner}"


@_migration
def m003_batched_search_index(db: sqlite_utils.Database) -> None:
    # The full-text index is filled once per applied batch (one INSERT … SELECT) rather than by a trigger per row,
    # which halved catch-up speed; ``fts_pos`` is the last message position indexed.
    db.execute("DROP TRIGGER messages_fts_insert")
    db.execute("DROP INDEX messages_by_conversation_at")
    db.execute(
        "INSERT INTO meta (key, value) SELECT 'fts_pos', CAST(coalesce(max(pos), 0) AS TEXT) FROM messages "
        "WHERE true ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    )


@_migration
def m004_voice(db: sqlite_utils.Database) -> None:
    # A call is upserted from each call.updated snapshot (the newest seq wins); ``call_changes`` keeps what happened,
    # for the thread's timeline. A call and a voicemail also get a row in ``messages`` (direction 'call' or
    # 'voicemail', empty body) so they sit in the thread's order and paging like any text.
    db.execute(
        """CREATE TABLE calls (
            call_sid TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            twilio_number TEXT NOT NULL,
            customer_number TEXT NOT NULL,
            caller_name TEXT,
            from_city TEXT,
            from_state TEXT,
            from_country TEXT,
            queue TEXT,
            state TEXT NOT NULL,
            agent TEXT,
            on_hold INTEGER NOT NULL DEFAULT 0,
            muted INTEGER NOT NULL DEFAULT 0,
            transfer TEXT,                   -- JSON, or NULL
            offered_to TEXT,
            offer_expires_at TEXT,
            queued_at TEXT,
            answered_at TEXT,
            ended_at TEXT,
            outcome TEXT,
            agents TEXT NOT NULL DEFAULT '[]',
            reason TEXT,
            change TEXT NOT NULL,            -- what the last snapshot said just happened
            changed_at TEXT NOT NULL,        -- when (the event's time)
            seq INTEGER NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX calls_live ON calls (queued_at, call_sid) WHERE state != 'ended'")
    db.execute(
        """CREATE TABLE call_changes (
            seq INTEGER PRIMARY KEY,
            call_sid TEXT NOT NULL,
            at TEXT NOT NULL,
            change TEXT NOT NULL,
            state TEXT NOT NULL,
            agent TEXT,
            transfer TEXT,
            reason TEXT
        )"""
    )
    db.execute("CREATE INDEX call_changes_by_call ON call_changes (call_sid, seq)")
    db.execute(
        """CREATE TABLE voicemails (
            voicemail_id TEXT PRIMARY KEY,
            call_sid TEXT,
            conversation_id TEXT NOT NULL,
            queue TEXT,
            recording_sid TEXT,
            recording_url TEXT NOT NULL,
            duration INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            at TEXT NOT NULL,
            seq INTEGER NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE agents (
            name TEXT PRIMARY KEY,
            presence TEXT NOT NULL,
            reason TEXT,
            call_sid TEXT,
            at TEXT NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE TABLE queue_depth (at TEXT NOT NULL, waiting INTEGER NOT NULL)")
    db.execute("CREATE INDEX queue_depth_by_time ON queue_depth (at)")


@_migration
def m005_no_sid_index(db: sqlite_utils.Database) -> None:
    # Nothing looks messages up by Twilio SID (status events name the bridge's message_id), and the index cost a
    # random B-tree insert per text: a tenth of a long catch-up into a large cache.
    db.execute("DROP INDEX messages_by_sid")


_THREAD_KEY = "substr(conversation_id, 3, 8)"
"""Eight characters of a conversation id (``CV`` + hex of a hash): what the thread index is keyed on."""
_IN_THREAD = f"{_THREAD_KEY} = substr(?, 3, 8) AND +conversation_id = ?"
"""A thread's messages, through ``messages_by_thread`` (parameters: the conversation id, twice). The ``+`` keeps
SQLite from substituting the id into the indexed expression (its constant propagation), which would stop it from
matching the index; the full id then filters out another conversation whose eight characters are the same."""


@_migration
def m006_short_thread_index(db: sqlite_utils.Database) -> None:
    # Threads are read through an index on eight characters of the conversation id and the position, instead of the
    # whole 34-character id: a third of the size (5,100 pages against 13,600 on a 1M-message cache). A catch-up's
    # texts land in random conversations, so each dirties an index page; with a third as many pages, a transaction
    # writes back a third as much (100k events into that cache, the same SQL replayed by a one-off prototype: inserts
    # 0.61–0.67 s against 0.89–0.93, the log 50 MB against 86). Building it took 1.7 s on that cache.
    db.execute(f"CREATE INDEX messages_by_thread ON messages ({_THREAD_KEY}, pos)")
    db.execute("DROP INDEX messages_by_conversation")


_KEYED = "direction != 'inbound'"
"""The messages looked up (and deduplicated) by id: replies, notes, calls, voicemails. A statement must say it for
SQLite to use ``messages_by_id``."""


LONG_MIGRATION_MESSAGES = 100_000
"""Messages from which a migration that rebuilds the messages table is announced (see ``Cache(say=...)``)."""


@_migration
def m007_ids_indexed_except_texts_in(db: sqlite_utils.Database) -> None:
    # A message id is random (a text's Twilio SID, "OB…"/"NT…" and random hex), so keeping every one unique cost a
    # random B-tree insert per message: 100k texts into a 1M-message cache took 2.2–2.3 s with random ids against
    # 0.9–1.1 s with sequential ones (tests/bench/profile_random_ids.py). Nothing looks a text that came in up by
    # its id, and the cursor applies each event once; the rest keep a unique index. The column's UNIQUE cannot be
    # dropped, so the table is rebuilt (positions kept: they are the full-text index's rowids).
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone()[0]
    rebuilt = sql.replace("CREATE TABLE messages", "CREATE TABLE messages_rebuilt", 1)
    if "id TEXT NOT NULL UNIQUE" not in rebuilt:  # m001's words: anything else is not a table this knows
        raise RuntimeError("the cache's messages table is not as m001 made it: move the cache file aside to rebuild it")
    rebuilt = rebuilt.replace("id TEXT NOT NULL UNIQUE", "id TEXT NOT NULL", 1)
    db.execute(rebuilt)
    # Its indexes (not the UNIQUE's own) and triggers go with the table: made again as they are, from their SQL.
    kept = [
        row[0]
        for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'messages' AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL ORDER BY type"
        ).fetchall()
    ]
    columns = ", ".join(row[1] for row in db.execute("PRAGMA table_info(messages)").fetchall())
    db.execute(f"INSERT INTO messages_rebuilt ({columns}) SELECT {columns} FROM messages ORDER BY pos")
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE messages_rebuilt RENAME TO messages")
    for sql in kept:
        db.execute(sql)
    db.execute(f"CREATE UNIQUE INDEX messages_by_id ON messages (id) WHERE {_KEYED}")


_LONG_MIGRATIONS = {m007_ids_indexed_except_texts_in.__name__}
"""Migrations that rewrite every message: worth telling the agent about on a large cache."""


# Delivery status precedence, as the bridge applies it (statuses arrive already resolved; this guards replays).
_FAILED = {"failed", "undelivered"}


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: str
    twilio_number: str
    customer_number: str
    customer_name: str | None
    status: str
    assignee: str | None
    last_at: str
    last_preview: str
    last_direction: str | None
    unread: int
    opted_out: bool
    failed: bool
    waiting_since: str | None
    snoozed_until: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    pos: int
    id: str
    sid: str | None
    conversation_id: str
    direction: str
    body: str
    media: list[dict[str, Any]]
    status: str | None
    error_code: int | None
    error_message: str | None
    agent: str | None
    at: str


LIVE_CALL_STATES = ("ringing_agent", "connected", "on_hold", "consulting", "transferring")
"""States in which a call is an agent's (as opposed to waiting in a queue, recording a voicemail, or over)."""
DEPTH_KEPT = timedelta(hours=1)
"""How much queue-depth history the cache keeps (the queue header's sparkline)."""


@dataclass(frozen=True, slots=True)
class CallRow:
    """A call as its latest ``call.updated`` snapshot has it."""

    call_sid: str
    conversation_id: str
    twilio_number: str
    customer_number: str
    caller_name: str | None
    from_city: str | None
    from_state: str | None
    from_country: str | None
    queue: str | None
    state: str
    agent: str | None
    on_hold: bool
    muted: bool
    transfer: dict[str, Any] | None
    offered_to: str | None
    offer_expires_at: str | None
    queued_at: str | None
    answered_at: str | None
    ended_at: str | None
    outcome: str | None
    agents: list[str]
    reason: str | None
    changed_at: str

    @property
    def place(self) -> str:
        """Where the caller is, from Twilio's geo fields: "San Francisco, CA", or "". Twilio sends cities in
        capitals ("AUSTIN"); they read better in title case."""
        city = self.from_city.title() if self.from_city and self.from_city.isupper() else self.from_city
        return ", ".join(p for p in (city, self.from_state) if p)


@dataclass(frozen=True, slots=True)
class CallChange:
    """One step of a call's timeline."""

    seq: int
    at: str
    change: str
    state: str
    agent: str | None
    transfer: dict[str, Any] | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class VoicemailRow:
    voicemail_id: str
    call_sid: str | None
    conversation_id: str
    queue: str | None
    recording_url: str
    duration: int
    reason: str | None
    at: str


@dataclass(frozen=True, slots=True)
class CallBoard:
    """What the calls panel shows, read in one go: the queue, this agent's call, presence and queue depth."""

    waiting: list[CallRow]
    """Calls waiting in a queue, longest-waiting first."""
    mine: CallRow | None
    """The call this agent is on, being rung for, consulting on, or wrapping up (see ``wrap_up``)."""
    mine_since: str | None
    """When ``mine`` last changed (the state's timer starts there)."""
    wrap_up: bool
    """The agent's call has ended and the bridge waits for its wrap-up note."""
    presence: str | None
    """This agent's presence (None until the bridge has said)."""
    agents_available: int
    depth: list[tuple[str, int]]
    """(time, calls waiting) at each change over the last hour, oldest first, with the last one before the hour."""
    offered: CallRow | None = None
    """A call auto-offered to this agent, if any."""


def _connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # the bridge holds the durable copy; a lost tail is replayed
    conn.execute("PRAGMA wal_autocheckpoint=0")  # no commit waits for a checkpoint: _Checkpointer does them
    return conn


CHECKPOINT_DELAY = 0.5
"""Seconds from a commit to the background checkpoint that follows it (the commits meanwhile share it)."""


class _Checkpointer:
    """Copies the write-ahead log back into the cache file on a thread and connection of its own.

    Left to SQLite, the commit that takes the log past 1,000 pages does it, and waits for it: on a 1M-message
    cache that commit took 190 ms (the file's fsync), once every ~40 live texts, and the text it carried reached
    the screen that much later. A PASSIVE checkpoint waits for no reader and no writer, and none waits for it.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.paused = False
        """While set (a long catch-up: the log is left to grow, and folded in once it ends) nothing is copied."""
        self._wanted = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def after_commit(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closing.is_set():
                    self._thread = threading.Thread(target=self._run, name="cache-checkpoint", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        self._closing.set()
        self._wanted.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self) -> None:
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            while True:
                self._wanted.wait()
                if self._closing.wait(CHECKPOINT_DELAY):
                    return
                if self.paused:
                    continue  # _wanted stays set: the first commit after the pause is checkpointed
                self._wanted.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # only the log's size is at stake: the next commit tries again
                    pass
        finally:
            conn.close()


_CONVERSATION_COLUMNS = (
    "id, twilio_number, customer_number, customer_name, status, assignee, last_at, last_preview, "
    "last_direction, unread, opted_out, failed, waiting_since, snoozed_until"
)
_MESSAGE_COLUMNS = (
    "m.pos, m.id, m.sid, m.conversation_id, m.direction, m.body, m.media, m.status, m.error_code, "
    "m.error_message, m.agent, m.at"
)


def outbox_writing(command: str, args_json: str, conversation_id: str | None) -> tuple[str, bool, str] | None:
    """An outbox entry as what the agent wrote: (conversation, is a note, body); None if it is not a reply or note
    to a conversation."""
    if command not in (protocol.SEND_SMS, protocol.ADD_NOTE):
        return None
    args = json.loads(args_json)
    conversation_id = conversation_id or args.get("conversation_id")
    if not isinstance(conversation_id, str) or not isinstance(args.get("body"), str):
        return None
    return conversation_id, command == protocol.ADD_NOTE, args["body"]


class Cache:
    """One bridge profile's cache. Safe to use from several threads: each gets its own connection."""

    def __init__(self, path: Path | str, *, migrate: bool = True, say: Callable[[str], None] | None = None) -> None:
        """Open (or create) the cache and bring its schema up to date; ``migrate=False`` trusts that it is (for the
        catch-up helper: its console opened the cache first). ``say`` hears, before a long update of an existing
        cache's schema starts, what is happening (one rebuilt a 1M-message cache's texts in ~9 s)."""
        self.path = path
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        if migrate:
            import sqlite_utils

            db = sqlite_utils.Database(conn)
            pending = schema().pending(db)
            if say is not None and pending and schema().applied(db) and _LONG_MIGRATIONS & {m.name for m in pending}:
                count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                if count >= LONG_MIGRATION_MESSAGES:
                    seconds = max(1, count // 100_000)  # ~9 s for a million on a 2-core machine
                    say(f"Updating the cache of {count:,} messages for this version (once, about {seconds} s)…")
            schema().apply(db)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._local.conn = conn
        self.checkpoints = _Checkpointer(path)
        self.inbox_version = 0
        """Moves on when an applied batch adds a conversation or changes one's status or assignee (what the inbox's
        filters select on), so a count taken at the same version still holds."""
        self.bulk_search_index = False
        """Add a commit's texts to the full-text index without merging its segments meanwhile (the catch-up
        helper's long transactions; see ``_index_new_messages``)."""
        self.bulk_inbox = False
        """Leave the inbox's order out while a transaction writes and sort it again before it commits (the catch-up
        helper's long transactions; see ``_INBOX_ORDER``)."""
        self.bulk_texts = False
        """Insert the texts of ``apply(commit=False)`` in a thread of their own while the caller goes on (the
        catch-up helper, parsing its next frames meanwhile; see ``_TextInserts``)."""
        self.defer_search_index = False
        """Commit without adding the texts to the full-text index: ``index_search`` does, in a transaction of its
        own (the catch-up helper: see ``Cache.index_search``). Until then the cache is whole but for search; any
        later ``apply`` without this indexes what is missing, as does ``BridgeLink`` once a helper exits uncleanly."""

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
        return conn

    def _text_inserts(self, conn: sqlite3.Connection) -> _TextInserts:
        """The texts' thread of this thread's connection (``bulk_texts``), made on first use."""
        inserts: _TextInserts | None = getattr(self._local, "text_inserts", None)
        if inserts is None:
            inserts = self._local.text_inserts = _TextInserts(conn)
        return inserts

    # -- cursor and meta -------------------------------------------------------------------------------------

    def cursor(self) -> int:
        row = self.conn().execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
        return int(row[0]) if row else 0

    def meta(self, key: str) -> str | None:
        row = self.conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self.conn().execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection in a write transaction (``BEGIN IMMEDIATE``), committed when the block ends and
        rolled back if it raises. Writes from this process's other threads wait for it, as for ``apply``'s."""
        if getattr(self._local, "held", None) is not None:  # the write lock is this thread's already: never free
            raise RuntimeError("a transaction inside an open apply(commit=False) transaction")
        with self._write_lock:
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- applying events -------------------------------------------------------------------------------------

    def apply(self, events: Sequence[protocol.Event], *, commit: bool = True) -> list[protocol.Event]:
        """Apply events after the cursor, in order, and move the cursor, all in one transaction.

        Events at or before the cursor are skipped (a replay overlap); a gap raises, so nothing is ever skipped.
        Returns the events applied.

        With ``commit=False`` the transaction stays open (and the write lock held) and the thread's next ``apply``
        continues it; its first call with ``commit=True`` commits everything since it opened. A long catch-up (the
        catch-up helper's) streams that way: each index page is written once per transaction and each conversation
        updated once, while only one call's events are in memory. Any failure rolls the whole open transaction
        back. Other threads' writes wait for the write lock meanwhile, as they wait for any transaction.
        """
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            self._write_lock.acquire()  # another thread's open transaction is waited for, like any other
            try:
                conn = self.conn()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    batch = _Batch(conn, self._text_inserts(conn) if self.bulk_texts else None)
                    held = _Held(conn, batch, self.cursor(), _set_aside(conn) if self.bulk_inbox else [])
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except BaseException:
                self._write_lock.release()
                raise
        conn, batch = held.conn, held.batch
        self._local.held = None
        try:
            cursor = held.cursor
            applied = []
            for event in events:
                if event.seq <= cursor:
                    continue
                if event.seq != cursor + 1:
                    raise GapError(f"event {event.seq} follows {cursor}: the stream skipped events")
                _apply_one(batch, event)
                cursor = event.seq
                applied.append(event)
            held.cursor = cursor
            if not commit:
                batch.flush_rows()  # the texts go to SQLite now; only the conversations' summaries wait
                self._local.held = held
                return applied
            batch.flush()  # and waits for the texts' insert in flight, if any
            batch.prune_depth()
            _put_back(conn, held.set_aside)
            if not self.defer_search_index:
                _index_new_messages(conn, bulk=self.bulk_search_index)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('cursor', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(cursor),),
            )
            conn.execute("COMMIT")
        except BaseException:
            batch.settle()  # a statement still running in the texts' thread would make the rollback fail
            conn.execute("ROLLBACK")
            raise
        finally:
            if self._local.held is None:
                self._write_lock.release()
        if batch.inbox_changed:
            self.inbox_version += 1
        self.checkpoints.after_commit()
        return applied

    def index_search(self, first: Callable[[], None] | None = None) -> None:
        """Add the texts committed since the last call to the full-text index, in a transaction of its own (see
        ``defer_search_index``). ``first`` runs once the transaction holds the write lock, before the work.

        The catch-up helper commits the catch-up without it and says so (``first``), then indexes: its texts are in
        every thread and the inbox ~0.2 s sooner (0.13–0.23 s to index 55.6k texts into the 1M-message cache), and a
        write of the console's meanwhile waits for this transaction like for any other. Taking the lock before
        saying so keeps the console's own next ``apply`` from indexing them itself, with merges on."""
        with self.transaction() as conn:
            if first is not None:
                first()
            _index_new_messages(conn, bulk=self.bulk_search_index)
        self.checkpoints.after_commit()

    # -- reading ---------------------------------------------------------------------------------------------

    def conversation_count(self) -> int:
        return int(self.conn().execute("SELECT count(*) FROM conversations").fetchone()[0])

    def conversations(self, limit: int = 100, before: tuple[str, str] | None = None) -> list[ConversationRow]:
        """Conversations by last activity, newest first; ``before`` is the (last_at, id) keyset of the last row."""
        sql = f"SELECT {_CONVERSATION_COLUMNS} FROM conversations"
        params: list[Any] = []
        if before is not None:
            sql += " WHERE (last_at, id) < (?, ?)"
            params += list(before)
        sql += " ORDER BY last_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return [_conversation(r) for r in self.conn().execute(sql, params)]

    def conversation(self, conversation_id: str) -> ConversationRow | None:
        row = (
            self.conn()
            .execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?",
                (conversation_id,),
            )
            .fetchone()
        )
        return None if row is None else _conversation(row)

    def messages(self, conversation_id: str, limit: int = 200, before_pos: int | None = None) -> list[MessageRow]:
        """A page of a thread, oldest first, ending just before ``before_pos`` (or at the newest)."""
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE {_IN_THREAD}"
        params: list[Any] = [conversation_id, conversation_id]
        if before_pos is not None:
            sql += " AND pos < ?"
            params.append(before_pos)
        sql += " ORDER BY pos DESC LIMIT ?"
        params.append(limit)
        rows = [_message(r) for r in self.conn().execute(sql, params)]
        rows.reverse()
        return rows

    def messages_from(self, conversation_id: str, from_pos: int, limit: int = 200) -> list[MessageRow]:
        """A page of a thread, oldest first, starting at ``from_pos`` (for jumping to a search hit)."""
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE {_IN_THREAD} AND pos >= ? ORDER BY pos LIMIT ?"
        return [_message(r) for r in self.conn().execute(sql, (conversation_id, conversation_id, from_pos, limit))]

    def search(self, text: str, limit: int = 50) -> list[MessageRow]:
        """Full-text search over every cached message, newest first."""
        query = _fts_query(text)
        if not query:
            return []
        rows = self.conn().execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages_fts JOIN messages m ON m.pos = messages_fts.rowid "
            "WHERE messages_fts MATCH ? ORDER BY messages_fts.rowid DESC LIMIT ?",
            (query, limit),
        )
        return [_message(r) for r in rows]

    # -- the inbox -------------------------------------------------------------------------------------------

    def inbox_count(self, inbox: InboxFilter) -> int:
        where, params = inbox.where()
        return int(self.conn().execute(f"SELECT count(*) FROM conversations{where}", params).fetchone()[0])

    def inbox_window(self, inbox: InboxFilter, offset: int, limit: int) -> list[ConversationRow]:
        """Rows ``offset`` to ``offset + limit`` of the inbox, newest activity first (served by an index)."""
        where, params = inbox.where()
        sql = (
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations{where} ORDER BY last_at DESC, id DESC LIMIT ? OFFSET ?"
        )
        return [_conversation(r) for r in self.conn().execute(sql, [*params, limit, offset])]

    def inbox_position(self, inbox: InboxFilter, conversation_id: str) -> int | None:
        """Where a conversation sits in the inbox (None if the filter hides it)."""
        row = self.conversation(conversation_id)
        if row is None:
            return None
        where, params = inbox.where()
        joiner = " AND " if where else " WHERE "
        found = (
            self.conn()
            .execute(
                f"SELECT count(*) FROM conversations{where}{joiner}(last_at, id) > (?, ?)",
                [*params, row.last_at, row.id],
            )
            .fetchone()[0]
        )
        visible = (
            self.conn()
            .execute(f"SELECT 1 FROM conversations{where}{joiner}id = ?", [*params, conversation_id])
            .fetchone()
        )
        return int(found) if visible else None

    def unread_total(self) -> int:
        return int(self.conn().execute("SELECT coalesce(sum(unread), 0) FROM conversations").fetchone()[0])

    def next_needing_attention(self, agent: str | None) -> ConversationRow | None:
        """The conversation waiting longest for an answer that is mine or unassigned (and not resolved/snoozed)."""
        row = (
            self.conn()
            .execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE waiting_since IS NOT NULL "
                "AND status IN ('open', 'pending') AND (assignee IS NULL OR assignee = ?) "
                "ORDER BY waiting_since, id LIMIT 1",
                (agent or "",),
            )
            .fetchone()
        )
        return None if row is None else _conversation(row)

    def mark_read(self, conversation_id: str) -> None:
        with self._write_lock:
            self.conn().execute("UPDATE conversations SET unread = 0 WHERE id = ? AND unread != 0", (conversation_id,))

    def mark_seen(self, seen: dict[str, int]) -> None:
        """Take ``seen[id]`` off each conversation's unread count, in one transaction: the texts an agent saw
        unread while the cache could not be written (see ``MainScreen._load_header``). Texts that came in after
        them stay unread."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE conversations SET unread = max(0, unread - ?) WHERE id = ? AND unread != 0",
                [(count, conversation_id) for conversation_id, count in seen.items()],
            )

    def mark_unread(self, conversation_id: str) -> None:
        with self._write_lock:
            self.conn().execute("UPDATE conversations SET unread = max(unread, 1) WHERE id = ?", (conversation_id,))

    def pending_outbox(self, conversation_id: str) -> list[tuple[str, str, dict[str, Any], str, str | None]]:
        """Commands for this conversation not yet answered or failed: (id, command, args, state, error)."""
        rows = self.conn().execute(
            "SELECT command_id, command, args, state, error FROM outbox WHERE conversation_id = ? AND state != 'done' "
            "ORDER BY created_at, command_id",
            (conversation_id,),
        )
        return [(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    def take_back_refused(self, command_id: str) -> tuple[str, bool, str] | None:
        """A reply or note the bridge refused, out of the outbox: (conversation, is a note, body), for the composer to
        hold again; None if that command is not one (or was taken back already)."""
        with self._write_lock:
            conn = self.conn()
            row = conn.execute(
                "SELECT command, args, conversation_id FROM outbox WHERE command_id = ? AND state = 'failed'",
                (command_id,),
            ).fetchone()
            writing = None if row is None else outbox_writing(row[0], row[1], row[2])
            if writing is not None:
                conn.execute("DELETE FROM outbox WHERE command_id = ?", (command_id,))
            return writing

    def conversation_labels(self, ids: Iterable[str]) -> dict[str, tuple[str | None, str]]:
        """(customer name, customer number) for each conversation id, in one query."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self.conn().execute(
            f"SELECT id, customer_name, customer_number FROM conversations WHERE id IN ({marks})", wanted
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # -- calls -----------------------------------------------------------------------------------------------

    def call(self, call_sid: str) -> CallRow | None:
        row = self.conn().execute(f"SELECT {_CALL_READ} FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        return None if row is None else _call(row)

    def calls(self, call_sids: Iterable[str]) -> dict[str, tuple[CallRow, list[CallChange]]]:
        """Calls by SID with their timelines (for the thread), in two queries."""
        wanted = list(dict.fromkeys(call_sids))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        conn = self.conn()
        found: dict[str, tuple[CallRow, list[CallChange]]] = {
            r[0]: (_call(r), [])
            for r in conn.execute(f"SELECT {_CALL_READ} FROM calls WHERE call_sid IN ({marks})", wanted)
        }
        timeline: dict[str, list[CallChange]] = {sid: changes for sid, (_, changes) in found.items()}
        for r in conn.execute(
            "SELECT call_sid, seq, at, change, state, agent, transfer, reason FROM call_changes "
            f"WHERE call_sid IN ({marks}) ORDER BY call_sid, seq",
            wanted,
        ):
            if r[0] in timeline:
                timeline[r[0]].append(
                    CallChange(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None, r[7])
                )
        return found

    def voicemails(self, voicemail_ids: Iterable[str]) -> dict[str, VoicemailRow]:
        wanted = list(dict.fromkeys(voicemail_ids))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self.conn().execute(
            "SELECT voicemail_id, call_sid, conversation_id, queue, recording_url, duration, reason, at "
            f"FROM voicemails WHERE voicemail_id IN ({marks})",
            wanted,
        )
        return {r[0]: VoicemailRow(*r) for r in rows}

    def call_board(self, agent: str | None, now: datetime | None = None) -> CallBoard:
        """The calls panel's state for ``agent``, from the live calls' index, the agents and the last hour."""
        conn = self.conn()
        live = [
            _call(r)
            for r in conn.execute(f"SELECT {_CALL_READ} FROM calls WHERE state != 'ended' ORDER BY queued_at, call_sid")
        ]
        waiting = [c for c in live if c.state == "queued"]
        me = agent or ""
        presence_row = conn.execute("SELECT presence, reason, call_sid FROM agents WHERE name = ?", (me,)).fetchone()
        mine: CallRow | None = None
        wrap_up = False
        for call in live:
            if call.state in LIVE_CALL_STATES and (
                call.agent == me
                or (
                    call.transfer is not None
                    and call.transfer.get("target") == me
                    and call.transfer.get("target_kind") == "agent"
                )
            ):
                mine = call
                break
        if mine is None and presence_row is not None and presence_row[1] == "wrap_up" and presence_row[2]:
            mine = self.call(str(presence_row[2]))
            wrap_up = mine is not None
        since = None
        if mine is not None:
            found = conn.execute(
                "SELECT at FROM call_changes WHERE call_sid = ? AND change NOT IN ('muted', 'unmuted') "
                "ORDER BY seq DESC LIMIT 1",
                (mine.call_sid,),
            ).fetchone()
            since = found[0] if found else mine.changed_at
        offered = next((c for c in waiting if c.offered_to == me and me), None)
        available = int(conn.execute("SELECT count(*) FROM agents WHERE presence = 'available'").fetchone()[0])
        start = _iso_minus(_stamp(now), DEPTH_KEPT) if now is not None else None
        if start is None:
            newest = conn.execute("SELECT max(at) FROM queue_depth").fetchone()[0]
            start = _iso_minus(newest, DEPTH_KEPT) if newest else None
        depth = [
            (str(r[0]), int(r[1]))
            for r in conn.execute(
                "SELECT at, waiting FROM queue_depth WHERE at >= coalesce((SELECT max(at) FROM queue_depth "
                "WHERE at <= ?), '') ORDER BY at, rowid",
                (start or "",),
            )
        ]
        return CallBoard(
            waiting=waiting,
            mine=mine,
            mine_since=since,
            wrap_up=wrap_up,
            presence=str(presence_row[0]) if presence_row else None,
            agents_available=available,
            depth=depth,
            offered=offered,
        )

    def close(self) -> None:
        """Close this thread's connection (a transaction it left open is rolled back)."""
        self.checkpoints.close()
        inserts: _TextInserts | None = getattr(self._local, "text_inserts", None)
        if inserts is not None:
            inserts.close()  # waits for a move in flight: the connection cannot close under it
            self._local.text_inserts = None
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if getattr(self._local, "held", None) is not None:
            self._local.held = None
            self._write_lock.release()


_CALL_READ = (
    "call_sid, conversation_id, twilio_number, customer_number, caller_name, from_city, from_state, from_country, "
    "queue, state, agent, on_hold, muted, transfer, offered_to, offer_expires_at, queued_at, answered_at, ended_at, "
    "outcome, agents, reason, changed_at"
)


def _call(row: sqlite3.Row) -> CallRow:
    return CallRow(
        call_sid=row[0],
        conversation_id=row[1],
        twilio_number=row[2],
        customer_number=row[3],
        caller_name=row[4],
        from_city=row[5],
        from_state=row[6],
        from_country=row[7],
        queue=row[8],
        state=row[9],
        agent=row[10],
        on_hold=bool(row[11]),
        muted=bool(row[12]),
        transfer=json.loads(row[13]) if row[13] else None,
        offered_to=row[14],
        offer_expires_at=row[15],
        queued_at=row[16],
        answered_at=row[17],
        ended_at=row[18],
        outcome=row[19],
        agents=[str(a) for a in json.loads(row[20] or "[]")],
        reason=row[21],
        changed_at=row[22],
    )


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class GapError(RuntimeError):
    """The stream delivered an event that does not follow the cursor."""


def _fts_query(text: str) -> str:
    """Each word as a quoted prefix term, so customer text can never be FTS syntax."""
    words = [w for w in text.replace('"', " ").split() if w]
    return " ".join(f'"{w}"*' for w in words)


def _conversation(row: sqlite3.Row) -> ConversationRow:
    return ConversationRow(
        id=row[0],
        twilio_number=row[1],
        customer_number=row[2],
        customer_name=row[3],
        status=row[4],
        assignee=row[5],
        last_at=row[6],
        last_preview=row[7],
        last_direction=row[8],
        unread=row[9],
        opted_out=bool(row[10]),
        failed=bool(row[11]),
        waiting_since=row[12],
        snoozed_until=row[13],
    )


def _message(row: sqlite3.Row) -> MessageRow:
    return MessageRow(
        pos=row[0],
        id=row[1],
        sid=row[2],
        conversation_id=row[3],
        direction=row[4],
        body=row[5],
        media=json.loads(row[6]),
        status=row[7],
        error_code=row[8],
        error_message=row[9],
        agent=row[10],
        at=row[11],
    )


SEARCH_AUTOMERGE: Final = 4
"""FTS5's automerge setting (its default): how many segments of one level an insert starts merging."""


_INBOX_ORDER: Final = ("conversations_by_activity", "conversations_by_status")
"""The inbox's indexes, which a long catch-up drops when its transaction begins and makes again before it commits.

Nearly every conversation of a 100k-event catch-up moves in the inbox (18.7k of 20k), and each move is a delete and
an insert in both indexes at random places. Sorting the 20k rows again costs less: on a copy of the bench's 1M
cache, 18.7k summaries written took 0.29–0.45 s with the indexes kept against 0.23–0.32 s dropped and made again
(0.012 s to drop, 0.04–0.06 s to make; one-off prototype, six runs of each). The transaction does both, so the console,
reading its own snapshot meanwhile, never sees the cache without them, and a rollback puts them back."""


def _set_aside(conn: sqlite3.Connection) -> list[str]:
    """Drop the inbox's indexes for the rest of this transaction; returns the statements that make them again."""
    found = conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name IN ({', '.join('?' * len(_INBOX_ORDER))})",
        _INBOX_ORDER,
    ).fetchall()
    for name, _sql in found:
        conn.execute(f"DROP INDEX {name}")
    return [sql for _name, sql in found]


def _put_back(conn: sqlite3.Connection, statements: list[str]) -> None:
    """Make the indexes ``_set_aside`` dropped again."""
    for sql in statements:
        conn.execute(sql)


def _index_new_messages(conn: sqlite3.Connection, *, bulk: bool = False) -> None:
    """Add the messages inserted since the last call to the full-text index, in one statement.

    ``bulk``: with FTS5's automerge off for the insert, and back on after it, in the same transaction. A large
    insert otherwise merges the index's segments again and again as it flushes them: indexing a 100k-event
    catch-up's texts into the 1M-message cache took 0.35–0.45 s with merging and 0.14 s without (a one-off
    experiment on copies of the bench cache, two runs each). The few segments it leaves are merged by FTS5 as later
    texts come in: one of the next 40 live texts then took 44 ms to apply instead of ~0.6 ms."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'fts_pos'").fetchone()
    done = int(row[0]) if row else 0
    top = conn.execute("SELECT coalesce(max(pos), 0) FROM messages").fetchone()[0]
    if top > done:
        if bulk:
            conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('automerge', 0)")
        conn.execute("INSERT INTO messages_fts (rowid, body) SELECT pos, body FROM messages WHERE pos > ?", (done,))
        if bulk:
            conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('automerge', ?)", (SEARCH_AUTOMERGE,))
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('fts_pos', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(top),),
        )


def _preview(body: str, media: Iterable[Any]) -> str:
    text = " ".join(body.split())
    count = len(list(media))
    if not text and count:
        text = f"[{count} attachment{'s' if count > 1 else ''}]"
    return text[:120]


@dataclass(slots=True)
class _Summary:
    """What a batch's messages do to one conversation's row, folded in order and written once per batch."""

    last_at: str = ""
    preview: str | tuple[str, Any] = ""
    """The inbox line's preview, or the (body, media) of the text it is made from when the batch is written: only
    the last text of a batch in a conversation shows. A 100k-event catch-up has 55.6k texts in 18.7k conversations;
    making a preview for each took 0.047 s (timeit), a third of that for the last ones."""
    direction: str = ""
    added: int = 0
    unread_reset: bool = False
    unread_added: int = 0
    waiting: tuple[str, str | None] | None = None  # ("clear", None) | ("coalesce", at) | ("set", at)

    def inbound(self, at: str, preview: str | tuple[str, Any]) -> None:
        self.last_at, self.preview, self.direction = at, preview, "inbound"
        self.added += 1
        self.unread_added += 1
        if self.waiting is None:
            self.waiting = ("coalesce", at)
        elif self.waiting[0] == "clear":
            self.waiting = ("set", at)

    def outbound(self, at: str, preview: str | tuple[str, Any]) -> None:
        self.last_at, self.preview, self.direction = at, preview, "outbound"
        self.added += 1
        self.unread_reset, self.unread_added = True, 0
        self.waiting = ("clear", None)

    def call(self, at: str | None, preview: str | None, added: int) -> None:
        """A call changed: ``at`` moves the conversation up the inbox (its start and its end), ``preview`` says
        where the call stands; unread and waiting are the texts' business."""
        if at is not None:
            self.last_at = max(self.last_at, at)
        if preview is not None:
            self.preview, self.direction = preview, "call"
        self.added += added

    def params(self, conversation_id: str) -> tuple[Any, ...]:
        """The parameters of _CONVERSATION_UPDATE for this summary."""
        op, since = self.waiting or ("keep", None)
        direction = self.direction
        preview = self.preview
        return (
            self.last_at,
            direction,
            preview if type(preview) is str else _preview(*preview),
            direction,
            direction,
            self.added,
            self.unread_reset,
            self.unread_added,
            op,
            since,
            since,
            conversation_id,
        )

    def voicemail(self, at: str, preview: str) -> None:
        """A voicemail asks for an answer like a text does."""
        self.inbound(at, preview)
        self.direction = "voicemail"


_CALL_COLUMNS = (
    "call_sid, conversation_id, twilio_number, customer_number, caller_name, from_city, from_state, from_country, "
    "queue, state, agent, on_hold, muted, transfer, offered_to, offer_expires_at, queued_at, answered_at, ended_at, "
    "outcome, agents, reason, change, changed_at, seq"
)
_CALL_UPSERT = (
    f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES ({', '.join('?' * 25)}) ON CONFLICT(call_sid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _CALL_COLUMNS.split(", ")[1:])
    + " WHERE excluded.seq > calls.seq"
)


@dataclass(slots=True)
class _KnownCall:
    """What a batch knows of a call: enough to count the queue and to drop a snapshot that repeats the last."""

    seq: int
    state: str
    signature: tuple[Any, ...]


class _TextInserts:
    """A long catch-up's texts inserted in a thread of their own, one hand-over's at a time.

    The texts are first copied into a temporary table (the rows bound as they always were, holding the interpreter
    lock), then moved into ``messages`` by one INSERT … SELECT in the thread: SQLite's B-tree work for the whole
    hand-over without the interpreter lock, while the caller parses and applies the next frames. 55,600 texts into
    a copy of the 1M-message bench cache: 0.47–0.48 s inserted directly against 0.13–0.19 s copied plus 0.29–0.39 s
    moved (four runs each, alternating), the move being what can overlap; the same split with the next chunk's
    frames parsed meanwhile took 0.67–0.87 s against 0.94–1.09 s one after the other (three runs each).

    Rows keep their order (a message's position is its place in its thread): the temporary table's rowid is the
    order they were applied in. One insert is in flight at most; everything else the transaction does on the
    connection waits for it first (``_AfterTexts``), and an error in it is raised there."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-texts")
        self._in_flight: Future[None] | None = None

    def insert(self, rows: list[list[Any] | tuple[Any, ...]]) -> None:
        self.wait()
        conn = self.conn
        conn.execute(_STAGED_TABLE)  # each time: a rollback takes back a table made in its transaction
        for kind, run in itertools.groupby(rows, key=type):
            conn.executemany(_STAGE_INBOUND if kind is tuple else _STAGE_MESSAGE, run)
        self._in_flight = self._thread.submit(self._move)

    def _move(self) -> None:
        self.conn.execute(_MOVE_STAGED)
        self.conn.execute("DELETE FROM temp.staged_messages")

    def wait(self, *, quiet: bool = False) -> None:
        """Until the insert in flight is done; raises its error unless ``quiet``."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        try:
            in_flight.result()
        except Exception:
            if not quiet:
                raise

    def close(self) -> None:
        self.wait(quiet=True)
        self._thread.shutdown(wait=True)


class _AfterTexts:
    """A connection whose statements first wait for the texts' insert in flight (see ``_TextInserts``)."""

    def __init__(self, conn: sqlite3.Connection, inserts: _TextInserts) -> None:
        self._conn = conn
        self._inserts = inserts

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self._inserts.wait()
        return self._conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        self._inserts.wait()
        return self._conn.executemany(sql, parameters)


_STAGED_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_messages (id, sid, conversation_id, direction, body, media, status, "
    "error_code, error_message, agent, at, seq)"
)
_STAGE_INBOUND = (
    "INSERT INTO temp.staged_messages (id, sid, conversation_id, direction, body, media, status, at, seq) "
    "VALUES (?, ?, ?, 'inbound', ?, ?, 'received', ?, ?)"
)
_STAGE_MESSAGE = (
    "INSERT INTO temp.staged_messages (id, sid, conversation_id, direction, body, media, status, error_code, "
    "error_message, agent, at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MOVE_STAGED = (
    "INSERT INTO messages (id, sid, conversation_id, direction, body, media, status, error_code, error_message, "
    "agent, at, seq) SELECT id, sid, conversation_id, direction, body, media, status, error_code, error_message, "
    f"agent, at, seq FROM temp.staged_messages WHERE true ORDER BY rowid ON CONFLICT(id) WHERE {_KEYED} DO NOTHING"
)
"""The staged texts into ``messages`` in the order they were staged. "WHERE true" tells SQLite's parser the ON
CONFLICT is the upsert's, not a join's; a text that came in never conflicts (it is not in ``messages_by_id``)."""


@dataclass(slots=True)
class _Held:
    """A transaction of applied events not yet committed: its connection, its batch, the cursor within it."""

    conn: sqlite3.Connection
    batch: _Batch
    cursor: int
    set_aside: list[str]
    """The statements that make the indexes the transaction dropped (``_set_aside``), run before it commits."""


class _Batch:
    """Conversation rows touched by a batch of messages, written with one UPDATE each; calls folded the same way
    (the newest snapshot of each call written once, its timeline rows and queue-depth samples in one go)."""

    def __init__(self, conn: sqlite3.Connection, inserts: _TextInserts | None = None) -> None:
        self.inserts = inserts
        self.conn: sqlite3.Connection | _AfterTexts = conn if inserts is None else _AfterTexts(conn, inserts)
        """The connection, as the batch's statements use it: with ``inserts``, each first waits for the texts'
        insert in flight, so every statement runs in the order the events came."""
        self.messages: list[list[Any] | tuple[Any, ...]] = []
        """Texts not yet inserted, in order: replies as lists of ``_MESSAGE_INSERT``'s columns (see ``unsent``),
        texts in as tuples of ``_INBOUND_INSERT``'s; one executemany per run of either."""
        self.unsent: dict[str, list[Any]] = {}
        """Replies among ``messages``, by id: Twilio's SID and status, when they come in the same batch, are
        folded into the row instead of updating it after."""
        self.pending: dict[str, _Summary] = {}
        self.known: set[str] = set()
        self.new_rows: list[tuple[str, str, str, str]] = []
        """Conversations first seen in this batch, inserted (if new to the cache) with the texts."""
        self.calls: dict[str, tuple[Any, ...]] = {}
        self.call_known: dict[str, _KnownCall | None] = {}
        self.changes: list[tuple[Any, ...]] = []
        self.depth: list[tuple[str, int]] = []
        self.depth_added = False
        self.waiting: int | None = None
        self.inbox_changed = False
        """A conversation was added, or its status or assignee changed: inbox counts may differ."""

    def known_call(self, call_sid: str) -> _KnownCall | None:
        if call_sid not in self.call_known:
            row = self.conn.execute(
                "SELECT seq, state, change, agent, on_hold, muted, transfer, offered_to, queue, outcome "
                "FROM calls WHERE call_sid = ?",
                (call_sid,),
            ).fetchone()
            self.call_known[call_sid] = (
                None if row is None else _KnownCall(row[0], row[1], (row[2], row[1], *tuple(row)[3:]))
            )
        return self.call_known[call_sid]

    def queue_waiting(self) -> int:
        if self.waiting is None:
            self.waiting = int(self.conn.execute(_QUEUED_CALLS).fetchone()[0])
        return self.waiting

    def _flush_calls(self) -> None:
        if self.calls:
            self.conn.executemany(_CALL_UPSERT, list(self.calls.values()))
            self.calls.clear()
        if self.changes:
            self.conn.executemany(
                "INSERT INTO call_changes (seq, call_sid, at, change, state, agent, transfer, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(seq) DO NOTHING",
                self.changes,
            )
            self.changes.clear()
        if self.depth:
            self.conn.executemany("INSERT INTO queue_depth (at, waiting) VALUES (?, ?)", self.depth)
            self.depth.clear()
            self.depth_added = True

    def prune_depth(self) -> None:
        """Forget queue-depth samples older than the hour the sparkline shows, but the last one before it (the
        level the hour started at)."""
        if not self.depth_added:
            return
        newest = self.conn.execute("SELECT max(at) FROM queue_depth").fetchone()[0]
        start = _iso_minus(newest, DEPTH_KEPT) if newest else None
        if start is not None:
            self.conn.execute(
                "DELETE FROM queue_depth WHERE at < (SELECT max(at) FROM queue_depth WHERE at <= ?)", (start,)
            )

    def conversation(self, d: dict[str, Any], at: str) -> _Summary:
        cid = d["conversation_id"]
        if cid not in self.known:
            self.new_rows.append((cid, d["twilio_number"], d["customer_number"], at))
            self.known.add(cid)
        summary = self.pending.get(cid)
        if summary is None:  # not setdefault: that would make a _Summary for every text, to throw most away
            summary = self.pending[cid] = _Summary()
        return summary

    def ensure_conversation(self, d: dict[str, Any], at: str) -> None:
        """Insert the conversation now if the cache has not seen it (for a statement that updates it next)."""
        self.new_rows.append((d["conversation_id"], d["twilio_number"], d["customer_number"], at))
        self.flush_rows()

    def flush_rows(self) -> None:
        """Insert the conversations and texts seen so far: before a statement that needs them in the tables."""
        if self.new_rows:
            if self.conn.executemany(_CONVERSATION_INSERT, self.new_rows).rowcount > 0:
                self.inbox_changed = True
            self.new_rows.clear()
        if self.messages:
            if self.inserts is not None:
                self.inserts.insert(self.messages)
            else:
                # In order (a message's position is its place in its thread), each run of texts in or out at once.
                for kind, rows in itertools.groupby(self.messages, key=type):
                    self.conn.executemany(_INBOUND_INSERT if kind is tuple else _MESSAGE_INSERT, rows)
            self.messages.clear()
            self.unsent.clear()

    def flush(self) -> None:
        """Write everything held; returns with nothing left in flight."""
        self.flush_rows()
        self._flush_calls()
        if self.pending:
            self.conn.executemany(_CONVERSATION_UPDATE, [row.params(cid) for cid, row in self.pending.items()])
            self.pending.clear()
        if self.inserts is not None:
            self.inserts.wait()

    def settle(self) -> None:
        """Wait for the texts' insert in flight, if any, whatever became of it (before a rollback)."""
        if self.inserts is not None:
            self.inserts.wait(quiet=True)


_QUEUED_CALLS = "SELECT count(*) FROM calls WHERE state != 'ended' AND state = 'queued'"
"""Calls waiting in a queue. "state != 'ended'" lets SQLite count through calls_live (the live calls) instead of every
call kept."""
_CONVERSATION_INSERT = (
    "INSERT INTO conversations (id, twilio_number, customer_number, last_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(id) DO NOTHING"
)
_CONVERSATION_UPDATE = (
    "UPDATE conversations SET last_at = max(last_at, ?), "
    "last_preview = CASE WHEN ? = '' THEN last_preview ELSE ? END, "
    "last_direction = CASE WHEN ? = '' THEN last_direction ELSE ? END, "
    "message_count = message_count + ?, unread = CASE WHEN ? THEN 0 ELSE unread END + ?, "
    "waiting_since = CASE ? WHEN 'clear' THEN NULL WHEN 'set' THEN ? "
    "WHEN 'coalesce' THEN coalesce(waiting_since, ?) ELSE waiting_since END WHERE id = ?"
)
_MESSAGE_INSERT = (
    "INSERT INTO messages (id, sid, conversation_id, direction, body, media, status, error_code, error_message, "
    f"agent, at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) WHERE {_KEYED} DO NOTHING"
)
_SID, _STATUS, _ERROR_CODE, _ERROR_MESSAGE = 1, 6, 7, 8  # in a row of _MESSAGE_INSERT
_INBOUND_INSERT = (
    "INSERT INTO messages (id, sid, conversation_id, direction, body, media, status, at, seq) "
    "VALUES (?, ?, ?, 'inbound', ?, ?, 'received', ?, ?)"
)
"""An inbound text's row (a tuple), with no ON CONFLICT: texts in are not in ``messages_by_id`` (see m007), and the
cursor applies each event once. The columns it leaves NULL are not bound. sqlite3 binds a None through its
adapter lookup; with the constants written in, 100k rows bind in ~0.3 s instead of ~0.5 s (a one-off comparison
of the two statements into an in-memory table)."""


def _apply_one(batch: _Batch, event: protocol.Event) -> None:
    conn = batch.conn
    d = event.data
    kind = event.type
    if kind == protocol.MESSAGE_RECEIVED or kind == protocol.MESSAGE_OUTBOUND:
        inbound = kind == protocol.MESSAGE_RECEIVED
        at = str(d.get("received_at") or event.ts) if inbound else event.ts
        summary = batch.conversation(d, at)
        body = d.get("body", "")
        media = d.get("media") or []
        media_json = json.dumps(media) if media else "[]"
        if inbound:
            row_in = (d["message_id"], d.get("message_sid"), d["conversation_id"], body, media_json, at, event.seq)
            batch.messages.append(row_in)
            summary.inbound(at, (body, media))
        else:
            row = [
                d["message_id"],
                None,
                d["conversation_id"],
                "outbound",
                body,
                media_json,
                d.get("status", "sending"),
                None,
                None,
                d.get("agent"),
                at,
                event.seq,
            ]
            batch.messages.append(row)
            batch.unsent[row[0]] = row
            summary.outbound(at, (body, media))
        return
    if kind == protocol.CALL_UPDATED:
        _apply_call(batch, event)
        return
    if kind == protocol.VOICEMAIL_RECORDED:
        _apply_voicemail(batch, event)
        return
    if kind == protocol.AGENT_PRESENCE:
        conn.execute(
            "INSERT INTO agents (name, presence, reason, call_sid, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET presence = excluded.presence, reason = excluded.reason, "
            "call_sid = excluded.call_sid, at = excluded.at",
            (d["agent"], d["presence"], d.get("reason"), d.get("call_sid"), d.get("at") or event.ts),
        )
        return
    if kind not in (protocol.MESSAGE_SUBMITTED, protocol.MESSAGE_STATUS):
        batch.flush()  # events below read or set the columns the summaries write: keep their order
    if kind == protocol.MESSAGE_SUBMITTED:
        unsent = batch.unsent.get(d["message_id"])
        if unsent is not None:
            unsent[_SID], unsent[_STATUS] = d["message_sid"], d["status"]
        else:
            conn.execute(
                f"UPDATE messages SET sid = ?, status = ? WHERE id = ? AND {_KEYED}",
                (d["message_sid"], d["status"], d["message_id"]),
            )
    elif kind == protocol.MESSAGE_REJECTED:
        conn.execute(
            f"UPDATE messages SET status = 'failed', error_code = ?, error_message = ? WHERE id = ? AND {_KEYED}",
            (d.get("error_code"), d.get("error_message"), d["message_id"]),
        )
        conn.execute("UPDATE conversations SET failed = 1 WHERE id = ?", (d["conversation_id"],))
    elif kind == protocol.MESSAGE_STATUS:
        if d.get("message_id") and d.get("applied"):
            unsent = batch.unsent.get(d["message_id"])
            if unsent is not None:
                unsent[_STATUS] = d["status"]
                if d.get("error_code") is not None:
                    unsent[_ERROR_CODE] = d["error_code"]
                if d.get("error_message") is not None:
                    unsent[_ERROR_MESSAGE] = d["error_message"]
            else:
                conn.execute(
                    "UPDATE messages SET status = ?, error_code = coalesce(?, error_code), "
                    f"error_message = coalesce(?, error_message) WHERE id = ? AND {_KEYED}",
                    (d["status"], d.get("error_code"), d.get("error_message"), d["message_id"]),
                )
            if d["status"] in _FAILED and d.get("conversation_id"):
                batch.flush_rows()
                conn.execute("UPDATE conversations SET failed = 1 WHERE id = ?", (d["conversation_id"],))
    elif kind == protocol.OPTOUT_CHANGED:
        batch.ensure_conversation(d, event.ts)
        conn.execute(
            "UPDATE conversations SET opted_out = ? WHERE id = ?", (int(bool(d["opted_out"])), d["conversation_id"])
        )
    elif kind == protocol.CONVERSATION_ASSIGNED:
        batch.inbox_changed = True
        conn.execute("UPDATE conversations SET assignee = ? WHERE id = ?", (d.get("assignee"), d["conversation_id"]))
    elif kind == protocol.CONVERSATION_STATUS:
        batch.inbox_changed = True
        status = d["status"]
        conn.execute(
            "UPDATE conversations SET status = ?, snoozed_until = ?, "
            "waiting_since = CASE WHEN ? = 'resolved' THEN NULL ELSE waiting_since END WHERE id = ?",
            (status, d.get("snoozed_until") if status == "snoozed" else None, status, d["conversation_id"]),
        )
    elif kind == protocol.NOTE_ADDED:
        conn.execute(
            # A wrap-up note keeps its call's SID (in ``sid``, otherwise unused for notes) so the thread can say so.
            "INSERT INTO messages (id, sid, conversation_id, direction, body, status, agent, at, seq) "
            f"VALUES (?, ?, ?, 'note', ?, NULL, ?, ?, ?) ON CONFLICT(id) WHERE {_KEYED} DO NOTHING",
            (
                d["note_id"],
                d.get("call_sid"),
                d["conversation_id"],
                d.get("body", ""),
                d.get("agent"),
                d.get("at") or event.ts,
                event.seq,
            ),
        )
        conn.execute("UPDATE conversations SET message_count = message_count + 1 WHERE id = ?", (d["conversation_id"],))
    # Unknown types come from a newer bridge: the cursor moves past them; nothing here depends on them.


def _iso_minus(iso: str, delta: timedelta) -> str | None:
    """An ISO time from the bridge, ``delta`` earlier, in the bridge's own format (so strings compare as times)."""
    when = _parse_time(iso)
    if when is None:
        return None
    return (when - delta).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        value = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _seconds_between(start: str | None, end: str | None) -> int | None:
    a, b = _parse_time(start), _parse_time(end)
    if a is None or b is None:
        return None
    return max(0, int((b - a).total_seconds()))


def talk_time(seconds: int) -> str:
    """A call's length as the inbox and the thread say it: "42s", "3m 12s", "1h 02m"."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def clock_time(seconds: int) -> str:
    """A recording's or a wait's length: "0:42", "12:05", "1:02:05"."""
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def call_preview(d: dict[str, Any]) -> str | None:
    """The inbox's line for a call as it stands (None: leave the line to the voicemail that follows)."""
    state, agent, queue = d.get("state"), d.get("agent"), d.get("queue")
    if state == "queued":
        return f"📞 Calling · waiting in {queue}" if queue else "📞 Calling · waiting"
    if state == "ringing_agent":
        return f"📞 Calling · ringing {agent}" if agent else "📞 Calling"
    if state in LIVE_CALL_STATES:
        return f"📞 On a call with {agent}" if agent else "📞 On a call"
    if state == "voicemail":
        return "📞 Leaving a voicemail"
    outcome = d.get("outcome")
    if outcome == "voicemail":
        return None
    agents = [str(a) for a in d.get("agents") or []]
    if outcome == "answered" or (outcome is None and agents):
        talked = _seconds_between(d.get("answered_at"), d.get("ended_at"))
        who = f" · answered by {agents[0]}" if agents else ""
        if len(agents) > 1:
            who += f" → {agents[-1]}"
        return f"📞 Call · {talk_time(talked)}{who}" if talked is not None else f"📞 Call{who}"
    if outcome == "transferred_out":
        target = (d.get("transfer") or {}).get("target")
        return f"📞 Call · transferred to {target}" if target else "📞 Call · transferred out"
    if outcome == "failed":
        return "📞 Call failed"
    if outcome == "agent_hung_up":
        return f"📞 Call · hung up by {d.get('agent')}" if d.get("agent") else "📞 Call · hung up by the agent"
    waited = _seconds_between(d.get("queued_at"), d.get("ended_at"))
    return f"📞 Missed call · hung up after {clock_time(waited)}" if waited is not None else "📞 Missed call"


def _apply_call(batch: _Batch, event: protocol.Event) -> None:
    d = event.data
    sid = str(d["call_sid"])
    known = batch.known_call(sid)
    if known is not None and event.seq <= known.seq:
        return  # an older snapshot than the one kept: it changes nothing
    state = str(d["state"])
    transfer = d.get("transfer")
    transfer_json = json.dumps(transfer, ensure_ascii=False, sort_keys=True) if transfer else None
    change = str(d.get("change") or "")
    signature = (
        change,
        state,
        d.get("agent"),
        int(bool(d.get("on_hold"))),
        int(bool(d.get("muted"))),
        transfer_json,
        d.get("offered_to"),
        d.get("queue"),
        d.get("outcome"),
    )
    at = event.ts
    new = known is None
    if new:
        at_first = str(d.get("queued_at") or at)
        summary = batch.conversation(d, at_first)
        batch.flush_rows()  # the call is a row in the thread, after the texts before it, in a conversation that exists
        if d.get("caller_name"):  # Twilio's caller name is the best name we have until an agent knows better
            batch.conn.execute(
                "UPDATE conversations SET customer_name = ? WHERE id = ? AND customer_name IS NULL",
                (d["caller_name"], d["conversation_id"]),
            )
        inserted = batch.conn.execute(
            "INSERT INTO messages (id, sid, conversation_id, direction, body, status, agent, at, seq) "
            f"VALUES (?, ?, ?, 'call', '', ?, ?, ?, ?) ON CONFLICT(id) WHERE {_KEYED} DO NOTHING",
            (sid, sid, d["conversation_id"], state, d.get("agent"), at_first, event.seq),
        ).rowcount
    else:
        summary = batch.conversation(d, at)
        inserted = 0
    ended = state == "ended"
    summary.call(at if new or ended else None, call_preview(d), inserted)
    before = known.state if known is not None else None
    if (before == "queued") != (state == "queued"):
        waiting = batch.queue_waiting() + (1 if state == "queued" else -1)
        batch.waiting = max(0, waiting)
        batch.depth.append((at, batch.waiting))
    if known is None or signature != known.signature:
        batch.changes.append((event.seq, sid, at, change, state, d.get("agent"), transfer_json, d.get("reason")))
    batch.call_known[sid] = _KnownCall(event.seq, state, signature)
    batch.calls[sid] = (
        sid,
        d["conversation_id"],
        d["twilio_number"],
        d["customer_number"],
        d.get("caller_name"),
        d.get("from_city"),
        d.get("from_state"),
        d.get("from_country"),
        d.get("queue"),
        state,
        d.get("agent"),
        int(bool(d.get("on_hold"))),
        int(bool(d.get("muted"))),
        transfer_json,
        d.get("offered_to"),
        d.get("offer_expires_at"),
        d.get("queued_at"),
        d.get("answered_at"),
        d.get("ended_at"),
        d.get("outcome"),
        json.dumps(list(d.get("agents") or []), ensure_ascii=False),
        d.get("reason"),
        change,
        at,
        event.seq,
    )


def _apply_voicemail(batch: _Batch, event: protocol.Event) -> None:
    d = event.data
    at = str(d.get("at") or event.ts)
    url = str(d.get("recording_url") or "")
    duration = int(d.get("duration") or 0)
    summary = batch.conversation(d, at)
    batch.flush_rows()  # a voicemail is a row in the thread too: after the texts before it
    inserted = batch.conn.execute(
        "INSERT INTO voicemails (voicemail_id, call_sid, conversation_id, queue, recording_sid, recording_url, "
        "duration, reason, at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(voicemail_id) DO NOTHING",
        (
            d["voicemail_id"],
            d.get("call_sid"),
            d["conversation_id"],
            d.get("queue"),
            d.get("recording_sid"),
            url,
            duration,
            d.get("reason"),
            at,
            event.seq,
        ),
    ).rowcount
    if not inserted:
        return
    # The recording as an attachment (Twilio serves it with ".mp3" appended), so "open attachment" plays it.
    media = [{"url": f"{url}.mp3", "content_type": "audio/mpeg"}] if url else []
    batch.conn.execute(
        "INSERT INTO messages (id, sid, conversation_id, direction, body, media, status, at, seq) "
        f"VALUES (?, ?, ?, 'voicemail', '', ?, NULL, ?, ?) ON CONFLICT(id) WHERE {_KEYED} DO NOTHING",
        (d["voicemail_id"], d.get("call_sid"), d["conversation_id"], json.dumps(media), at, event.seq),
    )
    summary.voicemail(at, f"Voicemail {clock_time(duration)}")
