"""`switchboard-bridge agents`: tokens printed once as the last line, listed, revoked; mistakes explained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridge.store import agent_for_token, open_database


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agents_add_list_revoke(tmp_path: Path) -> None:
    added = cli("agents", "add", "ana", data_dir=tmp_path)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    db = open_database(tmp_path / "bridge.db")
    assert agent_for_token(db.conn, token) == "ana"
    db.close()

    listed = cli("agents", "list", data_dir=tmp_path)
    assert listed.returncode == 0
    assert listed.stdout.startswith("ana\tactive")
    assert token not in listed.stdout

    twice = cli("agents", "add", "ana", data_dir=tmp_path)
    assert twice.returncode == 1 and "already exists" in twice.stderr

    assert cli("agents", "revoke", "ana", data_dir=tmp_path).returncode == 0
    assert "revoked" in cli("agents", "list", data_dir=tmp_path).stdout
    missing = cli("agents", "revoke", "ana", data_dir=tmp_path)
    assert missing.returncode == 1 and "no active agent" in missing.stderr


def test_agents_add_needs_a_name(tmp_path: Path) -> None:
    result = cli("agents", "add", data_dir=tmp_path)
    assert result.returncode == 2
    assert "needs a NAME" in result.stderr
    assert "Traceback" not in result.stderr
