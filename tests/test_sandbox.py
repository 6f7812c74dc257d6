"""The sandbox against independent oracles: the twilio SDK, its signature validator, Twilio's OpenAPI spec."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from bridge.sandbox.app import SandboxConfig, create_sandbox_app, serve
from bridge.sandbox.customers import NUDGES, CustomerSimulator
from bridge.sandbox.messaging import Messaging
from bridge.sandbox.rest import Form
from bridge.sandbox.webhooks import WebhookPoster
from tests.sandbox_support.oai import schema_properties, twilio_openapi, validate_exchange
from tests.sandbox_support.receiver import Answer, Received, WebhookReceiver
from tests.sandbox_support.server import bound_socket, run_app_in_thread, socket_url

ACCOUNT_SID = "AC" + "5e" * 16
TOKEN = "sandbox-test-auth-token"
API_KEY = "SK" + "7a" * 16
API_SECRET = "sandbox-test-api-secret"
SERVICE = "MG" + "3c" * 16
SUPPORT = "+14155550100"
OTHER_SUPPORT = "+14155550101"
CUSTOMER = "+12125550123"
MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-f]{32}$")
STATUS_PARAMS = {
    "SmsSid",
    "SmsStatus",
    "MessageStatus",
    "To",
    "MessageSid",
    "AccountSid",
    "From",
    "ApiVersion",
}
INBOUND_PARAMS = {
    "ToCountry",
    "ToState",
    "SmsMessageSid",
    "NumMedia",
    "ToCity",
    "FromZip",
    "SmsSid",
    "FromState",
    "SmsStatus",
    "FromCity",
    "Body",
    "FromCountry",
    "To",
    "ToZip",
    "NumSegments",
    "MessageSid",
    "AccountSid",
    "From",
    "ApiVersion",
}


def config(**changes: Any) -> SandboxConfig:
    """A sandbox with test credentials, delays of a few milliseconds and no random failures."""
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": TOKEN,
        "api_key_sid": API_KEY,
        "api_key_secret": API_SECRET,
        "support_numbers": (SUPPORT, OTHER_SUPPORT),
        "accepted_delay": 0.005,
        "sent_delay": 0.01,
        "delivered_delay": 0.01,
        "customer_reply_delay": 0.01,
        "undelivered_share": 0.0,
        "webhook_timeout": 5.0,
    }
    values.update(changes)
    return SandboxConfig(**values)


def signature_ok(request: Received, token: str = TOKEN) -> bool:
    """Twilio's own validator on the URL the receiver saw and the form it got."""
    validator = RequestValidator(token)
    return bool(validator.validate(request.url, request.form, request.headers.get("x-twilio-signature", "")))


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    hooks = WebhookReceiver()
    with run_app_in_thread(hooks.app()) as url:
        yield hooks, url


@dataclass
class Harness:
    """Sandboxes for one test, SDK clients whose every response is recorded, and the shared receiver."""

    stack: contextlib.ExitStack
    receiver: WebhookReceiver
    receiver_url: str
    responses: list[requests.Response] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"/t{uuid.uuid4().hex[:8]}")

    def sandbox(self, cfg: SandboxConfig | None = None, **changes: Any) -> str:
        sock = bound_socket()
        base = cfg or config(**changes)
        if base.public_url is None:
            base = dataclasses.replace(base, public_url=socket_url(sock))
        return self.stack.enter_context(run_app_in_thread(create_sandbox_app(base), sock=sock))

    def client(
        self,
        base_url: str,
        username: str = ACCOUNT_SID,
        password: str = TOKEN,
        account_sid: str | None = None,
    ) -> Client:
        http = TwilioHttpClient(request_hooks={"response": [self._record]})
        self.stack.callback(_close_session, http)
        client = Client(username, password, account_sid=account_sid, http_client=http)
        client.api.base_url = base_url
        return client

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses.append(response)

    def hook(self, name: str) -> str:
        """A URL on the receiver unique to this test."""
        return f"{self.receiver_url}{self.prefix}/{name}"

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"


def _close_session(http: TwilioHttpClient) -> None:
    if http.session is not None:
        http.session.close()


@pytest.fixture
def harness(receiver: tuple[WebhookReceiver, str]) -> Iterator[Harness]:
    with contextlib.ExitStack() as stack:
        h = Harness(stack=stack, receiver=receiver[0], receiver_url=receiver[1])
        yield h
    # Every successful REST answer the SDK got in this test must match Twilio's description of that operation.
    for response in h.responses:
        if 200 <= response.status_code < 300:
            validate_exchange(response)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


# --- REST: create, fetch, shapes ----------------------------------------------------------------------------


def test_create_and_fetch_return_twilios_message_resource(harness: Harness) -> None:
    client = harness.client(harness.sandbox())
    message = client.messages.create(to=CUSTOMER, from_=SUPPORT, body="Your order has shipped 📦")
    assert MESSAGE_SID.match(message.sid) and message.sid.startswith("SM")
    assert (message.status, message.direction, message.account_sid) == ("queued", "outbound-api", ACCOUNT_SID)
    assert (message.to, message.from_, message.body) == (CUSTOMER, SUPPORT, "Your order has shipped 📦")
    assert message.num_segments == "1" and message.num_media == "0"
    assert message.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message.sid}.json"
    assert message.date_created is not None and message.date_created.tzinfo is not None
    fetched = client.messages(message.sid).fetch()
    assert fetched.sid == message.sid and fetched.body == message.body

    created = harness.responses[0]
    assert created.status_code == 201
    payload = created.json()
    # Exactly the schema's fields: none missing (also enforced by the OpenAPI check), none invented.
    assert set(payload) == schema_properties("api.v2010.account.message")
    assert payload["date_created"].endswith(" +0000")
    assert parsedate_to_datetime(payload["date_created"]).tzinfo is not None
    media_list = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message.sid}/Media.json"
    assert payload["subresource_uris"]["media"] == media_list
    assert created.headers["Twilio-Request-Id"].startswith("RQ")


def test_media_urls_make_an_mms(harness: Harness) -> None:
    url = harness.sandbox()
    client = harness.client(url)
    message = client.messages.create(
        to=CUSTOMER, from_=SUPPORT, media_url=[f"{url}/sandbox/media/a.png", f"{url}/sandbox/media/b.png"]
    )
    assert message.sid.startswith("MM") and message.num_media == "2" and message.body == ""


def test_the_openapi_oracle_is_not_vacuous(harness: Harness) -> None:
    """A doctored answer fails validation: wrong enum, a non-RFC-2822 date, a missing field."""
    client = harness.client(harness.sandbox())
    client.messages.create(to=CUSTOMER, from_=SUPPORT, body="hi")
    good = harness.responses[-1]
    validate_exchange(good)
    for change in ({"status": "teleported"}, {"date_created": "2024-01-01T00:00:00Z"}, {"num_segments": 1}):
        bad = requests.Response()
        bad.status_code = good.status_code
        bad.headers = good.headers
        bad.request = good.request
        bad._content = httpx.Response(201, json={**good.json(), **change}).content
        with pytest.raises(Exception, match="InvalidData|not valid|format"):
            validate_exchange(bad)
    missing = {k: v for k, v in good.json().items() if k != "price"}
    bad = requests.Response()
    bad.status_code, bad.headers, bad.request = good.status_code, good.headers, good.request
    bad._content = httpx.Response(201, json=missing).content
    with pytest.raises(Exception, match="price"):
        validate_exchange(bad)
    assert twilio_openapi() is twilio_openapi()  # built once per process


# --- REST: errors, magic numbers, authentication ------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[str]:
    """One sandbox for tests that only provoke errors (nothing is stored by a refused request)."""
    with run_app_in_thread(create_sandbox_app(config(messaging_service_sid=SERVICE))) as url:
        yield url


@pytest.mark.parametrize(
    ("to", "from_", "code"),
    [
        ("+15005550001", SUPPORT, 21211),
        ("+15005550002", SUPPORT, 21612),
        ("+15005550003", SUPPORT, 21408),
        ("+15005550004", SUPPORT, 21610),
        ("+15005550009", SUPPORT, 21614),
        (CUSTOMER, "+15005550001", 21212),
        (CUSTOMER, "+15005550007", 21606),
        (CUSTOMER, "+15005550008", 21611),
    ],
)
def test_magic_test_numbers_fail_as_documented(
    harness: Harness, shared_sandbox: str, to: str, from_: str, code: int
) -> None:
    client = harness.client(shared_sandbox)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=to, from_=from_, body="magic")
    assert (raised.value.status, raised.value.code) == (400, code)
    assert raised.value.msg.startswith("Unable to create record: ")


def test_magic_from_number_passes(harness: Harness, shared_sandbox: str) -> None:
    message = harness.client(shared_sandbox).messages.create(to=CUSTOMER, from_="+15005550006", body="ok")
    assert message.status == "queued" and message.from_ == "+15005550006"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"to": "", "from_": SUPPORT, "body": "hi"}, 21604),
        ({"to": CUSTOMER, "body": "hi"}, 21603),
        ({"to": CUSTOMER, "from_": SUPPORT}, 21602),
        ({"to": CUSTOMER, "from_": SUPPORT, "body": "x" * 1601}, 21617),
        ({"to": "12345", "from_": SUPPORT, "body": "hi"}, 21211),
        ({"to": CUSTOMER, "from_": "not a number", "body": "hi"}, 21212),
        ({"to": CUSTOMER, "from_": "+14155550188", "body": "hi"}, 21606),
        ({"to": CUSTOMER, "messaging_service_sid": "MG123", "body": "hi"}, 21705),
        ({"to": CUSTOMER, "messaging_service_sid": "MG" + "0" * 32, "body": "hi"}, 21701),
    ],
)
def test_invalid_sends_get_twilios_error_codes(
    harness: Harness, shared_sandbox: str, params: dict[str, Any], code: int
) -> None:
    with pytest.raises(TwilioRestException) as raised:
        harness.client(shared_sandbox).messages.create(**params)
    assert (raised.value.status, raised.value.code) == (400, code)


def test_body_of_exactly_1600_characters_is_accepted(harness: Harness, shared_sandbox: str) -> None:
    message = harness.client(shared_sandbox).messages.create(to=CUSTOMER, from_=SUPPORT, body="y" * 1600)
    assert len(message.body) == 1600


def test_wrong_credentials_are_20003(harness: Harness, shared_sandbox: str) -> None:
    for username, password in ((ACCOUNT_SID, "wrong"), (API_KEY, "wrong"), ("AC" + "0" * 32, TOKEN)):
        client = harness.client(shared_sandbox, username=username, password=password, account_sid=ACCOUNT_SID)
        with pytest.raises(TwilioRestException) as raised:
            client.messages.create(to=CUSTOMER, from_=SUPPORT, body="hi")
        assert (raised.value.status, raised.value.code) == (401, 20003)
    with httpx.Client(base_url=shared_sandbox) as http:
        answer = http.get(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
        assert answer.status_code == 401
        assert answer.json() == {
            "code": 20003,
            "detail": "Your AccountSid or AuthToken was incorrect.",
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401,
        }
        assert answer.headers["www-authenticate"].startswith("Basic")


def test_good_credentials_for_another_accounts_path_are_20404(harness: Harness, shared_sandbox: str) -> None:
    other = "AC" + "9" * 32
    client = harness.client(shared_sandbox, account_sid=other)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=CUSTOMER, from_=SUPPORT, body="hi")
    assert (raised.value.status, raised.value.code) == (404, 20404)
    assert f"/2010-04-01/Accounts/{other}/Messages.json" in raised.value.msg


def test_unknown_message_and_unknown_resource_are_20404(harness: Harness, shared_sandbox: str) -> None:
    with pytest.raises(TwilioRestException) as raised:
        harness.client(shared_sandbox).messages("SM" + "0" * 32).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    with httpx.Client(base_url=shared_sandbox, auth=(ACCOUNT_SID, TOKEN)) as http:
        answer = http.get(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings.json")
        assert answer.status_code == 404 and answer.json()["code"] == 20404
        assert set(answer.json()) == {"code", "message", "more_info", "status"}  # never `type` + `title`


def test_api_key_authenticates_with_the_account_in_the_path(harness: Harness, shared_sandbox: str) -> None:
    client = harness.client(shared_sandbox, username=API_KEY, password=API_SECRET, account_sid=ACCOUNT_SID)
    message = client.messages.create(to=CUSTOMER, from_=SUPPORT, body="sent with an API key")
    assert message.account_sid == ACCOUNT_SID
    assert client.messages(message.sid).fetch().sid == message.sid


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"media_url": [f"https://example.com/{n}.png" for n in range(11)]}, 21623),
        ({"media_url": ["not a url"]}, 21620),
        ({"media_url": ["ftp://example.com/a.png"]}, 21620),
        ({"media_url": ["https:///a.png"]}, 21620),
        ({"to": SUPPORT, "body": "a note to self"}, 21266),
    ],
    ids=["eleven-media", "media-not-a-url", "media-not-http", "media-without-host", "to-is-from"],
)
def test_bad_media_and_texts_to_oneself_are_refused(
    harness: Harness, shared_sandbox: str, params: dict[str, Any], code: int
) -> None:
    # Twilio documents 21623 (more than 10 media), 21620 (a media URL that is not http(s)) and 21266
    # ("'To' and 'From' numbers cannot be the same").
    send = {"to": CUSTOMER, "from_": SUPPORT, **params}
    with pytest.raises(TwilioRestException) as raised:
        harness.client(shared_sandbox).messages.create(**send)
    assert (raised.value.status, raised.value.code) == (400, code)


def test_ten_media_urls_are_the_most_one_text_carries(harness: Harness, shared_sandbox: str) -> None:
    pictures = [f"https://example.com/{n}.png" for n in range(10)]
    message = harness.client(shared_sandbox).messages.create(to=CUSTOMER, from_=SUPPORT, media_url=pictures)
    assert message.num_media == "10"


def test_malformed_requests_get_twilios_4xx_not_a_500(shared_sandbox: str) -> None:
    messages = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    with httpx.Client(base_url=shared_sandbox) as http:
        # Not ASCII, so not base64: base64 says so with a plain ValueError, not binascii.Error.
        answer = http.get(messages, headers={b"Authorization": "Basic \u00e9\u00e9\u00e9\u00e9".encode("latin-1")})
        assert (answer.status_code, answer.json()["code"]) == (401, 20003)
    with httpx.Client(base_url=shared_sandbox, auth=(ACCOUNT_SID, TOKEN)) as http:
        too_many = "&".join(f"x{n}=1" for n in range(1001))
        answer = http.get(f"{messages}?{too_many}")
        assert (answer.status_code, answer.json()["code"]) == (400, 20001)
        # Dates a day from the ends of datetime's range: valid ISO 8601, but UTC is past the end.
        for name, value in (("DateSent", "0001-01-01T00:00:00+01:00"), ("DateSent>", "9999-12-31T23:00:00-05:00")):
            answer = http.get(messages, params={name: value})
            assert (answer.status_code, answer.json()["code"]) == (400, 20001), (name, value)
            assert set(answer.json()) == {"code", "message", "more_info", "status"}


def test_a_sandbox_bug_is_logged_and_answered_as_twilios_500(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Messaging, sid: str) -> None:
        raise RuntimeError("a bug in the sandbox")

    monkeypatch.setattr(Messaging, "get", broken)
    url = harness.sandbox()
    with caplog.at_level(logging.ERROR, logger="switchboard.sandbox"):
        with pytest.raises(TwilioRestException) as raised:
            harness.client(url).messages("SM" + "0" * 32).fetch()
        with httpx.Client(base_url=url, auth=(ACCOUNT_SID, TOKEN)) as http:
            answer = http.get(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/SM{'0' * 32}.json")
    assert (raised.value.status, raised.value.code) == (500, 20500)
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "code": 20500,
        "message": "An internal server error has occurred",
        "more_info": "https://www.twilio.com/docs/errors/20500",
        "status": 500,
    }
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 2 and "fetch_message" in logged[0].getMessage()


def test_unsupported_methods_on_known_paths_are_twilios_405(shared_sandbox: str) -> None:
    messages = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    with httpx.Client(base_url=shared_sandbox, auth=(ACCOUNT_SID, TOKEN)) as http:
        answer = http.put(messages)
        assert answer.status_code == 405
        assert answer.json() == {
            "code": 20004,
            "message": "Method not allowed",
            "more_info": "https://www.twilio.com/docs/errors/20004",
            "status": 405,
        }
        assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
        assert http.patch(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings.json").json()["code"] == 20404
    with httpx.Client(base_url=shared_sandbox) as http:
        assert http.put(messages).status_code == 401  # credentials first, as on every API path


# --- REST: the Media subresource and deleting ---------------------------------------------------------------


def test_media_subresource_lists_and_fetches_a_messages_media(harness: Harness) -> None:
    url = harness.sandbox()
    client = harness.client(url)
    pictures = [f"{url}/sandbox/media/a.png", "https://example.com/b.gif?size=large"]
    message = client.messages.create(to=CUSTOMER, from_=SUPPORT, media_url=pictures)
    listed = client.messages(message.sid).media.list()
    assert [m.content_type for m in listed] == ["image/png", "image/gif"]
    assert all(re.fullmatch(r"ME[0-9a-f]{32}", m.sid) for m in listed) and len({m.sid for m in listed}) == 2
    assert all((m.parent_sid, m.account_sid) == (message.sid, ACCOUNT_SID) for m in listed)
    assert [m.sid for m in client.messages(message.sid).media.list(page_size=1)] == [m.sid for m in listed]
    one = client.messages(message.sid).media(listed[1].sid).fetch()
    assert one.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message.sid}/Media/{listed[1].sid}.json"
    assert (one.content_type, one.date_created) == ("image/gif", message.date_created)
    page = next(r for r in harness.responses if "/Media.json" in (r.request.url or ""))
    assert set(page.json()) >= {"media_list", "uri", "first_page_uri", "next_page_uri", "page_size"}
    assert set(page.json()["media_list"][0]) == schema_properties("api.v2010.account.message.media")
    text = client.messages.create(to=CUSTOMER, from_=SUPPORT, body="no pictures")
    assert client.messages(text.sid).media.list() == []
    with pytest.raises(TwilioRestException) as raised:
        client.messages(message.sid).media("ME" + "0" * 32).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    with pytest.raises(TwilioException, match="20404"):
        client.messages("MM" + "0" * 32).media.list()


def test_delete_a_finished_message_but_not_one_still_going_out(harness: Harness) -> None:
    client = harness.client(harness.sandbox(sent_delay=0.3))
    going = client.messages.create(to=CUSTOMER, from_=SUPPORT, media_url=["https://example.com/a.png"])
    (picture,) = client.messages(going.sid).media.list()
    with pytest.raises(TwilioRestException) as raised:
        client.messages(going.sid).delete()
    assert (raised.value.status, raised.value.code) == (400, 20009)
    with pytest.raises(TwilioRestException) as raised:
        client.messages(going.sid).media(picture.sid).delete()
    assert (raised.value.status, raised.value.code) == (400, 20009)
    wait_until(lambda: client.messages(going.sid).fetch().status == "delivered")
    assert client.messages(going.sid).media(picture.sid).delete() is True
    assert client.messages(going.sid).media.list() == []
    assert client.messages(going.sid).delete() is True
    with pytest.raises(TwilioRestException) as raised:
        client.messages(going.sid).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    assert client.messages.list() == []
    with pytest.raises(TwilioRestException) as raised:
        client.messages(going.sid).delete()
    assert (raised.value.status, raised.value.code) == (404, 20404)


# --- REST: list and pagination ------------------------------------------------------------------------------


def test_list_pages_newest_first_through_the_sdk(harness: Harness) -> None:
    client = harness.client(harness.sandbox())
    sids = [client.messages.create(to=CUSTOMER, from_=SUPPORT, body=f"note {n}").sid for n in range(5)]
    newest_first = list(reversed(sids))
    assert [m.sid for m in client.messages.list(limit=4, page_size=2)] == newest_first[:4]
    assert [m.sid for m in client.messages.list(page_size=2)] == newest_first
    assert [m.sid for m in client.messages.stream(page_size=2)] == newest_first
    pages = [r for r in harness.responses if r.request.method == "GET"]
    assert len(pages) >= 3 + 3  # two full listings of three pages each, at least
    first = pages[-3].json()
    assert (first["page"], first["page_size"], first["start"], first["end"]) == (0, 2, 0, 1)
    assert first["previous_page_uri"] is None
    assert first["next_page_uri"].endswith(f"PageSize=2&Page=1&PageToken=PA{newest_first[1]}")
    last = pages[-1].json()
    assert (last["page"], last["start"], last["end"], last["next_page_uri"]) == (2, 4, 4, None)


def test_page_tokens_are_keyset_and_go_both_ways(harness: Harness) -> None:
    url = harness.sandbox()
    client = harness.client(url)
    for n in range(5):
        client.messages.create(to=CUSTOMER, from_=SUPPORT, body=f"note {n}")
    with httpx.Client(base_url=url, auth=(ACCOUNT_SID, TOKEN)) as http:
        first = http.get(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", params={"PageSize": 2}).json()
        # A text created while a client pages must not shift the next page.
        client.messages.create(to=CUSTOMER, from_=SUPPORT, body="late arrival")
        second = http.get(first["next_page_uri"]).json()
        assert [m["body"] for m in first["messages"]] == ["note 4", "note 3"]
        assert [m["body"] for m in second["messages"]] == ["note 2", "note 1"]
        back = http.get(second["previous_page_uri"]).json()
        assert [m["body"] for m in back["messages"]] == ["note 4", "note 3"]
        assert http.get(second["first_page_uri"]).json()["messages"][0]["body"] == "late arrival"
        too_big = http.get(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", params={"PageSize": 1001})
        assert too_big.status_code == 400 and too_big.json()["code"] == 20007


def test_list_filters_by_to_from_and_date_sent(harness: Harness) -> None:
    now = [datetime(2024, 3, 1, 12, 0, tzinfo=UTC)]
    url = harness.sandbox(config(clock=lambda: now[0]))
    client = harness.client(url)
    march_1 = client.messages.create(to=CUSTOMER, from_=SUPPORT, body="march 1").sid
    wait_until(lambda: client.messages(march_1).fetch().status == "delivered")
    now[0] = datetime(2024, 3, 5, 9, 30, tzinfo=UTC)
    march_5 = client.messages.create(to="+13125550150", from_=OTHER_SUPPORT, body="march 5").sid
    wait_until(lambda: client.messages(march_5).fetch().status == "delivered")

    assert [m.sid for m in client.messages.list(to=CUSTOMER)] == [march_1]
    assert [m.sid for m in client.messages.list(from_=OTHER_SUPPORT)] == [march_5]
    assert [m.sid for m in client.messages.list(date_sent=date(2024, 3, 5))] == [march_5]
    assert [m.sid for m in client.messages.list(date_sent_before=date(2024, 3, 2))] == [march_1]
    assert [m.sid for m in client.messages.list(date_sent_after=date(2024, 3, 1))] == [march_5, march_1]
    assert client.messages.list(date_sent_after=datetime(2024, 3, 6, tzinfo=UTC)) == []
    page = next(r for r in reversed(harness.responses) if "DateSent%3E" in (r.request.url or ""))
    assert "DateSent%3E=2024-03-06T00%3A00%3A00Z&PageSize=50&Page=0" in page.json()["uri"]
    assert client.messages(march_5).fetch().date_sent == now[0]


# --- delivery simulation and status callbacks ---------------------------------------------------------------


def test_status_callbacks_are_signed_and_in_lifecycle_order(harness: Harness) -> None:
    url = harness.sandbox()
    client = harness.client(url)
    callback = harness.hook("status") + "?conversation=CV1&note=a%20b"
    message = client.messages.create(to=CUSTOMER, from_=SUPPORT, body="hello", status_callback=callback)
    got = harness.receiver.wait_for(lambda seen: len(seen) >= 2, path=harness.path("status"))
    assert [r.param("MessageStatus") for r in got] == ["sent", "delivered"]
    for request in got:
        assert request.url == callback  # the exact URL it was given, query string untouched
        assert signature_ok(request)
        assert not signature_ok(request, token="another-token")
        assert request.headers["user-agent"] == "TwilioProxy/1.1"
        assert request.headers["content-type"] == "application/x-www-form-urlencoded; charset=UTF-8"
        uuid.UUID(request.headers["i-twilio-idempotency-token"])
        assert request.param("MessageSid") == request.param("SmsSid") == message.sid
        assert request.param("MessageStatus") == request.param("SmsStatus")
        assert (request.param("AccountSid"), request.param("To"), request.param("From")) == (
            ACCOUNT_SID,
            CUSTOMER,
            SUPPORT,
        )
        assert request.param("ApiVersion") == "2010-04-01"
    assert got[0].names == STATUS_PARAMS
    assert got[1].names == STATUS_PARAMS | {"RawDlrDoneDate"}
    assert re.fullmatch(r"\d{10}", got[1].param("RawDlrDoneDate") or "")
    assert got[0].headers["i-twilio-idempotency-token"] != got[1].headers["i-twilio-idempotency-token"]

    delivered = client.messages(message.sid).fetch()
    assert delivered.status == "delivered" and delivered.date_sent is not None
    assert (delivered.price, delivered.price_unit, delivered.error_code) == ("-0.00790", "USD", None)
    with httpx.Client(base_url=url) as http:
        log = http.get("/sandbox/webhooks", params={"message_sid": message.sid}).json()
    assert [(a["message_status"], a["status_code"], a["kind"]) for a in log] == [
        ("sent", 200, "message-status"),
        ("delivered", 200, "message-status"),
    ]
    assert all(a["url"] == callback and a["ms"] >= 0 for a in log)


@pytest.mark.parametrize(
    "callback",
    [
        "http://exa mple.com/cb",
        "http://[::1/cb",
        "not a url",
        "http:///cb",
        "ftp://example.com/cb",
        "http://under_score.example.com/cb",
        "https://example.com:99999/cb",
    ],
)
def test_a_status_callback_twilio_could_not_call_is_refused_with_21609(
    harness: Harness, shared_sandbox: str, callback: str
) -> None:
    with pytest.raises(TwilioRestException) as raised:
        harness.client(shared_sandbox).messages.create(to=CUSTOMER, from_=SUPPORT, body="hi", status_callback=callback)
    assert (raised.value.status, raised.value.code) == (400, 21609)


def test_callbacks_to_urls_with_spaces_and_accents_are_signed_as_sent(harness: Harness) -> None:
    client = harness.client(harness.sandbox())
    callback = harness.hook("accents") + "?name=José&note=a b"
    client.messages.create(to=CUSTOMER, from_=SUPPORT, body="hi", status_callback=callback)
    got = harness.receiver.wait_for(lambda seen: len(seen) >= 2, path=harness.path("accents"))
    assert [r.param("MessageStatus") for r in got] == ["sent", "delivered"]
    # httpx percent-encodes the query on the wire; the signature must cover that URL, the one received.
    assert all(r.url.endswith("?name=Jos%C3%A9&note=a%20b") for r in got)
    assert all(signature_ok(r) for r in got)


async def test_a_url_httpx_cannot_parse_is_a_failed_attempt_not_a_crash() -> None:
    async with httpx.AsyncClient() as http:
        poster = WebhookPoster(http, TOKEN, config().clock)
        attempt = await poster.post("http://[::1/cb", [("MessageSid", "SM" + "0" * 32)], "message-status")
    assert attempt.status_code is None and (attempt.error or "").startswith("InvalidURL")
    assert poster.attempts() == [attempt]


def test_a_twiml_reply_with_a_broken_action_url_is_still_delivered(harness: Harness) -> None:
    url, reply = _texted_and_answered(
        harness, "broken-action", '<Message action="http://[::1/status">Thanks!</Message>'
    )
    with httpx.Client(base_url=url) as http:
        assert reply["direction"] == "outbound-reply"
        fetch = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{reply['sid']}.json"
        wait_until(lambda: http.get(fetch, auth=(ACCOUNT_SID, TOKEN)).json()["status"] == "delivered")
        log = http.get("/sandbox/webhooks", params={"message_sid": reply["sid"]}).json()
    assert [(a["message_status"], a["status_code"]) for a in log] == [("sent", None), ("delivered", None)]
    assert all(a["error"].startswith("InvalidURL") for a in log)


def test_failures_follow_the_configured_numbers(harness: Harness) -> None:
    landline, overflow = "+12125550147", "+13125550150"
    client = harness.client(harness.sandbox(unreachable_numbers={landline: 30006, overflow: 30001}))
    hook = harness.hook("failures")
    to_landline = client.messages.create(to=landline, from_=SUPPORT, body="hi", status_callback=hook)
    to_overflow = client.messages.create(to=overflow, from_=SUPPORT, body="hi", status_callback=hook)
    got = harness.receiver.wait_for(lambda seen: len(seen) >= 3, path=harness.path("failures"))
    by_sid: dict[str, list[Received]] = {}
    for request in got:
        by_sid.setdefault(request.param("MessageSid") or "", []).append(request)
    landline_calls = by_sid[to_landline.sid]
    assert [(r.param("MessageStatus"), r.param("ErrorCode")) for r in landline_calls] == [
        ("sent", None),
        ("undelivered", "30006"),
    ]
    assert landline_calls[1].names == STATUS_PARAMS | {"ErrorCode", "RawDlrDoneDate"}
    overflow_calls = [(r.param("MessageStatus"), r.param("ErrorCode")) for r in by_sid[to_overflow.sid]]
    assert overflow_calls == [("failed", "30001")]
    assert all(signature_ok(r) for r in got)
    undelivered = client.messages(to_landline.sid).fetch()
    assert (undelivered.status, undelivered.error_code) == ("undelivered", 30006)
    assert undelivered.error_message == "Landline or unreachable carrier"
    failed = client.messages(to_overflow.sid).fetch()
    assert (failed.status, failed.error_code, failed.price) == ("failed", 30001, None)


async def _final_statuses(seed: int) -> list[str]:
    cfg = config(seed=seed, undelivered_share=0.5, sent_delay=0.0, delivered_delay=0.0)
    async with httpx.AsyncClient() as http:
        messaging = Messaging(cfg, WebhookPoster(http, TOKEN, cfg.clock))
        forms = [Form([("To", CUSTOMER), ("From", SUPPORT), ("Body", f"n{n}")]) for n in range(12)]
        sids = [messaging.create(form).sid for form in forms]
        await messaging.idle(timeout=5)
        statuses = [f"{messaging.messages[s].status}:{messaging.messages[s].error_code}" for s in sids]
        await messaging.close()
    return statuses


async def test_random_failures_are_decided_by_the_seed() -> None:
    first, again, other = await _final_statuses(11), await _final_statuses(11), await _final_statuses(12)
    assert first == again
    assert first != other
    assert {s.split(":")[0] for s in first} == {"delivered", "undelivered"}
    assert {int(s.split(":")[1]) for s in first if s.startswith("undelivered")} <= {
        30003,
        30005,
        30007,
        30008,
    }


def test_chaos_duplicates_and_reorders_callbacks(harness: Harness) -> None:
    client = harness.client(harness.sandbox(duplicate_callback_share=1.0, reorder_callback_share=1.0))
    client.messages.create(to=CUSTOMER, from_=SUPPORT, body="chaos", status_callback=harness.hook("chaos"))
    got = harness.receiver.wait_for(lambda seen: len(seen) >= 4, path=harness.path("chaos"))
    assert [r.param("MessageStatus") for r in got] == ["delivered", "delivered", "sent", "sent"]
    assert len({r.headers["i-twilio-idempotency-token"] for r in got}) == 4
    assert all(signature_ok(r) for r in got)


def test_messaging_service_sends_start_accepted(harness: Harness) -> None:
    client = harness.client(harness.sandbox(messaging_service_sid=SERVICE))
    hook = harness.hook("service")
    send = client.messages.create
    message = send(to=CUSTOMER, messaging_service_sid=SERVICE, body="hi", status_callback=hook)
    assert (message.status, message.from_, message.num_segments) == ("accepted", None, "0")
    assert message.messaging_service_sid == SERVICE
    got = harness.receiver.wait_for(lambda seen: len(seen) >= 3, path=harness.path("service"))
    assert [r.param("MessageStatus") for r in got] == ["queued", "sent", "delivered"]
    assert all(r.param("MessagingServiceSid") == SERVICE and r.param("From") == SUPPORT for r in got)
    assert client.messages(message.sid).fetch().num_segments == "1"


def test_only_a_scheduled_text_can_be_canceled_and_a_delivered_one_redacted(harness: Harness) -> None:
    client = harness.client(harness.sandbox(messaging_service_sid=SERVICE, sent_delay=0.3))
    hook = harness.hook("cancel")
    scheduled = client.messages.create(
        to=CUSTOMER,
        messaging_service_sid=SERVICE,
        body="see you tomorrow",
        schedule_type="fixed",
        send_at=datetime.now(UTC) + timedelta(hours=1),
        status_callback=hook,
    )
    assert (scheduled.status, scheduled.from_, scheduled.num_segments) == ("scheduled", None, "1")
    assert client.messages(scheduled.sid).update(status="canceled").status == "canceled"
    (canceled,) = harness.receiver.wait_for(lambda seen: len(seen) >= 1, path=harness.path("cancel"))
    assert canceled.param("MessageStatus") == "canceled" and signature_ok(canceled)
    # Twilio cancels only `scheduled` texts (error 30409): not one merely queued, nor one already sent.
    queued = client.messages.create(to=CUSTOMER, from_=SUPPORT, body="secret code 1234")
    with pytest.raises(TwilioRestException) as raised:
        client.messages(queued.sid).update(status="canceled")
    assert (raised.value.status, raised.value.code) == (400, 30409)
    wait_until(lambda: client.messages(queued.sid).fetch().status == "delivered")
    with pytest.raises(TwilioRestException) as raised:
        client.messages(queued.sid).update(status="canceled")
    assert (raised.value.status, raised.value.code) == (400, 30409)
    assert client.messages(queued.sid).update(body="").body == ""
    assert client.messages(queued.sid).fetch().body == ""
    assert client.messages(scheduled.sid).fetch().status == "canceled"  # it never went out
    assert [r.param("MessageStatus") for r in harness.receiver.snapshot(harness.path("cancel"))] == ["canceled"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"messaging_service_sid": None, "from_": SUPPORT}, 35118),
        ({"send_at": None}, 35111),
        ({"send_at": timedelta(minutes=4)}, 35114),
        ({"send_at": timedelta(days=36)}, 35114),
        ({"send_at": "tomorrow"}, 35114),
        ({"schedule_type": "whenever"}, 35126),
    ],
    ids=["no-service", "no-send-at", "too-soon", "too-late", "not-a-time", "not-fixed"],
)
def test_scheduling_needs_a_service_and_a_time_twilio_supports(
    harness: Harness, shared_sandbox: str, changes: dict[str, Any], code: int
) -> None:
    params: dict[str, Any] = {
        "to": CUSTOMER,
        "messaging_service_sid": SERVICE,
        "body": "later",
        "schedule_type": "fixed",
        "send_at": timedelta(hours=1),
        **changes,
    }
    if isinstance(params["send_at"], timedelta):
        params["send_at"] = datetime.now(UTC) + params["send_at"]
    with pytest.raises(TwilioRestException) as raised:
        harness.client(shared_sandbox).messages.create(**{k: v for k, v in params.items() if v is not None})
    assert (raised.value.status, raised.value.code) == (400, code)


# --- inbound texts ------------------------------------------------------------------------------------------


def test_injected_text_posts_a_signed_inbound_webhook(harness: Harness) -> None:
    url = harness.sandbox(bridge_url=harness.receiver_url, sms_path=harness.path("sms"))
    with httpx.Client(base_url=url) as http:
        text = {"from": CUSTOMER, "to": SUPPORT, "body": "Where is my order?"}
        answer = http.post("/sandbox/sms", data=text)
    assert answer.status_code == 200
    result = answer.json()
    assert MESSAGE_SID.match(result["message_sid"]) and result["webhook_status"] == 200
    (webhook,) = harness.receiver.wait_for(lambda seen: len(seen) >= 1, path=harness.path("sms"))
    assert signature_ok(webhook)
    assert webhook.url == f"{harness.receiver_url}{harness.path('sms')}"
    assert webhook.names == INBOUND_PARAMS
    expected = {
        "MessageSid": result["message_sid"],
        "SmsSid": result["message_sid"],
        "SmsMessageSid": result["message_sid"],
        "AccountSid": ACCOUNT_SID,
        "From": CUSTOMER,
        "To": SUPPORT,
        "Body": "Where is my order?",
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
        "FromCity": "NEW YORK",
        "FromState": "NY",
        "FromCountry": "US",
        "ToCity": "SAN FRANCISCO",
        "ToCountry": "US",
    }
    assert {k: webhook.param(k) for k in expected} == expected
    assert webhook.headers["user-agent"] == "TwilioProxy/1.1"
    uuid.UUID(webhook.headers["i-twilio-idempotency-token"])


def test_injected_mms_carries_media_and_media_resolves(harness: Harness) -> None:
    url = harness.sandbox(bridge_url=harness.receiver_url, sms_path=harness.path("mms"))
    photo = f"{url}/sandbox/media/broken-lamp.png"
    with httpx.Client(base_url=url) as http:
        answer = http.post(
            "/sandbox/sms",
            json={"from": CUSTOMER, "to": OTHER_SUPPORT, "body": "", "media_url": [photo, photo + "?v=2"]},
        )
        assert answer.status_code == 200 and answer.json()["message_sid"].startswith("MM")
        (webhook,) = harness.receiver.wait_for(lambda seen: len(seen) >= 1, path=harness.path("mms"))
        assert signature_ok(webhook)
        assert webhook.names == INBOUND_PARAMS | {
            "MediaUrl0",
            "MediaContentType0",
            "MediaUrl1",
            "MediaContentType1",
        }
        assert (
            webhook.param("NumMedia"),
            webhook.param("MediaUrl0"),
            webhook.param("MediaContentType0"),
        ) == (
            "2",
            photo,
            "image/png",
        )
        image = http.get(webhook.param("MediaUrl1") or "")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert http.get("/sandbox/media/../../etc/passwd").status_code == 404
        assert http.get("/sandbox/media/notes.txt").status_code == 404


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"from": "hello", "to": SUPPORT, "body": "hi"}, "from 'hello' is not a valid phone number"),
        ({"from": CUSTOMER, "to": "+1415", "body": "hi"}, "to '+1415' is not a valid phone number"),
        (
            {"from": CUSTOMER, "to": "+14155550188", "body": "hi"},
            "to +14155550188 is not one of the team's numbers",
        ),
        ({"from": CUSTOMER, "to": SUPPORT, "body": ""}, "a text needs a body or a media_url"),
    ],
)
def test_injection_refuses_bad_numbers_with_one_line(
    harness: Harness, shared_sandbox: str, data: dict[str, str], reason: str
) -> None:
    with httpx.Client(base_url=shared_sandbox) as http:
        answer = http.post("/sandbox/sms", data=data)
    assert answer.status_code == 400
    assert answer.text.startswith(reason) and answer.text.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[" * 100_000, "body is nested too deeply"),
        (b'{"from": "+12125550123", "to": "+14155550100", "body": "x\\ud800y"}', "body is not valid Unicode"),
        (b'{"from": "+12125550123", "to": "+14155550100", "media_url": ["\\udfff"]}', "media_url is not valid Unicode"),
    ],
    ids=["deep-nesting", "lone-surrogate-body", "lone-surrogate-media"],
)
def test_injection_refuses_json_it_cannot_use_with_one_line(shared_sandbox: str, content: bytes, reason: str) -> None:
    answer = httpx.post(f"{shared_sandbox}/sandbox/sms", content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.text.startswith(reason) and answer.text.count("\n") == 1


def test_injection_reports_the_bridges_answer(harness: Harness) -> None:
    busy = Answer(status=503, body="busy", content_type="text/plain")
    harness.receiver.answers[harness.path("down")] = busy
    url = harness.sandbox(bridge_url=harness.receiver_url, sms_path=harness.path("down"))
    with httpx.Client(base_url=url) as http:
        result = http.post("/sandbox/sms", data={"from": CUSTOMER, "to": SUPPORT, "body": "hi"}).json()
        assert result["webhook_status"] == 503
        nowhere = harness.sandbox(bridge_url="http://127.0.0.1:9")
        text = {"from": CUSTOMER, "to": SUPPORT, "body": "hi"}
        result = httpx.post(f"{nowhere}/sandbox/sms", data=text).json()
        assert result["webhook_status"] is None and result["webhook_error"].startswith("ConnectError")


def test_stop_blocks_sends_until_start_and_sandbox_messages_lists_newest_first(harness: Harness) -> None:
    url = harness.sandbox(bridge_url=harness.receiver_url, sms_path=harness.path("optout"))
    client = harness.client(url)
    with httpx.Client(base_url=url) as http:
        http.post("/sandbox/sms", data={"from": CUSTOMER, "to": SUPPORT, "body": "stop"})
        with pytest.raises(TwilioRestException) as raised:
            client.messages.create(to=CUSTOMER, from_=SUPPORT, body="are you sure?")
        assert (raised.value.status, raised.value.code) == (400, 21610)
        client.messages.create(to=CUSTOMER, from_=OTHER_SUPPORT, body="other numbers are not opted out")
        http.post("/sandbox/sms", data={"from": CUSTOMER, "to": SUPPORT, "body": "START"})
        client.messages.create(to=CUSTOMER, from_=SUPPORT, body="welcome back")
        held = http.get("/sandbox/messages").json()
        assert [m["body"] for m in held] == [
            "welcome back",
            "START",
            "other numbers are not opted out",
            "stop",
        ]
        assert [m["direction"] for m in held] == ["outbound-api", "inbound", "outbound-api", "inbound"]
        assert [m["body"] for m in http.get("/sandbox/messages", params={"from": CUSTOMER}).json()] == [
            "START",
            "stop",
        ]
        assert [m["body"] for m in http.get("/sandbox/messages", params={"to": CUSTOMER}).json()] == [
            "welcome back",
            "other numbers are not opted out",
        ]


def _texted_and_answered(harness: Harness, name: str, answer: str) -> tuple[str, dict[str, Any]]:
    """A customer texts; the webhook at ``name`` answers with ``answer`` in a TwiML Response. Returns the
    sandbox's URL and the newest message it holds (the reply)."""
    twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response>{answer}</Response>'
    harness.receiver.answers[harness.path(name)] = Answer(body=twiml)
    url = harness.sandbox(bridge_url=harness.receiver_url, sms_path=harness.path(name))
    with httpx.Client(base_url=url) as http:
        http.post("/sandbox/sms", data={"from": CUSTOMER, "to": SUPPORT, "body": "hello"})
        reply: dict[str, Any] = http.get("/sandbox/messages").json()[0]
    return url, reply


def test_twiml_message_replies_are_sent(harness: Harness) -> None:
    _url, reply = _texted_and_answered(harness, "twiml", "<Message>Thanks, we got it!</Message>")
    assert (reply["direction"], reply["from"], reply["to"], reply["body"]) == (
        "outbound-reply",
        SUPPORT,
        CUSTOMER,
        "Thanks, we got it!",
    )


# --- simulated customers ------------------------------------------------------------------------------------


def _texts(seed: int, count: int = 40) -> list[tuple[str, str, str, tuple[str, ...]]]:
    simulator = CustomerSimulator(seed, (SUPPORT, OTHER_SUPPORT), "http://sandbox.test")
    texts = []
    for _ in range(count):
        text = simulator.next_text()
        texts.append((text.from_number, text.to, text.body, tuple(m.url for m in text.media)))
    return texts


def test_customers_with_the_same_seed_say_the_same_things() -> None:
    first = _texts(5)
    assert first == _texts(5)
    assert first != _texts(6)
    assert {to for _, to, _, _ in first} == {SUPPORT, OTHER_SUPPORT}
    assert all(re.fullmatch(r"\+1\d{3}55501\d\d", number) for number, _, _, _ in first)
    bodies = [body for _, _, body, _ in first]
    assert any(any(ord(ch) > 0xFFFF for ch in body) for body in bodies)  # emoji
    assert any(len(body) > 160 for body in bodies)  # a multi-segment text
    photos = [media for _, _, _, media in first if media]
    assert photos and all(url.startswith("http://sandbox.test/sandbox/media/") for m in photos for url in m)
    stopped = [number for number, _, body, _ in first if body == "STOP"]
    assert stopped, "some customer texts STOP"
    restarted = [number for number, _, body, _ in first if body == "START"]
    assert set(stopped) & set(restarted), "and texts START later"


def test_customers_answer_agents_deterministically() -> None:
    def conversation(seed: int) -> list[str]:
        simulator = CustomerSimulator(seed, (SUPPORT,), "http://sandbox.test")
        opener = simulator.next_text()
        said = [opener.body]
        for _ in range(4):
            answer = simulator.answer(opener.from_number, "Let me check that for you.")
            if answer is None:
                break
            assert answer.to == opener.to
            said.append(answer.body)
        return said

    assert conversation(3) == conversation(3)
    assert 2 <= len(conversation(3)) <= 3  # a short conversation that ends
    simulator = CustomerSimulator(3, (SUPPORT,), "http://sandbox.test")
    assert simulator.answer("+19995550100", "hello") is None  # not one of ours


def test_customer_traffic_texts_the_bridge_and_answers_agents(harness: Harness) -> None:
    url = harness.sandbox(
        bridge_url=harness.receiver_url, sms_path=harness.path("traffic"), customer_rate=1200.0, seed=21
    )
    texts = harness.receiver.wait_for(lambda seen: len(seen) >= 3, path=harness.path("traffic"))
    assert all(signature_ok(r) for r in texts)
    assert all(r.names >= INBOUND_PARAMS and r.param("To") in (SUPPORT, OTHER_SUPPORT) for r in texts)
    expected = [body for _, _, body, _ in _texts(21, count=3)]
    assert [r.param("Body") for r in texts[:3]] == expected
    # An agent answers the first customer who is not opting out; that customer writes back.
    customer = next(r for r in texts if r.param("Body") != "STOP")
    number = customer.param("From") or ""
    agent = harness.client(url).messages.create(to=number, from_=customer.param("To"), body="Happy to help!")

    def answers(seen: list[Received]) -> list[Received]:
        return [r for r in seen[len(texts) :] if r.param("From") == number and r.param("Body") not in NUDGES]

    seen = harness.receiver.wait_for(lambda seen: bool(answers(seen)), path=harness.path("traffic"))
    reply = answers(seen)[0]
    assert reply.param("To") == agent.from_ and signature_ok(reply)


def test_opening_texts_come_at_once_and_then_no_more_at_rate_zero(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.sandbox import customers

    monkeypatch.setattr(customers, "OPENING_GAP", 0.05)
    started = time.monotonic()
    harness.sandbox(bridge_url=harness.receiver_url, sms_path=harness.path("opening"), opening_texts=2, seed=21)
    texts = harness.receiver.wait_for(lambda seen: len(seen) >= 2, path=harness.path("opening"))
    assert time.monotonic() - started < 5  # not the 5–15 s the first text at 6 a minute takes
    assert [r.param("Body") for r in texts] == [body for _, _, body, _ in _texts(21, count=2)]
    time.sleep(0.3)
    assert len(harness.receiver.snapshot(harness.path("opening"))) == 2  # customer_rate 0: nothing after them


# --- serving ------------------------------------------------------------------------------------------------


async def test_serve_runs_the_sandbox_until_cancelled() -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()  # serve() binds the port itself
    task = asyncio.create_task(serve(config(), port=port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        async with asyncio.timeout(10):
            while True:
                try:
                    info = (await http.get("/sandbox")).json()
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
    assert info["account_sid"] == ACCOUNT_SID and info["support_numbers"] == [SUPPORT, OTHER_SUPPORT]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_config_refuses_what_twilio_would_not_have() -> None:
    with pytest.raises(ValueError, match="not a valid phone number"):
        SandboxConfig(support_numbers=("+1415555",))
    with pytest.raises(ValueError, match="AC followed by 32 hex"):
        SandboxConfig(account_sid="AC123")
    with pytest.raises(ValueError, match="both api_key_sid and api_key_secret"):
        SandboxConfig(api_key_sid=API_KEY)
    env = {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "SWITCHBOARD_SANDBOX_NUMBERS": SUPPORT,
    }
    loaded = SandboxConfig.from_env(env, bridge_url="http://127.0.0.1:8080", customer_rate=None)
    assert (loaded.account_sid, loaded.support_numbers, loaded.sms_url) == (
        ACCOUNT_SID,
        (SUPPORT,),
        "http://127.0.0.1:8080/twilio/sms",
    )
    assert SandboxConfig().support_numbers == ("+14155550100", "+14155550101")
