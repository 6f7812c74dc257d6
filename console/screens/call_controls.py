"""The main screen's call keys: accept, hold, mute, transfer (cold or warm), complete or cancel, hang up, wrap up,
decline, presence; and how the bridge's answers to them are told to the agent.

A mixin of ``MainScreen`` (kept apart so the screen's file stays about conversations). Every call command needs a
live link: an accept or a hold queued in the outbox and sent minutes later would act on a call that has moved on,
so offline they are refused on the spot rather than queued. Only the wrap-up note may wait in the outbox.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.binding import Binding

from bridge import protocol
from console.cache import CallRow
from console.client import LinkState
from console.phones import display_number
from console.screens.confirm import Confirm
from console.screens.picker import Choice, Picker
from console.screens.wrap_up import WrapUpScreen
from console.text import one_line

if TYPE_CHECKING:
    from console.screens.main import MainScreen

CALL_BINDINGS = [
    Binding("A", "accept_call", "Accept call", id="call.accept", tooltip="Take the call waiting longest (or offered)"),
    Binding("h", "hold_call", "Hold", id="call.hold", tooltip="Put the caller on hold, or take them off it"),
    Binding("M", "mute_call", "Mute", id="call.mute", tooltip="Mute or unmute your phone's leg of the call"),
    Binding("t", "transfer_call", "Transfer", id="call.transfer", tooltip="Hand the call to an agent, queue or number"),
    Binding("T", "complete_transfer", "Complete transfer", id="call.transfer-complete", tooltip="Warm transfer: leave"),
    Binding("C", "cancel_transfer", "Cancel transfer", id="call.transfer-cancel", tooltip="Warm transfer: go back"),
    Binding("H", "hang_up", "Hang up", id="call.hang-up", tooltip="End the call for the caller too, then wrap up"),
    Binding("w", "wrap_up", "Wrap-up note", id="call.wrap-up", tooltip="Write the call's disposition note"),
    Binding("D", "decline_call", "Decline", id="call.decline", tooltip="Decline the call offered to you"),
    Binding("g", "caller_thread", "Caller", show=False, id="call.thread", tooltip="Open the caller's conversation"),
    Binding("q", "focus_queue", "Queue", show=False, id="call.queue", tooltip="Move to the callers waiting"),
    Binding("P", "toggle_presence", "Away/available", id="presence.toggle", tooltip="Set yourself away or available"),
]
CALL_ACTIONS = {b.action for b in CALL_BINDINGS}
QUEUEABLE = {protocol.WRAP_UP}
"""Call commands that may wait in the outbox while the bridge is away (the rest act on a call as it is now)."""
TALKING = ("connected", "on_hold")


def refusal(command: str, result: protocol.Result) -> str:
    """What to tell the agent when the bridge refused a call command."""
    code, message = result.error_code, one_line(result.error_message or "")
    if code == "already_taken":
        who = one_line(str(result.data.get("agent") or "")) or "Someone else"
        return f"{who} took that call."
    if code == "no_phone" and command == protocol.ACCEPT_CALL:
        return (
            "The bridge has no phone to ring for you. An admin sets one with "
            "`switchboard-bridge agents set-phone NAME +15551234567` (a number, sip: or client:)."
        )
    if code == "no_calls_waiting":
        return "No calls are waiting."
    if code == "call_ended":
        return "That call has already ended."
    if code == "agent_busy" and command == protocol.ACCEPT_CALL:
        return "Finish your call, and its wrap-up note, before taking another."
    return message or f"The bridge refused it ({code or 'no reason given'})."


class CallControls:
    """Call actions for ``MainScreen`` (see the module's docstring)."""

    @property
    def _main(self) -> MainScreen:
        from console.screens.main import MainScreen

        assert isinstance(self, MainScreen)
        return self

    # -- what applies now ------------------------------------------------------------------------------------

    def check_call_action(self, action: str) -> bool:
        keys = self._main.calls.keys
        state = keys.state
        if action == "accept_call":
            return (keys.waiting or keys.offered) and state in (None, "wrap_up")
        if action == "decline_call":
            return keys.offered and state is None
        if action == "hold_call":
            return state in TALKING
        if action == "mute_call":
            return state in (*TALKING, "consulting")
        if action == "transfer_call":
            return state in TALKING and keys.transfer is None
        if action == "complete_transfer":
            return state == "consulting"
        if action == "cancel_transfer":
            return keys.transfer == "warm"
        if action == "hang_up":
            # While your phone still rings too: an accept by mistake must not leave the caller waiting on it.
            return state in (*TALKING, "consulting", "ringing_agent")
        if action == "wrap_up":
            return state == "wrap_up"
        if action == "caller_thread":
            return state is not None or keys.waiting
        if action == "focus_queue":
            return keys.waiting
        if action == "toggle_presence":
            link = self._main.console_app.link
            return link is not None and link.status.state is LinkState.CONNECTED and state is None
        return True

    # -- sending ---------------------------------------------------------------------------------------------

    async def call_command(self, command: str, args: dict[str, Any], conversation_id: str | None = None) -> None:
        main = self._main
        app = main.console_app
        if app.link is not None and app.link.status.state is not LinkState.CONNECTED and command not in QUEUEABLE:
            main.notify(
                "Calls need the bridge, and it is not connected: nothing was sent.", severity="warning", markup=False
            )
            return
        command_id = await app.run_command(command, args, conversation_id)
        if command_id is not None:
            main.call_commands[command_id] = (command, args)

    def call_settled(self, command: str, args: dict[str, Any], result: protocol.Result) -> None:
        """The bridge answered one of this console's call commands."""
        main = self._main
        if not result.ok:
            main.notify(refusal(command, result), severity="error", title="Call", markup=False)
            if result.error_code in ("already_taken", "call_ended", "unknown_call"):
                main.calls.reload(main.console_app.agent)
            return
        if command == protocol.ACCEPT_CALL:
            conversation = result.data.get("conversation_id")
            if isinstance(conversation, str) and conversation:
                main.open_caller(conversation)
            main.notify("Ringing your phone: answer it to talk to the caller.", title="Call", markup=False)
        elif command == protocol.HANG_UP:
            # The wrap-up dialog opens once the bridge's events say the call is in wrap-up (now, or when they come).
            if main.calls.keys.state == "wrap_up":
                self.action_wrap_up()
            else:
                main.hung_up = True
        elif command == protocol.WRAP_UP:
            main.notify("Wrapped up: you can take the next call.", title="Call", markup=False)
        elif command == protocol.SET_PRESENCE:
            presence = one_line(str(result.data.get("presence") or args.get("presence")))
            main.notify(f"You are {presence}.", markup=False)
        elif command == protocol.TRANSFER_CALL and args.get("mode") == "warm":
            main.notify(
                "Talking to the transfer target; the caller is on hold. T completes, C cancels.",
                title="Call",
                markup=False,
            )

    # -- the actions -----------------------------------------------------------------------------------------

    def _caller(self, call: CallRow) -> Text:
        region = self._main.console_app.config.region
        who = Text(one_line(call.caller_name), "bold", end="") if call.caller_name else Text(end="")
        if call.caller_name:
            who.append(" ")
        who.append(display_number(call.customer_number, region))
        return who

    async def action_accept_call(self) -> None:
        main = self._main
        panel = main.calls
        if panel.keys.state == "wrap_up":
            main.notify("Write the last call's wrap-up note first.", severity="warning", title="Call", markup=False)
            self.action_wrap_up()
            return
        board = panel.board
        sid: str | None = None
        if board is not None and board.offered is not None:
            sid = board.offered.call_sid
        elif panel.queue.has_focus and panel.queue.highlighted is not None:
            sid = panel.queue.highlighted.call_sid
        target = next((c for c in panel.waiting if c.call_sid == sid), None)
        await self.call_command(protocol.ACCEPT_CALL, {"call_sid": sid}, target.conversation_id if target else None)

    async def action_decline_call(self) -> None:
        board = self._main.calls.board
        if board is not None and board.offered is not None:
            await self.call_command(protocol.DECLINE_CALL, {"call_sid": board.offered.call_sid})

    async def action_hold_call(self) -> None:
        mine = self._main.calls.mine
        if mine is not None:
            await self.call_command(protocol.HOLD_CALL, {"call_sid": mine.call_sid, "hold": not mine.on_hold})

    async def action_mute_call(self) -> None:
        mine = self._main.calls.mine
        if mine is not None:
            await self.call_command(protocol.MUTE_CALL, {"call_sid": mine.call_sid, "muted": not mine.muted})

    async def action_complete_transfer(self) -> None:
        mine = self._main.calls.mine
        if mine is not None:
            await self.call_command(protocol.COMPLETE_TRANSFER, {"call_sid": mine.call_sid})

    async def action_cancel_transfer(self) -> None:
        mine = self._main.calls.mine
        if mine is not None:
            await self.call_command(protocol.CANCEL_TRANSFER, {"call_sid": mine.call_sid})

    def action_hang_up(self) -> None:
        main = self._main
        mine = main.calls.mine
        if mine is None:
            return
        question = Text("Hang up on ", end="")
        question.append_text(self._caller(mine))
        question.append("? The call ends for them too.")
        sid = mine.call_sid

        def answered(yes: bool | None) -> None:
            if yes:
                main.run_worker(self.call_command(protocol.HANG_UP, {"call_sid": sid}), group="call")

        main.app.push_screen(Confirm(question.plain), answered)

    def action_wrap_up(self) -> None:
        main = self._main
        mine = main.calls.mine
        if mine is None or main.calls.keys.state != "wrap_up" or isinstance(main.app.screen, WrapUpScreen):
            return
        sid = mine.call_sid

        dialog = WrapUpScreen(self._caller(mine), main.wrap_up_draft)

        def saved(note: str | None) -> None:
            main.wrap_up_draft = "" if note else dialog.draft  # closed for later: the words wait for the agent
            if note:
                args = {"call_sid": sid, "note": note}
                main.run_worker(self.call_command(protocol.WRAP_UP, args, mine.conversation_id), group="call")

        main.app.push_screen(dialog, saved)

    def action_transfer_call(self) -> None:
        # In a worker: the keys go on working while the bridge is asked (up to 5 s on a link that went quiet).
        self._main.run_worker(self._transfer_call(), group="ask", exclusive=True)

    async def _transfer_call(self) -> None:
        main = self._main
        mine = main.calls.mine
        if mine is None:
            return
        app = main.console_app
        agents, queues = await asyncio.gather(app.ask(protocol.LIST_AGENTS), app.ask(protocol.LIST_QUEUES))
        if agents is None:
            main.notify(f"Transferring needs the bridge: {app.why_no_answer()}", severity="warning", markup=False)
            return
        choices: list[Choice] = []
        for agent in agents.data.get("agents", []):
            name = str(agent.get("name", ""))
            if not name or name == app.agent or not agent.get("active", True):
                continue
            hint = str(agent.get("presence") or "")
            if not agent.get("has_phone", True):
                hint = f"{hint}, no phone set".lstrip(", ")
            choices.append(Choice(f"{name}", f"agent:{name}", hint))
        for queue in queues.data.get("queues", []) if queues is not None else []:
            name = str(queue.get("name", ""))
            if name:
                hint = f"queue · {queue.get('waiting', 0)} waiting · {queue.get('agents_available', 0)} available"
                choices.append(Choice(f"Queue: {name}", f"queue:{name}", hint))
        sid = mine.call_sid
        main.app.push_screen(
            Picker("Transfer to…", choices, free_text="or type a phone number"),
            lambda value: self._transfer_target(sid, value),
        )

    def _transfer_target(self, sid: str, value: str | None) -> None:
        main = self._main
        if not value:
            return
        kind, _, name = value.partition(":")
        target: dict[str, str]
        if kind in ("agent", "queue") and name:
            target = {kind: name}
        else:
            target = {"number": value}  # typed: the bridge reads it with the team's region and says if it is bad
        if "queue" in target:  # a queue cannot be consulted: cold only
            main.run_worker(self._transfer(sid, "cold", target), group="call")
            return
        choices = [
            Choice("Warm — talk to them first, then complete or cancel", "warm"),
            Choice("Cold — hand the caller over now", "cold"),
        ]

        def picked(mode: str | None) -> None:
            if mode:
                main.run_worker(self._transfer(sid, mode, target), group="call")

        main.app.push_screen(Picker(f"Transfer to {next(iter(target.values()))}", choices), picked)

    async def _transfer(self, sid: str, mode: str, target: dict[str, str]) -> None:
        await self.call_command(protocol.TRANSFER_CALL, {"call_sid": sid, "mode": mode, "target": target})

    def action_caller_thread(self) -> None:
        main = self._main
        panel = main.calls
        call = panel.mine or panel.queue.highlighted
        if call is not None:
            main.open_caller(call.conversation_id)
            main.thread.focus()

    def action_focus_queue(self) -> None:
        self._main.calls.queue.focus()

    async def action_toggle_presence(self) -> None:
        presence = "available" if self._main.calls.keys.presence == "away" else "away"
        await self.call_command(protocol.SET_PRESENCE, {"presence": presence})
