"""Twilio's REST conventions for every sandbox resource: Basic auth, v2010 errors, paging, SIDs, dates."""

from __future__ import annotations

import base64
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from bridge.sandbox.config import SandboxConfig, config_of

API_VERSION = "2010-04-01"
API_ROOT = f"/{API_VERSION}"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 256 * 1024
MAX_FORM_FIELDS = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

Record = TypeVar("Record")
Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("switchboard.sandbox.rest")


class ApiError(Exception):
    """A REST request Twilio would refuse: answered with the v2010 error shape and ``status``."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        # The legacy v2010 shape. Never add `type` and `title`: twilio-python would then raise
        # TwilioServiceException (RFC 9457) instead of the TwilioRestException real v2010 errors give.
        payload: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            payload["detail"] = self.detail
        payload["more_info"] = f"https://www.twilio.com/docs/errors/{self.code}"
        payload["status"] = self.status
        return payload

    def response(self) -> Response:
        return twilio_json(self.body(), status=self.status, headers=self.headers)


def not_found(path: str) -> ApiError:
    return ApiError(404, 20404, f"The requested resource {path} was not found")


def new_sid(prefix: str) -> str:
    """A fresh Twilio-style SID: two letters and 32 hex digits.

    Random on purpose, even with a seeded sandbox: the bridge deduplicates on SIDs in a log that outlives one
    sandbox run, so two runs with the same seed must not reuse them.
    """
    return prefix + uuid.uuid4().hex


def request_id() -> str:
    return new_sid("RQ")


def rfc2822(moment: datetime) -> str:
    """Twilio's date format: ``Thu, 24 Aug 2023 05:01:45 +0000``."""
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0))


def rfc2822_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else rfc2822(moment)


def twilio_json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer with the headers Twilio's API puts on every response."""
    all_headers = {
        "Twilio-Request-Id": request_id(),
        "X-Home-Region": "us1",
        "X-Api-Domain": "api.twilio.com",
    }
    all_headers.update(headers or {})
    return JSONResponse(payload, status_code=status, headers=all_headers)


class Form:
    """A form body or query string with its repeated keys kept (``MediaUrl=a&MediaUrl=b``)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = list(pairs)

    def get(self, name: str) -> str | None:
        for key, value in self.pairs:
            if key == name:
                return value
        return None

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.pairs)


async def read_form(request: Request) -> Form:
    """The request's form parameters. Twilio's API takes only form bodies; others carry no parameters."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ApiError(413, 20001, "Request body too large")
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not body or media_type != FORM:
        return Form([])
    try:
        text = body.decode("utf-8")
        return Form(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, 20001, "Unable to parse request body") from None


def query_form(request: Request) -> Form:
    """The query string as pairs, repeated keys kept, the same way bodies are read (and refused)."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    try:
        return Form(parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except ValueError:  # more than MAX_FORM_FIELDS fields
        raise ApiError(400, 20001, "Unable to parse query string") from None


# --- authentication -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a REST request authenticated as: the account itself, or one of its API keys."""

    account_sid: str
    username: str


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        20003,
        "Authenticate",
        detail="Your AccountSid or AuthToken was incorrect.",
        headers={"WWW-Authenticate": 'Basic realm="Twilio API"'},
    )


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def authenticate(request: Request, config: SandboxConfig) -> Principal:
    """Check HTTP Basic credentials: the AccountSid and auth token, or an SK… API key and its secret."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise _unauthorized()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        username, sep, password = decoded.partition(":")
    except ValueError:
        # binascii.Error for bad base64, UnicodeDecodeError for bad UTF-8, and a bare ValueError when the
        # header is not even ASCII: all of them are just wrong credentials.
        raise _unauthorized() from None
    if not sep:
        raise _unauthorized()
    # Check both pairs every time so the answer's timing does not say which username exists.
    as_account = _same(username, config.account_sid) & _same(password, config.auth_token)
    as_key = False
    if config.api_key_sid is not None and config.api_key_secret is not None:
        as_key = _same(username, config.api_key_sid) & _same(password, config.api_key_secret)
    if not (as_account or as_key):
        raise _unauthorized()
    return Principal(account_sid=config.account_sid, username=username)


def authorize(principal: Principal, path_account_sid: str, path: str) -> None:
    """Good credentials for another account's path: 404 20404, not 401.

    Twilio authenticates the credentials first, then looks the path up *as that account*; a path it may not
    see is "not found" (seen when a ConnectApp's credentials read another account, twilio/twilio-python#406:
    `{"code": 20404, "message": "The requested resource /2010-04-01/Accounts/AC…/… was not found"}`).
    Answering 404 also keeps private whether that other account exists, which 401/403 would not.
    """
    if not _same(path_account_sid, principal.account_sid):
        raise not_found(path)


def api_endpoint(handler: Endpoint) -> Endpoint:
    """Wrap a resource handler: authenticate, check the path's AccountSid, turn ApiError into Twilio JSON.

    Anything else a handler raises is a sandbox bug, never the client's doing: it is logged with its traceback
    and answered as Twilio answers its own failures (20500, in the v2010 shape), so an SDK sees a
    TwilioRestException rather than a plain-text 500 it cannot parse.
    """

    async def endpoint(request: Request) -> Response:
        try:
            principal = authenticate(request, config_of(request))
            authorize(principal, str(request.path_params.get("account_sid", "")), request.url.path)
            return await handler(request)
        except ApiError as error:
            return error.response()
        except Exception:
            log.exception("sandbox bug: %s failed on %s %s", handler.__name__, request.method, request.url.path)
            return ApiError(500, 20500, "An internal server error has occurred").response()

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def unknown_resource(request: Request) -> Response:
    """Anything under /2010-04-01 no other route answers, after authentication.

    A path some route serves with other methods gets Twilio's 405 (20004) naming them; any other path is
    Twilio's 404. Starlette's own 405 would be plain text, which SDKs cannot read as a Twilio error.
    """
    allowed = _methods_elsewhere(request)
    if allowed:
        raise ApiError(405, 20004, "Method not allowed", headers={"Allow": ", ".join(sorted(allowed))})
    raise not_found(request.url.path)


def _methods_elsewhere(request: Request) -> set[str]:
    """The methods of the routes whose path matches this request but whose methods do not."""
    router = request.scope.get("router")
    methods: set[str] = set()
    for route in getattr(router, "routes", ()):
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] == Match.PARTIAL:
            methods |= route.methods
    return methods


# --- pagination ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageQuery:
    """``PageSize``, ``Page`` and ``PageToken`` from a list request."""

    size: int = DEFAULT_PAGE_SIZE
    number: int = 0
    token: str | None = None

    @classmethod
    def from_form(cls, form: Form) -> PageQuery:
        size = _whole_number(form.get("PageSize"), "PageSize", DEFAULT_PAGE_SIZE)
        if size > MAX_PAGE_SIZE:
            raise ApiError(400, 20007, f"Page size too large: the maximum page size is {MAX_PAGE_SIZE}")
        if size < 1:
            # Twilio's code for a zero or negative PageSize is not documented; 20001 is our closest reading.
            raise ApiError(400, 20001, "PageSize must be at least 1")
        number = _whole_number(form.get("Page"), "Page", 0)
        token = form.get("PageToken") or None
        if token is not None and not (token.startswith(("PA", "PB")) and len(token) > 2):
            raise ApiError(400, 20001, f"Invalid PageToken {token[:64]!r}")
        return cls(size=size, number=number, token=token)


def _whole_number(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, 20001, f"{name} must be a whole number") from None
    if value < 0:
        raise ApiError(400, 20001, f"{name} must not be negative")
    return value


@dataclass(frozen=True, slots=True)
class Page(Generic[Record]):
    """One page of records and what is needed to link to its neighbours."""

    records: list[Record]
    query: PageQuery
    has_next: bool


def paginate(records: Sequence[Record], sid_of: Callable[[Record], str], query: PageQuery) -> Page[Record]:
    """Cut one page out of ``records`` (already in list order, newest first).

    A ``PageToken`` is ``PA`` + the SID of the last record of the previous page (the page *after* it) or
    ``PB`` + the SID of the first record of the next page (the page *before* it), as Twilio's tokens are.
    Keyset paging means records created while a client pages through do not shift later pages. Without a
    token, ``Page`` is an offset in pages.
    """
    start: int
    stop: int
    if query.token is not None:
        anchor = query.token[2:]
        index = next((i for i, record in enumerate(records) if sid_of(record) == anchor), None)
        if index is None:
            raise ApiError(400, 20001, f"Invalid PageToken {query.token[:64]!r}")
        if query.token.startswith("PA"):
            start, stop = index + 1, index + 1 + query.size
        else:
            start, stop = max(0, index - query.size), index
    else:
        start = query.number * query.size
        stop = start + query.size
    return Page(records=list(records[start:stop]), query=query, has_next=stop < len(records))


Filters = Sequence[tuple[str, str]]


def _page_uri(path: str, filters: Filters, size: int, number: int, token: str | None) -> str:
    params = [*filters, ("PageSize", str(size)), ("Page", str(number))]
    if token is not None:
        params.append(("PageToken", token))
    return f"{path}?{urlencode(params)}"


def page_json(
    key: str,
    page: Page[Record],
    to_json: Callable[[Record], dict[str, Any]],
    sid_of: Callable[[Record], str],
    path: str,
    filters: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """Twilio's list envelope: the records under ``key``, ``uri``, ``first_page_uri``, neighbours, counts.

    URIs are relative to https://api.twilio.com, filters first and then paging, as Twilio writes them;
    twilio-python follows ``next_page_uri`` through its own base URL, so paging stays on the sandbox.
    """
    query = page.query
    start = query.number * query.size
    next_uri = None
    if page.has_next and page.records:
        next_uri = _page_uri(path, filters, query.size, query.number + 1, "PA" + sid_of(page.records[-1]))
    previous_uri = None
    if query.number > 0 and page.records:
        previous_uri = _page_uri(path, filters, query.size, query.number - 1, "PB" + sid_of(page.records[0]))
    return {
        key: [to_json(record) for record in page.records],
        "end": start + max(len(page.records) - 1, 0),
        "first_page_uri": _page_uri(path, filters, query.size, 0, None),
        "next_page_uri": next_uri,
        "page": query.number,
        "page_size": query.size,
        "previous_page_uri": previous_uri,
        "start": start,
        "uri": _page_uri(path, filters, query.size, query.number, query.token),
    }


def parse_date_filter(text: str, name: str) -> date:
    """A ``DateSent``-style filter value as a UTC date.

    Twilio documents GMT dates (``YYYY-MM-DD``); twilio-python sends ``YYYY-MM-DDThh:mm:ssZ`` even for a date,
    and RFC 2822 dates are accepted too. Only the day counts, as the documentation describes the filters.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise ApiError(400, 20001, f"{name} is not a date: {value[:64]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).date()
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is a valid date whose UTC day is before year 1
        raise ApiError(400, 20001, f"{name} is out of range: {value[:64]!r}") from None


def day_filter(form: Form, name: str) -> Callable[[datetime | None], bool] | None:
    """``name``, ``name<`` and ``name>`` (inclusive days: "on", "on and before", "on and after") as one test.

    None when the request uses none of the three. A resource without that date (an unsent text has no
    ``DateSent``) matches no filter.
    """
    on, before, after = (form.get(name + suffix) for suffix in ("", "<", ">"))
    if not (on or before or after):
        return None
    day_on = parse_date_filter(on, name) if on else None
    day_before = parse_date_filter(before, f"{name}<") if before else None
    day_after = parse_date_filter(after, f"{name}>") if after else None

    def matches(moment: datetime | None) -> bool:
        if moment is None:
            return False
        day = moment.astimezone(UTC).date()
        return (
            (day_on is None or day == day_on)
            and (day_before is None or day <= day_before)
            and (day_after is None or day >= day_after)
        )

    return matches
