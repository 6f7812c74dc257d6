"""The ingest fast paths agree with the slow, obvious code they replace (see README, Performance).

Form parsing against ``parse_qsl``; HMAC from precomputed pads against ``hmac``; the idempotency claim in one
statement; a batch whose operation fails replayed with savepoints; the bare-ASGI webhook against Starlette's.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from bridge.messaging import InboundMessage, record_inbound
from bridge.signature import _hmac, _hmac_pads
from bridge.store import SqliteStore, StoredEvent, Tx
from bridge.webhooks import MAX_FIELDS, Webhook, accept_webhook, parse_form
from tests.support import inbound_params, message_sid, signed


def qsl(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        return "UnicodeDecodeError"
    except ValueError:
        return "ValueError"


def fast(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_form(text)
    except UnicodeDecodeError:
        return "UnicodeDecodeError"
    except ValueError:
        return "ValueError"


PIECES = st.sampled_from(
    ["&", "=", "+", "%", "%2", "%26", "%3D", "%3d", "%2B", "%25", "%C3", "%A9", "%C3%A9", "%ff", "%E2%82", "%AC", "é"]
)
FORM_TEXT = st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=30).map("".join)


@given(FORM_TEXT)
@settings(max_examples=2000, deadline=None)
def test_parse_form_is_parse_qsl(text: str) -> None:
    assert fast(text) == qsl(text)


@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=20)), max_size=25))
@settings(max_examples=500, deadline=None)
def test_parse_form_reads_what_urlencode_writes(pairs: list[tuple[str, str]]) -> None:
    text = urlencode(pairs, quote_via=quote)  # spaces as %20 here; as "+" in the plain urlencode below
    assert fast(text) == qsl(text)
    try:
        text = urlencode(pairs)
    except UnicodeEncodeError:  # lone surrogates cannot be sent
        return
    assert fast(text) == qsl(text) == [(k, v) for k, v in pairs if k or v or "=" in text]


def test_parse_form_limits_fields_as_parse_qsl_does() -> None:
    for count in (MAX_FIELDS - 1, MAX_FIELDS, MAX_FIELDS + 1):
        text = "&".join(f"k{n}=v%20{n}" for n in range(count))
        assert fast(text) == qsl(text)
    assert fast("&" * MAX_FIELDS) == "ValueError"


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("algorithm", ["HMAC_SHA1", "HMAC_SHA256"])
def test_hmac_from_pads_is_hmac(key_length: int, algorithm: str) -> None:
    secret = ("kéy" * 100)[:key_length]
    digest = hashlib.sha1 if algorithm == "HMAC_SHA1" else hashlib.sha256
    for message in (b"", b"https://example.com/twilio/sms", bytes(range(256)) * 5):
        assert _hmac(_hmac_pads(secret, algorithm), message) == hmac.new(secret.encode(), message, digest).digest()


# -- the store -------------------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "bridge.db")
    await store.start()
    return store


async def test_a_text_whose_token_was_seen_records_nothing_not_even_its_new_sid(store: SqliteStore) -> None:
    first = InboundMessage.from_params(inbound_params("one"))
    other = InboundMessage.from_params(inbound_params("two"))
    assert await store.write(lambda tx: record_inbound(tx, first, "tok-1")) is not None
    assert await store.write(lambda tx: record_inbound(tx, other, "tok-1")) is None  # same token, new MessageSid
    assert await store.write(lambda tx: record_inbound(tx, other, "tok-2")) is not None  # so the sid is still new
    assert await store.write(lambda tx: record_inbound(tx, other, None)) is None
    assert [e.data["body"] for e in await store.read_after(0)] == ["one", "two"]
    await store.close()


async def test_one_claim_with_a_key_twice_is_one_key(store: SqliteStore) -> None:
    assert await store.write(lambda tx: tx.claim_keys(["a", "a", ""]))
    assert not await store.write(lambda tx: tx.claim_keys(["a"]))
    await store.close()


async def test_a_batch_with_a_failure_is_replayed_and_shares_one_time(store: SqliteStore) -> None:
    runs: list[int] = []

    def op(n: int, fail: bool = False) -> Callable[[Tx], StoredEvent]:
        def run(tx: Tx) -> StoredEvent:
            runs.append(n)
            event = tx.append("test", {"n": n})
            if fail:
                raise LookupError("no")
            return event

        return run

    # Queued together, so they share a batch: 2 fails after appending; 1 and 3 are kept, with seqs 1 and 2.
    futures = [store.write(op(1)), store.write(op(2, fail=True)), store.write(op(3))]
    one = await futures[0]
    with pytest.raises(LookupError):
        await futures[1]
    three = await futures[2]
    assert (one.seq, three.seq) == (1, 2)
    assert one.ts == three.ts
    assert runs == [1, 2, 1, 2, 3]  # the first pass stops at the failure; the replay runs each op in a savepoint
    assert [e.data for e in await store.read_after(0)] == [{"n": 1}, {"n": 3}]
    await store.close()


# -- the webhook -----------------------------------------------------------------------------------------------


def test_the_bare_asgi_webhook_answers_as_the_starlette_endpoint(tmp_path: Path) -> None:
    """The same requests to ``Webhook`` and to ``accept_webhook`` get the same status, headers and body."""
    from bridge.app import create_app
    from bridge.settings import Settings
    from tests.support import ACCOUNT_SID, AUTH_TOKEN

    base = "http://testserver"
    app = create_app(
        Settings(data_dir=tmp_path, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_url=base, api_base=base)
    )

    async def slow(request: Request) -> Response:
        return await accept_webhook(request, InboundMessage.from_params, record_inbound)

    assert isinstance(app, Starlette)
    assert any(isinstance(getattr(route, "app", None), Webhook) for route in app.router.routes)
    app.router.routes.append(Route("/slow/sms", slow, methods=["POST"]))
    with TestClient(app) as client:
        cases = []
        for path in ("/twilio/sms", "/slow/sms"):
            sid = message_sid()
            body, headers = signed(base + path, inbound_params("hi", sid=sid))
            variants = [
                (body, headers),
                (body, {**headers, "X-Twilio-Signature": "bad"}),
                (body, {k: v for k, v in headers.items() if k != "X-Twilio-Signature"}),
                (body, {**headers, "Content-Type": "text/plain"}),
                (b"From=%ff", headers),
                (body, {**headers, "I-Twilio-Idempotency-Token": "x" * 201}),
                (b"x" * (64 * 1024 + 1), headers),
                (body, headers),  # a duplicate
            ]
            answers = []
            for content, hdrs in variants:
                response = client.post(base + path, content=content, headers=hdrs)
                answers.append((response.status_code, response.headers["content-type"], response.text))
            cases.append(answers)
        assert cases[0] == cases[1]
        assert client.get(base + "/twilio/sms").status_code == 405  # only POSTs take the fast path
    conn = sqlite3.connect(tmp_path / "bridge.db")
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    finally:
        conn.close()
