"""The REST client's failure handling, faults injected at the transport: retry what is safe, look before resending."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from bridge.settings import Settings
from bridge.twilio_rest import OutgoingMessage, TwilioError, TwilioRest, TwilioUnavailable, TwilioUnsure
from tests.support import ACCOUNT_SID, AUTH_TOKEN, CUSTOMER, OUR_NUMBER

MSG = OutgoingMessage(
    to=CUSTOMER,
    body="Your order shipped",
    from_number=OUR_NUMBER,
    messaging_service_sid=None,
    status_callback="http://bridge/twilio/sms/status",
)


def resource(sid: str = "SM" + "1" * 32, body: str = MSG.body) -> dict[str, Any]:
    return {
        "sid": sid,
        "status": "queued",
        "body": body,
        "to": CUSTOMER,
        "from": OUR_NUMBER,
        "direction": "outbound-api",
        "date_created": format_datetime(datetime.now(UTC)),
    }


def client_with(handler: Callable[[httpx.Request], httpx.Response], **settings: Any) -> TwilioRest:
    base = Settings(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        api_base="https://api.twilio.test",
        rest_retries=3,
        rest_backoff=0.0,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TwilioRest(base.with_(**settings), http, rng=random.Random(1))


async def test_posts_twilio_form_with_basic_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=resource())

    rest = client_with(handler)
    assert (await rest.create_message(MSG))["sid"].startswith("SM")
    [request] = seen
    assert request.url.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["authorization"] == httpx.BasicAuth(ACCOUNT_SID, AUTH_TOKEN)._auth_header
    form = httpx.QueryParams(request.content.decode())
    assert (form["To"], form["From"], form["Body"]) == (CUSTOMER, OUR_NUMBER, MSG.body)
    assert form["StatusCallback"] == "http://bridge/twilio/sms/status"


async def test_api_key_and_messaging_service() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=resource())

    rest = client_with(handler, api_key="SK" + "2" * 32, api_secret="secret")
    msg = OutgoingMessage(
        to=CUSTOMER,
        body="hi",
        from_number=OUR_NUMBER,
        messaging_service_sid="MG" + "3" * 32,
        media_urls=["https://example.com/a.png", "https://example.com/b.png"],
    )
    await rest.create_message(msg)
    form = httpx.QueryParams(seen[0].content.decode())
    assert seen[0].headers["authorization"] == httpx.BasicAuth("SK" + "2" * 32, "secret")._auth_header
    assert form["MessagingServiceSid"] == "MG" + "3" * 32 and "From" not in form
    assert form.get_list("MediaUrl") == ["https://example.com/a.png", "https://example.com/b.png"]


async def test_twilio_4xx_is_raised_with_its_code_and_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            400,
            json={
                "code": 21610,
                "message": "Attempt to send to unsubscribed recipient",
                "more_info": "https://www.twilio.com/docs/errors/21610",
                "status": 400,
            },
        )

    with pytest.raises(TwilioError) as raised:
        await client_with(handler).create_message(MSG)
    assert (raised.value.code, raised.value.status, calls) == (21610, 400, 1)


async def test_connection_errors_and_429_are_retried() -> None:
    answers: list[Callable[[httpx.Request], httpx.Response]] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    answers = [
        refuse,
        lambda r: httpx.Response(429, json={"code": 20429, "message": "Too Many Requests"}),
        lambda r: httpx.Response(201, json=resource()),
    ]
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        assert request.method == "POST", "nothing was ambiguous: no lookup needed"
        posts += 1
        return answers.pop(0)(request)

    assert (await client_with(handler).create_message(MSG))["status"] == "queued"
    assert posts == 3


async def test_a_timeout_after_sending_looks_before_resending() -> None:
    """The first POST reached Twilio but the answer was lost: the retry finds it instead of sending twice."""
    created: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"messages": created, "next_page_uri": None})
        created.append(resource())
        raise httpx.ReadTimeout("lost answer", request=request)

    found = await client_with(handler).create_message(MSG)
    assert len(created) == 1
    assert found["sid"] == created[0]["sid"]


async def test_a_timeout_after_sending_is_never_sent_again_while_twilio_cannot_be_asked() -> None:
    """The answer to the POST is lost and every lookup fails (503, then no connection): "not found" is not what
    Twilio said, so nothing is posted again, and the error says the message may be at Twilio."""
    created: list[bytes] = []
    lookups = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal lookups
        if request.method == "POST":
            created.append(request.content)
            raise httpx.ReadTimeout("lost answer", request=request)
        lookups += 1
        if lookups % 2:
            return httpx.Response(503, json={"code": 20500, "message": "Service unavailable"})
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TwilioUnsure, match="may hold the message"):
        await client_with(handler).create_message(MSG)
    assert len(created) == 1
    assert lookups == 4  # one before each of the three tries left, one at the end


async def test_a_lookup_that_fails_once_is_asked_again_before_anything_is_sent() -> None:
    created: list[dict[str, Any]] = []
    lookups = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal lookups
        if request.method == "GET":
            lookups += 1
            if lookups == 1:
                return httpx.Response(500)
            return httpx.Response(200, json={"messages": created, "next_page_uri": None})
        created.append(resource())
        raise httpx.ReadTimeout("lost answer", request=request)

    found = await client_with(handler).create_message(MSG)
    assert len(created) == 1
    assert found["sid"] == created[0]["sid"]


async def test_a_5xx_with_nothing_created_is_sent_again() -> None:
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "GET":
            return httpx.Response(200, json={"messages": [resource(body="an older, different reply")]})
        posts += 1
        return httpx.Response(503) if posts == 1 else httpx.Response(201, json=resource())

    await client_with(handler).create_message(MSG)
    assert posts == 2


async def test_gives_up_after_its_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TwilioUnavailable, match="4 tries"):
        await client_with(handler).create_message(MSG)
