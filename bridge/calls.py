"""Calls as the support desk sees them: their state, the phones dialled into them, voicemails and agents' presence.

Every function taking a ``Tx`` is one step of a store operation: it changes current state and appends the events
that say so (``call.updated`` carries the whole call, so a console upserts it). REST side effects are never made
here: they are recorded as *intents* (``voice_intents``) in the same commit, and carried out after it by
``bridge.handoff``, so a crash between the decision and Twilio's answer is resumed, not repeated blindly.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from bridge import protocol
from bridge.store import Tx
from bridge.types import new_id

LIVE_STATES = frozenset({"queued", "ringing_agent", "connected", "on_hold", "consulting", "transferring"})
IN_CONFERENCE = frozenset({"connected", "on_hold", "consulting", "transferring"})
TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
TRANSFER_KEYS = ("mode", "target_kind", "target", "state", "by")
"""What call.updated shows of a transfer; the bridge keeps a little more (whether the agent has left)."""
SYSTEM_AGENT = "switchboard"
"""Who the bridge's own texts (the missed-call text) are sent as."""
HAS_VOICEMAIL = "SELECT 1 FROM voicemails WHERE call_sid = ?"
"""Whether an ending call left a voicemail: through ``voicemails_by_call`` (m008)."""


# -- reading --------------------------------------------------------------------------------------------------


def call_row(conn: sqlite3.Connection, call_sid: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
    return row


def leg_row(conn: sqlite3.Connection, leg_id: str | None) -> sqlite3.Row | None:
    if leg_id is None:
        return None
    row: sqlite3.Row | None = conn.execute("SELECT * FROM call_legs WHERE leg_id = ?", (leg_id,)).fetchone()
    return row


def snapshot(row: sqlite3.Row) -> dict[str, Any]:
    """The call as ``call.updated`` carries it."""
    return {
        "call_sid": row["call_sid"],
        "conversation_id": row["conversation_id"],
        "twilio_number": row["twilio_number"],
        "customer_number": row["customer_number"],
        "caller_name": row["caller_name"],
        "from_city": row["from_city"],
        "from_state": row["from_state"],
        "from_country": row["from_country"],
        "queue": row["queue"],
        "state": row["state"],
        "agent": row["agent"],
        "on_hold": bool(row["on_hold"]),
        "muted": bool(row["muted"]),
        "transfer": _public_transfer(row["transfer"]),
        "offered_to": row["offered_to"],
        "offer_expires_at": row["offer_expires_at"],
        "queued_at": row["queued_at"],
        "answered_at": row["answered_at"],
        "ended_at": row["ended_at"],
        "outcome": row["outcome"],
        "agents": json.loads(row["agents"]),
        "reason": row["reason"],
    }


def _public_transfer(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    transfer: dict[str, Any] = json.loads(text)
    return {key: transfer.get(key) for key in TRANSFER_KEYS}


# -- writing --------------------------------------------------------------------------------------------------


def update_call(tx: Tx, call_sid: str, change: str, **fields: Any) -> sqlite3.Row:
    """Set ``fields`` on the call and log ``call.updated`` with ``change``; returns the call as it now stands."""
    assert change in protocol.CALL_CHANGES, change
    fields.setdefault("reason", None)
    if "transfer" in fields and fields["transfer"] is not None and not isinstance(fields["transfer"], str):
        fields["transfer"] = json.dumps(fields["transfer"])
    if "agents" in fields and not isinstance(fields["agents"], str):
        fields["agents"] = json.dumps(fields["agents"])
    fields["updated_at"] = tx.now
    columns = ", ".join(f"{name} = ?" for name in fields)
    tx.execute(f"UPDATE calls SET {columns} WHERE call_sid = ?", (*fields.values(), call_sid))
    row = tx.one("SELECT * FROM calls WHERE call_sid = ?", (call_sid,))
    assert row is not None
    tx.append(protocol.CALL_UPDATED, {**snapshot(row), "change": change})
    return row


def with_agent(row: sqlite3.Row, agent: str | None) -> list[str]:
    """The call's ``agents`` with ``agent`` added (once, in order of talking to the caller)."""
    agents: list[str] = json.loads(row["agents"])
    if agent is not None and agent not in agents:
        agents.append(agent)
    return agents


def add_leg(tx: Tx, call_sid: str, role: str, agent: str | None, endpoint: str) -> str:
    leg_id = new_id("LG")
    tx.execute(
        "INSERT INTO call_legs (leg_id, call_sid, role, agent, endpoint, status, created_at) "
        "VALUES (?, ?, ?, ?, ?, 'dialing', ?)",
        (leg_id, call_sid, role, agent, endpoint, tx.now),
    )
    return leg_id


def add_intent(tx: Tx, call_sid: str, steps: list[dict[str, Any]]) -> None:
    """Record REST steps to carry out, in order, once this operation commits (see ``intents_of``)."""
    cur = tx.execute(
        "INSERT INTO voice_intents (call_sid, steps, state, created_at, updated_at) VALUES (?, ?, 'pending', ?, ?)",
        (call_sid, json.dumps(steps), tx.now, tx.now),
    )
    assert cur.lastrowid is not None
    # Tx has no slot for this; the list lives on this operation's Tx only, which is discarded after the commit.
    pending: list[Intent] = tx.__dict__.setdefault("voice_intents", [])
    pending.append((call_sid, cur.lastrowid, steps))


Intent = tuple[str, int, list[dict[str, Any]]]
"""(call, intent id, steps): what to run once the operation that recorded it commits."""


def intents_of(tx: Tx) -> list[Intent]:
    """Every intent this operation recorded, in order: run them once it commits."""
    found: list[Intent] = tx.__dict__.get("voice_intents", [])
    return list(found)


def back_with_caller(tx: Tx, call_sid: str, leg: str, change: str, **fields: Any) -> sqlite3.Row:
    """A warm transfer ended without the target taking over: the agent's leg ends the conference again, the caller
    is off hold, and the call is connected to the agent on ``leg`` (``fields``: the transfer, the reason, …)."""
    add_intent(
        tx,
        call_sid,
        [
            {"op": "participant", "who": leg, "set": {"EndConferenceOnExit": "true"}},
            {"op": "participant", "who": "customer", "set": {"Hold": "false"}},
        ],
    )
    return update_call(tx, call_sid, change, state="connected", on_hold=0, target_leg=None, **fields)


def forget_intents(tx: Tx) -> None:
    """The intents this operation recorded were rolled back with it: nothing to run."""
    tx.__dict__.pop("voice_intents", None)


# -- presence -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presence:
    agent: str
    presence: str
    call_sid: str | None
    wrap_up_call: str | None


def presence_of(conn: sqlite3.Connection, agent: str) -> Presence:
    row = conn.execute("SELECT presence, call_sid, wrap_up_call FROM presence WHERE agent = ?", (agent,)).fetchone()
    if row is None:
        return Presence(agent, "offline", None, None)
    return Presence(agent, str(row[0]), row[1], row[2])


def set_presence(
    tx: Tx,
    agent: str,
    presence: str,
    reason: str,
    call_sid: str | None = None,
    wrap_up_call: str | None = None,
) -> bool:
    """Move ``agent`` to ``presence`` and log ``agent.presence``; False (no event) if nothing changes."""
    assert presence in protocol.PRESENCES and reason in protocol.PRESENCE_REASONS, (presence, reason)
    before = presence_of(tx.conn, agent)
    if (before.presence, before.call_sid, before.wrap_up_call) == (presence, call_sid, wrap_up_call):
        return False
    idle_since = tx.now if presence == "available" and before.presence != "available" else None
    tx.execute(
        "INSERT INTO presence (agent, presence, reason, call_sid, wrap_up_call, since, idle_since) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent) DO UPDATE SET presence = excluded.presence, "
        "reason = excluded.reason, call_sid = excluded.call_sid, wrap_up_call = excluded.wrap_up_call, "
        "since = excluded.since, idle_since = coalesce(?, presence.idle_since)",
        (agent, presence, reason, call_sid, wrap_up_call, tx.now, idle_since or tx.now, idle_since),
    )
    # Every change is one consoles show, busy on a call → busy wrapping it up included.
    tx.append(
        protocol.AGENT_PRESENCE,
        {
            "agent": agent,
            "presence": presence,
            "previous": before.presence,
            "reason": reason,
            "call_sid": call_sid,
            "at": tx.now,
        },
    )
    return True


def start_wrap_up(tx: Tx, agent: str | None, call_sid: str) -> None:
    """The agent's part in the call is over: busy until they add a disposition note (wrap_up)."""
    if agent is not None:
        set_presence(tx, agent, "busy", "wrap_up", call_sid=call_sid, wrap_up_call=call_sid)


def release_agent(tx: Tx, agent: str | None, call_sid: str) -> None:
    """A call being given to ``agent`` went elsewhere before they talked to the caller: available again."""
    if agent is None:
        return
    now = presence_of(tx.conn, agent)
    if now.presence == "busy" and now.call_sid == call_sid and now.wrap_up_call is None:
        set_presence(tx, agent, "available", "released")


# -- notes ----------------------------------------------------------------------------------------------------


def record_disposition(tx: Tx, conversation_id: str, call_sid: str, body: str, agent: str, command_id: str) -> str:
    note_id = new_id("NT")
    tx.execute(
        "INSERT INTO notes (id, conversation_id, body, agent, command_id, created_at, call_sid) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (note_id, conversation_id, body, agent, command_id, tx.now, call_sid),
    )
    tx.append(
        protocol.NOTE_ADDED,
        {
            "note_id": note_id,
            "conversation_id": conversation_id,
            "body": body,
            "agent": agent,
            "at": tx.now,
            "call_sid": call_sid,
        },
    )
    return note_id


# -- transitions shared by webhooks and commands ----------------------------------------------------------------


def transfer_of(row: sqlite3.Row) -> dict[str, Any] | None:
    value: dict[str, Any] | None = json.loads(row["transfer"]) if row["transfer"] else None
    return value


def hang_up_leg(tx: Tx, call_sid: str, leg_id: str | None) -> None:
    """Hang up a phone dialled into the call, ringing or talking (nothing if it already ended)."""
    leg = leg_row(tx.conn, leg_id)
    if leg is None or leg["status"] == "ended":
        return
    tx.execute("UPDATE call_legs SET status = 'ended' WHERE leg_id = ?", (leg_id,))
    add_intent(tx, call_sid, [{"op": "hangup_leg", "leg": leg_id}])


def end_call(tx: Tx, row: sqlite3.Row, reason: str | None = None, outcome: str | None = None) -> sqlite3.Row:
    """The caller's call is over (they hung up, or it was hung up): settle the outcome and everyone's presence."""
    if row["state"] == "ended":
        return row
    call_sid = row["call_sid"]
    transfer = transfer_of(row)
    has_voicemail = tx.one(HAS_VOICEMAIL, (call_sid,)) is not None
    agents: list[str] = json.loads(row["agents"])
    if outcome is not None:
        pass
    elif has_voicemail:
        outcome = "voicemail"
    elif transfer and transfer["target_kind"] == "number" and transfer["state"] == "completed":
        outcome = "transferred_out"
    elif agents:
        outcome = "answered"
    else:
        outcome = "abandoned"
    for leg in (leg_row(tx.conn, row["agent_leg"]), leg_row(tx.conn, row["target_leg"])):
        # A leg already ended settled its agent then (wrap-up, or released): only live ones are settled here.
        if leg is None or leg["status"] == "ended" or leg["agent"] is None:
            continue
        if leg["status"] == "answered" and leg["agent"] in agents:
            start_wrap_up(tx, leg["agent"], call_sid)
        else:
            release_agent(tx, leg["agent"], call_sid)
    hang_up_leg(tx, call_sid, row["agent_leg"])
    hang_up_leg(tx, call_sid, row["target_leg"])
    if transfer is not None and transfer["state"] in ("ringing", "consulting"):
        transfer = {**transfer, "state": "failed" if transfer["state"] == "ringing" else "cancelled"}
    tx.execute("DELETE FROM offer_declines WHERE call_sid = ?", (call_sid,))
    return update_call(
        tx,
        call_sid,
        "ended",
        state="ended",
        queue=None,
        on_hold=0,
        transfer=transfer,
        offered_to=None,
        offer_expires_at=None,
        ended_at=tx.now,
        outcome=outcome,
        reason=reason,
    )


def back_to_queue(tx: Tx, row: sqlite3.Row, change: str, reason: str, redirect: bool, **fields: Any) -> sqlite3.Row:
    """The caller waits again, at their original place (queued_at) in their queue; ``redirect`` when they were in
    the conference and must be sent back to ``<Enqueue>``."""
    if redirect:
        add_intent(tx, row["call_sid"], [{"op": "redirect", "path": "/twilio/voice?requeue=1"}])
    queue = fields.pop("queue", None) or row["last_queue"]
    if queue != row["last_queue"]:
        fields["queue_sid"] = None  # the old queue's: the caller is dequeued from the new one (its SID looked up)
    return update_call(
        tx,
        row["call_sid"],
        change,
        state="queued",
        queue=queue,
        last_queue=queue,
        agent=None,
        agent_leg=None,
        target_leg=None,
        on_hold=0,
        muted=0,
        offered_to=None,
        offer_expires_at=None,
        waiting_since=tx.now,
        caller_joined=0,
        conference_sid=None,  # the next agent's conference is a new one (same name, new SID)
        reason=reason,
        **fields,
    )


def leg_answered(tx: Tx, leg: sqlite3.Row, row: sqlite3.Row) -> None:
    """A phone we dialled into the call's conference answered."""
    if leg["status"] != "dialing":
        return
    tx.execute("UPDATE call_legs SET status = 'answered' WHERE leg_id = ?", (leg["leg_id"],))
    call_sid = row["call_sid"]
    if row["state"] == "ended":
        hang_up_leg(tx, call_sid, leg["leg_id"])
        return
    if leg["leg_id"] == row["agent_leg"] and row["state"] == "ringing_agent":
        # The agent is in the conference: now (not before) the caller leaves the queue to join them.
        add_intent(tx, call_sid, [{"op": "dequeue"}])
        update_call(
            tx,
            call_sid,
            "connected",
            state="connected",
            queue=None,
            answered_at=row["answered_at"] or tx.now,
            agents=with_agent(row, leg["agent"]),
        )
        return
    transfer = transfer_of(row)
    if leg["leg_id"] != row["target_leg"] or transfer is None:
        hang_up_leg(tx, call_sid, leg["leg_id"])  # a leg we no longer want (a cancelled transfer's, say)
        return
    if transfer["mode"] == "cold" or transfer.get("agent_left"):
        complete_transfer(tx, row, transfer)
        return
    update_call(tx, call_sid, "transfer_answered", state="consulting", transfer={**transfer, "state": "consulting"})


def complete_transfer(tx: Tx, row: sqlite3.Row, transfer: dict[str, Any]) -> sqlite3.Row:
    """The target takes the caller: it becomes the call's agent (and ends the call if it hangs up), the caller is
    unheld, and the agent who transferred (if still there) leaves and wraps up."""
    call_sid = row["call_sid"]
    target = leg_row(tx.conn, row["target_leg"])
    assert target is not None
    old_leg = leg_row(tx.conn, row["agent_leg"])
    steps: list[dict[str, Any]] = [
        {"op": "participant", "who": target["leg_id"], "set": {"EndConferenceOnExit": "true"}},
        {"op": "participant", "who": "customer", "set": {"Hold": "false"}},
    ]
    if old_leg is not None and old_leg["status"] != "ended":
        tx.execute("UPDATE call_legs SET status = 'ended' WHERE leg_id = ?", (old_leg["leg_id"],))
        steps.append({"op": "kick", "who": old_leg["leg_id"]})
        if transfer["mode"] == "warm":
            # An agent whose leg already ended was put in wrap-up then (leg_ended), and may have finished it since.
            start_wrap_up(tx, row["agent"], call_sid)
    add_intent(tx, call_sid, steps)
    new_agent = target["agent"]
    if new_agent is not None:
        set_presence(tx, new_agent, "busy", "on_call", call_sid=call_sid)
    return update_call(
        tx,
        call_sid,
        "transfer_completed",
        state="connected",
        agent=new_agent,
        agent_leg=target["leg_id"],
        target_leg=None,
        on_hold=0,
        muted=0,
        transfer={k: v for k, v in {**transfer, "state": "completed"}.items() if k != "agent_left"},
        agents=with_agent(row, new_agent),
    )


def leg_ended(tx: Tx, leg: sqlite3.Row, row: sqlite3.Row, status: str) -> None:
    """A phone we dialled hung up, or never answered (``status``: Twilio's final CallStatus)."""
    answered = leg["status"] == "answered"
    tx.execute("UPDATE call_legs SET status = 'ended' WHERE leg_id = ?", (leg["leg_id"],))
    if row["state"] == "ended":
        return
    call_sid = row["call_sid"]
    said = {"busy": "was busy", "failed": "could not be reached", "canceled": "was cancelled"}.get(
        status, "did not answer"
    )
    transfer = transfer_of(row)
    if leg["leg_id"] == row["agent_leg"]:
        if row["state"] == "ringing_agent":
            release_agent(tx, row["agent"], call_sid)
            who = row["agent"] or "The agent"
            back_to_queue(
                tx, row, "agent_no_answer", f"{who}'s phone {said}; the caller keeps their place in the queue.", False
            )
            return
        if transfer is not None and transfer["state"] in ("ringing", "consulting") and transfer["mode"] == "warm":
            # The agent hung up mid-consultation: their leg no longer ends the conference, and the target takes over.
            start_wrap_up(tx, row["agent"], call_sid)
            if transfer["state"] == "consulting":
                complete_transfer(tx, row, transfer)
            else:  # the target, when they answer, takes the caller straight away (nobody is left to consult)
                marked = json.dumps({**transfer, "agent_left": True})
                tx.execute("UPDATE calls SET transfer = ? WHERE call_sid = ?", (marked, call_sid))
            return
        if answered:
            # The agent hung up: their leg ends the conference, and with it the caller's call (status callback).
            start_wrap_up(tx, row["agent"], call_sid)
            add_intent(tx, call_sid, [{"op": "hangup_caller"}])
        return
    if leg["leg_id"] != row["target_leg"] or transfer is None:
        return
    release_agent(tx, leg["agent"], call_sid)
    target = transfer["target"]
    if not answered:
        failed = {**transfer, "state": "failed"}
        if transfer["mode"] == "cold" or transfer.get("agent_left"):  # nobody is left with the caller
            back_to_queue(
                tx,
                row,
                "transfer_failed",
                f"{target} {said}; the caller is back at the front of the queue.",
                True,
                transfer=failed,
            )
            return
        back_with_caller(
            tx,
            call_sid,
            row["agent_leg"],
            "transfer_failed",
            transfer=failed,
            reason=f"{target} {said}; you are back with the caller.",
        )
        return
    # The target hung up while consulting: the agent is back with the caller.
    back_with_caller(
        tx,
        call_sid,
        row["agent_leg"],
        "transfer_cancelled",
        transfer={**transfer, "state": "cancelled"},
        reason=f"{target} hung up; you are back with the caller.",
    )
