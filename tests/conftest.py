"""Shared fixtures: a bridge on a temporary data directory, reachable through Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bridge.app import create_app
from bridge.settings import Settings
from bridge.store import add_agent, open_database
from tests.support import ACCOUNT_SID, AUTH_TOKEN

BASE = "http://testserver"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "bridge",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        public_url=BASE,
        api_base="http://127.0.0.1:9",  # nothing listens: tests that send replies bring a sandbox
        rest_retries=0,
        rest_backoff=0.0,
        revocation_poll=0.05,
    )


@pytest.fixture
def agent_token(settings: Settings) -> str:
    db = open_database(settings.db_path)
    try:
        return add_agent(db, "ana")
    finally:
        db.close()


@pytest.fixture
def client(settings: Settings, agent_token: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url=BASE) as test_client:
        yield test_client
