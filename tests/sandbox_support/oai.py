"""Twilio's OpenAPI description as an oracle: validate real HTTP exchanges with the sandbox against it."""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from functools import cache
from pathlib import Path
from typing import Any

import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.validation.schemas.datatypes import FormatValidatorsDict

SPEC_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "twilio_api_v2010.json"
TWILIO_API = "https://api.twilio.com"
_RFC2822_UTC = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def _rfc2822(value: Any) -> bool:
    if not isinstance(value, str) or not _RFC2822_UTC.match(value):
        return False
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return True


def _uri_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and v.startswith("/2010-04-01/") for k, v in value.items()
    )


# Twilio's own formats, which generic validators skip silently. Checking them is the point of using the spec.
TWILIO_FORMATS: FormatValidatorsDict = {
    "date-time-rfc-2822": _rfc2822,
    "phone-number": lambda value: isinstance(value, str) and bool(_E164.match(value)),
    "currency": lambda value: isinstance(value, str) and bool(re.fullmatch(r"[A-Z]{3}", value)),
    "uri-map": _uri_map,
}


# Enums the spec references without `nullable` although their own description says they are null at times
# ("When a conference is in progress, will be `null`"): the description, and Twilio's answers, win.
DOCUMENTED_NULL_ENUMS = ("conference_enum_reason_conference_ended",)


@cache
def twilio_openapi() -> OpenAPI:
    """The v2010 description, loaded once per process (1.8 MB).

    The spec itself is not re-validated (``spec_validator_cls=None``): it is Twilio's, it is what we test
    against rather than what we test, and checking it costs about 2 s. Every response property is treated as
    required, so a field the sandbox forgets is an error, as is a value of the wrong type, enum or format.
    """
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    for name in DOCUMENTED_NULL_ENUMS:
        schema = spec["components"]["schemas"][name]
        schema["nullable"] = True
        schema["enum"] = [*schema["enum"], None]  # OpenAPI 3.0: a nullable enum must list null itself
    config = Config(
        spec_validator_cls=None,
        extra_format_validators=TWILIO_FORMATS,
        response_properties_default_policy="required",
    )
    return OpenAPI.from_dict(spec, config=config)


class AsTwilioRequest(RequestsOpenAPIRequest):
    """A request to the sandbox, seen as if it had gone to api.twilio.com (the spec's only server)."""

    @property
    def host_url(self) -> str:
        return TWILIO_API


def validate_exchange(response: requests.Response) -> None:
    """Raise if ``response`` (with its request) does not match Twilio's description of that operation."""
    twilio_openapi().validate_response(AsTwilioRequest(response.request), RequestsOpenAPIResponse(response))


def schema_properties(name: str) -> set[str]:
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return set(spec["components"]["schemas"][name]["properties"])
