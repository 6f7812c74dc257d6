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
    lock = path.with_name(path.name + ".lock")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, lock.name]  # no temporary file left behind
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


def test_a_save_that_cannot_be_written_says_why_and_removes_the_stale_file(tmp_path: Path) -> None:
    """The file it could not replace may hold a reply sent since: it must not come back as a draft."""
    path = tmp_path / "p.drafts.json"
    file = DraftFile(path)
    assert file.save({("CVa", False): "first"})
    assert not file.save({("CVa", False): "\ud800"})  # a lone surrogate: no file can hold it as UTF-8
    assert file.problem is not None and "Could not save the drafts" in file.problem
    assert list(tmp_path.iterdir()) == []  # neither the stale file nor a temporary one
    assert file.save({("CVa", False): "third"}) and file.problem is None
    assert json.loads(path.read_text())["drafts"][0]["text"] == "third"


def test_a_file_that_cannot_be_opened_is_never_written_over(tmp_path: Path) -> None:
    path = tmp_path / "p.drafts.json"
    path.mkdir()  # stands for any file this user cannot read
    file = DraftFile(path)
    assert file.load() == {} and not file.usable
    assert file.problem is not None and "left as it is" in file.problem
    assert not file.save({("CVa", False): "new"}) and path.is_dir()


def test_one_console_keeps_a_profiles_drafts_at_a_time(tmp_path: Path) -> None:
    """A second console on the profile (another terminal) neither reads nor writes the drafts the first keeps."""
    path = tmp_path / "p.drafts.json"
    first, second = DraftFile(path), DraftFile(path)
    assert first.save({("CVa", False): "mine"}) and first.load() == {("CVa", False): "mine"} and first.usable
    assert second.load() == {} and not second.usable
    assert second.problem is not None and "Another console" in second.problem
    assert not second.save({}) and first.load() == {("CVa", False): "mine"}
    first.close()
    third = DraftFile(path)
    assert third.load() == {("CVa", False): "mine"} and third.usable
