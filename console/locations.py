"""Where the console keeps things: small "return and create" functions over the XDG directories."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import platformdirs

APP = "switchboard"


def config_dir() -> Path:
    path = Path(platformdirs.user_config_dir(APP, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_file() -> Path:
    return config_dir() / "config.toml"


def data_dir() -> Path:
    path = Path(platformdirs.user_data_dir(APP, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def profile_name(bridge_url: str) -> str:
    """A readable, filesystem-safe name for one bridge: its host and port plus a short hash of the URL."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "-", bridge_url.split("://", 1)[-1]).strip("-")[:48]
    return f"{readable}-{hashlib.sha256(bridge_url.encode()).hexdigest()[:8]}"


def cache_file(bridge_url: str) -> Path:
    """The local cache for one bridge profile."""
    path = data_dir() / "profiles"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{profile_name(bridge_url)}.db"
