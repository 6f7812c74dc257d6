"""`uv run pytest -m screenshots` regenerates screenshots/*.svg (the README shows them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual._doc import take_svg_screenshot
from textual.pilot import Pilot

from tests import snapshot_apps

SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"

SHOTS: dict[str, Callable[[Pilot[Any]], Awaitable[None]]] = {
    "inbox": snapshot_apps.inbox_only,
    "thread": snapshot_apps.open_failed_thread,
    "composer": snapshot_apps.composing,
    "search": snapshot_apps.searching,
    "help": snapshot_apps.helping,
}
CALL_SHOTS: dict[str, Callable[[Pilot[Any]], Awaitable[None]]] = {"calls": snapshot_apps.my_callers_thread}


@pytest.mark.screenshots
@pytest.mark.parametrize("name", sorted(SHOTS) + sorted(CALL_SHOTS))
def test_screenshot(name: str) -> None:
    app = snapshot_apps.calls_app() if name in CALL_SHOTS else snapshot_apps.demo_app()
    svg = take_svg_screenshot(app=app, terminal_size=(120, 36), run_before=SHOTS.get(name) or CALL_SHOTS[name])
    SCREENSHOTS.mkdir(exist_ok=True)
    (SCREENSHOTS / f"{name}.svg").write_text(svg, encoding="utf-8")
    assert "Switchboard" in svg
