"""A webhook receiver for tests: a tiny Starlette app that records every request and answers as told."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.datastructures import MultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived: the full URL (raw query string), headers, and form pairs in order."""

    method: str
    url: str
    path: str
    headers: dict[str, str]
    pairs: list[tuple[str, str]]

    @property
    def form(self) -> MultiDict:
        """The form as a multidict, which twilio's RequestValidator accepts (it calls ``getlist``)."""
        return MultiDict(self.pairs)

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.pairs if key == name), None)

    @property
    def names(self) -> set[str]:
        return {key for key, _ in self.pairs}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int = 200
    body: str = EMPTY_TWIML
    content_type: str = "text/xml; charset=utf-8"


@dataclass
class WebhookReceiver:
    """Records requests on any path; ``answers`` maps a path to what that path replies."""

    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            body = await request.body()
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            query = request.scope.get("query_string", b"").decode("latin-1")
            host = request.headers["host"]
            url = f"{request.url.scheme}://{host}{request.url.path}" + (f"?{query}" if query else "")
            entry = Received(request.method, url, request.url.path, dict(request.headers), pairs)
            with self._lock:
                self.received.append(entry)
            answer = self.answers.get(request.url.path, Answer())
            return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

        return Starlette(routes=[Route("/{path:path}", record, methods=["POST", "GET"])])

    def snapshot(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], path: str | None = None, timeout: float = 5.0
    ) -> list[Received]:
        """Poll until ``predicate`` holds for the requests on ``path``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.snapshot(path)
            if predicate(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s; received on {path}: {seen!r}")
            time.sleep(0.01)
