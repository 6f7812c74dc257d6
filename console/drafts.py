"""Drafts kept on disk, beside the cache: a reply half-written survives the console (a dropped SSH session, a
closed terminal, a crash, a restart) and is back in its conversation's box the next time it is opened.

One small JSON file per bridge profile, replaced whole on each save (written to a temporary file, then renamed
over the old one, so a save cut short leaves the previous drafts, never half a file), readable by its owner only:
drafts hold what customers are told. Not in the cache's database: the catch-up helper holds that database's write
lock for seconds at a time, and a draft must be saved within a second of being typed whatever the link is doing.

One console keeps a profile's drafts at a time: each save writes every draft it holds, so two consoles on one
profile (two terminals) would overwrite each other's, and one could bring back a reply the other has sent. The first
takes a lock (``flock`` on ``<file>.lock``, let go when its process ends, however it ends); a second one keeps its
drafts in memory and says so, and asks before quitting with some written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock, one console per profile is then up to the agent
    fcntl = None  # type: ignore[assignment]

VERSION: Final = 1
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""A drafts file larger than this is not read (it was not written by the console)."""

DraftKey = tuple[str, bool]
"""(conversation id, is a note)."""


def drafts_file(cache_path: Path | str) -> Path | None:
    """Where the drafts of the cache at ``cache_path`` are kept; None for an in-memory cache."""
    if str(cache_path) == ":memory:":
        return None
    path = Path(cache_path)
    return path.with_name(path.name.removesuffix(".db") + ".drafts.json")


class DraftFile:
    """Load and save one profile's drafts. Never raises: a draft that cannot be kept is said, not a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None
        """What went wrong with the last load or save, for the console to say; None when all went well."""
        self.usable = True
        """False once this console must not write the file: another console keeps it, or it could not be read."""
        self._lock: int | None = None

    def load(self) -> dict[DraftKey, str]:
        """Take the profile's drafts lock, then the drafts saved last (none if there is no file yet).

        Another console holding the lock, or a file that cannot be opened, makes this one ``usable=False`` (it
        never writes over drafts it could not read). A file that is not drafts is renamed aside (so nothing an
        agent might still want is overwritten) and ``problem`` says so.
        """
        self.problem = None
        if not self._take_lock():
            self.usable = False
            self.problem = (
                "Another console on this profile keeps the saved drafts: this one's last only until it quits."
            )
            return {}
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self.usable = False
            self.problem = (
                f"Could not read the saved drafts ({self.path}): {exc.strerror or exc}. The file is left as it is; "
                "this console's drafts last only until it quits."
            )
            return {}
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("too large")
            return _parse(json.loads(raw))
        except (ValueError, UnicodeDecodeError, RecursionError, TypeError, KeyError) as exc:
            aside = self.path.with_name(self.path.name + ".unreadable")
            if aside.exists():  # an earlier one: keep both
                aside = aside.with_name(f"{aside.name}.{time.strftime('%Y%m%dT%H%M%S')}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self.problem = f"The saved drafts could not be read ({exc}); the file is kept as {aside}."
            return {}

    def save(self, drafts: Mapping[DraftKey, str]) -> bool:
        """Replace the saved drafts with ``drafts`` (empty ones left out). False, with ``problem`` set, if they
        could not be saved: then the old file is removed if it can be (removing needs no free space), as it may
        hold a reply sent since, which must not come back as a draft."""
        if not self.usable:
            return False
        saved_at = datetime.now(UTC).isoformat(timespec="seconds")
        entries = [
            {"conversation_id": cid, "note": note, "text": text, "saved_at": saved_at}
            for (cid, note), text in sorted(drafts.items())
            if text.strip()
        ]
        payload = json.dumps({"version": VERSION, "drafts": entries}, ensure_ascii=False, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
                    file.write(payload)
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except (OSError, UnicodeEncodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.problem = f"Could not save the drafts ({self.path}): {reason}."
            return False
        self.problem = None
        return True

    def close(self) -> None:
        """Let go of the lock (the process ending does too)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _take_lock(self) -> bool:
        if self._lock is not None or fcntl is None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return True  # no lock file can be made here: the save will say what is wrong with the directory
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock = fd
        return True


def _parse(document: Any) -> dict[DraftKey, str]:
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError("not a drafts file of this version")
    drafts: dict[DraftKey, str] = {}
    for entry in document["drafts"]:
        cid, note, text = entry["conversation_id"], entry["note"], entry["text"]
        if not (isinstance(cid, str) and isinstance(note, bool) and isinstance(text, str)):
            raise ValueError("a draft is not (conversation_id, note, text)")
        text.encode("utf-8")  # a lone surrogate (valid JSON, no text) raises UnicodeEncodeError, a ValueError
        if text.strip():
            drafts[(cid, note)] = text
    return drafts
