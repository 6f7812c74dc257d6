"""Conversation state every console agrees on: who it is assigned to, where it stands, agents' internal notes.

Agents change it with commands (assign, claim, set_status, add_note, list_agents); the bridge changes it itself
when a snooze ends (``SnoozeWaker``) and when a customer writes to a resolved or snoozed conversation
(``reopen_on_customer_text``, called from ``record_inbound``). Every change is an event in the log, committed
with the change and, for a command, with the command's result, so a resent command id gets the same answer and
never acts twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge import protocol
from bridge.store import REVOKED_SAID, SqliteStore, StoredEvent, Tx, is_revoked
from bridge.types import new_id

log = logging.getLogger("switchboard.bridge.conversations")

OPEN, PENDING, RESOLVED, SNOOZED = "open", "pending", "resolved", "snoozed"
REASON_AGENT = "agent"
REASON_SNOOZE_ENDED = "snooze ended"
REASON_CUSTOMER_WROTE = "customer wrote"
REOPENED_BY_CUSTOMER = frozenset({RESOLVED, SNOOZED})

MAX_AGENT_NAME = 64  # as `switchboard-bridge agents add` allows
MAX_SNOOZE = timedelta(days=protocol.MAX_SNOOZE_DAYS)
MAX_UNTIL_CHARS = 40
WAKER_MAX_SLEEP = 30.0
"""The snooze waker sleeps until the next snooze ends, or a new one is set; at most this long, as a safety net."""

_CONVERSATION_ID = re.compile(r"CV[0-9a-f]{32}")
# ISO 8601 in UTC, to the second or finer; ASCII digits only ("\d" would admit other scripts' digits).
_UTC_TIMESTAMP = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,6})?(Z|\+00:00)")

Handler = Callable[[str, protocol.Command], Awaitable[protocol.Result]]
Action = Callable[[Tx], dict[str, Any]]
"""Applies a command inside the writer's transaction and returns its result data; raises Refusal to refuse."""


class Refusal(Exception):
    """A conversation command the bridge will not carry out; the message is a sentence the agent can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def format_ts(moment: datetime) -> str:
    """A time as the log writes times (see store.utc_now): ISO 8601 UTC with milliseconds, so strings compare."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- arguments ---------------------------------------------------------------------------------------------------


def _check_keys(command: str, args: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    allowed = required + optional
    for key in args:
        if key not in allowed:
            takes = ", ".join(allowed) if allowed else "no arguments"
            raise Refusal("bad_args", f"{command} does not take {key[:40]!r}; it takes {takes}.")
    for key in required:
        if key not in args:
            raise Refusal("bad_args", f"{command} needs {key!r}.")


def _conversation_arg(args: dict[str, Any]) -> str:
    value = args["conversation_id"]
    if not isinstance(value, str) or not _CONVERSATION_ID.fullmatch(value):
        raise Refusal("bad_args", "conversation_id must be a conversation's id: CV followed by 32 hex digits.")
    return value


def _agent_name_arg(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_AGENT_NAME or not value.isprintable():
        raise Refusal(
            "bad_args", f"agent must be an agent's name (1–{MAX_AGENT_NAME} printable characters), or null to unassign."
        )
    return value


def parse_until(value: Any, now: datetime) -> str:
    """A snooze's end, checked: ISO 8601 UTC, later than ``now``, at most MAX_SNOOZE_DAYS ahead; as format_ts."""
    example = "e.g. 2026-11-24T17:00:00Z"
    if not isinstance(value, str) or len(value) > MAX_UNTIL_CHARS:
        raise Refusal("bad_args", f"until must be an ISO 8601 time in UTC, {example}.")
    match = _UTC_TIMESTAMP.fullmatch(value)
    if match is None:
        raise Refusal("bad_args", f"until must be an ISO 8601 time in UTC ending in Z or +00:00, {example}.")
    day, clock, fraction, _zone = match.groups()
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{fraction or ''}+00:00")
    except ValueError:
        raise Refusal("bad_args", f"until is not a real date and time: {value!r}.") from None
    until = format_ts(moment)
    if parse_ts(until) <= now:
        raise Refusal("until_in_past", f"until ({value}) has already passed: snooze until a time in the future.")
    if moment - now > MAX_SNOOZE:
        raise Refusal(
            "until_too_far",
            f"A conversation can be snoozed for at most {protocol.MAX_SNOOZE_DAYS} days; until ({value}) is later.",
        )
    return until


@dataclass(frozen=True, slots=True)
class StatusChange:
    conversation_id: str
    status: str
    snoozed_until: str | None


def parse_set_status(args: dict[str, Any], now: datetime) -> StatusChange:
    _check_keys(protocol.SET_STATUS, args, ("conversation_id", "status"), ("until",))
    cid = _conversation_arg(args)
    status = args["status"]
    if not isinstance(status, str) or status not in protocol.CONVERSATION_STATUSES:
        choices = ", ".join(sorted(protocol.CONVERSATION_STATUSES))
        raise Refusal("bad_args", f"status must be one of {choices}.")
    until = args.get("until")
    if status == SNOOZED:
        if until is None:
            raise Refusal("bad_args", "Snoozing needs until: the time (ISO 8601 UTC) to reopen the conversation.")
        return StatusChange(cid, status, parse_until(until, now))
    if until is not None:
        raise Refusal("bad_args", f"until goes only with status snoozed, not {status}.")
    return StatusChange(cid, status, None)


def parse_note_body(args: dict[str, Any]) -> str:
    body = args["body"]
    if not isinstance(body, str):
        raise Refusal("bad_args", "body must be text.")
    if not body.strip():
        raise Refusal("empty_body", "The note is empty: type something.")
    if len(body) > protocol.MAX_NOTE_CHARS:
        raise Refusal(
            "body_too_long", f"The note is {len(body)} characters; a note holds at most {protocol.MAX_NOTE_CHARS}."
        )
    return body


# -- store operations --------------------------------------------------------------------------------------------


def _conversation(tx: Tx, cid: str) -> sqlite3.Row:
    row = tx.one("SELECT id, assignee, status, snoozed_until FROM conversations WHERE id = ?", (cid,))
    if row is None:
        raise Refusal("unknown_conversation", "That conversation does not exist on this bridge.")
    return row


def _active_agent(tx: Tx, name: str) -> str:
    row = tx.one("SELECT revoked_at FROM agents WHERE name = ?", (name,))
    if row is None:
        raise Refusal("unknown_agent", f"There is no agent named {name!r} on this bridge (see list_agents).")
    if row[0] is not None:
        raise Refusal("agent_revoked", f"Agent {name!r} was revoked and cannot be assigned conversations.")
    return name


def record_assignment(tx: Tx, cid: str, assignee: str | None, by: str) -> dict[str, Any]:
    """Assign ``cid`` to ``assignee`` (None: unassign). Assigning to the current assignee changes nothing."""
    row = _conversation(tx, cid)
    if assignee is not None:
        _active_agent(tx, assignee)
    previous: str | None = row["assignee"]
    result = {"conversation_id": cid, "assignee": assignee, "previous": previous, "changed": previous != assignee}
    if previous == assignee:
        return result
    tx.execute("UPDATE conversations SET assignee = ? WHERE id = ?", (assignee, cid))
    tx.append(
        protocol.CONVERSATION_ASSIGNED, {"conversation_id": cid, "assignee": assignee, "previous": previous, "by": by}
    )
    return result


def _set_status(tx: Tx, cid: str, previous: str, status: str, until: str | None, by: str | None, reason: str) -> None:
    tx.execute("UPDATE conversations SET status = ?, snoozed_until = ? WHERE id = ?", (status, until, cid))
    tx.append(
        protocol.CONVERSATION_STATUS,
        {
            "conversation_id": cid,
            "status": status,
            "snoozed_until": until,
            "previous": previous,
            "by": by,
            "reason": reason,
        },
    )


def record_status_change(tx: Tx, change: StatusChange, by: str) -> dict[str, Any]:
    """An agent's status change; setting what is already so (same status, same snooze end) changes nothing."""
    row = _conversation(tx, change.conversation_id)
    previous, previous_until = str(row["status"]), row["snoozed_until"]
    changed = (previous, previous_until) != (change.status, change.snoozed_until)
    if changed:
        _set_status(
            tx, change.conversation_id, previous, change.status, change.snoozed_until, by=by, reason=REASON_AGENT
        )
    return {
        "conversation_id": change.conversation_id,
        "status": change.status,
        "snoozed_until": change.snoozed_until,
        "previous": previous,
        "changed": changed,
    }


def record_note(tx: Tx, cid: str, body: str, agent: str, command_id: str) -> dict[str, Any]:
    _conversation(tx, cid)
    note_id = new_id("NT")
    tx.execute(
        "INSERT INTO notes (id, conversation_id, body, agent, command_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (note_id, cid, body, agent, command_id, tx.now),
    )
    tx.append(
        protocol.NOTE_ADDED, {"note_id": note_id, "conversation_id": cid, "body": body, "agent": agent, "at": tx.now}
    )
    return {"note_id": note_id, "conversation_id": cid, "at": tx.now}


def agent_list(tx: Tx) -> dict[str, Any]:
    """Every agent's name, whether it is active, its presence and whether it has a phone; never a token or phone."""
    rows = tx.execute(
        "SELECT a.name, a.revoked_at IS NULL, coalesce(p.presence, 'offline'), a.phone IS NOT NULL FROM agents a "
        "LEFT JOIN presence p ON p.agent = a.name ORDER BY a.name"
    ).fetchall()
    return {
        "agents": [
            {"name": str(name), "active": bool(active), "presence": str(presence), "has_phone": bool(phone)}
            for name, active, presence, phone in rows
        ]
    }


def reopen_on_customer_text(tx: Tx, cid: str) -> None:
    """A customer wrote to a resolved or snoozed conversation: it is open again (call after message.received)."""
    row = tx.one("SELECT status FROM conversations WHERE id = ?", (cid,))
    if row is not None and row[0] in REOPENED_BY_CUSTOMER:
        _set_status(tx, cid, str(row[0]), OPEN, None, by=None, reason=REASON_CUSTOMER_WROTE)


def end_due_snoozes(tx: Tx) -> int:
    """Open every snoozed conversation whose snooze has ended; returns how many."""
    rows = tx.execute(
        "SELECT id FROM conversations WHERE status = 'snoozed' AND snoozed_until <= ? ORDER BY snoozed_until, id",
        (tx.now,),
    ).fetchall()
    for (cid,) in rows:
        _set_status(tx, str(cid), SNOOZED, OPEN, None, by=None, reason=REASON_SNOOZE_ENDED)
    return len(rows)


def next_snooze_end(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT min(snoozed_until) FROM conversations WHERE status = 'snoozed'").fetchone()
    return None if row is None or row[0] is None else str(row[0])


# -- commands ----------------------------------------------------------------------------------------------------


def _recorded(tx: Tx, agent: str, command_id: str) -> protocol.Result | None:
    row = tx.one("SELECT result FROM commands WHERE agent = ? AND id = ?", (agent, command_id))
    if row is None or row[0] is None:
        return None
    result = protocol.parse_server_frame(row[0])
    assert isinstance(result, protocol.Result)
    return result


def _record(tx: Tx, agent: str, cmd: protocol.Command, result: protocol.Result) -> None:
    tx.execute(
        "INSERT INTO commands (agent, id, command, args, state, result, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'done', ?, ?, ?)",
        (agent, cmd.id, cmd.command, json.dumps(cmd.args), json.dumps(result.to_frame()), tx.now, tx.now),
    )


class ConversationCommands:
    """The conversation commands, for CommandRunner. Each runs in one store operation: the check against current
    state, the change, its event and the command's result (refusals included) commit together, or not at all."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def handlers(self) -> dict[str, Handler]:
        return {
            protocol.ASSIGN: self.assign,
            protocol.CLAIM: self.claim,
            protocol.SET_STATUS: self.set_status,
            protocol.ADD_NOTE: self.add_note,
            protocol.LIST_AGENTS: self.list_agents,
        }

    async def assign(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.ASSIGN, cmd.args, ("conversation_id", "agent"))
            cid = _conversation_arg(cmd.args)
            target = cmd.args["agent"]
            assignee = None if target is None else _agent_name_arg(target)
            return lambda tx: record_assignment(tx, cid, assignee, by=agent)

        return await self._run(agent, cmd, prepare)

    async def claim(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.CLAIM, cmd.args, ("conversation_id",))
            cid = _conversation_arg(cmd.args)
            return lambda tx: record_assignment(tx, cid, agent, by=agent)

        return await self._run(agent, cmd, prepare)

    async def set_status(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            change = parse_set_status(cmd.args, datetime.now(UTC))
            return lambda tx: record_status_change(tx, change, by=agent)

        return await self._run(agent, cmd, prepare)

    async def add_note(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.ADD_NOTE, cmd.args, ("conversation_id", "body"))
            cid = _conversation_arg(cmd.args)
            body = parse_note_body(cmd.args)
            return lambda tx: record_note(tx, cid, body, agent, cmd.id)

        return await self._run(agent, cmd, prepare)

    async def list_agents(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.LIST_AGENTS, cmd.args, ())
            return agent_list

        return await self._run(agent, cmd, prepare)

    async def _run(self, agent: str, cmd: protocol.Command, prepare: Callable[[], Action]) -> protocol.Result:
        """Check the args, then apply, log and record the result in one operation; a resent id gets that result."""
        action: Action | None = None
        refusal: Refusal | None = None
        try:
            action = prepare()
        except Refusal as exc:
            refusal = exc

        def op(tx: Tx) -> protocol.Result:
            known = _recorded(tx, agent, cmd.id)
            if known is not None:
                return known
            data, failure = carry_out(tx, agent, action, refusal)
            if failure is not None:
                result = protocol.Result.failure(cmd.id, failure.code, str(failure))
            else:
                result = protocol.Result(id=cmd.id, ok=True, data=data)
            _record(tx, agent, cmd, result)
            return result

        return await self.store.write(op)


def carry_out(
    tx: Tx, agent: str, action: Action | None, refusal: Refusal | None, undo: Callable[[Tx], None] | None = None
) -> tuple[dict[str, Any], Refusal | None]:
    """A command's action (or the refusal its arguments got), in the transaction that records its result: refused
    if its agent was revoked since the console connected (the revocation watcher closes the stream at its next
    tick; nothing the console sends meanwhile may take effect)."""
    if is_revoked(tx.conn, agent):
        return {}, Refusal("agent_revoked", REVOKED_SAID)
    if action is None:
        return {}, refusal
    return attempt(tx, action, undo)


def attempt(tx: Tx, action: Action, undo: Callable[[Tx], None] | None = None) -> tuple[dict[str, Any], Refusal | None]:
    """Run a command's action in a savepoint: if it refuses, whatever it wrote and logged is undone (and ``undo``
    forgets what else it kept on the operation) and the refusal is returned, not raised."""
    logged = len(tx.events)
    tx.execute("SAVEPOINT command")
    data: dict[str, Any] = {}
    failure: Refusal | None = None
    try:
        data = action(tx)
    except Refusal as exc:
        tx.execute("ROLLBACK TO command")
        del tx.events[logged:]
        if undo is not None:
            undo(tx)
        failure = exc
    tx.execute("RELEASE command")
    return data, failure


# -- the snooze waker --------------------------------------------------------------------------------------------


class SnoozeWaker:
    """Opens snoozed conversations when their snooze ends, within milliseconds of it.

    It reads the next end from the conversations table (so snoozes outlive restarts, and ones that ended while
    the bridge was down are opened at start), sleeps until then, and wakes early when a status change commits.
    """

    def __init__(self, store: SqliteStore, max_sleep: float = WAKER_MAX_SLEEP) -> None:
        self.store = store
        self.max_sleep = max_sleep
        self._changed = asyncio.Event()
        store.subscribe_commits(self._on_commit)

    def _on_commit(self, events: list[StoredEvent]) -> None:
        if any(event.type == protocol.CONVERSATION_STATUS for event in events):
            self._changed.set()

    async def run(self) -> None:
        while True:
            self._changed.clear()  # before reading, so a snooze committed from now on cuts the sleep short
            try:
                delay = await self._wake_due()
            except Exception:  # a busy database is retried shortly; the snoozes are still in the table
                log.exception("could not wake snoozed conversations")
                delay = 1.0
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the shutdown's cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    async def _wake_due(self) -> float:
        """Open the conversations whose snooze has ended; return how long to sleep until the next one ends."""
        while True:
            due = await self.store.read(next_snooze_end)
            if due is None:
                return self.max_sleep
            wait = (parse_ts(due) - datetime.now(UTC)).total_seconds()
            if wait > 0:
                return min(self.max_sleep, wait + 0.005)
            opened = await self.store.write(end_due_snoozes)
            if not opened:  # an agent changed it meanwhile (or the clock stepped back): look again shortly
                return 0.05
            log.info("%d snoozed conversation(s) opened: their snooze ended", opened)
