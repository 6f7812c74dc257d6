"""The console's local cache: the bridge's events applied in seq order, the cursor saved in the same transaction.

Everything on screen is read from here, so the console opens instantly with its history and stays readable when
the bridge is away. No textual import: screens call these functions from thread workers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from bridge import protocol

migrations = Migrations("switchboard-console")


@migrations()
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


@migrations()
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


@migrations()
def m003_batched_search_index(db: sqlite_utils.Database) -> None:
    # The full-text index is filled once per applied batch (one INSERT … SELECT) rather than by a trigger per row,
    # which halved catch-up speed; ``fts_pos`` is the last message position indexed.
    db.execute("DROP TRIGGER messages_fts_insert")
    db.execute("DROP INDEX messages_by_conversation_at")
    db.execute(
        "INSERT INTO meta (key, value) SELECT 'fts_pos', CAST(coalesce(max(pos), 0) AS TEXT) FROM messages "
        "WHERE true ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    )


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


def _connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # the bridge holds the durable copy; a lost tail is replayed
    return conn


_CONVERSATION_COLUMNS = (
    "id, twilio_number, customer_number, customer_name, status, assignee, last_at, last_preview, "
    "last_direction, unread, opted_out, failed, waiting_since, snoozed_until"
)
_MESSAGE_COLUMNS = (
    "m.pos, m.id, m.sid, m.conversation_id, m.direction, m.body, m.media, m.status, m.error_code, "
    "m.error_message, m.agent, m.at"
)


class Cache:
    """One bridge profile's cache. Safe to use from several threads: each gets its own connection."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        migrations.apply(sqlite_utils.Database(conn))
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._local.conn = conn

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
        return conn

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

    # -- applying events -------------------------------------------------------------------------------------

    def apply(self, events: Sequence[protocol.Event]) -> list[protocol.Event]:
        """Apply events after the cursor, in order, and move the cursor, all in one transaction.

        Events at or before the cursor are skipped (a replay overlap); a gap raises, so nothing is ever skipped.
        Returns the events applied.
        """
        with self._write_lock:
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self.cursor()
                applied = []
                batch = _Batch(conn)
                for event in events:
                    if event.seq <= cursor:
                        continue
                    if event.seq != cursor + 1:
                        raise GapError(f"event {event.seq} follows {cursor}: the stream skipped events")
                    _apply_one(batch, event)
                    cursor = event.seq
                    applied.append(event)
                batch.flush()
                _index_new_messages(conn)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('cursor', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(cursor),),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return applied

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
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE conversation_id = ?"
        params: list[Any] = [conversation_id]
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
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE conversation_id = ? AND pos >= ? ORDER BY pos LIMIT ?"
        return [_message(r) for r in self.conn().execute(sql, (conversation_id, from_pos, limit))]

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

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


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


def _index_new_messages(conn: sqlite3.Connection) -> None:
    """Add the messages inserted since the last call to the full-text index, in one statement."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'fts_pos'").fetchone()
    done = int(row[0]) if row else 0
    top = conn.execute("SELECT coalesce(max(pos), 0) FROM messages").fetchone()[0]
    if top > done:
        conn.execute("INSERT INTO messages_fts (rowid, body) SELECT pos, body FROM messages WHERE pos > ?", (done,))
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('fts_pos', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(top),),
        )


def _ensure_conversation(conn: sqlite3.Connection, d: dict[str, Any], at: str) -> None:
    conn.execute(
        "INSERT INTO conversations (id, twilio_number, customer_number, last_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(id) DO NOTHING",
        (d["conversation_id"], d["twilio_number"], d["customer_number"], at),
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
    preview: str = ""
    direction: str = ""
    added: int = 0
    unread_reset: bool = False
    unread_added: int = 0
    waiting: tuple[str, str | None] | None = None  # ("clear", None) | ("coalesce", at) | ("set", at)

    def inbound(self, at: str, preview: str) -> None:
        self.last_at, self.preview, self.direction = at, preview, "inbound"
        self.added += 1
        self.unread_added += 1
        if self.waiting is None:
            self.waiting = ("coalesce", at)
        elif self.waiting[0] == "clear":
            self.waiting = ("set", at)

    def outbound(self, at: str, preview: str) -> None:
        self.last_at, self.preview, self.direction = at, preview, "outbound"
        self.added += 1
        self.unread_reset, self.unread_added = True, 0
        self.waiting = ("clear", None)


class _Batch:
    """Conversation rows touched by a batch of messages, written with one UPDATE each."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pending: dict[str, _Summary] = {}
        self.known: set[str] = set()

    def conversation(self, d: dict[str, Any], at: str) -> _Summary:
        cid = d["conversation_id"]
        if cid not in self.known:
            _ensure_conversation(self.conn, d, at)
            self.known.add(cid)
        return self.pending.setdefault(cid, _Summary())

    def flush(self) -> None:
        for cid, row in self.pending.items():
            op, since = row.waiting or ("keep", None)
            self.conn.execute(
                "UPDATE conversations SET last_at = ?, last_preview = ?, last_direction = ?, "
                "message_count = message_count + ?, unread = CASE WHEN ? THEN 0 ELSE unread END + ?, "
                "waiting_since = CASE ? WHEN 'clear' THEN NULL WHEN 'set' THEN ? "
                "WHEN 'coalesce' THEN coalesce(waiting_since, ?) ELSE waiting_since END WHERE id = ?",
                (
                    row.last_at,
                    row.preview,
                    row.direction,
                    row.added,
                    row.unread_reset,
                    row.unread_added,
                    op,
                    since,
                    since,
                    cid,
                ),
            )
        self.pending.clear()


def _apply_one(batch: _Batch, event: protocol.Event) -> None:
    conn = batch.conn
    d = event.data
    kind = event.type
    if kind == protocol.MESSAGE_RECEIVED:
        at = str(d.get("received_at") or event.ts)
        summary = batch.conversation(d, at)
        conn.execute(
            "INSERT INTO messages (id, sid, conversation_id, direction, body, media, status, at, seq) "
            "VALUES (?, ?, ?, 'inbound', ?, ?, 'received', ?, ?) ON CONFLICT(id) DO NOTHING",
            (
                d["message_id"],
                d.get("message_sid"),
                d["conversation_id"],
                d.get("body", ""),
                json.dumps(d.get("media", [])),
                at,
                event.seq,
            ),
        )
        summary.inbound(at, _preview(d.get("body", ""), d.get("media", [])))
        return
    if kind == protocol.MESSAGE_OUTBOUND:
        summary = batch.conversation(d, event.ts)
        conn.execute(
            "INSERT INTO messages (id, conversation_id, direction, body, media, status, agent, at, seq) "
            "VALUES (?, ?, 'outbound', ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
            (
                d["message_id"],
                d["conversation_id"],
                d.get("body", ""),
                json.dumps(d.get("media", [])),
                d.get("status", "sending"),
                d.get("agent"),
                event.ts,
                event.seq,
            ),
        )
        summary.outbound(event.ts, _preview(d.get("body", ""), d.get("media", [])))
        return
    if kind not in (protocol.MESSAGE_SUBMITTED, protocol.MESSAGE_STATUS):
        batch.flush()  # events below read or set the columns the summaries write: keep their order
    if kind == protocol.MESSAGE_SUBMITTED:
        conn.execute(
            "UPDATE messages SET sid = ?, status = ? WHERE id = ?", (d["message_sid"], d["status"], d["message_id"])
        )
    elif kind == protocol.MESSAGE_REJECTED:
        conn.execute(
            "UPDATE messages SET status = 'failed', error_code = ?, error_message = ? WHERE id = ?",
            (d.get("error_code"), d.get("error_message"), d["message_id"]),
        )
        conn.execute("UPDATE conversations SET failed = 1 WHERE id = ?", (d["conversation_id"],))
    elif kind == protocol.MESSAGE_STATUS:
        if d.get("message_id") and d.get("applied"):
            conn.execute(
                "UPDATE messages SET status = ?, error_code = coalesce(?, error_code), "
                "error_message = coalesce(?, error_message) WHERE id = ?",
                (d["status"], d.get("error_code"), d.get("error_message"), d["message_id"]),
            )
            if d["status"] in _FAILED and d.get("conversation_id"):
                conn.execute("UPDATE conversations SET failed = 1 WHERE id = ?", (d["conversation_id"],))
    elif kind == protocol.OPTOUT_CHANGED:
        _ensure_conversation(conn, d, event.ts)
        conn.execute(
            "UPDATE conversations SET opted_out = ? WHERE id = ?", (int(bool(d["opted_out"])), d["conversation_id"])
        )
    elif kind == protocol.CONVERSATION_ASSIGNED:
        conn.execute("UPDATE conversations SET assignee = ? WHERE id = ?", (d.get("assignee"), d["conversation_id"]))
    elif kind == protocol.CONVERSATION_STATUS:
        status = d["status"]
        conn.execute(
            "UPDATE conversations SET status = ?, snoozed_until = ?, "
            "waiting_since = CASE WHEN ? = 'resolved' THEN NULL ELSE waiting_since END WHERE id = ?",
            (status, d.get("snoozed_until") if status == "snoozed" else None, status, d["conversation_id"]),
        )
    elif kind == protocol.NOTE_ADDED:
        conn.execute(
            "INSERT INTO messages (id, conversation_id, direction, body, status, agent, at, seq) "
            "VALUES (?, ?, 'note', ?, NULL, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
            (d["note_id"], d["conversation_id"], d.get("body", ""), d.get("agent"), d.get("at") or event.ts, event.seq),
        )
        conn.execute("UPDATE conversations SET message_count = message_count + 1 WHERE id = ?", (d["conversation_id"],))
    # Unknown types come from a newer bridge: the cursor moves past them; nothing here depends on them.
