"""Agents' commands: each id runs at most once, its result is kept, and a resend gets the first answer."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from bridge import protocol
from bridge.conversations import ConversationCommands
from bridge.messaging import (
    OPTED_OUT_SAID,
    Conversation,
    OutboundDraft,
    OutboundRefused,
    find_command,
    is_opted_out,
    record_command_result,
    record_outbound,
    record_rejected,
    record_submitted,
)
from bridge.phones import InvalidNumber, parse_e164
from bridge.segments import analyze
from bridge.settings import Settings
from bridge.store import SqliteStore
from bridge.twilio_errors import hint_for
from bridge.twilio_rest import CLOCK_SKEW, OutgoingMessage, TwilioError, TwilioRest, TwilioUnavailable, TwilioUnsure
from bridge.types import E164, ConversationId, conversation_id

log = logging.getLogger("switchboard.bridge.commands")

UNSURE_RETRY_MAX = 60.0
"""Longest wait, in seconds, between asks about a send Twilio may or may not hold (see ``_deliver``)."""
MAX_MEDIA = 10

UNFINISHED_SENDS = (
    "SELECT c.agent, c.id, c.created_at, m.id, m.conversation_id, m.body, m.media, m.encoding, m.segments, "
    "v.twilio_number, v.customer_number FROM commands c "
    "JOIN messages m ON m.id = c.message_id JOIN conversations v ON v.id = m.conversation_id "
    "WHERE c.state = 'running' ORDER BY c.created_at"
)
"""Sends a crash interrupted, read at start-up: through ``commands_running`` (m008), not every command ever run."""
REPLIES_TO_CUSTOMER = (
    "SELECT m.sid FROM conversations v CROSS JOIN messages m ON m.conversation_id = v.id "
    "WHERE v.customer_number = ? AND m.direction = 'outbound' AND +m.sid IS NOT NULL"
)
"""The SIDs of every reply sent to a customer (from any of the team's numbers), read before each send: through
``conversations_by_customer``, then ``replies_by_conversation``, so a customer's replies and not every reply in
the log. CROSS JOIN fixes that order and the ``+`` keeps ``messages_by_sid`` out, whatever statistics say."""


class Refused(Exception):
    """A command the bridge will not carry out; the message is a sentence the agent can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CommandRunner:
    """Runs commands from every console. The same (agent, id) never runs twice, even across a restart."""

    def __init__(self, settings: Settings, store: SqliteStore, twilio: TwilioRest) -> None:
        self.settings = settings
        self.store = store
        self.twilio = twilio
        self._running: dict[tuple[str, str], asyncio.Task[protocol.Result]] = {}
        self._handlers: dict[str, Callable[[str, protocol.Command], Awaitable[protocol.Result]]] = {
            protocol.SEND_SMS: self._send_sms,
        }
        self._handlers.update(ConversationCommands(store).handlers())  # assign, claim, set_status, add_note, ...
        self.status_callback_url = self._status_callback_url()

    def add_handlers(self, handlers: dict[str, Callable[[str, protocol.Command], Awaitable[protocol.Result]]]) -> None:
        """Register more commands (the voice commands, from bridge.handoff)."""
        self._handlers.update(handlers)

    def _status_callback_url(self) -> str | None:
        base = self.settings.public_url
        return f"{base}/twilio/sms/status" if base else None

    async def run(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        """Run ``cmd`` for ``agent`` once; a concurrent or later resend of its id gets the same result."""
        key = (agent, cmd.id)
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._run_once(agent, cmd), name=f"command {cmd.id}")
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        # shield: a console disconnecting mid-send must not cancel the send itself
        return await asyncio.shield(task)

    async def _run_once(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        if not protocol.is_text(cmd.args):
            # Not recorded: such args cannot be stored, and the same args always get this same answer.
            return protocol.Result.failure(
                cmd.id, "bad_args", "The command's text holds a \\u escape for a lone surrogate, which is not text."
            )
        known = await self.store.read(lambda conn: find_command(conn, agent, cmd.id))
        if known is not None and known.result is not None:
            return _result_from(known.result)
        handler = self._handlers.get(cmd.command)
        if handler is None:
            return protocol.Result.failure(
                cmd.id, "unknown_command", f"The bridge does not know the command {cmd.command[:60]!r}."
            )
        try:
            return await handler(agent, cmd)
        except Refused as exc:
            result = protocol.Result.failure(cmd.id, exc.code, str(exc))
            return await self.store.write(
                lambda tx: record_command_result(tx, agent, cmd.id, cmd.command, cmd.args, result)
            )

    # -- send_sms --------------------------------------------------------------------------------------------

    async def _conversation_for(self, args: dict[str, Any]) -> Conversation:
        conversation = args.get("conversation_id")
        to = args.get("to")
        from_number = args.get("from_number")
        if conversation is not None:
            if not isinstance(conversation, str):
                raise Refused("bad_args", "conversation_id must be a string.")

            def by_id(conn: Any) -> Any:
                return conn.execute(
                    "SELECT id, twilio_number, customer_number FROM conversations WHERE id = ?", (conversation,)
                ).fetchone()

            row = await self.store.read(by_id)
            if row is None:
                raise Refused("unknown_conversation", "That conversation does not exist on this bridge.")
            return Conversation(ConversationId(row[0]), E164(row[1]), E164(row[2]))
        if not isinstance(to, str) or not to.strip():
            raise Refused("bad_args", "Say who to text: a conversation_id, or a phone number in 'to'.")
        try:
            customer = parse_e164(to, self.settings.region)
        except InvalidNumber as exc:
            raise Refused("invalid_number", f"{exc}.") from None
        if from_number is not None:
            if not isinstance(from_number, str):
                raise Refused("bad_args", "from_number must be a string.")
            try:
                ours = parse_e164(from_number, self.settings.region)
            except InvalidNumber as exc:
                raise Refused("invalid_number", f"from_number: {exc}.") from None
            return Conversation(conversation_id(ours, customer), ours, customer)

        def numbers(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT id, twilio_number, customer_number FROM conversations WHERE customer_number = ? "
                "ORDER BY coalesce(last_message_at, created_at) DESC",
                (customer,),
            ).fetchall()

        rows = await self.store.read(numbers)
        if len(rows) == 1:
            return Conversation(ConversationId(rows[0][0]), E164(rows[0][1]), E164(rows[0][2]))
        if not rows:
            raise Refused(
                "from_number_needed", f"No conversation with {customer} yet: say which team number to send from."
            )
        raise Refused(
            "from_number_needed",
            f"{customer} has talked to {len(rows)} of our numbers: say which one to send from (from_number).",
        )

    async def _send_sms(self, agent: str, cmd: protocol.Command) -> protocol.Result:
        args = cmd.args
        body = args.get("body", "")
        media_urls = args.get("media_urls") or []
        if not isinstance(body, str):
            raise Refused("bad_args", "body must be text.")
        if not isinstance(media_urls, list) or not all(isinstance(u, str) for u in media_urls):
            raise Refused("bad_args", "media_urls must be a list of URLs.")
        if len(media_urls) > MAX_MEDIA:
            raise Refused("too_much_media", f"A message can carry at most {MAX_MEDIA} attachments.")
        if any(not u.startswith(("https://", "http://")) for u in media_urls):
            raise Refused("bad_media_url", "Attachments must be http(s) URLs Twilio can fetch.")
        if not body.strip() and not media_urls:
            raise Refused("empty_body", "The message is empty: type something or attach media.")
        if len(body) > protocol.MAX_SMS_CHARS:
            most = protocol.MAX_SMS_CHARS
            raise Refused("body_too_long", f"The message is {len(body)} characters; Twilio takes at most {most}.")
        conv = await self._conversation_for(args)
        if await self.store.read(lambda conn: is_opted_out(conn, conv.twilio_number, conv.customer_number)):
            raise Refused("opted_out", OPTED_OUT_SAID)  # the usual case, before any write (checked again in it)
        info = analyze(body)
        draft = OutboundDraft(
            agent=agent,
            command_id=cmd.id,
            conversation=conv,
            body=body,
            media_urls=tuple(media_urls),
            encoding=info.encoding,
            segments=info.segments,
        )
        try:
            message_id, existing = await self.store.write(lambda tx: record_outbound(tx, draft, args))
        except OutboundRefused as exc:
            raise Refused(exc.code, str(exc)) from None
        if existing is not None:  # recorded before (this process or one that crashed): never send blindly
            if existing.result is not None:
                return _result_from(existing.result)
            return await self._deliver(agent, cmd.id, message_id, draft, since=_parse_ts(existing.created_at))
        return await self._deliver(agent, cmd.id, message_id, draft, since=None)

    async def _deliver(
        self, agent: str, command_id: str, message_id: str, draft: OutboundDraft, since: datetime | None
    ) -> protocol.Result:
        conv = draft.conversation
        outgoing = OutgoingMessage(
            to=conv.customer_number,
            body=draft.body,
            from_number=conv.twilio_number,
            messaging_service_sid=self.settings.messaging_service_sid,
            media_urls=draft.media_urls,
            status_callback=self.status_callback_url,
        )
        base = {
            "message_id": message_id,
            "conversation_id": conv.id,
            "encoding": draft.encoding,
            "segments": draft.segments,
        }

        def known_sids(conn: sqlite3.Connection) -> set[str]:
            # Texts to this customer already matched to a send: a lookup must never take one of them for this one.
            rows = conn.execute(REPLIES_TO_CUSTOMER, (conv.customer_number,)).fetchall()
            return {str(row[0]) for row in rows}

        wait = max(self.settings.rest_backoff, 0.01) * 4
        try:
            while True:
                resource = None
                known = await self.store.read(known_sids)
                try:
                    if since is not None:  # an earlier try may have reached Twilio (before a crash): look first
                        try:
                            resource = await self.twilio.find_sent(outgoing, since=since - CLOCK_SKEW, exclude=known)
                        except TwilioUnavailable as exc:
                            raise TwilioUnsure(f"an earlier try may have reached Twilio, and {exc}") from exc
                    if resource is None:
                        since = datetime.now(UTC)
                        resource = await self.twilio.create_message(outgoing, exclude=known)
                    break
                except TwilioUnsure as exc:
                    # Twilio may hold this text: sending it again could send it twice, and calling it failed could
                    # have the agent send it twice. The command stays running, the agent's outbox shows it waiting,
                    # and Twilio is asked again until it says (a restart resumes it the same way: recover()).
                    log.warning("send %s for %s: %s; asking Twilio again in %.1f s", command_id, agent, exc, wait)
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, UNSURE_RETRY_MAX)
        except TwilioError as exc:
            code, said, hint = exc.code, exc.message, hint_for(exc.code)
            # Twilio's own message usually ends with a full stop: one sentence, not "number. (error 21211)."
            message = f"Twilio refused the message: {said.rstrip('. ')} (error {code}). {hint}"
            result = protocol.Result.failure(
                command_id, "twilio_error", message, {**base, "twilio_code": code, "status": "failed"}
            )
            await self.store.write(
                lambda tx: record_rejected(tx, agent, command_id, message_id, code, said, hint, result)
            )
            return result
        except TwilioUnavailable as exc:
            problem = str(exc)
            message = f"Could not reach Twilio to send the message ({problem}). Resend it in a moment."
            result = protocol.Result.failure(command_id, "twilio_unavailable", message, {**base, "status": "failed"})
            await self.store.write(
                lambda tx: record_rejected(tx, agent, command_id, message_id, None, problem, message, result)
            )
            return result
        sid = str(resource.get("sid", ""))
        status = str(resource.get("status") or "queued")
        result = protocol.Result(id=command_id, ok=True, data={**base, "message_sid": sid, "status": status})
        if not await self.store.write(
            lambda tx: record_submitted(tx, agent, command_id, message_id, sid, status, result)
        ):
            # A lookup found a text another send of the same words had just claimed (two lost answers at once):
            # look again, that SID now among the known ones; never post again before looking.
            log.info("send %s for %s: %s is another reply's; looking again", command_id, agent, sid)
            return await self._deliver(agent, command_id, message_id, draft, since=since)
        return result

    async def recover(self) -> int:
        """Resume sends a crash interrupted: each is looked up at Twilio before it is sent, so none goes twice.

        Returns how many it resumed; they finish in the background.
        """

        def unfinished(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(UNFINISHED_SENDS).fetchall()

        async def resume(
            before: asyncio.Task[protocol.Result] | None,
            agent: str,
            command_id: str,
            message_id: str,
            draft: OutboundDraft,
            since: datetime,
        ) -> protocol.Result:
            if before is not None:  # one customer's sends one at a time: a lookup must see what the last one matched
                await asyncio.wait([before])
            return await self._deliver(agent, command_id, message_id, draft, since=since)

        rows = await self.store.read(unfinished)
        last_for: dict[str, asyncio.Task[protocol.Result]] = {}
        for row in rows:
            agent, command_id, created_at, message_id, cid, body, media, encoding, segments, ours, customer = row
            draft = OutboundDraft(
                agent=agent,
                command_id=command_id,
                conversation=Conversation(ConversationId(cid), E164(ours), E164(customer)),
                body=body,
                media_urls=tuple(m["url"] for m in json.loads(media)),
                encoding=encoding,
                segments=segments,
            )
            log.info("resuming interrupted send %s for %s", command_id, agent)
            key = (agent, command_id)
            task = asyncio.create_task(
                resume(last_for.get(customer), agent, command_id, message_id, draft, _parse_ts(created_at)),
                name=f"resume {command_id}",
            )
            last_for[customer] = task
            self._running[key] = task
            task.add_done_callback(lambda _t, key=key: self._running.pop(key, None))  # type: ignore[misc]
        return len(rows)

    async def wait_idle(self) -> None:
        """Wait for every command under way (used at shutdown and in tests)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)


def _parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _result_from(frame: dict[str, Any]) -> protocol.Result:
    parsed = protocol.parse_server_frame(json.dumps(frame))
    assert isinstance(parsed, protocol.Result)
    return parsed
