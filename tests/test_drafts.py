"""Drafts on disk (``console.drafts``): what is saved comes back, a bad file never costs the console."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from console.drafts import MAX_FILE_BYTES, DraftFile, drafts_file


def test_drafts_come_back_as_saved_and_only_their_owner_can_read_them(tmp_path: Path) -> None:
    path = drafts_file(tmp_path / "bridge-abc.db")
    assert path == tmp_path / "bridge-abc.drafts.json"
    hostile = "Hi [bold]there[/bold] \x1b[31m 🎉\nline two"
    drafts = {("CVa", False): hostile, ("CVa", True): "note", ("CVb", False): "  "}
    file = DraftFile(path)
    assert file.save(drafts) and file.problem is None
    assert DraftFile(path).load() == {("CVa", False): drafts[("CVa", False)], ("CVa", True): "note"}  # blank: gone
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert drafts_file(":memory:") is None


def test_no_file_is_no_drafts(tmp_path: Path) -> None:
    file = DraftFile(tmp_path / "none.drafts.json")
    assert file.load() == {} and file.problem is None


def test_a_file_not_written_by_the_console_is_put_aside_not_overwritten(tmp_path: Path) -> None:
    cases = [
        b"not json",
        b'{"version": 2, "drafts": []}',
        b'{"version": 1, "drafts": [{"conversation_id": "CVa", "note": 0, "text": "x"}]}',
        b'{"version": 1, "drafts": [{"conversation_id": "CVa", "note": false, "text": "\\ud800"}]}',
        b"[" * 100_000,
        b" " * (MAX_FILE_BYTES + 1),
    ]
    for n, content in enumerate(cases):
        path = tmp_path / f"case{n}.drafts.json"
        path.write_bytes(content)
        file = DraftFile(path)
        assert file.load() == {}, content[:40]
        assert file.problem is not None and "could not be read" in file.problem
        assert not path.exists() and path.with_name(path.name + ".unreadable").read_bytes() == content


def test_a_save_that_cannot_be_written_says_why_and_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "p.drafts.json"
    file = DraftFile(path)
    assert file.save({("CVa", False): "first"})
    tmp_path.chmod(0o500)  # no new files in the directory: the temporary file cannot be made
    try:
        if DraftFile(tmp_path / "probe").save({}):  # running as root: permissions do not stop us; try a lone
            (tmp_path / "probe").unlink()  # surrogate instead, which no file can hold as UTF-8
            assert not file.save({("CVa", False): "\ud800"})
        else:
            assert not file.save({("CVa", False): "second"})
    finally:
        tmp_path.chmod(0o700)
    assert file.problem is not None and "Could not save the drafts" in file.problem
    assert json.loads(path.read_text())["drafts"][0]["text"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
