"""Call handoff as conference operations: the voice commands, and the REST calls that carry them out.

Every command decides in one store operation (the check against current state, the change, its events, the
command's result and the REST *intents*), so two agents accepting the same call at once are serialised by the
writer: the first wins, the second is told who took it. The intents are then carried out in order, per call,
through Twilio's REST API; one interrupted by a crash is resumed at the next start, looking before it creates
anything (a participant is found by its label), so no phone is dialled twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge import protocol
from bridge.calls import (
    IN_CONFERENCE,
    SYSTEM_AGENT,
    Intent,
    add_intent,
    add_leg,
    back_to_queue,
    back_with_caller,
    call_row,
    complete_transfer,
    end_call,
    forget_intents,
    hang_up_leg,
    intents_of,
    leg_answered,
    leg_ended,
    leg_row,
    presence_of,
    record_disposition,
    release_agent,
    set_presence,
    start_wrap_up,
    transfer_of,
    update_call,
)
from bridge.conversations import (
    Refusal,
    _check_keys,
    _record,
    _recorded,
    carry_out,
    format_ts,
    parse_note_body,
    parse_ts,
)
from bridge.phones import InvalidNumber, parse_e164
from bridge.queues import QueueConfig
from bridge.settings import Settings
from bridge.store import SqliteStore, StoredEvent, Tx
from bridge.twilio_rest import TwilioError, TwilioRest, TwilioUnavailable

log = logging.getLogger("switchboard.bridge.handoff")

Handler = Callable[[str, protocol.Command], Awaitable[protocol.Result]]
Action = Callable[[Tx], dict[str, Any]]
SendText = Callable[[str, protocol.Command], Awaitable[protocol.Result]]

CONFERENCE_EVENTS = "start end join leave hold mute"
MAX_ENDPOINT = 200
QUEUE_WAITING = (
    "SELECT count(*), min(waiting_since) FROM calls WHERE last_queue = ? AND state IN ('queued', 'ringing_agent')"
)
"""A queue's waiting calls and the longest wait, at each change to its calls: through ``calls_in_queue`` (m008),
the calls waiting now, not every call ever taken."""


class CallRefusal(Refusal):
    """A refusal that carries data for the console (already_taken names who took the call)."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.data = data or {}


def _call_sid_arg(args: dict[str, Any], key: str = "call_sid") -> str:
    value = args[key]
    if not isinstance(value, str) or len(value) != 34 or not value.startswith("CA") or not value.isascii():
        raise Refusal("bad_args", "call_sid must be a call's id: CA followed by 32 hex digits.")
    try:
        int(value[2:], 16)
    except ValueError:
        raise Refusal("bad_args", "call_sid must be a call's id: CA followed by 32 hex digits.") from None
    return value


def _bool_arg(args: dict[str, Any], key: str) -> bool:
    value = args[key]
    if not isinstance(value, bool):
        raise Refusal("bad_args", f"{key} must be true or false.")
    return value


def parse_endpoint(text: str, region: str) -> str:
    """An agent's phone: an E.164 number (typed any way phonenumbers reads), a sip: URI or a client: identity."""
    text = text.strip()
    if text.startswith(("sip:", "client:")):
        scheme, _, rest = text.partition(":")
        if not rest or len(text) > MAX_ENDPOINT or not rest.isprintable() or any(c.isspace() for c in rest):
            raise InvalidNumber(f"{scheme}: needs an address with no spaces, e.g. {scheme}:ana@example.com")
        if scheme == "sip" and "@" not in rest:
            raise InvalidNumber("a sip: URI needs a user and a host, e.g. sip:ana@example.sip.twilio.com")
        return text
    return parse_e164(text, region)


def _known(tx: Tx, call_sid: str) -> sqlite3.Row:
    row = call_row(tx.conn, call_sid)
    if row is None:
        raise Refusal("unknown_call", "That call does not exist on this bridge.")
    return row


def _mine(tx: Tx, call_sid: str, agent: str) -> sqlite3.Row:
    row = _known(tx, call_sid)
    if row["agent"] != agent:
        who = row["agent"] or "nobody"
        raise Refusal("not_your_call", f"This call is not yours (it is with {who}).")
    return row


def _transfer_target(args: dict[str, Any], mode: str, region: str) -> tuple[str, str]:
    target = args["target"]
    if not isinstance(target, dict) or len(target) != 1:
        raise Refusal("bad_args", 'target must be one of {"agent": name}, {"queue": name} or {"number": text}.')
    [(kind, value)] = target.items()
    if kind not in ("agent", "queue", "number") or not isinstance(value, str) or not value.strip():
        raise Refusal("bad_args", 'target must be one of {"agent": name}, {"queue": name} or {"number": text}.')
    if kind == "queue" and mode == "warm":
        raise Refusal("bad_args", "A warm transfer needs someone to talk to: an agent or a number, not a queue.")
    if kind == "number":
        try:
            return kind, parse_e164(value, region)
        except InvalidNumber as exc:
            raise Refusal("bad_number", f"{exc}.") from None
    if len(value) > 64 or not value.isprintable():
        raise Refusal("bad_args", f"{kind} must be a name of 1–64 printable characters.")
    return kind, value


class Handoff:
    """The voice side of the bridge: commands, REST intents, presence, the missed-call text and auto-offer."""

    def __init__(self, settings: Settings, store: SqliteStore, rest: TwilioRest, queues: QueueConfig) -> None:
        self.settings = settings
        self.store = store
        self.rest = rest
        self.queues = queues
        self.base_url = settings.public_url or ""
        self.send_text: SendText | None = None
        """Set by the app: runs send_sms as the bridge (the missed-call text goes through the usual send path)."""
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._offline_timers: dict[str, asyncio.TimerHandle] = {}
        self._online: set[str] = set()
        self._offer_wake = asyncio.Event()
        store.subscribe_commits(self._on_commit)

    def url(self, path: str) -> str:
        return self.base_url + path

    def handlers(self) -> dict[str, Handler]:
        return {
            protocol.ACCEPT_CALL: self.accept_call,
            protocol.HOLD_CALL: self.hold_call,
            protocol.MUTE_CALL: self.mute_call,
            protocol.TRANSFER_CALL: self.transfer_call,
            protocol.COMPLETE_TRANSFER: self.complete_transfer,
            protocol.CANCEL_TRANSFER: self.cancel_transfer,
            protocol.HANG_UP: self.hang_up,
            protocol.WRAP_UP: self.wrap_up,
            protocol.DECLINE_CALL: self.decline_call,
            protocol.SET_PRESENCE: self.set_presence,
            protocol.LIST_QUEUES: self.list_queues,
        }

    # -- running a command ------------------------------------------------------------------------------------

    async def _run(self, agent: str, cmd: protocol.Command, prepare: Callable[[], Action]) -> protocol.Result:
        """Check the args, then decide, log, record the result and the REST intents in one operation."""
        action: Action | None = None
        refusal: Refusal | None = None
        try:
            action = prepare()
        except Refusal as exc:
            refusal = exc

        def op(tx: Tx) -> tuple[protocol.Result, list[Intent]]:
            known = _recorded(tx, agent, cmd.id)
            if known is not None:
                return known, []
            data, failure = carry_out(tx, agent, action, refusal, forget_intents)
            if failure is not None:
                extra = failure.data if isinstance(failure, CallRefusal) else {}
                result = protocol.Result.failure(cmd.id, failure.code, str(failure), extra)
            else:
                result = protocol.Result(id=cmd.id, ok=True, data=data)
            if cmd.command != protocol.LIST_QUEUES:
                _record(tx, agent, cmd, result)
            return result, intents_of(tx)

        result, intents = await self.store.write(op)
        self.run_intents(intents)
        return result

    # -- the commands -----------------------------------------------------------------------------------------

    async def accept_call(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.ACCEPT_CALL, cmd.args, (), ("call_sid",))
            wanted = None if cmd.args.get("call_sid") is None else _call_sid_arg(cmd.args)
            return lambda tx: self._accept(tx, agent, wanted)

        return await self._run(agent, cmd, prepare)

    def _accept(self, tx: Tx, agent: str, wanted: str | None) -> dict[str, Any]:
        if wanted is None:
            oldest = tx.one("SELECT call_sid FROM calls WHERE state = 'queued' ORDER BY queued_at LIMIT 1")
            if oldest is None:
                raise Refusal("no_calls_waiting", "No calls are waiting.")
            wanted = str(oldest[0])
        row = _known(tx, wanted)
        result = {"call_sid": wanted, "conversation_id": row["conversation_id"], "state": "ringing_agent"}
        if row["agent"] == agent and row["state"] == "ringing_agent":
            return result  # accepted already (another command id): nothing more to do
        if row["state"] in ("ended", "voicemail"):
            raise Refusal("call_ended", "That call is over: the caller hung up or went to voicemail.")
        if row["state"] != "queued":
            who = row["agent"] or "another agent"
            raise CallRefusal("already_taken", f"{who} already took this call.", {"agent": row["agent"]})
        phone = tx.one("SELECT phone FROM agents WHERE name = ? AND revoked_at IS NULL", (agent,))
        if phone is None or not phone[0]:
            raise Refusal(
                "no_phone",
                "You have no phone to ring: ask an admin to run `switchboard-bridge agents set-phone NAME ENDPOINT`.",
            )
        if presence_of(tx.conn, agent).presence == "busy":
            raise Refusal("agent_busy", "You are on a call or wrapping one up: finish it (wrap_up) first.")
        leg = add_leg(tx, wanted, "agent", agent, str(phone[0]))
        dial = {"op": "dial", "leg": leg, "to": str(phone[0]), "from": row["twilio_number"], "end_on_exit": True}
        add_intent(tx, wanted, [dial])
        set_presence(tx, agent, "busy", "on_call", call_sid=wanted)
        tx.execute("DELETE FROM offer_declines WHERE call_sid = ?", (wanted,))
        update_call(
            tx,
            wanted,
            "accepted",
            state="ringing_agent",
            agent=agent,
            agent_leg=leg,
            transfer=None,  # a transfer that failed earlier is history (its changes are in the log)
            offered_to=None,
            offer_expires_at=None,
        )
        return result

    async def hold_call(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.HOLD_CALL, cmd.args, ("call_sid", "hold"))
            call_sid, hold = _call_sid_arg(cmd.args), _bool_arg(cmd.args, "hold")

            def action(tx: Tx) -> dict[str, Any]:
                row = _mine(tx, call_sid, agent)
                if row["state"] not in ("connected", "on_hold") or transfer_of(row) and row["target_leg"]:
                    raise Refusal("not_connected", "You can hold a call only while you are talking to the caller.")
                changed = bool(row["on_hold"]) != hold
                if changed:
                    add_intent(tx, call_sid, [self._hold_step(row, hold)])
                    update_call(
                        tx,
                        call_sid,
                        "held" if hold else "unheld",
                        state="on_hold" if hold else "connected",
                        on_hold=int(hold),
                    )
                return {"call_sid": call_sid, "on_hold": hold, "changed": changed}

            return action

        return await self._run(agent, cmd, prepare)

    def _hold_step(self, row: sqlite3.Row, hold: bool) -> dict[str, Any]:
        fields = {"Hold": "true" if hold else "false"}
        queue = self.queues.named(row["last_queue"])
        if hold and queue is not None and queue.wait_music:
            fields["HoldUrl"] = queue.wait_music
            fields["HoldMethod"] = "GET"
        return {"op": "participant", "who": "customer", "set": fields}

    async def mute_call(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.MUTE_CALL, cmd.args, ("call_sid", "muted"))
            call_sid, muted = _call_sid_arg(cmd.args), _bool_arg(cmd.args, "muted")

            def action(tx: Tx) -> dict[str, Any]:
                row = _mine(tx, call_sid, agent)
                if row["state"] not in ("connected", "on_hold", "consulting") or row["agent_leg"] is None:
                    raise Refusal("not_connected", "You can mute only while your phone is in the call.")
                changed = bool(row["muted"]) != muted
                if changed:
                    step = {
                        "op": "participant",
                        "who": row["agent_leg"],
                        "set": {"Muted": "true" if muted else "false"},
                    }
                    add_intent(tx, call_sid, [step])
                    update_call(tx, call_sid, "muted" if muted else "unmuted", muted=int(muted))
                return {"call_sid": call_sid, "muted": muted, "changed": changed}

            return action

        return await self._run(agent, cmd, prepare)

    async def transfer_call(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.TRANSFER_CALL, cmd.args, ("call_sid", "mode", "target"))
            call_sid = _call_sid_arg(cmd.args)
            mode = cmd.args["mode"]
            if mode not in ("cold", "warm"):
                raise Refusal("bad_args", 'mode must be "cold" or "warm".')
            kind, target = _transfer_target(cmd.args, mode, self.settings.region)
            return lambda tx: self._transfer(tx, agent, call_sid, mode, kind, target)

        return await self._run(agent, cmd, prepare)

    def _transfer(self, tx: Tx, agent: str, call_sid: str, mode: str, kind: str, target: str) -> dict[str, Any]:
        row = _mine(tx, call_sid, agent)
        if row["target_leg"] is not None:
            raise Refusal("transfer_in_progress", "A transfer is already under way: complete or cancel it first.")
        if row["state"] not in ("connected", "on_hold"):
            raise Refusal("not_connected", "You can transfer a call only while you are talking to the caller.")
        endpoint: str | None = None
        target_agent: str | None = None
        if kind == "agent":
            found = tx.one("SELECT phone, revoked_at FROM agents WHERE name = ?", (target,))
            if found is None or found["revoked_at"] is not None:
                raise Refusal("unknown_agent", f"There is no agent named {target!r} on this bridge (see list_agents).")
            if target == agent:
                raise Refusal("bad_args", "You are already on this call: transfer it to someone else.")
            if not found["phone"]:
                raise Refusal("no_phone", f"{target} has no phone to ring (`switchboard-bridge agents set-phone`).")
            if presence_of(tx.conn, target).presence in ("busy", "offline"):
                raise Refusal("agent_busy", f"{target} is {presence_of(tx.conn, target).presence}: try someone else.")
            endpoint, target_agent = str(found["phone"]), target
        elif kind == "queue":
            if self.queues.named(target) is None:
                names = ", ".join(self.queues.names())
                raise Refusal("unknown_queue", f"There is no queue named {target!r}; the queues are {names}.")
        else:
            endpoint = target
        transfer = {"mode": mode, "target_kind": kind, "target": target, "state": "ringing", "by": agent}
        agent_leg = row["agent_leg"]
        if kind == "queue":
            # The caller goes back to <Enqueue>; leaving the conference (they end it on exit) hangs up the agent.
            tx.execute("UPDATE call_legs SET status = 'ended' WHERE leg_id = ?", (agent_leg,))
            start_wrap_up(tx, agent, call_sid)
            transfer["state"] = "completed"
            back_to_queue(
                tx,
                row,
                "transfer_completed",
                f"{agent} sent the caller to the {target} queue.",
                True,
                queue=target,
                transfer=transfer,
            )
            add_intent(tx, call_sid, [{"op": "kick", "who": agent_leg}])
            return {"call_sid": call_sid, "transfer": transfer}
        assert endpoint is not None
        leg = add_leg(tx, call_sid, "target", target_agent, endpoint)
        steps = [
            self._hold_step(row, True),
            # From now on the agent leaving must not end the conference: the caller would be dropped. If Twilio
            # refuses this, the rest of the transfer (a cold one's kick of the agent above all) must not happen.
            {
                "op": "participant",
                "who": agent_leg,
                "set": {"EndConferenceOnExit": "false"},
                "abort_transfer": {"agent": agent, "target_leg": leg, "muted": bool(row["muted"])},
            },
            {"op": "dial", "leg": leg, "to": endpoint, "from": row["twilio_number"], "end_on_exit": False},
        ]
        if target_agent is not None:
            set_presence(tx, target_agent, "busy", "on_call", call_sid=call_sid)
        if mode == "cold":
            steps.append({"op": "kick", "who": agent_leg})
            tx.execute("UPDATE call_legs SET status = 'ended' WHERE leg_id = ?", (agent_leg,))
            start_wrap_up(tx, agent, call_sid)
            add_intent(tx, call_sid, steps)
            update_call(
                tx,
                call_sid,
                "transfer_started",
                state="transferring",
                agent=target_agent,
                agent_leg=None,
                target_leg=leg,
                on_hold=1,
                muted=0,
                transfer=transfer,
            )
        else:
            add_intent(tx, call_sid, steps)
            update_call(tx, call_sid, "transfer_started", state="on_hold", on_hold=1, target_leg=leg, transfer=transfer)
        return {"call_sid": call_sid, "transfer": transfer}

    async def complete_transfer(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.COMPLETE_TRANSFER, cmd.args, ("call_sid",))
            call_sid = _call_sid_arg(cmd.args)

            def action(tx: Tx) -> dict[str, Any]:
                row = _mine(tx, call_sid, agent)
                transfer = transfer_of(row)
                if row["state"] != "consulting" or transfer is None or transfer["state"] != "consulting":
                    raise Refusal("no_transfer", "There is no warm transfer to complete: the target has not answered.")
                complete_transfer(tx, row, transfer)
                return {"call_sid": call_sid}

            return action

        return await self._run(agent, cmd, prepare)

    async def cancel_transfer(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.CANCEL_TRANSFER, cmd.args, ("call_sid",))
            call_sid = _call_sid_arg(cmd.args)

            def action(tx: Tx) -> dict[str, Any]:
                row = _mine(tx, call_sid, agent)
                transfer = transfer_of(row)
                if transfer is None or transfer["mode"] != "warm" or row["target_leg"] is None:
                    raise Refusal("no_transfer", "There is no warm transfer under way to cancel.")
                if transfer.get("agent_left"):  # unheld, the caller would be alone: the target takes them instead
                    raise Refusal("no_transfer", "Your phone has left the call: the transfer goes ahead.")
                target = leg_row(tx.conn, row["target_leg"])
                hang_up_leg(tx, call_sid, row["target_leg"])
                if target is not None:
                    release_agent(tx, target["agent"], call_sid)
                back_with_caller(
                    tx, call_sid, row["agent_leg"], "transfer_cancelled", transfer={**transfer, "state": "cancelled"}
                )
                return {"call_sid": call_sid}

            return action

        return await self._run(agent, cmd, prepare)

    async def hang_up(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.HANG_UP, cmd.args, ("call_sid",))
            call_sid = _call_sid_arg(cmd.args)

            def action(tx: Tx) -> dict[str, Any]:
                row = _known(tx, call_sid)
                if row["state"] in ("ended", "voicemail"):
                    raise Refusal("call_ended", "That call is already over.")
                if row["agent"] != agent:
                    raise Refusal("not_your_call", f"This call is not yours (it is with {row['agent'] or 'nobody'}).")
                transfer = transfer_of(row)
                if transfer is not None and transfer.get("agent_left") and row["target_leg"] is not None:
                    # The target, still ringing, takes the caller when they answer: hanging up would drop them.
                    raise Refusal(
                        "transfer_in_progress",
                        "Your phone has left the call: the transfer goes ahead, and the caller is not hung up.",
                    )
                steps: list[dict[str, Any]] = [{"op": "hangup_caller"}]
                if row["state"] in IN_CONFERENCE:
                    steps.append({"op": "end_conference"})
                add_intent(tx, call_sid, steps)
                # Hung up while their own phone still rang, nobody talked to the caller: not abandoned (the caller
                # did not give up), so no missed-call text either.
                outcome = None if json.loads(row["agents"]) else "agent_hung_up"
                end_call(tx, row, f"{agent} hung up.", outcome=outcome)
                return {"call_sid": call_sid}

            return action

        return await self._run(agent, cmd, prepare)

    async def wrap_up(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.WRAP_UP, cmd.args, ("call_sid", "note"))
            call_sid = _call_sid_arg(cmd.args)
            note = parse_note_body({"body": cmd.args["note"]})

            def action(tx: Tx) -> dict[str, Any]:
                row = _known(tx, call_sid)
                if presence_of(tx.conn, agent).wrap_up_call != call_sid:
                    raise Refusal("not_in_wrap_up", "You are not wrapping up this call: nothing to close.")
                note_id = record_disposition(tx, row["conversation_id"], call_sid, note, agent, cmd.id)
                set_presence(tx, agent, "available", "wrapped_up")
                return {"call_sid": call_sid, "note_id": note_id}

            return action

        return await self._run(agent, cmd, prepare)

    async def decline_call(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.DECLINE_CALL, cmd.args, ("call_sid",))
            call_sid = _call_sid_arg(cmd.args)

            def action(tx: Tx) -> dict[str, Any]:
                row = _known(tx, call_sid)
                if row["offered_to"] != agent:
                    raise Refusal("not_offered", "That call is not being offered to you.")
                self._decline(tx, row, f"{agent} declined the call.")
                return {"call_sid": call_sid}

            return action

        return await self._run(agent, cmd, prepare)

    def _decline(self, tx: Tx, row: sqlite3.Row, reason: str) -> None:
        tx.execute(
            "INSERT INTO offer_declines (call_sid, agent) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (row["call_sid"], row["offered_to"]),
        )
        update_call(tx, row["call_sid"], "offer_declined", offered_to=None, offer_expires_at=None, reason=reason)

    async def set_presence(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.SET_PRESENCE, cmd.args, ("presence",))
            wanted = cmd.args["presence"]
            if wanted not in ("available", "away"):
                raise Refusal("bad_args", 'presence must be "available" or "away"; busy and offline are the bridge\'s.')

            def action(tx: Tx) -> dict[str, Any]:
                if presence_of(tx.conn, agent).presence == "busy":
                    raise Refusal("agent_busy", "You are on a call or wrapping one up: finish it first.")
                changed = set_presence(tx, agent, wanted, "agent")
                return {"agent": agent, "presence": wanted, "changed": changed}

            return action

        return await self._run(agent, cmd, prepare)

    async def list_queues(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        def prepare() -> Action:
            _check_keys(protocol.LIST_QUEUES, cmd.args, ())
            return self._queues_now

        return await self._run(agent, cmd, prepare)

    def _queues_now(self, tx: Tx) -> dict[str, Any]:
        now = parse_ts(tx.now)
        available = tx.one("SELECT count(*) FROM presence WHERE presence = 'available'")
        queues = []
        for queue in self.queues.queues:
            waiting = tx.one(QUEUE_WAITING, (queue.name,))
            assert waiting is not None
            longest = 0 if waiting[1] is None else max(0, int((now - parse_ts(waiting[1])).total_seconds()))
            queues.append(
                {
                    "name": queue.name,
                    "numbers": ["*"] if queue.catch_all and not queue.numbers else sorted(queue.numbers),
                    "open_now": queue.is_open(now),
                    "waiting": int(waiting[0]),
                    "longest_wait": longest,
                    "agents_available": int(available[0]) if available else 0,
                }
            )
        return {"queues": queues}

    # -- carrying out intents ------------------------------------------------------------------------------------

    def run_intents(self, intents: list[Intent], resumed: bool = False) -> None:
        """Carry out intents after their commit: in order per call, each call's independently of the others."""
        for call_sid, intent, steps in intents:
            before = self._chains.get(call_sid)
            task = asyncio.create_task(self._execute(before, call_sid, intent, steps, resumed), name=f"intent {intent}")
            self._chains[call_sid] = task
            self._tasks.add(task)
            task.add_done_callback(lambda t, sid=call_sid: self._done(t, sid))  # type: ignore[misc]

    def _done(self, task: asyncio.Task[None], call_sid: str) -> None:
        self._tasks.discard(task)
        if self._chains.get(call_sid) is task:
            del self._chains[call_sid]

    async def _execute(
        self, before: asyncio.Task[None] | None, call_sid: str, intent: int, steps: list[dict[str, Any]], resumed: bool
    ) -> None:
        if before is not None:
            await asyncio.wait([before])
        problems: list[str] = []
        aborted: dict[str, Any] | None = None
        for step in steps:
            try:
                await self._step(call_sid, step, resumed)
            except (TwilioError, TwilioUnavailable) as exc:
                problems.append(f"{step['op']}: {exc}")
                log.warning("call %s: %s failed: %s", call_sid, step["op"], exc)
            except Exception:  # a bug in one step must not leave the others undone
                log.exception("call %s: %s failed", call_sid, step["op"])
                problems.append(f"{step['op']}: internal error")
            else:
                continue
            if "abort_transfer" in step:  # the steps after it would drop the caller: none of them, and undo it
                aborted = step
                break
        state, error = ("failed", "; ".join(problems)) if problems else ("done", None)

        def settle(tx: Tx) -> list[Intent]:
            tx.execute(
                "UPDATE voice_intents SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (state, error, tx.now, intent),
            )
            if aborted is not None:
                self._transfer_step_failed(tx, call_sid, aborted)
            return intents_of(tx)

        self.run_intents(await self.store.write(settle))

    @staticmethod
    def _transfer_step_failed(tx: Tx, call_sid: str, step: dict[str, Any]) -> None:
        """Twilio refused to stop the agent's leg ending the conference: the transfer has not started (nobody was
        dialled, nobody kicked), so it failed and the call stays with the agent, unheld."""
        undo = step["abort_transfer"]
        row = call_row(tx.conn, call_sid)
        transfer = None if row is None else transfer_of(row)
        if row is None or transfer is None or row["target_leg"] != undo["target_leg"] or transfer["state"] != "ringing":
            return  # the call moved on meanwhile (the caller hung up, say): nothing of this transfer is left to undo
        agent, agent_leg = undo["agent"], step["who"]
        target = leg_row(tx.conn, undo["target_leg"])
        tx.execute("UPDATE call_legs SET status = 'ended' WHERE leg_id = ?", (undo["target_leg"],))  # never dialled
        if target is not None:
            release_agent(tx, target["agent"], call_sid)
        tx.execute("UPDATE call_legs SET status = 'answered' WHERE leg_id = ?", (agent_leg,))  # a cold one ended it
        set_presence(tx, agent, "busy", "on_call", call_sid=call_sid)
        back_with_caller(
            tx,
            call_sid,
            agent_leg,
            "transfer_failed",
            agent=agent,
            agent_leg=agent_leg,
            muted=row["muted"] if transfer["mode"] == "warm" else int(undo["muted"]),
            transfer={**transfer, "state": "failed"},
            reason=f"Twilio refused to start the transfer to {transfer['target']}; you are still with the caller.",
        )

    async def _step(self, call_sid: str, step: dict[str, Any], resumed: bool) -> None:
        op = step["op"]
        if op == "dial":  # carries all it needs: the accept key's first REST request leaves without a read
            await self._dial(call_sid, step, resumed)
            return
        row = await self.store.read(lambda conn: call_row(conn, call_sid))
        if row is None:
            return
        conference = row["conference_sid"] or call_sid
        if op == "participant":
            who = await self._participant(row, step["who"])
            if who is not None:
                await self._ignoring_gone(self.rest.update_participant(conference, who, list(step["set"].items())))
        elif op == "dequeue":
            await self._dequeue(row)
        elif op in ("kick", "hangup_leg"):
            who = await self._participant(row, step.get("who") or step.get("leg"))
            if who is not None:
                await self._ignoring_gone(self.rest.delete_participant(conference, who))
        elif op == "redirect":
            await self._ignoring_gone(self.rest.update_call(call_sid, url=self.url(step["path"])))
        elif op == "hangup_caller":
            await self._ignoring_gone(self.rest.update_call(call_sid, status="completed"))
        elif op == "end_conference":
            await self._ignoring_gone(self.rest.end_conference(conference))
        else:
            log.error("call %s: unknown intent step %r", call_sid, op)

    @staticmethod
    async def _ignoring_gone(request: Awaitable[Any]) -> None:
        """Run a REST request where 404 (the call, participant or conference is already gone) means done."""
        try:
            await request
        except TwilioError as exc:
            # 21220: the call is no longer in progress (it ended first): nothing left to do either.
            if exc.status != 404 and exc.code != 21220:
                raise

    async def _participant(self, row: sqlite3.Row, who: str | None) -> str | None:
        """The path segment naming a participant: the caller's CallSid, or a leg's CallSid (or its label)."""
        if who is None:
            return None
        if who == "customer":
            return str(row["call_sid"])
        leg = await self.store.read(lambda conn: leg_row(conn, who))
        if leg is None:
            return None
        return str(leg["leg_sid"] or leg["leg_id"])

    async def _dial(self, call_sid: str, step: dict[str, Any], resumed: bool) -> None:
        leg_id = step["leg"]
        # Participants are created in the conference by its name (the caller's CallSid): it may not exist yet.
        conference = call_sid
        if resumed:  # the last run may have dialled it before the crash: look first
            leg = await self.store.read(lambda conn: leg_row(conn, leg_id))
            if leg is None or leg["status"] != "dialing":
                return  # hung up (or settled) meanwhile
            if await self._found_dialled(call_sid, conference, leg_id):
                return
        form = [
            ("From", step["from"]),
            ("To", step["to"]),
            ("Label", leg_id),
            ("Beep", "false"),
            ("StartConferenceOnEnter", "true"),
            ("EndConferenceOnExit", "true" if step["end_on_exit"] else "false"),
            ("Timeout", str(self.settings.ring_timeout)),
            ("StatusCallback", self.url(f"/twilio/voice/status?leg={leg_id}")),
            ("StatusCallbackMethod", "POST"),
            *(("StatusCallbackEvent", event) for event in ("initiated", "ringing", "answered", "completed")),
            ("ConferenceStatusCallback", self.url("/twilio/voice/conference")),
            ("ConferenceStatusCallbackMethod", "POST"),
            ("ConferenceStatusCallbackEvent", CONFERENCE_EVENTS),
        ]
        try:
            created = await self.rest.create_participant(conference, form)
        except (TwilioError, TwilioUnavailable) as exc:
            # No answer is not a refusal: the request may have reached Twilio, and the phone may be ringing.
            if isinstance(exc, TwilioUnavailable) and await self._found_dialled(call_sid, conference, leg_id):
                return
            log.warning("call %s: could not dial %s: %s", call_sid, step["to"], exc)

            def failed(tx: Tx) -> list[Intent]:
                current, now_leg = call_row(tx.conn, call_sid), leg_row(tx.conn, leg_id)
                if current is not None and now_leg is not None and now_leg["status"] == "dialing":
                    leg_ended(tx, now_leg, current, "failed")
                return intents_of(tx)

            self.run_intents(await self.store.write(failed))
            return
        await self._learn_leg(leg_id, created)

    async def _found_dialled(self, call_sid: str, conference: str, leg_id: str) -> bool:
        """Whether Twilio holds the leg's participant, a dial whose answer never came (lost, or cut by a crash); if so
        the leg learns it and catches up with it. When Twilio cannot be asked, whatever may ring under the leg's
        label is hung up (best effort), so that a leg then called failed leaves no phone ringing into the call."""
        try:
            found = await self.rest.fetch_participant(conference, leg_id)
        except TwilioUnavailable as exc:
            log.warning(
                "call %s: could not ask Twilio about leg %s (%s): hanging it up to be sure", call_sid, leg_id, exc
            )
            with contextlib.suppress(TwilioError, TwilioUnavailable):
                await self._ignoring_gone(self.rest.delete_participant(conference, leg_id))
            return False
        if found is None:
            return False
        await self._learn_leg(leg_id, found)
        await self._catch_up_leg(call_sid, leg_id, str(found.get("status") or ""))
        return True

    async def _catch_up_leg(self, call_sid: str, leg_id: str, status: str) -> None:
        """A leg dialled before a crash may have answered (or ended) while the bridge was down, and Twilio does not
        resend status callbacks: apply what the participant's status says now."""
        if status not in ("connected", "complete", "failed"):
            return  # still ringing: its callbacks are still to come

        def apply(tx: Tx) -> list[Intent]:
            row, leg = call_row(tx.conn, call_sid), leg_row(tx.conn, leg_id)
            if row is not None and leg is not None and leg["status"] == "dialing":
                if status == "connected":
                    leg_answered(tx, leg, row)
                else:
                    leg_ended(tx, leg, row, "completed" if status == "complete" else "failed")
            return intents_of(tx)

        self.run_intents(await self.store.write(apply))

    async def _learn_leg(self, leg_id: str, participant: dict[str, Any]) -> None:
        leg_sid, conference_sid = participant.get("call_sid"), participant.get("conference_sid")

        def learn(tx: Tx) -> None:
            if isinstance(leg_sid, str):
                tx.execute("UPDATE call_legs SET leg_sid = coalesce(leg_sid, ?) WHERE leg_id = ?", (leg_sid, leg_id))
            if isinstance(conference_sid, str) and conference_sid.startswith("CF"):
                # The latest dial is always into the call's current conference.
                tx.execute(
                    "UPDATE calls SET conference_sid = ? "
                    "WHERE call_sid = (SELECT call_sid FROM call_legs WHERE leg_id = ?)",
                    (conference_sid, leg_id),
                )

        await self.store.write(learn)

    async def _dequeue(self, row: sqlite3.Row) -> None:
        queue_sid = row["queue_sid"] or await self.rest.find_queue(row["last_queue"])
        if queue_sid is None or row["caller_joined"]:
            # Not in the queue yet (still hearing the greeting): the wait loop sends them on when they get there.
            return
        await self._ignoring_gone(self.rest.dequeue_member(queue_sid, row["call_sid"], self.url("/twilio/voice/join")))

    async def recover(self) -> int:
        """Resume the intents a crash interrupted (looking before dialling); returns how many."""

        def pending(conn: sqlite3.Connection) -> list[Intent]:
            rows = conn.execute(
                "SELECT call_sid, id, steps FROM voice_intents WHERE state = 'pending' ORDER BY id"
            ).fetchall()
            return [(str(r[0]), int(r[1]), json.loads(r[2])) for r in rows]

        found = await self.store.read(pending)
        self.run_intents(found, resumed=True)

        def present(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT agent FROM presence WHERE presence IN ('available', 'away')").fetchall()
            return [str(r[0]) for r in rows]

        # Nobody is connected to a bridge that just started: those who do not come back within the grace period
        # go offline, as if their consoles had disconnected now.
        for agent in await self.store.read(present):
            if agent not in self._online:
                self.console_disconnected(agent)
        return len(found)

    async def close(self) -> None:
        """At shutdown: no more presence timers; wait for the REST work under way."""
        for timer in self._offline_timers.values():
            timer.cancel()
        self._offline_timers.clear()
        await self.wait_idle()

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- presence ---------------------------------------------------------------------------------------------

    def console_connected(self, agent: str) -> None:
        """An agent's first console connected: available (if they were offline)."""
        self._online.add(agent)
        timer = self._offline_timers.pop(agent, None)
        if timer is not None:
            timer.cancel()

        def op(tx: Tx) -> None:
            # Presence is about taking calls: an agent with no phone to ring (texts only) stays offline for calls.
            phone = tx.one("SELECT phone FROM agents WHERE name = ?", (agent,))
            if phone is not None and phone[0] and presence_of(tx.conn, agent).presence == "offline":
                set_presence(tx, agent, "available", "connected")

        self._spawn(self.store.write(op))

    def console_disconnected(self, agent: str) -> None:
        """An agent's last console went away: offline after the grace period, unless one comes back."""
        self._online.discard(agent)
        loop = asyncio.get_running_loop()
        old = self._offline_timers.pop(agent, None)
        if old is not None:
            old.cancel()

        def go_offline() -> None:
            self._offline_timers.pop(agent, None)
            if agent in self._online:
                return

            def op(tx: Tx) -> None:
                # Busy agents keep talking on their phones; they go offline once the call and its wrap-up are over.
                if presence_of(tx.conn, agent).presence in ("available", "away"):
                    set_presence(tx, agent, "offline", "disconnected")

            self._spawn(self.store.write(op))

        self._offline_timers[agent] = loop.call_later(self.settings.presence_grace, go_offline)

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("voice background work failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- after commits: the missed-call text, waking the offerer --------------------------------------------------

    def _on_commit(self, events: list[StoredEvent]) -> None:
        for event in events:
            if event.type == protocol.AGENT_PRESENCE:
                self._offer_wake.set()
            if event.type != protocol.CALL_UPDATED:
                continue
            self._offer_wake.set()
            data = event.data
            if data["change"] == "ended" and data["outcome"] in ("voicemail", "abandoned"):
                self._spawn(self._missed_call_text(data["call_sid"]))

    async def _missed_call_text(self, call_sid: str) -> None:
        row = await self.store.read(lambda conn: call_row(conn, call_sid))
        if row is None or self.send_text is None:
            return
        queue = self.queues.named(row["last_queue"])
        if queue is None or not queue.missed_call_text or not row["customer_number"].startswith("+"):
            return
        # The command id makes it once per call, however many times this runs (a resend gets the first answer).
        cmd = protocol.Command(
            id=f"missed-call-{call_sid}",
            command=protocol.SEND_SMS,
            args={"conversation_id": row["conversation_id"], "body": queue.missed_call_text},
        )
        result = await self.send_text(SYSTEM_AGENT, cmd)
        if not result.ok:
            log.warning("missed-call text for %s not sent: %s", call_sid, result.error_message)

    # -- auto-offer -------------------------------------------------------------------------------------------

    async def run_offers(self) -> None:
        """While calls wait and agents are available, offer the oldest call to the longest-idle agent."""
        timeout = timedelta(seconds=self.settings.offer_timeout)
        while True:
            self._offer_wake.clear()
            try:
                delay = await self.store.write(lambda tx: self._offer_round(tx, timeout))
            except Exception:
                log.exception("auto-offer round failed")
                delay = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: on 3.11 it can swallow the shutdown's cancel
                    await self._offer_wake.wait()

    def _offer_round(self, tx: Tx, timeout: timedelta) -> float:
        """Expire offers that timed out, make new ones; returns seconds until the next offer expires."""
        now = parse_ts(tx.now)
        for row in tx.execute(
            "SELECT * FROM calls WHERE state = 'queued' AND offered_to IS NOT NULL AND offer_expires_at <= ?",
            (tx.now,),
        ).fetchall():
            self._decline(tx, row, f"{row['offered_to']} did not answer the offer in time.")
        for row in tx.execute(
            "SELECT c.* FROM calls c LEFT JOIN presence p ON p.agent = c.offered_to WHERE c.state = 'queued' "
            "AND c.offered_to IS NOT NULL AND coalesce(p.presence, 'offline') != 'available'"
        ).fetchall():
            self._decline(tx, row, f"{row['offered_to']} is no longer available.")
        offered = {
            str(r[0])
            for r in tx.execute("SELECT offered_to FROM calls WHERE state = 'queued' AND offered_to IS NOT NULL")
        }
        for row in tx.execute(
            "SELECT * FROM calls WHERE state = 'queued' AND offered_to IS NULL ORDER BY queued_at"
        ).fetchall():
            candidates = [
                str(r[0])
                for r in tx.execute(
                    "SELECT p.agent FROM presence p JOIN agents a ON a.name = p.agent "
                    "WHERE p.presence = 'available' AND a.revoked_at IS NULL AND a.phone IS NOT NULL "
                    "AND p.agent NOT IN (SELECT agent FROM offer_declines WHERE call_sid = ?) "
                    "ORDER BY p.idle_since, p.agent",
                    (row["call_sid"],),
                )
                if str(r[0]) not in offered
            ]
            if not candidates:
                continue
            chosen = str(candidates[0])
            offered.add(chosen)
            update_call(tx, row["call_sid"], "offered", offered_to=chosen, offer_expires_at=format_ts(now + timeout))
        nxt = tx.one("SELECT min(offer_expires_at) FROM calls WHERE state = 'queued' AND offered_to IS NOT NULL")
        if nxt is None or nxt[0] is None:
            return 30.0
        return max(0.01, (parse_ts(nxt[0]) - datetime.now(UTC)).total_seconds() + 0.005)
