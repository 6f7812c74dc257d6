"""Hostile input, property-tested: no client input makes a 5xx, a server exception or a half-written record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient, WebSocketDenialResponse, WebSocketTestSession
from starlette.types import Message

from bridge import protocol
from bridge.app import create_app
from bridge.settings import Settings
from bridge.signature import compute_signature
from bridge.store import STATUS_RANK, SqliteStore, add_agent, open_database
from bridge.twilio_errors import describe_error
from tests.conftest import BASE
from tests.support import AUTH_TOKEN, CUSTOMER, OUR_NUMBER, inbound_params, message_sid, signed, status_params

SMS = f"{BASE}/twilio/sms"
STATUS = f"{BASE}/twilio/sms/status"
FORM = "application/x-www-form-urlencoded"
RECEIVE_TIMEOUT = 5.0
"""Seconds a test waits for a frame the stream owes it; every frame here comes in milliseconds."""

Params = list[tuple[str, str]]
Rows = dict[str, list[str]]

# -- settings ----------------------------------------------------------------------------------------------------


def fuzz(max_examples: int, *, shrink: bool = True) -> hypothesis_settings:
    """Reproducible runs: the same examples every time. Variants that are known to fail skip shrinking."""
    phases = (Phase.explicit, Phase.generate, Phase.shrink) if shrink else (Phase.explicit, Phase.generate)
    return hypothesis_settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def known_bugs(reason: str) -> pytest.MarkDecorator:
    """Two variants of a property: the plain inputs, and the plain inputs plus those that once tripped the bugs
    named in ``reason`` (fixed; kept as regressions). Each bug also has its own test_bug_* below."""
    return pytest.mark.parametrize(
        "with_known_bugs",
        [pytest.param(False, id="plain-inputs"), pytest.param(True, id="with-former-bug-inputs")],
    )


# -- strategies --------------------------------------------------------------------------------------------------

SPICE = [
    "\x00",
    "\x07",
    "\x08",
    "\x7f",
    "\x1b[31m",
    "\x1b[2J\x1b[H",
    "\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\",
    "\x1b]0;pwned\x07",
    "\x9b31m",
    "\x1bP+q\x1b\\",
    "[bold]",
    "[/bold]",
    "[/]",
    "[link=https://evil.example]x[/link]",
    "[@click=app.quit]x[/]",
    "\\[bold]",
    "[",
    "]",
    "\r\n",
    "\r",
    "\n",
    "\t",
    "\u2028",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\ufffd",
    "\U0010ffff",
    "e\u0301",
    "👩\u200d👩\u200d👧",
    "🇺🇸",
    "&",
    "=",
    "+",
    "%",
    "%00",
    "%ZZ",
    "%ED%A0%80",
    ";",
    "?",
    "#",
    '"',
    "'",
    "<Response><Message>hi</Message></Response>",
    "<![CDATA[",
    "]]>",
    "{{7*7}}",
    "${jndi:ldap://x}",
    "'; DROP TABLE events; --",
    "STOP",
]
TEXT_CHARS = st.characters(codec="utf-8")  # every code point but the surrogates, which UTF-8 cannot carry
SURROGATES = st.characters(categories=["Cs"])


def hostile_text(max_parts: int = 6, surrogates: bool = False) -> st.SearchStrategy[str]:
    """Text full of control characters, escape sequences, markup and odd Unicode (lone surrogates on request)."""
    part = st.one_of(st.sampled_from(SPICE), st.text(TEXT_CHARS, max_size=12))
    if surrogates:
        part = st.one_of(part, st.text(SURROGATES, min_size=1, max_size=2))
    return st.lists(part, max_size=max_parts).map("".join)


def trips_digit_bug(text: str) -> bool:
    """``str.isdigit`` is true but ``int()`` refuses it: superscripts, circled digits (bugs A, B, C and E)."""
    return text.isdigit() and not text.isdecimal()


SAFE_NUMBERS = ["0", "1", "3", "10", "11", "", " 1", "1 ", "-1", "+1", "1.0", "0x1", "1e3", "NaN", "inf"]
SAFE_NUMBERS += ["١", "٣", "１", "0" * 40 + "2", "9" * 18]  # other decimal digits, padding, the largest safe size
BUG_NUMBERS = ["²", "³", "¹", "①", "1²", "9" * 4301, str(2**63), "9" * 20]


def numbers(with_known_bugs: bool) -> st.SearchStrategy[str]:
    """Values for NumMedia, NumSegments and ErrorCode."""
    texts = hostile_text(3) if with_known_bugs else hostile_text(3).filter(lambda t: not trips_digit_bug(t))
    listed = SAFE_NUMBERS + (BUG_NUMBERS if with_known_bugs else [])
    return st.one_of(st.sampled_from(listed), st.integers(0, 12).map(str), texts)


def valid_sids() -> st.SearchStrategy[str]:
    hex_digits = st.text("0123456789abcdefABCDEF", min_size=32, max_size=32)
    return st.tuples(st.sampled_from(["SM", "MM"]), hex_digits).map("".join)


BAD_SIDS = ["", "SM", "SM" + "0" * 31, "SM" + "0" * 33, "sm" + "0" * 32, "XX" + "0" * 32, "SM" + "g" * 32]
BAD_SIDS += ["SM" + "٣" * 32, " SM" + "0" * 32, "SM" + "0" * 32 + "\x00", "MG" + "0" * 32, "SM" + "0" * 32 + " "]


def sids(with_known_bugs: bool) -> st.SearchStrategy[str]:
    bad = st.one_of(st.sampled_from(BAD_SIDS), hostile_text(3))
    if with_known_bugs:  # bug K: a trailing newline passes the ^…$ check
        bad = st.one_of(bad, valid_sids().map(lambda sid: sid + "\n"))
    return st.one_of(valid_sids(), bad)


VALID_PHONES = ["+14155550123", "+447700900123", "whatsapp:+14155550123", "messenger:+14155550100"]
BAD_PHONES = ["", "4155550123", "+0123456789", "+1 415 555 0123", "(415) 555-0123", "+١٤١٥٥٥٥٠١٢٣"]
BAD_PHONES += ["whatsapp:", "sip:alice@example.com", "+1" + "2" * 20, "tel:+14155550123", "+14155550123\x00"]
BAD_PHONES += ["\n+14155550123", "+", "+1", "+14155550123 ", "whatsapp:4155550123", "+1415555O123"]


def phones(with_known_bugs: bool) -> st.SearchStrategy[str]:
    valid = st.one_of(st.sampled_from(VALID_PHONES), st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
    bad = st.one_of(st.sampled_from(BAD_PHONES), hostile_text(3))
    if with_known_bugs:  # bug K
        bad = st.one_of(bad, st.sampled_from(["+14155550123\n", "whatsapp:+14155550123\n"]))
    return st.one_of(valid, bad)


def statuses() -> st.SearchStrategy[str]:
    known = st.sampled_from(sorted(STATUS_RANK))
    odd = st.sampled_from(["", "received", "delivered ", "unknown", "DELİVERED", "ﬁled"])
    return st.one_of(known, known.map(str.upper), odd, hostile_text(3))


def media_urls() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", "http://x"]),
        hostile_text(3),
    )


KEYS = [
    "MessageSid",
    "SmsMessageSid",
    "SmsSid",
    "AccountSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "NumSegments",
    "MediaUrl0",
    "MediaContentType0",
    "MediaUrl1",
    "MediaUrl9",
    "MediaUrl10",
    "MessagingServiceSid",
    "OptOutType",
    "ProfileName",
    "FromCity",
    "ToCountry",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
    "ErrorMessage",
    "RawDlrDoneDate",
    "ApiVersion",
]


def value_for(key: str, with_known_bugs: bool) -> st.SearchStrategy[str]:
    """A value for a Twilio field: often plausible, often hostile."""
    if key in ("MessageSid", "SmsMessageSid", "SmsSid"):
        return sids(with_known_bugs)
    if key in ("From", "To"):
        return phones(with_known_bugs)
    if key in ("NumMedia", "NumSegments", "ErrorCode"):
        return numbers(with_known_bugs)
    if key in ("MessageStatus", "SmsStatus"):
        return statuses()
    if key.startswith("MediaUrl"):
        return media_urls()
    if key == "OptOutType":
        return st.one_of(st.sampled_from(["STOP", "START", "HELP", "stop", ""]), hostile_text(2))
    return hostile_text()


def bodies() -> st.SearchStrategy[str]:
    keywords = st.sampled_from(["STOP", " stop ", "START", "UNSTOP", "yes", "QUIT\n", "stop\x00"])
    return st.one_of(hostile_text(10), keywords, st.text(TEXT_CHARS, max_size=300))


@st.composite
def mutated(draw: st.DrawFn, base: Params, with_known_bugs: bool, read: Sequence[str]) -> Params:
    """``base`` with a few fields (often those the endpoint ``read``) replaced, dropped, shadowed, repeated or added."""
    params = list(base)
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.one_of(st.sampled_from(read), st.sampled_from(KEYS), st.text(TEXT_CHARS, max_size=12)))
        value = draw(value_for(key, with_known_bugs))
        op = draw(st.sampled_from(["set", "drop", "first", "last"]))
        if op == "set":
            params = [(k, value if k == key else v) for k, v in params]
            if all(k != key for k, _ in params):
                params.append((key, value))
        elif op == "drop":
            params = [(k, v) for k, v in params if k != key]
        elif op == "first":  # the bridge reads the first value of a repeated field
            params.insert(0, (key, value))
        else:
            params.append((key, value))
    return params


@st.composite
def inbound_forms(draw: st.DrawFn, with_known_bugs: bool) -> Params:
    media = draw(st.lists(st.tuples(media_urls(), hostile_text(2)), max_size=3))
    sid = draw(valid_sids())
    valid = st.one_of(st.sampled_from(VALID_PHONES), st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
    base = inbound_params(draw(bodies()), sid=sid, from_=draw(valid), to=draw(valid), media=media)
    read = ["MessageSid", "SmsMessageSid", "From", "To", "NumMedia", "NumSegments", "MediaUrl0", "OptOutType"]
    return draw(mutated(base, with_known_bugs, read))  # bad numbers and SIDs come in as mutations


@st.composite
def status_forms(draw: st.DrawFn, with_known_bugs: bool) -> Params:
    base = status_params(draw(valid_sids()), draw(st.sampled_from(sorted(STATUS_RANK))))
    code = draw(
        st.one_of(st.none(), st.sampled_from(["30003", "30007", "21610", "1", "99999"]), numbers(with_known_bugs))
    )
    if code is not None:
        base.append(("ErrorCode", code))
    if draw(st.booleans()):
        base.append(("ErrorMessage", draw(hostile_text())))
    read = ["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "ErrorMessage"]
    return draw(mutated(base, with_known_bugs, read))


def forms(url: str, with_known_bugs: bool) -> st.SearchStrategy[Params]:
    return inbound_forms(with_known_bugs) if url == SMS else status_forms(with_known_bugs)


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """conftest's settings, but the revocation watcher never polls: bug N (closing the store under a read in
    flight) otherwise segfaults the run now and then when a client shuts down. Nothing here revokes agents."""
    return settings.with_(revocation_poll=3600.0)


# -- the database, seen from outside -----------------------------------------------------------------------------

TABLES = ("events", "messages", "conversations", "early_statuses", "opt_outs", "seen_keys", "commands")


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def snapshot(db: Path) -> Rows:
    """Every row of every table, as comparable text."""
    conn = sqlite3.connect(db)
    try:
        return {table: sorted(repr(tuple(row)) for row in conn.execute(f"SELECT * FROM {table}")) for table in TABLES}
    finally:
        conn.close()


def head(db: Path) -> int:
    return int(query(db, "SELECT coalesce(max(seq), 0) FROM events")[0][0])


def events_after(db: Path, seq: int) -> list[tuple[int, str, dict[str, Any]]]:
    rows = query(db, "SELECT seq, type, data FROM events WHERE seq > ? ORDER BY seq", seq)
    return [(int(s), str(kind), json.loads(data)) for s, kind, data in rows]


def first_values(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    form: dict[str, str] = {}
    for key, value in params:
        form.setdefault(key, value)
    return form


def assert_one_line_refusal(status: int, text: str) -> None:
    assert 400 <= status < 500, status
    assert text.strip(), "a refusal says why"
    assert len(text.splitlines()) == 1 and "\r" not in text, f"a refusal is one line: {text!r}"


_CLEAN_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
_CLEAN_NUMBER = re.compile(r"((whatsapp|messenger|rcs):)?\+[1-9][0-9]{6,14}")


# -- checking one webhook ----------------------------------------------------------------------------------------


def check_webhook(db: Path, url: str, form: dict[str, str], before: Rows, seq: int, status: int, text: str) -> None:
    """The rule for one webhook: 200 with exactly what was sent stored, or a one-line 4xx and nothing stored."""
    assert status < 500, f"{status}: {text!r}"
    after = snapshot(db)
    if status != 200:
        assert_one_line_refusal(status, text)
        assert after == before, "a refused webhook changed the database"
        return
    assert text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    added = events_after(db, seq)
    if not added:
        assert after == before, "an acknowledged duplicate changed the database"
        return
    if url == SMS:
        check_inbound_stored(db, form, added, before, after)
    else:
        check_status_stored(db, form, added)


def check_inbound_stored(
    db: Path, form: dict[str, str], added: list[tuple[int, str, dict[str, Any]]], before: Rows, after: Rows
) -> None:
    kinds = [kind for _, kind, _ in added]
    assert kinds[0] == protocol.MESSAGE_RECEIVED and set(kinds[1:]) <= {protocol.OPTOUT_CHANGED}, kinds
    assert len(kinds) <= 2, kinds
    data = added[0][2]
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
    assert data["message_sid"] == data["message_id"] == sid
    assert data["body"] == form.get("Body", ""), "the body is stored byte for byte"
    assert (data["customer_number"], data["twilio_number"]) == (form["From"], form["To"])
    count = int(form.get("NumMedia") or "0")
    media = [{"url": form[f"MediaUrl{n}"], "content_type": form.get(f"MediaContentType{n}", "")} for n in range(count)]
    assert data["media"] == media
    assert _CLEAN_SID.fullmatch(str(sid)), f"stored a malformed MessageSid {sid!r}"
    for number in (form["From"], form["To"]):
        assert _CLEAN_NUMBER.fullmatch(number), f"stored a malformed phone number {number!r}"
    [(body, media_json, direction, status)] = query(
        db, "SELECT body, media, direction, status FROM messages WHERE id = ?", sid
    )
    assert (body, json.loads(media_json), direction, status) == (data["body"], data["media"], "inbound", "received")
    assert len(after["messages"]) == len(before["messages"]) + 1


def check_status_stored(db: Path, form: dict[str, str], added: list[tuple[int, str, dict[str, Any]]]) -> None:
    kinds = [kind for _, kind, _ in added]
    assert kinds == [protocol.MESSAGE_STATUS], kinds  # no outbound messages here, so no opt-out either
    data = added[0][2]
    sid = form.get("MessageSid") or form.get("SmsSid")
    reported = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    code = int(form["ErrorCode"]) if form.get("ErrorCode") else None
    message = form.get("ErrorMessage") or (describe_error(code) if code else None)
    assert (data["message_sid"], data["reported"], data["error_code"], data["error_message"]) == (
        sid,
        reported,
        code,
        message,
    )
    assert _CLEAN_SID.fullmatch(str(sid)), f"stored a malformed MessageSid {sid!r}"
    stored = query(db, "SELECT status, error_code, error_message FROM early_statuses WHERE sid = ? ORDER BY id", sid)
    assert stored[-1] == (reported, code, message)


def post_form(client: TestClient, url: str, params: Params) -> tuple[int, str]:
    body, headers = signed(url, params)
    response = client.post(url, content=body, headers=headers)
    return response.status_code, response.text


def post_json(client: TestClient, url: str, raw: bytes) -> tuple[int, str]:
    """A JSON webhook, signed as Twilio signs them: over the URL, which carries the body's SHA-256."""
    signed_url = f"{url}?bodySHA256={hashlib.sha256(raw).hexdigest()}"
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": compute_signature(signed_url, [], AUTH_TOKEN)}
    response = client.post(signed_url, content=raw, headers=headers)
    return response.status_code, response.text


# -- 1. correctly signed webhooks with arbitrary fields ----------------------------------------------------------

FORM_BUGS = (
    "A/B/C: NumMedia, NumSegments or ErrorCode that isdigit() but int() refuses ('²', 4301 digits) or that "
    "overflows SQLite (ErrorCode ≥ 2**63) raise instead of a 400; K: a trailing newline passes the SID and "
    "E.164 checks"
)


@pytest.mark.parametrize("url", [SMS, STATUS], ids=["sms", "status"])
@known_bugs(FORM_BUGS)
def test_signed_form_webhooks_store_all_or_nothing(
    client: TestClient, settings: Settings, url: str, with_known_bugs: bool
) -> None:
    db = settings.db_path

    @fuzz(100, shrink=not with_known_bugs)
    @given(forms(url, with_known_bugs), st.integers(0, 4))
    def check(params: Params, resend: int) -> None:
        params = fresh_sids(params)
        before, seq = snapshot(db), head(db)
        status, text = post_form(client, url, params)
        check_webhook(db, url, first_values(params), before, seq, status, text)
        if resend == 0:  # Twilio retries: the same message again is acknowledged and changes nothing
            again = snapshot(db)
            status_again, text_again = post_form(client, url, params)
            assert status_again == status and snapshot(db) == again, text_again

    check()


_SID_IN_TEXT = re.compile(r"(?<=SM|MM)[0-9a-fA-F]{32}")


def fresh_sids(params: Params) -> Params:
    """The same fields with every SID's digits made new (consistently within the request).

    Examples share one bridge, so a SID drawn twice would be a duplicate the second time, and Hypothesis would
    see a different outcome when it replays an example. Duplicates are tested on purpose instead.
    """
    mapping: dict[str, str] = {}

    def renew(match: re.Match[str]) -> str:
        old = match.group(0)
        if old not in mapping:
            new = secrets.token_hex(16)
            mapping[old] = "".join(n.upper() if o.isupper() else n for n, o in zip(new, old, strict=True))
        return mapping[old]

    return [(key, _SID_IN_TEXT.sub(renew, value)) for key, value in params]


@st.composite
def json_payloads(draw: st.DrawFn, url: str, with_known_bugs: bool) -> bytes:
    """Twilio's fields as a JSON object, some values not strings, or not an object at all."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), hostile_text(3))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner))
    fields = fresh_sids(draw(forms(url, with_known_bugs)))
    payload: Any = dict(reversed(fields))  # reversed: the first value wins, as in forms
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)))
        payload[key] = draw(st.one_of(scalars, scalars, values))  # mostly plain values, some nested ones
    if with_known_bugs and draw(st.booleans()):  # bug D: lone surrogates, as JSON escapes
        key = draw(st.sampled_from(["Body", "ProfileName"] if url == SMS else ["ErrorMessage", "RawDlrDoneDate"]))
        payload[key] = draw(hostile_text()) + draw(st.text(SURROGATES, min_size=1, max_size=2))
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
        payload = draw(values)  # not an object at all
    # No deeply nested JSON here (bug I has its own test): Hypothesis raises the recursion limit while it runs,
    # and the C decoder can then overflow the worker thread's stack (a segfault) before any RecursionError.
    return json.dumps(payload, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("url", [SMS, STATUS], ids=["sms", "status"])
@known_bugs(FORM_BUGS + "; D: a lone surrogate escape in a JSON body fails the SQLite insert")
def test_signed_json_webhooks_store_all_or_nothing(
    client: TestClient, settings: Settings, url: str, with_known_bugs: bool
) -> None:
    db = settings.db_path

    @fuzz(60, shrink=not with_known_bugs)
    @given(json_payloads(url, with_known_bugs))
    def check(raw: bytes) -> None:
        before, seq = snapshot(db), head(db)
        status, text = post_json(client, url, raw)
        if status == 200:  # the body was one object of plain values; read it as the bridge's contract says
            payload = json.loads(raw)
            form = {key: "" if value is None else str(value) for key, value in payload.items()}
        else:
            form = {}
        check_webhook(db, url, form, before, seq, status, text)

    check()


@fuzz(60)
@given(body=st.text(TEXT_CHARS, max_size=1600) | hostile_text(40))
def test_any_text_is_stored_and_streamed_verbatim(
    client: TestClient, settings: Settings, agent_token: str, body: str
) -> None:
    """An inbound text is never refused or rewritten for what it says: markup and escapes reach the console as sent."""
    start = head(settings.db_path)
    status, text = post_form(client, SMS, inbound_params(body, sid=message_sid()))
    assert status == 200, text
    (seq, kind, data), *_ = events_after(settings.db_path, start)
    assert (kind, data["body"]) == (protocol.MESSAGE_RECEIVED, body)
    assert query(settings.db_path, "SELECT body FROM messages WHERE id = ?", data["message_id"]) == [(body,)]
    with client.websocket_connect(f"/v1/stream?after={seq - 1}", headers=bearer(agent_token)) as ws:
        frame = protocol.parse_server_frame(receive_text(ws))
    assert isinstance(frame, protocol.Event) and frame.data["body"] == body


# -- 2. arbitrary raw requests -----------------------------------------------------------------------------------

CONTENT_TYPES = [FORM, f"{FORM}; charset=UTF-8", FORM.upper(), f"{FORM};;;", "application/json", "text/plain"]
CONTENT_TYPES += ["multipart/form-data; boundary=x", "", ";", "application/json; charset=utf-16", "*/*"]
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@dataclass
class RawRequest:
    method: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@st.composite
def raw_requests(draw: st.DrawFn) -> RawRequest:
    """Requests nobody signed correctly: any bytes, any content type, any signature and Content-Length."""
    path = draw(st.sampled_from(["/twilio/sms", "/twilio/sms/status", "/twilio/sms?bodySHA256=00", "/twilio/sms?a=b"]))
    form = draw(forms(SMS if path.startswith("/twilio/sms?") or path == "/twilio/sms" else STATUS, False))
    bodies = [
        st.binary(max_size=300),
        st.just(urlencode(form).encode()),
        st.just(json.dumps(dict(form)).encode()),
        st.sampled_from([b"\xff\xfe", b"a=%ff", b"Body=%ED%A0%80", b"&" * 600, b"=" * 10, b"x" * (64 * 1024 + 1)]),
        st.sampled_from([b"null", b"[]", b'{"Body": {"a": 1}}', b'"x"', b"1e999999", b"9" * 5000]),
    ]
    body = draw(st.one_of(bodies))
    headers: dict[str, str] = {}
    content_type = draw(st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), st.text(PRINTABLE, max_size=40)))
    if content_type is not None:
        headers["Content-Type"] = content_type
    signature = draw(
        st.one_of(
            st.none(),
            st.just(""),
            st.text(PRINTABLE, max_size=60),
            st.just(compute_signature(BASE + path, form, "not-the-auth-token")),  # the wrong token
            st.just(compute_signature(BASE + "/elsewhere", form, AUTH_TOKEN)),  # the wrong URL
            st.just(compute_signature(BASE + path, form[1:], AUTH_TOKEN)),  # not the fields sent
        )
    )
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    length = draw(
        st.one_of(
            st.none(),
            st.integers(0, 10**12).map(str),
            st.sampled_from(["-1", "1e3", " 5", "5 ", "0x10", ""]),
            st.text(PRINTABLE, max_size=12),
        )
    )
    if length is not None:
        headers["Content-Length"] = length
    extra = draw(
        st.dictionaries(
            st.sampled_from(["X-Twilio-Webhooks-Signature-Settings", "I-Twilio-Idempotency-Token", "Host"]),
            st.one_of(st.sampled_from(["algorithm=HMAC_SHA256", "algorithm=MD5,key=x", ","]), st.text(PRINTABLE)),
        )
    )
    headers.update(extra)
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "PATCH", "DELETE"]))
    return RawRequest(method, path, body, headers)


def test_unsigned_or_badly_signed_requests_are_refused(client: TestClient, settings: Settings) -> None:
    db = settings.db_path

    @fuzz(150)
    @given(raw_requests())
    def check(request: RawRequest) -> None:
        before = snapshot(db)
        response = client.request(request.method, request.path, content=request.body, headers=request.headers)
        assert response.status_code in (400, 403, 405, 413, 415), (response.status_code, response.text)
        assert_one_line_refusal(response.status_code, response.text)
        assert snapshot(db) == before

    check()


def hosts(with_known_bugs: bool) -> st.SearchStrategy[str]:
    """Host headers; the bridge signs against them when SWITCHBOARD_PUBLIC_URL is unset."""
    names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
    valid = st.one_of(names, st.tuples(names, st.integers(0, 65535)).map(lambda hp: f"{hp[0]}:{hp[1]}"))
    odd_alphabet = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":[]")
    hostile = ["example.com:abc", "example.com:99999", "[::1", "::1", "[::1]:", "a]b", "example.com:", "h:-1"]
    if not with_known_bugs:  # bug F: a port that is not a number, or a bracket, fails urlsplit
        return st.one_of(valid, st.text(odd_alphabet, min_size=1, max_size=20))
    return st.one_of(valid, st.text(PRINTABLE, min_size=1, max_size=20), st.sampled_from(hostile))


@known_bugs("F: without SWITCHBOARD_PUBLIC_URL, a Host with a bad port or bracket makes urlsplit raise (500)")
def test_any_host_header_without_a_public_url(settings: Settings, agent_token: str, with_known_bugs: bool) -> None:
    """Behind no proxy the bridge signs against the Host header, which any client can set."""
    db = settings.db_path
    with TestClient(create_app(settings.with_(public_url=None)), base_url=BASE) as client:

        @fuzz(100, shrink=not with_known_bugs)
        @given(hosts(with_known_bugs), st.booleans())
        def check(host: str, sign: bool) -> None:
            before, seq = snapshot(db), head(db)
            params = inbound_params(sid=message_sid())
            body, headers = signed(f"http://{host}/twilio/sms", params)
            if not sign:
                headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
            response = client.post("/twilio/sms", content=body, headers={**headers, "Host": host})
            assert response.status_code in (200, 400, 403), (response.status_code, response.text)
            check_webhook(db, SMS, first_values(params), before, seq, response.status_code, response.text)

        check()


# -- 3. arbitrary frames on the stream ---------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def receive_text(ws: WebSocketTestSession, timeout: float = RECEIVE_TIMEOUT) -> str:
    """The next text frame; fails (rather than hangs) if the stream goes silent or closes."""

    async def receive() -> Message:
        with anyio.fail_after(timeout):
            return await ws._send_rx.receive()

    try:
        message = ws.portal.call(receive)
    except TimeoutError:
        raise AssertionError(f"the stream sent nothing for {timeout} s: did it die?") from None
    if message["type"] == "websocket.close":
        raise AssertionError(f"the stream closed: {message.get('code')} {message.get('reason')!r}")
    assert message["type"] == "websocket.send", message
    text = message.get("text")
    assert isinstance(text, str), "the bridge sends text frames only"
    return text


def read_frame(ws: WebSocketTestSession, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
    """A frame as a console reads it: valid UTF-8 on the wire, one JSON object."""
    text = receive_text(ws, timeout)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise AssertionError(f"the bridge sent a frame that is not UTF-8 (a lone surrogate): {text!r}") from None
    frame = json.loads(text)
    assert isinstance(frame, dict)
    if frame.get("type") == protocol.RESULT and not frame.get("ok"):
        assert frame["error"]["code"] != "internal_error", f"a command hit a server exception: {frame}"
    return frame


@contextmanager
def console(client: TestClient, token: str, after: int) -> Iterator[WebSocketTestSession]:
    with client.websocket_connect(f"/v1/stream?after={after}", headers=bearer(token)) as ws:
        frame = read_frame(ws)
        assert (frame["type"], frame["cursor"]) == (protocol.CAUGHT_UP, after)
        yield ws


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text(3))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)


def client_frames(with_known_bugs: bool) -> st.SearchStrategy[str | bytes]:
    """What a console could send: noise, near-miss commands and signals, real sends, binary, oversized frames."""
    text = hostile_text(3, surrogates=with_known_bugs)
    ids = st.one_of(st.text(PRINTABLE, min_size=1, max_size=12), text, st.just("x" * 129), JSON_VALUES)
    send_args = st.fixed_dictionaries(
        {},
        optional={
            "to": st.one_of(st.sampled_from([CUSTOMER, "+14155550199", "4155550123"]), text),
            "from_number": st.one_of(st.just(OUR_NUMBER), text),
            "conversation_id": st.one_of(st.just("CV" + "0" * 32), text, JSON_VALUES),
            "body": st.one_of(hostile_text(surrogates=with_known_bugs), st.just("x" * 1601), JSON_VALUES),
            "media_urls": st.one_of(st.lists(st.one_of(st.just("https://x/a.png"), text), max_size=11), JSON_VALUES),
        },
    )
    a_send = st.fixed_dictionaries(  # reaches the REST call (nothing listens there, so it fails cleanly)
        {
            "type": st.just("command"),
            "id": st.text(PRINTABLE, min_size=1, max_size=8),
            "command": st.just("send_sms"),
            "args": st.fixed_dictionaries(
                {
                    "to": st.just(CUSTOMER),
                    "from_number": st.just(OUR_NUMBER),
                    "body": hostile_text(surrogates=with_known_bugs),
                }
            ),
        }
    )
    command = st.fixed_dictionaries(
        {"type": st.just("command")},
        optional={
            "id": ids,
            "command": st.one_of(st.just("send_sms"), text, JSON_VALUES),
            "args": st.one_of(send_args, JSON_VALUES),
        },
    )
    signals = st.sampled_from(sorted(protocol.SIGNALS))
    signal = st.fixed_dictionaries(
        {
            "type": st.just("signal"),
            "conversation_id": st.one_of(st.just("CV" + "1" * 32), text.filter(bool), st.just("c" * 129), JSON_VALUES),
            # bug M: a list or object as the signal is unhashable, and the receive loop dies of the TypeError
            "signal": st.one_of(signals, signals, signals, text, JSON_VALUES if with_known_bugs else JSON_SCALARS),
        },
        optional={"agent": st.just("someone-else")},  # the bridge says who sent it, whatever the frame claims
    )
    a_signal = st.fixed_dictionaries(  # relayed to the other consoles, markup and escapes included
        {
            "type": st.just("signal"),
            "conversation_id": st.one_of(st.just("CV" + "1" * 32), text.filter(lambda t: 0 < len(t) <= 128)),
            "signal": signals,
        }
    )
    noise = st.dictionaries(st.one_of(st.just("type"), st.text(max_size=6)), JSON_VALUES, max_size=4)
    # No deeply nested JSON (bug J has its own test): see json_payloads for why.
    objects = st.one_of(command, command, signal, a_signal, a_signal, a_send, noise, JSON_VALUES)
    frames: st.SearchStrategy[str | bytes] = st.one_of(
        objects.map(lambda obj: json.dumps(obj, ensure_ascii=not surrogate_free(obj))),
        objects.map(lambda obj: json.dumps(obj, ensure_ascii=not surrogate_free(obj))),
        objects.map(lambda obj: json.dumps(obj, ensure_ascii=not surrogate_free(obj))),
        st.binary(max_size=40),
        hostile_text(8),
        st.just('"' + "x" * protocol.MAX_FRAME_BYTES + '"'),
    )
    return frames


def surrogate_free(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expected_reply(frame: str | bytes) -> tuple[str, str | None]:
    """What the sender is owed: ("error", code), ("result", id) or ("signal", None), read by the protocol module."""
    if isinstance(frame, bytes):
        return "error", "bad_frame"
    try:
        parsed = protocol.parse_client_frame(frame)
    except protocol.ProtocolError as exc:
        return "error", exc.code
    except TypeError:  # bug M: the bridge should say bad_signal; any error frame will do
        return "error", None
    if isinstance(parsed, protocol.Signal):
        return "signal", None
    return "result", parsed.id


@known_bugs(
    "M: a list or object as a signal raises TypeError and the stream goes silent; "
    "G: a signal whose conversation_id is a lone surrogate escape is relayed as a frame that is not UTF-8, which "
    "drops every other console on a real server; H: a lone surrogate in send_sms args is an internal_error"
)
def test_any_frame_gets_an_answer_and_the_stream_lives_on(
    client: TestClient, settings: Settings, agent_token: str, with_known_bugs: bool
) -> None:
    db = open_database(settings.db_path)
    other_token = add_agent(db, "ben")
    db.close()
    counter = iter(range(10**6))

    @fuzz(60, shrink=not with_known_bugs)
    @given(client_frames(with_known_bugs))
    def check(frame: str | bytes) -> None:
        n = next(counter)
        kind, detail = expected_reply(frame)
        start = head(settings.db_path)
        with console(client, agent_token, start) as ana, console(client, other_token, start) as ben:
            if isinstance(frame, bytes):
                ana.send_bytes(frame)
            else:
                ana.send_text(frame)
            sentinel = f"sentinel-{n}"
            ana.send_text(json.dumps({"type": sentinel}))
            # Frames are handled in order, so the reply to the frame (but for a command's result) precedes this.
            errors = []
            result = None
            while True:
                reply = read_frame(ana)
                if reply.get("type") == protocol.ERROR and sentinel in reply.get("message", ""):
                    break
                if reply.get("type") == protocol.ERROR:
                    errors.append(reply)
                if reply.get("type") == protocol.RESULT:
                    result = reply
            if kind == "error":
                assert len(errors) == 1, errors
                assert detail is None or errors[0]["code"] == detail, (errors, detail)
            else:
                assert errors == []
            body = f"still streaming {n}"
            status, text = post_form(client, SMS, inbound_params(body))
            assert status == 200, text
            streamed = False
            while not streamed or (kind == "result" and result is None):  # the event, and a command's result
                reply = read_frame(ana)
                if reply.get("type") == protocol.RESULT:
                    result = reply
                streamed = streamed or reply.get("data", {}).get("body") == body
            if kind == "result":
                assert result is not None and result["id"] == detail
            relayed = []
            while True:  # so does everyone else, after the relayed signal if it was one
                reply = read_frame(ben)
                if reply.get("type") == protocol.SIGNAL:
                    relayed.append(reply)
                if reply.get("data", {}).get("body") == body:
                    break
            if kind == "signal":
                assert isinstance(frame, str)
                sent = json.loads(frame)
                assert relayed == [
                    {
                        "type": "signal",
                        "conversation_id": sent["conversation_id"],
                        "signal": sent["signal"],
                        "agent": "ana",
                    }
                ]
            else:
                assert relayed == []

    check()


# -- 4. arbitrary cursors and credentials on the upgrade ---------------------------------------------------------


@st.composite
def stream_requests(draw: st.DrawFn, token: str, with_known_bugs: bool) -> tuple[str, dict[str, str]]:
    afters = st.one_of(
        st.sampled_from(["", "0", "1", "-1", "+1", " 1", "1 ", "0x10", "1e3", "9" * 18, "9" * 19, "٣", "１", "0" * 18]),
        st.integers(-5, 10**20).map(str),
        hostile_text(3),
    )
    if not with_known_bugs:
        afters = afters.filter(lambda after: not trips_digit_bug(after))
    pairs = [("after", after) for after in draw(st.lists(afters, max_size=2))]
    pairs += draw(st.lists(st.tuples(st.text(max_size=5), hostile_text(2)), max_size=2))
    query = urlencode(pairs)
    raw = ["after=%FF", "after=%ED%A0%80", "after", "after=1&after=x", "after=%EF%BC%91", "%", "&&&", "after=%0A1"]
    if with_known_bugs:  # bug E
        raw += ["after=%C2%B2", "after=%E2%91%A0"]
    query = draw(st.one_of(st.just(query), st.sampled_from(raw)))
    valid = st.sampled_from([f"Bearer {token}", f"bearer   {token}  ", f"BEARER {token}"])
    authorization = draw(
        st.one_of(
            valid,
            valid,
            st.none(),
            st.sampled_from([f"Bearer {token}x", f"Bearer {token[:-1]}", f"Bearer {token.upper()}"]),
            st.sampled_from(["Bearer", "Bearer ", "Basic YW5hOnB3", f"Token {token}", f"{token}", "Bearer \t"]),
            st.text(PRINTABLE, max_size=40).map(lambda text: "Bearer " + text),
            st.text(PRINTABLE, max_size=40),
        )
    )
    headers = {} if authorization is None else {"Authorization": authorization}
    return f"/v1/stream?{query}" if query else "/v1/stream", headers


@known_bugs("E: after= with a digit that isdigit() but int() refuses ('²', '①') raises during the handshake")
def test_any_cursor_or_credential_is_refused_or_streamed(
    client: TestClient, settings: Settings, agent_token: str, with_known_bugs: bool
) -> None:
    status, text = post_form(client, SMS, inbound_params("hello"))
    assert status == 200, text

    @fuzz(150, shrink=not with_known_bugs)
    @given(stream_requests(agent_token, with_known_bugs))
    def check(request: tuple[str, dict[str, str]]) -> None:
        path, headers = request
        try:
            with client.websocket_connect(path, headers=headers) as ws:
                frame = read_frame(ws)
        except WebSocketDenialResponse as refused:
            assert_one_line_refusal(refused.status_code, refused.text)
            return
        assert agent_token in headers.get("Authorization", ""), "accepted without the agent's token"
        assert frame["type"] == protocol.CAUGHT_UP or "seq" in frame, frame

    check()


# -- 5. server exceptions fail the tests -------------------------------------------------------------------------


def test_server_exceptions_fail_the_test_instead_of_becoming_a_500(client: TestClient) -> None:
    """Every test here asserts "< 500"; the client must also raise any server exception, or a crash would pass."""
    assert getattr(client._transport, "raise_server_exceptions", None) is True

    async def crash(request: Request) -> Response:
        raise RuntimeError("a server exception")

    with TestClient(Starlette(routes=[Route("/", crash)])) as default_client:
        with pytest.raises(RuntimeError, match="a server exception"):
            default_client.get("/")


# -- each known bug, pinned to one input -------------------------------------------------------------------------


def replace(params: Params, **values: str) -> Params:
    out = [(k, values.get(k, v)) for k, v in params]
    return out + [(k, v) for k, v in values.items() if all(k != key for key, _ in params)]


def assert_refused_or_stored(client: TestClient, settings: Settings, url: str, params: Params) -> None:
    db = settings.db_path
    before, seq = snapshot(db), head(db)
    status, text = post_form(client, url, params)
    check_webhook(db, url, first_values(params), before, seq, status, text)


@pytest.mark.parametrize("num_media", ["²", "①", "9" * 4301])
def test_bug_a_num_media_that_int_refuses(client: TestClient, settings: Settings, num_media: str) -> None:
    assert_refused_or_stored(client, settings, SMS, replace(inbound_params(), NumMedia=num_media))


@pytest.mark.parametrize("segments", ["²", "9" * 4301])
def test_bug_b_num_segments_that_int_refuses(client: TestClient, settings: Settings, segments: str) -> None:
    assert_refused_or_stored(client, settings, SMS, replace(inbound_params(), NumSegments=segments))


@pytest.mark.parametrize("code", ["²", "9" * 4301, str(2**63), "9" * 20])
def test_bug_c_error_code_out_of_range(client: TestClient, settings: Settings, code: str) -> None:
    params = status_params(message_sid(), "failed") + [("ErrorCode", code)]
    assert_refused_or_stored(client, settings, STATUS, params)


@pytest.mark.parametrize(("url", "field"), [(SMS, "Body"), (STATUS, "ErrorMessage")])
def test_bug_d_lone_surrogate_in_a_json_webhook(client: TestClient, settings: Settings, url: str, field: str) -> None:
    params = inbound_params() if url == SMS else status_params(message_sid(), "failed", error_code=30003)
    payload = {**first_values(params), field: "caf\ud800"}
    db = settings.db_path
    before, seq = snapshot(db), head(db)
    status, text = post_json(client, url, json.dumps(payload).encode())  # ensure_ascii: the escape is "\ud800"
    check_webhook(db, url, {}, before, seq, status, text)
    assert status != 200, "a body that cannot be stored as sent is refused"


@pytest.mark.parametrize("body", [b"[" * 50000, b'{"a":' * 10000 + b"1" + b"}" * 10000])
def test_bug_i_deeply_nested_json_webhook(client: TestClient, settings: Settings, body: bytes) -> None:
    before = snapshot(settings.db_path)
    response = client.post("/twilio/sms", content=body, headers={"Content-Type": "application/json"})
    assert_one_line_refusal(response.status_code, response.text)
    assert snapshot(settings.db_path) == before


@pytest.mark.parametrize("host", ["example.com:abc", "example.com:99999", "[::1"])
def test_bug_f_bad_host_header_without_public_url(settings: Settings, agent_token: str, host: str) -> None:
    with TestClient(create_app(settings.with_(public_url=None)), base_url=BASE) as client:
        body, headers = signed(f"http://{host}/twilio/sms", inbound_params())
        response = client.post("/twilio/sms", content=body, headers={**headers, "Host": host})
    assert_one_line_refusal(response.status_code, response.text)


@pytest.mark.parametrize("field", ["MessageSid", "From", "To"])
def test_bug_k_trailing_newline_in_sid_or_number(client: TestClient, settings: Settings, field: str) -> None:
    params = inbound_params()
    params = [(k, v) for k, v in params if k not in ("SmsSid", "SmsMessageSid")]
    params = replace(params, **{field: first_values(params)[field] + "\n"})
    before = snapshot(settings.db_path)
    status, text = post_form(client, SMS, params)
    assert_one_line_refusal(status, text)
    assert snapshot(settings.db_path) == before


@pytest.mark.parametrize("after", ["%C2%B2", "%E2%91%A0"])
def test_bug_e_cursor_that_int_refuses(client: TestClient, agent_token: str, after: str) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect(f"/v1/stream?after={after}", headers=bearer(agent_token)):
            pass  # pragma: no cover - refused
    assert refused.value.status_code == 400


def test_bug_j_deeply_nested_frame(client: TestClient, agent_token: str) -> None:
    with console(client, agent_token, 0) as ws:
        ws.send_text("[" * 100000)
        reply = read_frame(ws, timeout=1.0)  # the answer takes milliseconds; the bug is silence
        assert reply["type"] == protocol.ERROR


def test_bug_m_unhashable_signal(client: TestClient, agent_token: str) -> None:
    with console(client, agent_token, 0) as ws:
        ws.send_text(json.dumps({"type": "signal", "conversation_id": "CV1", "signal": ["typing"]}))
        reply = read_frame(ws, timeout=1.0)  # the answer takes milliseconds; the bug is silence
        assert (reply["type"], reply["code"]) == (protocol.ERROR, "bad_signal")


def test_bug_g_signal_with_a_lone_surrogate(client: TestClient, settings: Settings, agent_token: str) -> None:
    db = open_database(settings.db_path)
    other = add_agent(db, "ben")
    db.close()
    with console(client, agent_token, 0) as ana, console(client, other, 0) as ben:
        ana.send_text('{"type": "signal", "conversation_id": "CV\\ud800", "signal": "typing"}')
        status, text = post_form(client, SMS, inbound_params("after the signal"))
        assert status == 200, text
        while read_frame(ben).get("data", {}).get("body") != "after the signal":
            pass


@pytest.mark.parametrize(
    "args",
    [
        {"to": CUSTOMER, "from_number": OUR_NUMBER, "body": "caf\ud800"},
        {"conversation_id": "CV\ud800", "body": "hi"},
        {"to": CUSTOMER, "from_number": OUR_NUMBER, "body": "hi", "media_urls": ["https://x/\ud800"]},
    ],
)
def test_bug_h_lone_surrogate_in_command_args(client: TestClient, agent_token: str, args: dict[str, Any]) -> None:
    with console(client, agent_token, 0) as ws:
        ws.send_text(json.dumps({"type": "command", "id": "c-1", "command": "send_sms", "args": args}))
        while (frame := read_frame(ws)).get("type") != protocol.RESULT:
            pass
        assert frame["ok"] is False and frame["error"]["code"] == "bad_args"


def test_bug_l_cursor_beyond_the_head_loses_events(client: TestClient, agent_token: str) -> None:
    try:
        with client.websocket_connect("/v1/stream?after=1000", headers=bearer(agent_token)) as ws:
            assert read_frame(ws)["type"] == protocol.CAUGHT_UP
            status, text = post_form(client, SMS, inbound_params("the next text"))
            assert status == 200, text
            ws.send_text("not json")  # frames are queued in order: the event, if sent, comes before this reply
            frame = read_frame(ws)
            assert frame.get("data", {}).get("body") == "the next text", f"the event was dropped; got {frame}"
    except WebSocketDenialResponse as refused:
        assert_one_line_refusal(refused.status_code, refused.text)


@pytest.mark.parametrize("path", ["/twilio/sms", "/twilio/sms/status", "/twilio/voice"])
def test_bug_o_a_body_hash_that_is_not_ascii(client: TestClient, path: str) -> None:
    """``bodySHA256`` comes from the query string, before any signature is checked: a non-ASCII one made
    ``hmac.compare_digest`` raise TypeError (str of non-ASCII), a 500 for anyone, with no credentials."""
    for query in ("bodySHA256=%C3%A9", "bodySHA256=%FF", "bodySHA256=" + "%E2%82%AC" * 64):
        response = client.post(
            f"{path}?{query}",
            content=b'{"a":"b"}',
            headers={"Content-Type": "application/json", "X-Twilio-Signature": "x"},
        )
        assert response.status_code == 403, (query, response.status_code, response.text)


# -- found along the way -----------------------------------------------------------------------------------------


async def test_bug_n_store_close_waits_for_reads_in_flight(tmp_path: Path) -> None:
    """At shutdown the lifespan cancels the revocation watcher, but cancelling ``asyncio.to_thread`` leaves its
    read running in the worker thread; ``close()`` then closes that thread's connection under it (a segfault)."""
    store = SqliteStore(tmp_path / "bridge.db")
    await store.start()
    reading, done = threading.Event(), threading.Event()

    def slow_read(conn: sqlite3.Connection) -> int:
        try:
            reading.set()
            time.sleep(0.3)
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            done.set()

    read = asyncio.ensure_future(store.read(slow_read))
    await asyncio.to_thread(reading.wait)
    read.cancel()  # as the lifespan cancels the watcher
    await store.close()
    finished_before_close_returned = done.is_set()
    await asyncio.to_thread(done.wait)
    assert finished_before_close_returned, "close() returned while a read was still using a reader connection"
