"""The signature check agrees with Twilio: the official SDK's vectors, and the SDK itself on generated requests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from bridge import signature

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "signature-vectors.json").read_text())
TOKEN = VECTORS["auth_token"]


def _params(vector: dict[str, Any]) -> list[tuple[str, str]]:
    if "params_multi" in vector:
        return [(k, v) for k, v in vector["params_multi"]]
    return list(vector.get("params", {}).items())


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["name"] for v in VECTORS["vectors"]])
def test_sdk_vectors(vector: dict[str, Any]) -> None:
    raw = vector["raw_body"].encode() if "raw_body" in vector else None
    verdict = signature.validate(vector["url"], _params(vector), vector["signature"], TOKEN, raw_body=raw)
    assert verdict is vector["valid"]


def test_missing_or_empty_signature_is_refused() -> None:
    url, params = "https://example.com/twilio/sms", {"Body": "hi"}
    assert not signature.validate(url, params, None, TOKEN)
    assert not signature.validate(url, params, "", TOKEN)


def test_shared_key_sha256_uses_the_named_key() -> None:
    url, params = "https://example.com/twilio/sms", [("Body", "hi"), ("From", "+14155550123")]
    keys = {"K1": "first-secret", "K2": "second-secret"}
    sig = signature.compute_signature(url, params, keys["K2"], "HMAC_SHA256")
    header = "algorithm=HMAC_SHA256,key=K2"
    assert signature.validate(url, params, sig, TOKEN, settings_header=header, shared_keys=keys)
    assert not signature.validate(
        url, params, sig, TOKEN, settings_header="algorithm=HMAC_SHA256,key=K1", shared_keys=keys
    )
    assert not signature.validate(
        url, params, sig, TOKEN, settings_header="algorithm=HMAC_SHA256,key=K9", shared_keys=keys
    )
    assert not signature.validate(url, params, sig, TOKEN, settings_header="algorithm=MD5,key=K2", shared_keys=keys)
    # The same signature is not accepted as a plain auth-token signature.
    assert not signature.validate(url, params, sig, TOKEN)


def test_json_body_is_bound_by_its_hash_not_its_fields() -> None:
    body = b'{"MessageSid": "SM1"}'
    url = "https://example.com/twilio/sms?bodySHA256=" + hashlib.sha256(body).hexdigest()
    sig = signature.compute_signature(url, (), TOKEN)
    assert signature.validate(url, (), sig, TOKEN, raw_body=body)
    assert not signature.validate(url, (), sig, TOKEN, raw_body=body + b" ")
    assert not signature.validate(url, (), sig, TOKEN)  # the hash is claimed but no body given
    plain = "https://example.com/twilio/sms"
    assert not signature.validate(plain, (), signature.compute_signature(plain, (), TOKEN), TOKEN, raw_body=body)


@pytest.mark.parametrize(
    "url",
    ["https://example.com:99999/x", "https://example.com:abc/x", "http://[::1/x", "https://exa mple.com/x", ""],
)
def test_hostile_urls_are_refused_not_raised(url: str) -> None:
    assert signature.validate(url, {"a": "b"}, "c2lnbmF0dXJl", TOKEN) is False


# ---- property: our verdict is the SDK's verdict --------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=12,
)
_segment = st.text(alphabet=st.sampled_from("abcXYZ019-._~%!$&'()*+,;=:@é"), max_size=8)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http"]))
    host = draw(st.sampled_from(["example.com", "bridge.example.org", "127.0.0.1", "sub.domain.example"]))
    port = draw(st.sampled_from(["", ":443", ":80", ":8080", ":1234"]))
    path = "/" + "/".join(quote(s, safe="/%!$&'()*+,;=:@") for s in draw(st.lists(_segment, max_size=3)))
    query_pairs = draw(st.lists(st.tuples(_segment, _segment), max_size=3))
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query_pairs)
    odd = draw(st.sampled_from(["", "&", "&&x", "=", "a=1&a=2", "k"]))
    query = "&".join(p for p in (query, odd) if p)
    return f"{scheme}://{host}{port}{path}" + (f"?{query}" if query else "")


class _MultiDict(dict[str, list[str]]):
    """What the SDK accepts for repeated keys: an object with ``getall``."""

    def getall(self, key: str) -> list[str]:
        return self[key]


def _sdk_params(pairs: list[tuple[str, str]]) -> _MultiDict:
    grouped = _MultiDict()
    for k, v in pairs:
        grouped.setdefault(k, []).append(v)
    return grouped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    url=_urls(),
    pairs=st.lists(
        st.tuples(st.sampled_from(["Body", "From", "To", "Sid", "Body2", "é", ""]) | _text, _text), max_size=6
    ),
    signer=st.sampled_from(["as-is", "without-port", "with-port", "other-token", "tampered"]),
    token=st.sampled_from([TOKEN, "a1b2c3d4e5f6", "ünï"]),
)
def test_verdict_matches_official_sdk(url: str, pairs: list[tuple[str, str]], signer: str, token: str) -> None:
    sdk = RequestValidator(token)
    sdk_params = _sdk_params(pairs)
    if signer == "as-is":
        sig = sdk.compute_signature(url, sdk_params)
    elif signer == "without-port":
        sig = sdk.compute_signature(url.replace(":443", "").replace(":80", "").replace(":8080", ""), sdk_params)
    elif signer == "with-port":
        sig = sdk.compute_signature(signature._url_with_port(url), sdk_params)
    elif signer == "other-token":
        sig = RequestValidator(token + "x").compute_signature(url, sdk_params)
    else:
        sig = sdk.compute_signature(url, _sdk_params([*pairs, ("Extra", "1")]))
    ours = signature.validate(url, pairs, sig, token)
    theirs = bool(sdk.validate(url, sdk_params, sig))
    assert ours == theirs, (url, pairs, signer)


@settings(max_examples=100, deadline=None)
@given(url=_urls(), body=st.text(max_size=64), tamper=st.booleans())
def test_json_body_verdict_matches_official_sdk(url: str, body: str, tamper: bool) -> None:
    sep = "&" if "?" in url else "?"
    signed_url = f"{url}{sep}bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    sdk = RequestValidator(TOKEN)
    sig = sdk.compute_signature(signed_url, {})
    sent = body + "!" if tamper else body
    ours = signature.validate(signed_url, (), sig, TOKEN, raw_body=sent.encode())
    theirs = bool(sdk.validate(signed_url, sent, sig))
    assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(
    url=st.text(max_size=40),
    sig=st.text(max_size=40),
    header=st.none() | st.text(max_size=30),
    body=st.none() | st.binary(max_size=16),
)
def test_never_raises(url: str, sig: str, header: str | None, body: bytes | None) -> None:
    verdict = signature.validate(
        url, [("a", "b")], sig, TOKEN, raw_body=body, settings_header=header, shared_keys={"K": "s"}
    )
    assert isinstance(verdict, bool)
