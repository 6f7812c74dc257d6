"""Voice TwiML as the sandbox reads it: a webhook's answer parsed into typed verbs, or refused as Twilio would."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

MAX_TWIML_BYTES = 64 * 1024
"""Twilio refuses TwiML documents over 64 KB (error 12300-family); the sandbox does the same."""

PARSE_ERROR = 12100
"""Twilio's "Document parse failure": the answer is not well-formed XML."""
SCHEMA_ERROR = 12200
"""Twilio's "Schema validation warning": well-formed, but a verb or attribute Twilio does not accept."""


class TwimlError(ValueError):
    """TwiML the sandbox refuses; ``code`` is the Twilio error a real call would log."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- verbs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    loop: int = 1
    """How many times; 0 repeats until something else happens to the call."""


@dataclass(frozen=True, slots=True)
class Play:
    url: str
    loop: int = 1
    digits: str | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    length: float = 1.0


@dataclass(frozen=True, slots=True)
class Gather:
    action: str | None = None
    method: str = "POST"
    timeout: float = 5.0
    num_digits: int | None = None
    finish_on_key: str = "#"
    action_on_empty_result: bool = False
    prompts: tuple[Say | Play | Pause, ...] = ()


@dataclass(frozen=True, slots=True)
class Enqueue:
    name: str
    action: str | None = None
    method: str = "POST"
    wait_url: str | None = None
    """None: Twilio's default music; "": silence."""
    wait_url_method: str = "POST"
    max_queue_size: int | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    pass


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str = "rejected"


@dataclass(frozen=True, slots=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Record:
    action: str | None = None
    method: str = "POST"
    timeout: float = 5.0
    max_length: float = 3600.0
    finish_on_key: str = "1234567890*#"
    play_beep: bool = True
    recording_status_callback: str | None = None
    recording_status_callback_method: str = "POST"
    recording_status_callback_event: frozenset[str] = frozenset({"completed"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ``<Number>``, ``<Client>`` or ``<Sip>`` noun: a phone to ring, as ``+1…``, ``client:…`` or ``sip:…``."""

    address: str
    url: str | None = None
    method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_event: frozenset[str] = frozenset({"completed"})


@dataclass(frozen=True, slots=True)
class QueueNoun:
    name: str
    url: str | None = None
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Conference:
    name: str
    muted: bool = False
    beep: str = "true"
    start_conference_on_enter: bool = True
    end_conference_on_exit: bool = False
    wait_url: str | None = None
    wait_method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_event: frozenset[str] = frozenset()
    participant_label: str | None = None
    max_participants: int = 250


Noun = Endpoint | QueueNoun | Conference


@dataclass(frozen=True, slots=True)
class Dial:
    nouns: tuple[Noun, ...]
    action: str | None = None
    method: str = "POST"
    timeout: float = 30.0
    time_limit: float = 14400.0
    caller_id: str | None = None


Verb = Say | Play | Pause | Gather | Enqueue | Leave | Hangup | Reject | Redirect | Record | Dial
WAIT_VERBS = (Play, Say, Pause, Hangup, Redirect, Leave, Gather)
"""What a ``<Enqueue waitUrl>`` document may use (Twilio's Enqueue documentation)."""
MUSIC_VERBS = (Play, Say, Pause, Redirect)
"""What hold music, conference wait music and a ``<Queue url>`` announcement may use."""


# --- attribute readers --------------------------------------------------------------------------------------


def _bool(el: ET.Element, name: str, default: bool) -> bool:
    raw = el.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> {name}={raw!r} is not true or false")
    return value == "true"


def _number(el: ET.Element, name: str, default: float, minimum: float = 0.0) -> float:
    raw = el.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> {name}={raw!r} is not a number") from None
    # float() reads "inf", "nan" and "1e400" too: no TwiML attribute means forever or nothing, so refuse them
    # here rather than let a later int() or sleep() fail on them.
    if not math.isfinite(value):
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> {name}={raw!r} is not a finite number")
    if value < minimum:
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> {name}={raw!r} is below {minimum:g}")
    return value


def _int(el: ET.Element, name: str, default: int, minimum: int = 0) -> int:
    value = _number(el, name, default, minimum)
    if value != int(value):
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> {name}={el.get(name)!r} is not a whole number")
    return int(value)


def _method(el: ET.Element, name: str, default: str = "POST") -> str:
    raw = (el.get(name) or default).strip().upper()
    if raw not in ("GET", "POST"):
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> {name}={raw!r} is not GET or POST")
    return raw


def _events(el: ET.Element, name: str, default: frozenset[str]) -> frozenset[str]:
    raw = el.get(name)
    if raw is None:
        return default
    return frozenset(raw.replace(",", " ").split())


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def _no_children(el: ET.Element) -> None:
    if len(el):
        raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> may not contain <{el[0].tag}>")


# --- parsing ------------------------------------------------------------------------------------------------


def parse(text: str | bytes) -> list[Verb]:
    """The verbs of a voice TwiML document, in order; raises TwimlError as Twilio would log it.

    Entity and DOCTYPE declarations are refused outright (as defusedxml does): TwiML never needs them, and
    an entity expansion bomb must not take the sandbox down.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > MAX_TWIML_BYTES:
        raise TwimlError(PARSE_ERROR, f"document is {len(raw)} bytes; TwiML is limited to 64 KB")
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise TwimlError(PARSE_ERROR, "DOCTYPE and ENTITY declarations are not allowed in TwiML")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise TwimlError(PARSE_ERROR, f"not well-formed XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(PARSE_ERROR, f"the root element is <{root.tag}>, not <Response>")
    return [_verb(el) for el in root]


def _verb(el: ET.Element) -> Verb:
    match el.tag:
        case "Say":
            _no_children_except(el, ("lang", "p", "s", "break", "emphasis", "prosody", "say-as", "sub", "w"))
            return Say(text="".join(el.itertext()).strip(), loop=_int(el, "loop", 1))
        case "Play":
            _no_children(el)
            digits = el.get("digits")
            return Play(url=_text(el), loop=_int(el, "loop", 1), digits=digits)
        case "Pause":
            _no_children(el)
            return Pause(length=_number(el, "length", 1.0))
        case "Gather":
            prompts: list[Say | Play | Pause] = []
            for child in el:
                # The tag is checked before the child is read: reading first would recurse through a
                # thousand nested <Gather>s before refusing the second one.
                if child.tag not in ("Say", "Play", "Pause"):
                    raise TwimlError(SCHEMA_ERROR, f"<Gather> may not contain <{child.tag}>")
                verb = _verb(child)
                assert isinstance(verb, Say | Play | Pause)
                prompts.append(verb)
            num_digits = el.get("numDigits")
            return Gather(
                action=el.get("action"),
                method=_method(el, "method"),
                timeout=_number(el, "timeout", 5.0),
                num_digits=_int(el, "numDigits", 1, minimum=1) if num_digits else None,
                finish_on_key=el.get("finishOnKey", "#"),
                action_on_empty_result=_bool(el, "actionOnEmptyResult", False),
                prompts=tuple(prompts),
            )
        case "Enqueue":
            _no_children_except(el, ("Task",))
            name = _text(el)
            if not name or len(name) > 64:
                raise TwimlError(SCHEMA_ERROR, "<Enqueue> needs a queue name of 1 to 64 characters")
            max_size = el.get("maxQueueSize")
            return Enqueue(
                name=name,
                action=el.get("action"),
                method=_method(el, "method"),
                wait_url=el.get("waitUrl"),
                wait_url_method=_method(el, "waitUrlMethod"),
                max_queue_size=_int(el, "maxQueueSize", 1000, minimum=1) if max_size else None,
            )
        case "Leave":
            _no_children(el)
            return Leave()
        case "Hangup":
            _no_children(el)
            return Hangup()
        case "Reject":
            _no_children(el)
            reason = el.get("reason", "rejected")
            if reason not in ("rejected", "busy"):
                raise TwimlError(SCHEMA_ERROR, f"<Reject> reason={reason!r} is not rejected or busy")
            return Reject(reason=reason)
        case "Redirect":
            _no_children(el)
            if not _text(el):
                raise TwimlError(SCHEMA_ERROR, "<Redirect> needs a URL")
            return Redirect(url=_text(el), method=_method(el, "method"))
        case "Record":
            _no_children(el)
            return Record(
                action=el.get("action"),
                method=_method(el, "method"),
                timeout=_number(el, "timeout", 5.0),
                max_length=_number(el, "maxLength", 3600.0, minimum=1.0),
                finish_on_key=el.get("finishOnKey", "1234567890*#"),
                play_beep=_bool(el, "playBeep", True),
                recording_status_callback=el.get("recordingStatusCallback"),
                recording_status_callback_method=_method(el, "recordingStatusCallbackMethod"),
                recording_status_callback_event=_events(el, "recordingStatusCallbackEvent", frozenset({"completed"})),
            )
        case "Dial":
            return _dial(el)
        case _:
            raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> is not a voice verb the sandbox plays")


def _no_children_except(el: ET.Element, allowed: tuple[str, ...]) -> None:
    for child in el:
        if child.tag not in allowed:
            raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> may not contain <{child.tag}>")


def _dial(el: ET.Element) -> Dial:
    nouns: list[Noun] = []
    for child in el:
        nouns.append(_noun(child))
    bare = _text(el)
    if bare:
        # `<Dial>+14155550123</Dial>`: a number written straight inside the verb.
        nouns.insert(0, Endpoint(address=bare))
    if not nouns:
        raise TwimlError(SCHEMA_ERROR, "<Dial> has nothing to dial")
    kinds = {type(noun) for noun in nouns}
    if (QueueNoun in kinds or Conference in kinds) and len(nouns) > 1:
        raise TwimlError(SCHEMA_ERROR, "<Dial> may hold one <Queue> or one <Conference>, alone")
    if len(nouns) > 10:
        raise TwimlError(SCHEMA_ERROR, "<Dial> rings at most 10 endpoints at once")
    return Dial(
        nouns=tuple(nouns),
        action=el.get("action"),
        method=_method(el, "method"),
        timeout=_number(el, "timeout", 30.0, minimum=1.0),
        time_limit=_number(el, "timeLimit", 14400.0, minimum=1.0),
        caller_id=el.get("callerId"),
    )


def _noun(el: ET.Element) -> Noun:
    match el.tag:
        case "Number" | "Client" | "Sip":
            text = _text(el)
            if el.tag == "Client":
                identity = el.findtext("Identity") or text
                address = f"client:{identity.strip()}"
            elif el.tag == "Sip":
                address = text if text.lower().startswith("sip:") else f"sip:{text}"
            else:
                address = text
            if address in ("", "client:", "sip:"):
                raise TwimlError(SCHEMA_ERROR, f"<{el.tag}> needs an address")
            return Endpoint(
                address=address,
                url=el.get("url"),
                method=_method(el, "method"),
                status_callback=el.get("statusCallback"),
                status_callback_method=_method(el, "statusCallbackMethod"),
                status_callback_event=_events(el, "statusCallbackEvent", frozenset({"completed"})),
            )
        case "Queue":
            _no_children(el)
            if not _text(el):
                raise TwimlError(SCHEMA_ERROR, "<Queue> needs a queue name")
            return QueueNoun(name=_text(el), url=el.get("url"), method=_method(el, "method"))
        case "Conference":
            _no_children(el)
            name = _text(el)
            if not name:
                raise TwimlError(SCHEMA_ERROR, "<Conference> needs a room name")
            return Conference(
                name=name,
                muted=_bool(el, "muted", False),
                beep=el.get("beep", "true"),
                start_conference_on_enter=_bool(el, "startConferenceOnEnter", True),
                end_conference_on_exit=_bool(el, "endConferenceOnExit", False),
                wait_url=el.get("waitUrl"),
                wait_method=_method(el, "waitMethod"),
                status_callback=el.get("statusCallback"),
                status_callback_method=_method(el, "statusCallbackMethod"),
                status_callback_event=_events(el, "statusCallbackEvent", frozenset()),
                participant_label=el.get("participantLabel"),
                max_participants=_int(el, "maxParticipants", 250, minimum=2),
            )
        case _:
            raise TwimlError(SCHEMA_ERROR, f"<Dial> may not contain <{el.tag}>")
