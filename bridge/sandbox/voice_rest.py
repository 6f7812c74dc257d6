"""Voice's REST resources with Twilio's shapes (Calls, Queues, Members, Conferences, Participants) and views."""

from __future__ import annotations

import dataclasses
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.sandbox import media
from bridge.sandbox.calls import CALL_EVENTS, Call, Conference, Member, Participant, Queue
from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.interpreter import Fetch, Inline, Loaded, Source, web_url
from bridge.sandbox.messaging import MAGIC_FROM_OK, normalize_number
from bridge.sandbox.rest import (
    API_ROOT,
    ApiError,
    Form,
    PageQuery,
    api_endpoint,
    not_found,
    page_json,
    paginate,
    query_form,
    read_form,
    twilio_json,
)
from bridge.sandbox.twiml import Conference as ConferenceNoun
from bridge.sandbox.twiml import Dial
from bridge.sandbox.voice import Voice, voice_of

MAX_TWIML_CHARS = 4000
MAX_QUEUE_SIZE = 5000
# Twilio's magic test numbers for calls (docs: "Test credentials"), honoured with any credentials.
MAGIC_CALL_FROM_ERRORS = {"+15005550001": 21212}
MAGIC_CALL_TO_ERRORS = {
    "+15005550001": (21217, "Phone number is not a valid phone number"),
    "+15005550002": (21214, "'To' phone number cannot be reached"),
    "+15005550003": (21215, "Geo Permission configuration is not permitting call"),
    "+15005550004": (21216, "Call blocked by Twilio blocklist"),
}
_CLIENT = re.compile(r"^client:[A-Za-z0-9_.@-]{1,121}$")
_SIP = re.compile(r"^sip:[^\s@]+@[^\s@]+$|^sip:[^\s@]+$", re.IGNORECASE)


def parse_address(given: str) -> str | None:
    """A callable endpoint: E.164 (US national forms accepted, as Twilio does), ``client:…`` or ``sip:…``."""
    text = given.strip()
    if text.lower().startswith("client:"):
        return text if _CLIENT.match(text) else None
    if text.lower().startswith("sip:"):
        return text if _SIP.match(text) else None
    return normalize_number(text)


def _bool(form: Form, name: str, default: bool) -> bool:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in ("true", "false"):
        raise ApiError(400, 20001, f"{name} must be true or false, not {raw[:20]!r}")
    return raw.lower() == "true"


def _method(form: Form, name: str, default: str = "POST") -> str:
    raw = (form.get(name) or default).upper()
    if raw not in ("GET", "POST"):
        raise ApiError(400, 20001, f"{name} must be GET or POST")
    return raw


def _url(form: Form, name: str) -> str | None:
    raw = (form.get(name) or "").strip()
    if not raw:
        return None
    # The same test webhooks pass before they are sent: a URL taken here would fail every request later,
    # out of sight of whoever gave it.
    if web_url(raw) is None:
        raise ApiError(400, 21205, f"{name} is not a valid URL: {raw[:200]}")
    return raw


def _events(form: Form, name: str, allowed: tuple[str, ...] | None, default: frozenset[str]) -> frozenset[str]:
    # The SDK repeats the parameter per event; TwiML habits put them in one value, space-separated.
    words = {word for value in form.getlist(name) for word in value.replace(",", " ").split()}
    if not words:
        return default
    if allowed is not None and not words <= set(allowed):
        unknown = ", ".join(sorted(words - set(allowed)))
        raise ApiError(400, 20001, f"{name} has unknown events: {unknown}")
    return frozenset(words)


def _seconds(form: Form, name: str, default: int, low: int, high: int) -> int:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, 20001, f"{name} must be a whole number of seconds") from None
    # Twilio clamps a ring timeout into its range rather than refusing it.
    return max(low, min(high, value))


def check_from(config: SandboxConfig, given: str) -> str:
    if not given:
        raise ApiError(400, 21213, "No 'From' number is specified")
    if MAGIC_CALL_FROM_ERRORS.get(given) == 21212:
        raise ApiError(400, 21212, f"The 'From' number {given} is not a valid phone number or client identifier.")
    if given == MAGIC_FROM_OK or given.startswith("client:"):
        return given
    number = normalize_number(given)
    if number is None:
        raise ApiError(400, 21212, f"The 'From' number {given} is not a valid phone number or client identifier.")
    if number not in config.support_numbers:
        raise ApiError(400, 21210, f"The source phone number provided, {number}, is not yet verified for your account.")
    return number


def check_to(given: str) -> str:
    if not given:
        raise ApiError(400, 21201, "No 'To' number is specified")
    magic = MAGIC_CALL_TO_ERRORS.get(given)
    if magic is not None:
        raise ApiError(400, magic[0], magic[1])
    to = parse_address(given)
    if to is None:
        raise ApiError(400, 21211, f"Invalid 'To' Phone Number: {given[:64]}")
    return to


def _status_callback(form: Form) -> tuple[str | None, str, frozenset[str]]:
    return (
        _url(form, "StatusCallback"),
        _method(form, "StatusCallbackMethod"),
        _events(form, "StatusCallbackEvent", CALL_EVENTS, frozenset({"completed"})),
    )


# --- Calls --------------------------------------------------------------------------------------------------


def _instructions(form: Form) -> Source | None:
    url = _url(form, "Url")
    if url is not None:
        return Fetch(url, _method(form, "Method"))
    twiml = form.get("Twiml")
    if twiml:
        if len(twiml) > MAX_TWIML_CHARS:
            raise ApiError(400, 21232, f"Twiml is {len(twiml)} characters; at most {MAX_TWIML_CHARS} are allowed")
        return Inline(twiml)
    return None


def _call(voice: Voice, request: Request) -> Call:
    call = voice.calls.get(request.path_params["sid"])
    if call is None:
        raise not_found(request.url.path)
    return call


async def create_call(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Calls.json"""
    voice = voice_of(request)
    form = await read_form(request)
    to = check_to((form.get("To") or "").strip())
    from_ = check_from(voice.config, (form.get("From") or "").strip())
    if form.get("ApplicationSid") and not form.get("Url") and not form.get("Twiml"):
        raise ApiError(400, 21218, "The sandbox has no TwiML Applications: give Url or Twiml")
    source = _instructions(form)
    if source is None:
        raise ApiError(400, 21205, "Url or Twiml is required")
    callback, method, events = _status_callback(form)
    call = voice.place_outbound(
        to,
        from_,
        source,
        timeout=_seconds(form, "Timeout", 60, 1, 600),
        status_callback=callback,
        status_callback_method=method,
        status_events=events,
    )
    return twilio_json(voice.call_json(call), status=201)


async def fetch_call(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json"""
    voice = voice_of(request)
    return twilio_json(voice.call_json(_call(voice, request)))


async def update_call(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json: redirect a live call, or end it."""
    voice = voice_of(request)
    call = _call(voice, request)
    form = await read_form(request)
    status = form.get("Status")
    if status not in (None, "", "completed", "canceled"):
        raise ApiError(400, 20001, f"Status must be completed or canceled, not {status[:20]!r}")
    source = _instructions(form)
    if call.ended:
        raise ApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
    if form.get("StatusCallback") is not None:
        call.status_callback = _url(form, "StatusCallback")
        call.status_callback_method = _method(form, "StatusCallbackMethod")
    if status == "canceled":
        # Cancel only stops a call that has not been answered; an answered one carries on.
        if call.status in ("queued", "ringing"):
            voice.hangup(call)
            await voice.settle(call)
    elif status == "completed":
        voice.hangup(call)
        await voice.settle(call)
    elif source is not None:
        if call.status != "in-progress" or call.hangup_status is not None:
            raise ApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
        voice.redirect(call, source)
    return twilio_json(voice.call_json(call))


async def delete_call(request: Request) -> Response:
    """DELETE /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json: only the record of a call that is over."""
    voice = voice_of(request)
    call = _call(voice, request)
    if not call.ended:
        raise ApiError(400, 20009, "Cannot delete this resource before it is complete")
    del voice.calls[call.sid]
    return Response(status_code=204)


async def list_calls(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Calls.json: newest first; To, From, ParentCallSid, Status."""
    voice = voice_of(request)
    form = query_form(request)
    query = PageQuery.from_form(form)
    filters = [(name, value) for name in ("To", "From", "ParentCallSid", "Status") if (value := form.get(name))]
    wanted = dict(filters)
    calls = [
        c
        for c in reversed(voice.calls.values())
        if wanted.get("To", c.to) == c.to
        and wanted.get("From", c.from_) == c.from_
        and wanted.get("ParentCallSid", c.parent_call_sid) == c.parent_call_sid
        and wanted.get("Status", c.status) == c.status
    ]
    page = paginate(calls, lambda c: c.sid, query)
    path = f"{API_ROOT}/Accounts/{request.path_params['account_sid']}/Calls.json"
    return twilio_json(page_json("calls", page, voice.call_json, lambda c: c.sid, path, filters))


# --- Queues and members -------------------------------------------------------------------------------------


def _queue(voice: Voice, request: Request, key: str = "sid") -> Queue:
    queue = voice.queues.get(request.path_params[key])
    if queue is None:
        raise not_found(request.url.path)
    return queue


def _queue_fields(form: Form, voice: Voice, current: Queue | None) -> tuple[str | None, int | None]:
    name = form.get("FriendlyName")
    if name is not None:
        name = name.strip()
        if not name or len(name) > 64:
            raise ApiError(400, 20001, "FriendlyName must be 1 to 64 characters")
        other = voice.queue_named(name)
        if other is not None and other is not current:
            raise ApiError(400, 22003, f"A queue named {name!r} already exists")
    size: int | None = None
    if form.get("MaxSize"):
        try:
            size = int(form.get("MaxSize") or "")
        except ValueError:
            raise ApiError(400, 20001, "MaxSize must be a whole number") from None
        if not 1 <= size <= MAX_QUEUE_SIZE:
            raise ApiError(400, 20001, f"MaxSize must be between 1 and {MAX_QUEUE_SIZE}")
    return name, size


async def create_queue(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Queues.json"""
    voice = voice_of(request)
    form = await read_form(request)
    if not (form.get("FriendlyName") or "").strip():
        raise ApiError(400, 20001, "Missing required parameter FriendlyName in the post body")
    name, size = _queue_fields(form, voice, None)
    assert name is not None
    queue = voice.create_queue(name, size or 1000)
    return twilio_json(voice.queue_json(queue), status=201)


async def list_queues(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Queues.json: newest first."""
    voice = voice_of(request)
    query = PageQuery.from_form(query_form(request))
    queues = list(reversed(voice.queues.values()))
    page = paginate(queues, lambda q: q.sid, query)
    path = f"{API_ROOT}/Accounts/{request.path_params['account_sid']}/Queues.json"
    return twilio_json(page_json("queues", page, voice.queue_json, lambda q: q.sid, path, []))


async def fetch_queue(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Queues/{Sid}.json"""
    voice = voice_of(request)
    return twilio_json(voice.queue_json(_queue(voice, request)))


async def update_queue(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Queues/{Sid}.json: FriendlyName, MaxSize."""
    voice = voice_of(request)
    queue = _queue(voice, request)
    name, size = _queue_fields(await read_form(request), voice, queue)
    if name is not None:
        queue.friendly_name = name
    if size is not None:
        queue.max_size = size
    queue.date_updated = voice.config.clock()
    return twilio_json(voice.queue_json(queue))


async def delete_queue(request: Request) -> Response:
    """DELETE /2010-04-01/Accounts/{AccountSid}/Queues/{Sid}.json: only an empty queue."""
    voice = voice_of(request)
    queue = _queue(voice, request)
    if queue.members:
        raise ApiError(400, 20009, "Cannot delete a queue that has callers waiting in it")
    del voice.queues[queue.sid]
    return Response(status_code=204)


def _member(voice: Voice, request: Request) -> Member:
    queue = _queue(voice, request, "queue_sid")
    wanted = request.path_params["call_sid"]
    if wanted == "Front":
        member = queue.members[0] if queue.members else None
    else:
        member = next((m for m in queue.members if m.call.sid == wanted), None)
    if member is None:
        raise not_found(request.url.path)
    return member


async def list_members(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Queues/{QueueSid}/Members.json: in queue order."""
    voice = voice_of(request)
    queue = _queue(voice, request, "queue_sid")
    page = paginate(list(queue.members), lambda m: m.call.sid, PageQuery.from_form(query_form(request)))
    path = f"{API_ROOT}/Accounts/{request.path_params['account_sid']}/Queues/{queue.sid}/Members.json"
    return twilio_json(page_json("queue_members", page, voice.member_json, lambda m: m.call.sid, path, []))


async def fetch_member(request: Request) -> Response:
    """GET …/Queues/{QueueSid}/Members/{CallSid}.json; ``Front`` is whoever waits at the front."""
    voice = voice_of(request)
    return twilio_json(voice.member_json(_member(voice, request)))


async def update_member(request: Request) -> Response:
    """POST …/Queues/{QueueSid}/Members/{CallSid}.json with ``Url``: dequeue into that TwiML."""
    voice = voice_of(request)
    member = _member(voice, request)
    form = await read_form(request)
    url = _url(form, "Url")
    if url is None:
        raise ApiError(400, 20001, "Missing required parameter Url in the post body")
    answer = voice.member_json(member)
    voice.dequeue_to(member, url, _method(form, "Method"))
    return twilio_json(answer)


# --- Conferences and participants ---------------------------------------------------------------------------


def _conference(voice: Voice, request: Request, key: str = "sid", create: bool = False) -> Conference:
    """A conference by SID or, as Twilio also accepts for participants, by the live one's friendly name."""
    wanted = request.path_params[key]
    conference = voice.conferences.get(wanted)
    if conference is None and not (wanted.startswith("CF") and len(wanted) == 34):
        conference = voice.conference_named(wanted, create=create)
    if conference is None:
        raise not_found(request.url.path)
    return conference


async def list_conferences(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Conferences.json: newest first; FriendlyName, Status."""
    voice = voice_of(request)
    form = query_form(request)
    query = PageQuery.from_form(form)
    filters = [(name, value) for name in ("FriendlyName", "Status") if (value := form.get(name))]
    wanted = dict(filters)
    conferences = [
        c
        for c in reversed(voice.conferences.values())
        if wanted.get("FriendlyName", c.friendly_name) == c.friendly_name and wanted.get("Status", c.status) == c.status
    ]
    page = paginate(conferences, lambda c: c.sid, query)
    path = f"{API_ROOT}/Accounts/{request.path_params['account_sid']}/Conferences.json"
    return twilio_json(page_json("conferences", page, Conference.to_json, lambda c: c.sid, path, filters))


async def fetch_conference(request: Request) -> Response:
    """GET /2010-04-01/Accounts/{AccountSid}/Conferences/{Sid}.json"""
    return twilio_json(_conference(voice_of(request), request).to_json())


async def update_conference(request: Request) -> Response:
    """POST /2010-04-01/Accounts/{AccountSid}/Conferences/{Sid}.json: Status=completed, AnnounceUrl."""
    voice = voice_of(request)
    conference = _conference(voice, request)
    form = await read_form(request)
    status = form.get("Status")
    if status not in (None, "", "completed"):
        raise ApiError(400, 20001, f"Status must be completed, not {status[:20]!r}")
    announce = _url(form, "AnnounceUrl")
    if announce is not None and conference.status != "completed":
        for participant in conference.connected():
            voice.announce(participant, announce, _method(form, "AnnounceMethod"))
    if status == "completed":
        voice.end_conference(conference, "conference-ended-via-api", None)
    return twilio_json(conference.to_json())


def _participant(voice: Voice, request: Request) -> Participant:
    conference = _conference(voice, request, "conference_sid")
    wanted = request.path_params["call_sid"]
    found = next((p for p in conference.participants if p.call.sid == wanted), None)
    found = found or next((p for p in conference.participants if p.label == wanted), None)
    if found is None:
        raise not_found(request.url.path)
    return found


async def create_participant(request: Request) -> Response:
    """POST …/Conferences/{ConferenceSid}/Participants.json (a SID or a friendly name): dial someone in."""
    voice = voice_of(request)
    form = await read_form(request)
    to = check_to((form.get("To") or "").strip())
    from_ = check_from(voice.config, (form.get("From") or "").strip())
    label = form.get("Label") or None
    # Every field is read before the room is looked up, because looking it up by name may create it: a
    # refused request must not leave behind an empty conference, waiting in ``init`` for ever.
    noun = ConferenceNoun(
        name="",
        muted=_bool(form, "Muted", False),
        beep=form.get("Beep") or "true",
        start_conference_on_enter=_bool(form, "StartConferenceOnEnter", True),
        end_conference_on_exit=_bool(form, "EndConferenceOnExit", False),
        wait_url=_url(form, "WaitUrl"),
        wait_method=_method(form, "WaitMethod"),
        status_callback=_url(form, "ConferenceStatusCallback"),
        status_callback_method=_method(form, "ConferenceStatusCallbackMethod"),
        status_callback_event=_events(form, "ConferenceStatusCallbackEvent", None, frozenset({"start", "end"})),
        participant_label=label,
    )
    callback, method, events = _status_callback(form)
    timeout = _seconds(form, "Timeout", 60, 5, 600)
    # Only a room that already existed can refuse now: one just created is in ``init``, with nobody in it.
    conference = _conference(voice, request, "conference_sid", create=True)
    if conference.status == "completed":
        raise ApiError(400, 20001, f"Conference {conference.sid} is over")
    if label is not None and any(p.label == label for p in conference.participants):
        raise ApiError(400, 20001, f"Label {label!r} is already used in this conference")
    noun = dataclasses.replace(noun, name=conference.friendly_name)
    # The participant's call does one thing once answered: join this room. When the room ends, so does it.
    call = voice.place_outbound(
        to,
        from_,
        Loaded((Dial(nouns=(noun,)),), None),
        timeout=timeout,
        status_callback=callback,
        status_callback_method=method,
        status_events=events,
    )
    participant = voice.add_participant(conference, call, noun, status="queued")
    return twilio_json(participant.to_json(), status=201)


async def list_participants(request: Request) -> Response:
    """GET …/Conferences/{ConferenceSid}/Participants.json: filters Muted, Hold."""
    voice = voice_of(request)
    conference = _conference(voice, request, "conference_sid")
    form = query_form(request)
    query = PageQuery.from_form(form)
    filters = [(name, value.lower()) for name in ("Muted", "Hold") if (value := form.get(name))]
    wanted = dict(filters)
    participants = [
        p
        for p in conference.participants
        if wanted.get("Muted", str(p.muted).lower()) == str(p.muted).lower()
        and wanted.get("Hold", str(p.hold).lower()) == str(p.hold).lower()
    ]
    page = paginate(participants, lambda p: p.call.sid, query)
    base = f"{API_ROOT}/Accounts/{request.path_params['account_sid']}/Conferences/{conference.sid}"
    return twilio_json(
        page_json("participants", page, Participant.to_json, lambda p: p.call.sid, f"{base}/Participants.json", filters)
    )


async def fetch_participant(request: Request) -> Response:
    """GET …/Participants/{CallSid}.json; the CallSid may be the participant's label."""
    return twilio_json(_participant(voice_of(request), request).to_json())


async def update_participant(request: Request) -> Response:
    """POST …/Participants/{CallSid}.json: Hold (+HoldUrl), Muted, EndConferenceOnExit, AnnounceUrl."""
    voice = voice_of(request)
    participant = _participant(voice, request)
    form = await read_form(request)
    if "HoldUrl" in form:
        participant.hold_url = _url(form, "HoldUrl")
        participant.hold_method = _method(form, "HoldMethod", "GET")
    if "WaitUrl" in form:
        participant.wait_url = _url(form, "WaitUrl")
        participant.wait_method = _method(form, "WaitMethod")
    if "Hold" in form:
        voice.set_hold(participant, _bool(form, "Hold", participant.hold))
    if "Muted" in form:
        voice.set_muted(participant, _bool(form, "Muted", participant.muted))
    if "EndConferenceOnExit" in form:
        end = _bool(form, "EndConferenceOnExit", participant.end_conference_on_exit)
        if end != participant.end_conference_on_exit:
            participant.end_conference_on_exit = end
            voice.conference_event(participant.conference, "participant-modify", participant)
    announce = _url(form, "AnnounceUrl")
    if announce is not None:
        voice.announce(participant, announce, _method(form, "AnnounceMethod"))
    participant.date_updated = voice.config.clock()
    return twilio_json(participant.to_json())


async def delete_participant(request: Request) -> Response:
    """DELETE …/Participants/{CallSid}.json: kick. The call goes on after its ``<Dial>`` (REST ones end)."""
    voice = voice_of(request)
    participant = _participant(voice, request)
    if participant.status == "connected":
        voice.leave_conference(participant, "kicked")
    else:
        voice.hangup(participant.call)
    return Response(status_code=204)


# --- sandbox views (no Twilio equivalent) -------------------------------------------------------------------


async def sandbox_calls(request: Request) -> Response:
    """GET /sandbox/calls: every call, newest first, with the verb it is on and what it hears."""
    voice = voice_of(request)
    status = request.query_params.get("status") or None
    calls = [c for c in reversed(voice.calls.values()) if status is None or c.status == status]
    return JSONResponse([voice.sandbox_call_json(c) for c in calls])


async def sandbox_conferences(request: Request) -> Response:
    """GET /sandbox/conferences: every conference, newest first, with its participants' hold and mute."""
    voice = voice_of(request)
    return JSONResponse([voice.sandbox_conference_json(c) for c in reversed(voice.conferences.values())])


_RECORDING = re.compile(r"^(RE[0-9a-f]{32})(\.wav)?$")


async def recording(request: Request) -> Response:
    """GET /sandbox/recordings/{RecordingSid}[.wav]: the voicemail as a small generated WAV."""
    match = _RECORDING.match(request.path_params["name"])
    held = voice_of(request).recordings.get(match.group(1)) if match else None
    if held is None:
        return PlainTextResponse("no such recording\n", status_code=404)
    return Response(media.voice_wav(held.sid, held.duration), media_type="audio/x-wav")


def routes() -> list[Route]:
    account = f"{API_ROOT}/Accounts/{{account_sid}}"
    calls = f"{account}/Calls"
    queues = f"{account}/Queues"
    conferences = f"{account}/Conferences"
    participants = f"{conferences}/{{conference_sid}}/Participants"
    return [
        Route(f"{calls}.json", api_endpoint(create_call), methods=["POST"]),
        Route(f"{calls}.json", api_endpoint(list_calls), methods=["GET"]),
        Route(f"{calls}/{{sid}}.json", api_endpoint(fetch_call), methods=["GET"]),
        Route(f"{calls}/{{sid}}.json", api_endpoint(update_call), methods=["POST"]),
        Route(f"{calls}/{{sid}}.json", api_endpoint(delete_call), methods=["DELETE"]),
        Route(f"{queues}.json", api_endpoint(create_queue), methods=["POST"]),
        Route(f"{queues}.json", api_endpoint(list_queues), methods=["GET"]),
        Route(f"{queues}/{{sid}}.json", api_endpoint(fetch_queue), methods=["GET"]),
        Route(f"{queues}/{{sid}}.json", api_endpoint(update_queue), methods=["POST"]),
        Route(f"{queues}/{{sid}}.json", api_endpoint(delete_queue), methods=["DELETE"]),
        Route(f"{queues}/{{queue_sid}}/Members.json", api_endpoint(list_members), methods=["GET"]),
        Route(f"{queues}/{{queue_sid}}/Members/{{call_sid}}.json", api_endpoint(fetch_member), methods=["GET"]),
        Route(f"{queues}/{{queue_sid}}/Members/{{call_sid}}.json", api_endpoint(update_member), methods=["POST"]),
        Route(f"{conferences}.json", api_endpoint(list_conferences), methods=["GET"]),
        Route(f"{conferences}/{{sid}}.json", api_endpoint(fetch_conference), methods=["GET"]),
        Route(f"{conferences}/{{sid}}.json", api_endpoint(update_conference), methods=["POST"]),
        Route(f"{participants}.json", api_endpoint(create_participant), methods=["POST"]),
        Route(f"{participants}.json", api_endpoint(list_participants), methods=["GET"]),
        Route(f"{participants}/{{call_sid}}.json", api_endpoint(fetch_participant), methods=["GET"]),
        Route(f"{participants}/{{call_sid}}.json", api_endpoint(update_participant), methods=["POST"]),
        Route(f"{participants}/{{call_sid}}.json", api_endpoint(delete_participant), methods=["DELETE"]),
        Route("/sandbox/calls", sandbox_calls, methods=["GET"]),
        Route("/sandbox/conferences", sandbox_conferences, methods=["GET"]),
        Route("/sandbox/recordings/{name}", recording, methods=["GET", "HEAD"]),
    ]


def endpoint_list() -> list[str]:
    """What ``GET /sandbox`` lists for voice."""
    account = f"{API_ROOT}/Accounts/{{AccountSid}}"
    return [
        f"POST|GET {account}/Calls.json",
        f"GET|POST|DELETE {account}/Calls/{{Sid}}.json",
        f"POST|GET {account}/Queues.json",
        f"GET|POST|DELETE {account}/Queues/{{Sid}}.json",
        f"GET {account}/Queues/{{QueueSid}}/Members.json",
        f"GET|POST {account}/Queues/{{QueueSid}}/Members/{{CallSid|Front}}.json",
        f"GET {account}/Conferences.json",
        f"GET|POST {account}/Conferences/{{Sid}}.json",
        f"POST|GET {account}/Conferences/{{Sid|FriendlyName}}/Participants.json",
        f"GET|POST|DELETE {account}/Conferences/{{Sid}}/Participants/{{CallSid|Label}}.json",
    ]
