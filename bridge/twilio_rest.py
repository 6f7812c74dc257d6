"""Twilio's REST API, as the bridge uses it: httpx, Basic auth, retries that never send a message twice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from bridge.settings import Settings
from bridge.twilio_errors import describe_error

# Twilio's dates have one-second resolution and its clock is not ours: look a little further back.
CLOCK_SKEW = timedelta(seconds=5)


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


class TwilioError(Exception):
    """Twilio answered with an error (a 4xx): the request is wrong and retrying will not help."""

    def __init__(self, status: int, code: int | None, message: str, more_info: str | None = None) -> None:
        super().__init__(f"HTTP {status}, Twilio error {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.more_info = more_info


class TwilioUnavailable(Exception):
    """Twilio could not be reached, or kept failing, after every retry."""


class TwilioUnsure(TwilioUnavailable):
    """A create may have reached Twilio, and Twilio could not be asked since whether it did: sending again could
    send it twice, calling it failed could be wrong. Ask again later (``find_sent``) before anything else."""


# Failures where Twilio certainly did not act on the request: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after the request may have reached Twilio: look before sending again.
_MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    to: str
    body: str
    from_number: str | None
    messaging_service_sid: str | None
    media_urls: Sequence[str] = ()
    status_callback: str | None = None


class TwilioRest:
    """A thin client for the REST calls the bridge makes. One instance shares one httpx.AsyncClient."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.client = client
        self.rng = rng or random.Random()
        username = settings.api_key or settings.account_sid
        password = settings.api_secret if settings.api_key else settings.auth_token
        self.auth = httpx.BasicAuth(username, password or "")
        self.account_url = f"{settings.api_base}/2010-04-01/Accounts/{settings.account_sid}"

    async def _backoff(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.settings.rest_backoff * (2**attempt) * self.rng.random()
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        await asyncio.sleep(delay)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(
            method, f"{self.account_url}{path}", auth=self.auth, timeout=self.settings.rest_timeout, **kwargs
        )

    @staticmethod
    def _raise_for_twilio(response: httpx.Response) -> None:
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        code = payload.get("code") if isinstance(payload.get("code"), int) else None
        message = str(payload.get("message") or describe_error(code) or response.reason_phrase)
        raise TwilioError(response.status_code, code, message, payload.get("more_info"))

    async def create_message(self, msg: OutgoingMessage, exclude: Collection[str] = ()) -> dict[str, Any]:
        """POST Messages.json; returns Twilio's message resource.

        Retries connection errors, 429 and 5xx with jittered exponential backoff. When a failure leaves it
        unclear whether Twilio created the message (a timeout after sending, a 5xx), it looks the message up
        before sending again, so a customer never gets the same reply twice. ``exclude``: SIDs of messages known
        to be other sends (see ``find_sent``).
        """
        form: list[tuple[str, str]] = [("To", msg.to), ("Body", msg.body)]
        if msg.messaging_service_sid:
            form.append(("MessagingServiceSid", msg.messaging_service_sid))
        elif msg.from_number:
            form.append(("From", msg.from_number))
        form.extend(("MediaUrl", url) for url in msg.media_urls)
        if msg.status_callback:
            form.append(("StatusCallback", msg.status_callback))
        started = datetime.now(UTC) - CLOCK_SKEW
        last_problem = "no attempt made"
        # True while a try may have reached Twilio and no lookup has said since whether it did: nothing is sent
        # again until one has.
        unsure = False
        for attempt in range(self.settings.rest_retries + 1):
            if unsure:
                try:
                    found = await self.find_sent(msg, since=started, exclude=exclude)
                except TwilioUnavailable as exc:
                    last_problem = f"maybe sent, and {exc}"
                    await self._backoff(attempt)
                    continue
                if found is not None:
                    return found
                unsure = False  # Twilio does not hold it: sending again is safe
            try:
                response = await self._request("POST", "/Messages.json", content=urlencode(form), headers=FORM_HEADERS)
            except _NOT_SENT as exc:
                last_problem = f"could not connect: {exc!r}"
                await self._backoff(attempt)
                continue
            except _MAYBE_SENT as exc:
                last_problem, unsure = f"maybe sent: {exc!r}", True
                await self._backoff(attempt)
                continue
            if response.status_code in (200, 201):
                payload: dict[str, Any] = response.json()
                return payload
            if response.status_code == 429:
                last_problem = "rate limited (429)"
                await self._backoff(attempt, response.headers.get("Retry-After"))
                continue
            if response.status_code >= 500:
                last_problem, unsure = f"maybe sent: Twilio answered {response.status_code}", True
                await self._backoff(attempt, response.headers.get("Retry-After"))
                continue
            self._raise_for_twilio(response)
        tries = f"after {self.settings.rest_retries + 1} tries ({last_problem})"
        if unsure:
            try:
                found = await self.find_sent(msg, since=started, exclude=exclude)
            except TwilioUnavailable as exc:
                raise TwilioUnsure(f"Twilio may hold the message: no answer {tries}, and {exc}") from exc
            if found is not None:
                return found
        raise TwilioUnavailable(f"Twilio did not accept the message {tries}")

    async def find_sent(
        self, msg: OutgoingMessage, since: datetime, exclude: Collection[str] = ()
    ) -> dict[str, Any] | None:
        """The newest message Twilio holds to ``msg.to`` from our number with ``msg.body``, created since ``since``.

        Used to reconcile a send whose outcome is unknown (a crash or a timeout after the request left).
        ``exclude`` holds the SIDs of messages already known to be other sends: an agent who sends the same words
        twice in a row must not have the second taken for the first (and never sent). None means Twilio answered
        and holds no such message; TwilioUnavailable, that it could not be asked (which is not the same: sending
        again then could send twice).
        """
        params: dict[str, str] = {"To": msg.to, "PageSize": "50"}
        if msg.from_number and not msg.messaging_service_sid:
            params["From"] = msg.from_number
        payload = await self._look("/Messages.json", params)
        if payload is None:
            raise TwilioUnavailable("Twilio's list of messages answered 404")
        for item in payload.get("messages", []):
            if item.get("body") != msg.body or not str(item.get("direction", "")).startswith("outbound"):
                continue
            if item.get("sid") in exclude:
                continue
            try:
                created = parsedate_to_datetime(str(item.get("date_created")))
            except (TypeError, ValueError):
                continue
            if created >= since:
                found: dict[str, Any] = item
                return found
        return None

    # -- voice: calls, queue members, conferences and participants ----------------------------------------------

    async def _voice(
        self, method: str, path: str, form: Sequence[tuple[str, str]] = (), *, safe_to_repeat: bool = True
    ) -> dict[str, Any] | None:
        """One voice request, retried on connection errors, 429 and 5xx; returns the resource (None on 204).

        ``safe_to_repeat`` False (a create): a failure after the request may have left is not retried blindly;
        TwilioUnavailable says so and the caller looks before trying again. A 4xx raises TwilioError.
        """
        last_problem = "no attempt made"
        for attempt in range(self.settings.rest_retries + 1):
            try:
                if method == "DELETE":
                    response = await self._request(method, path)
                else:
                    response = await self._request(method, path, content=urlencode(form), headers=FORM_HEADERS)
            except _NOT_SENT as exc:
                last_problem = f"could not connect: {exc!r}"
                await self._backoff(attempt)
                continue
            except _MAYBE_SENT as exc:
                last_problem = f"no answer: {exc!r}"
                if not safe_to_repeat:
                    break
                await self._backoff(attempt)
                continue
            if response.status_code == 204:
                return None
            if response.status_code in (200, 201):
                payload: dict[str, Any] = response.json()
                return payload
            if response.status_code == 429 or response.status_code >= 500:
                last_problem = f"Twilio answered {response.status_code}"
                if not safe_to_repeat and response.status_code != 429:
                    break
                await self._backoff(attempt, response.headers.get("Retry-After"))
                continue
            self._raise_for_twilio(response)
        raise TwilioUnavailable(f"{method} {path} did not go through ({last_problem})")

    async def create_call(
        self, to: str, from_number: str, url: str, status_callback: str | None = None, timeout: int | None = None
    ) -> dict[str, Any]:
        """POST Calls.json: dial ``to`` and run the TwiML at ``url`` when it answers."""
        form = [("To", to), ("From", from_number), ("Url", url)]
        if status_callback:
            form.append(("StatusCallback", status_callback))
            form.extend(("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed"))
        if timeout is not None:
            form.append(("Timeout", str(timeout)))
        found = await self._voice("POST", "/Calls.json", form, safe_to_repeat=False)
        assert found is not None
        return found

    async def update_call(
        self, call_sid: str, *, url: str | None = None, twiml: str | None = None, status: str | None = None
    ) -> dict[str, Any] | None:
        """POST Calls/{Sid}.json: redirect a live call to new TwiML, or end it (``status="completed"``)."""
        form: list[tuple[str, str]] = []
        if url is not None:
            form += [("Url", url), ("Method", "POST")]
        if twiml is not None:
            form.append(("Twiml", twiml))
        if status is not None:
            form.append(("Status", status))
        return await self._voice("POST", f"/Calls/{quote(call_sid, safe='')}.json", form)

    async def dequeue_member(self, queue_sid: str, call_sid: str, url: str) -> dict[str, Any] | None:
        """POST Queues/{QueueSid}/Members/{CallSid or Front}.json: take the caller out, running ``url``'s TwiML."""
        path = f"/Queues/{quote(queue_sid, safe='')}/Members/{quote(call_sid, safe='')}.json"
        return await self._voice("POST", path, [("Url", url), ("Method", "POST")])

    async def find_queue(self, friendly_name: str) -> str | None:
        """The QU… SID of the queue named ``friendly_name`` (``<Enqueue>`` creates queues on demand), if any."""
        try:
            response = await self._request("GET", "/Queues.json", params={"PageSize": "1000"})
        except (*_NOT_SENT, *_MAYBE_SENT):
            return None
        if response.status_code != 200:
            return None
        for item in response.json().get("queues", []):
            if item.get("friendly_name") == friendly_name:
                return str(item["sid"])
        return None

    async def create_participant(self, conference: str, form: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """POST Conferences/{Sid or name}/Participants.json: dial a phone into the conference."""
        path = f"/Conferences/{quote(conference, safe='')}/Participants.json"
        found = await self._voice("POST", path, form, safe_to_repeat=False)
        assert found is not None
        return found

    async def fetch_participant(self, conference: str, participant: str) -> dict[str, Any] | None:
        """GET a participant by CallSid or label; None when Twilio has no such participant (404), TwilioUnavailable
        when it could not be asked."""
        path = f"/Conferences/{quote(conference, safe='')}/Participants/{quote(participant, safe='')}.json"
        return await self._look(path)

    async def _look(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        """One GET that tells "Twilio has none" (None, on 404) from "Twilio could not be asked"
        (TwilioUnavailable): the lookups that decide whether a create went through. Their callers try again."""
        try:
            response = await self._request("GET", path, params=params)
        except (*_NOT_SENT, *_MAYBE_SENT) as exc:
            raise TwilioUnavailable(f"could not look it up at Twilio (no answer: {exc!r})") from exc
        if response.status_code == 404:
            return None
        try:
            payload = response.json() if response.status_code == 200 else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise TwilioUnavailable(f"could not look it up at Twilio (it answered {response.status_code})")
        return payload

    async def update_participant(
        self, conference: str, participant: str, form: Sequence[tuple[str, str]]
    ) -> dict[str, Any] | None:
        """POST Participants/{CallSid or label}.json: Hold/HoldUrl, Muted, EndConferenceOnExit."""
        path = f"/Conferences/{quote(conference, safe='')}/Participants/{quote(participant, safe='')}.json"
        return await self._voice("POST", path, form)

    async def delete_participant(self, conference: str, participant: str) -> None:
        """DELETE Participants/{CallSid or label}.json: take that phone out of the conference (hangs it up)."""
        path = f"/Conferences/{quote(conference, safe='')}/Participants/{quote(participant, safe='')}.json"
        await self._voice("DELETE", path)

    async def end_conference(self, conference: str) -> dict[str, Any] | None:
        """POST Conferences/{Sid or name}.json Status=completed: everyone in it is disconnected."""
        return await self._voice("POST", f"/Conferences/{quote(conference, safe='')}.json", [("Status", "completed")])
