"""No statement in the product walks a table that grows with the history, unless it is listed here with why.

Every SQL statement written out in bridge/ and console/ (a string, an f-string whose parts are module constants, or
such strings joined with +) is explained with EXPLAIN QUERY PLAN against a freshly migrated database of its side,
and a plan that reads a whole table, or a whole index with no LIMIT, is a failure. Two such walks went unnoticed until
a trace of the test suite's statements found them: each send read every reply in the log, each call change every call
ever taken (bridge migrations m007 and m008). Statements assembled at run time from local pieces are not seen here.
"""

from __future__ import annotations

import ast
import importlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from bridge.store import open_database
from console.cache import Cache

ROOT = Path(__file__).resolve().parent.parent
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\s", re.IGNORECASE)

SMALL_TABLES = {"agents", "presence", "offer_declines", "outbox", "meta", "sqlite_master"}
"""One row per agent, or per command not yet answered (the console's outbox drops answered ones after a week), or the
schema: read whole on purpose."""

WHOLE_PASSES = {
    "SELECT coalesce(sum(unread), 0) FROM conversations": "the status line's unread total: ~4 ms at 20k conversations",
    "SELECT count(*) FROM conversations": "a count for tests and the benchmark",
    "SELECT count(*) FROM messages": "only before a long migration, to say how long it will take",
}
"""Statements that read a growing table whole, and why that is fine."""


def _resolve(node: ast.AST, module: ModuleType) -> str | None:
    """The text of a string expression made of literals and module-level string constants; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            elif (
                isinstance(value, ast.FormattedValue)
                and isinstance(value.value, ast.Name)
                and value.conversion == -1
                and value.format_spec is None
                and isinstance(getattr(module, value.value.id, None), str)
            ):
                parts.append(getattr(module, value.value.id))
            else:
                return None
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _resolve(node.left, module), _resolve(node.right, module)
        return left + right if left is not None and right is not None else None
    return None


def statements(package: str, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(where, statement) for each whole SQL statement written out in the package's modules."""
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT)
        if any(part in skip for part in relative.parts):
            continue
        module = importlib.import_module(".".join(relative.with_suffix("").parts))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = {
            id(child)
            for node in ast.walk(tree)
            if isinstance(node, (ast.JoinedStr, ast.BinOp))
            for child in ast.walk(node)
            if child is not node
        }
        # A statement begun in a variable that "+=" goes on to extend (a WHERE, an ORDER BY ... LIMIT) is not whole.
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                extended = {
                    n.target.id
                    for n in ast.walk(function)
                    if isinstance(n, ast.AugAssign) and isinstance(n.op, ast.Add) and isinstance(n.target, ast.Name)
                }
                inner |= {
                    id(n.value)
                    for n in ast.walk(function)
                    if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id in extended for t in n.targets)
                }
        for node in ast.walk(tree):
            if id(node) in inner or not isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                continue
            text = _resolve(node, module)
            if text and SQL.match(text) and sqlite3.complete_statement(text + ";"):
                yield f"{relative}:{getattr(node, 'lineno', 0)}", text


def plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    names = re.findall(r"(?<![:\w]):(\w+)", sql)
    params: dict[str, None] | list[None] = dict.fromkeys(names) if names else [None] * sql.count("?")
    return [str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


_NOT_NAMES = {"WHERE", "JOIN", "ON", "LEFT", "INNER", "CROSS", "ORDER", "GROUP", "LIMIT", "USING", "INDEXED", "SET"}


def _tables(sql: str) -> dict[str, str]:
    """Each name a statement gives a table (the table's own, and its alias), to the table."""
    names: dict[str, str] = {}
    for table, alias in re.findall(r"(?:FROM|JOIN|UPDATE|INTO)\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?", sql, re.IGNORECASE):
        names[table] = table
        if alias and alias.upper() not in _NOT_NAMES:
            names[alias] = table
    return names


def walks(steps: list[str], sql: str) -> list[str]:
    """The steps that read a growing table whole: a SCAN with no index, or of a whole index when no LIMIT stops it,
    or a SEARCH whose only bound is a column's ``IS NOT NULL`` (``sid>?``: every row with a SID). A SCAN or range
    through a partial index reads the rows it keeps (live calls, snoozed conversations), not the history."""
    tables = _tables(sql)
    limited = " LIMIT " in f" {sql.upper()} "
    found = []
    for step in steps:
        match = re.match(r"(SCAN|SEARCH) (\w+)", step)
        if match is None or tables.get(match.group(2), match.group(2)) in SMALL_TABLES or "VIRTUAL TABLE" in step:
            continue
        kind = match.group(1)
        if kind == "SCAN" and (" USING " not in step or (" COVERING INDEX " in step and not limited)):
            found.append(step)
        elif kind == "SEARCH" and not limited:
            bound = re.search(r"\((\w+)>\?\)$", step)
            if bound and re.search(rf"(?<![+\w])(?:\w+\.)?{bound.group(1)} IS NOT NULL", sql, re.IGNORECASE):
                found.append(step)
    return found


def _bridge_db() -> sqlite3.Connection:
    return open_database(":memory:").conn


def _cache_db(tmp_path: Path) -> sqlite3.Connection:
    return Cache(tmp_path / "cache.db").conn()


@pytest.mark.parametrize("side", ["bridge", "console"])
def test_no_statement_walks_the_history(side: str, tmp_path: Path) -> None:
    conn = _bridge_db() if side == "bridge" else _cache_db(tmp_path)
    found = list(statements(side, skip=("sandbox",)))
    assert len(found) > 40  # the statements are being found at all
    explained = 0
    failures = []
    for where, sql in found:
        try:
            steps = plan(conn, sql)
        except sqlite3.Error:  # a table made in a migration's middle (messages_rebuilt), or not this side's
            continue
        explained += 1
        bad = walks(steps, sql)
        if bad and " ".join(sql.split()) not in WHOLE_PASSES:
            failures.append(f"{where}: {' '.join(sql.split())[:160]}\n    {bad}")
    assert explained > 0.8 * len(found)
    assert not failures, "statements that read a growing table whole:\n" + "\n".join(failures)


def test_the_check_catches_a_walk(tmp_path: Path) -> None:
    """The statements m007 and m008 fixed, as they were, are walks; a lookup, and a read of the agents, are not."""
    conn = _bridge_db()
    old = (
        "SELECT m.sid FROM messages m JOIN conversations v ON v.id = m.conversation_id "
        "WHERE v.customer_number = ? AND m.direction = 'outbound' AND m.sid IS NOT NULL"
    )
    conn.execute("DROP INDEX conversations_by_customer")
    assert walks(plan(conn, old), old)
    waiting = (
        "SELECT count(*), min(waiting_since) FROM calls WHERE last_queue = ? AND state IN ('queued', 'ringing_agent')"
    )
    conn.execute("DROP INDEX calls_in_queue")
    assert walks(plan(conn, waiting), waiting)
    queued = "SELECT count(*) FROM calls WHERE state = 'queued'"  # the console's, before it said "state != 'ended'"
    assert walks(plan(_cache_db(tmp_path), queued), queued)
    one = "SELECT * FROM calls WHERE call_sid = ?"
    assert not walks(plan(conn, one), one)
    presence = "SELECT p.agent FROM presence p JOIN agents a ON a.name = p.agent"
    assert not walks(plan(conn, presence), presence)  # one row per agent: read whole on purpose
