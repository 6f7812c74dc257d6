"""The calls panel's first line: calls waiting, the longest wait, agents available, and the last hour's queue depth."""

from __future__ import annotations

from datetime import datetime, timedelta

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Sparkline

from console import times
from console.cache import clock_time
from console.text import one_line

SPARK_MINUTES = 60
"""The sparkline's span, one value per minute."""


def depth_per_minute(samples: list[tuple[str, int]], now: datetime, minutes: int = SPARK_MINUTES) -> list[float]:
    """Queue depth as the most callers waiting in each minute of the last ``minutes``: a step function, so a
    minute with no change has the level the one before ended on. ``samples`` are (time, waiting), oldest first."""
    start = now - timedelta(minutes=minutes)
    points = [(when, waiting) for when, waiting in ((times.parse(at), n) for at, n in samples) if when is not None]
    level, index = 0, 0
    while index < len(points) and points[index][0] < start:  # the level the hour started at
        level = points[index][1]
        index += 1
    values: list[float] = []
    for minute in range(1, minutes + 1):
        end = start + timedelta(minutes=minute)
        peak = level
        while index < len(points) and points[index][0] < end:
            level = points[index][1]
            peak = max(peak, level)
            index += 1
        values.append(float(peak))
    return values


class _Summary(Widget):
    """The header's words; redrawn every second (the longest wait ticks) without a layout pass."""

    DEFAULT_CSS = """
    _Summary { width: 1fr; height: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.line = Text()

    def render(self) -> Text:
        return self.line


class QueueHeader(Widget):
    """``☎ 3 waiting · longest 4:12 · 2 agents available · you: busy ▁▂▅▇▃ last hour``."""

    DEFAULT_CSS = """
    QueueHeader {
        height: 1;
        layout: horizontal;
        background: $boost;
        padding: 0 1;
        & > Sparkline { width: 24; margin: 0 1; }
        & > #spark-label { width: 9; color: $text-muted; }
        & .-waiting { color: $warning; text-style: bold; }
    }
    """

    def compose(self) -> ComposeResult:
        yield _Summary()
        yield Sparkline([], id="queue-depth")
        spark_label = _Summary()
        spark_label.id = "spark-label"
        spark_label.line = Text("last hour", no_wrap=True)
        yield spark_label

    def on_resize(self) -> None:
        # At 80 columns the words matter more than the sparkline's resolution.
        narrow = self.size.width < 100
        self.query_one(Sparkline).styles.width = 12 if narrow else 24
        self.query_one("#spark-label").display = not narrow

    def show(self, count: int, oldest: str | None, agents_available: int, presence: str | None, now: datetime) -> None:
        """Redraw the words for ``now``: ``count`` callers waiting, the longest since ``oldest``."""
        line = Text(no_wrap=True, overflow="ellipsis")
        warning = self.app.theme_variables.get("warning", "yellow")
        if count:
            line.append("☎ ", f"bold {warning}")
            line.append(f"{count} waiting", f"bold {warning}")
            since = times.parse(oldest or "")
            if since is not None:
                line.append(f" · longest {clock_time(max(0, int((now - since).total_seconds())))}")
        else:
            line.append("☎ ", "dim")
            line.append("No calls waiting", "dim")
        if agents_available or presence:  # a team that takes no calls hears nothing about agents here
            line.append(f" · {agents_available} agent{'' if agents_available == 1 else 's'} available")
        if presence:
            line.append(" · you: ")
            colour = {"available": "success", "away": "warning", "busy": "accent", "offline": "error"}.get(presence)
            line.append(one_line(presence), f"bold {self.app.theme_variables.get(colour or '', '')}".strip())
        summary = self.query_one(_Summary)
        summary.line = line
        summary.refresh()

    def show_depth(self, values: list[float]) -> None:
        spark = self.query_one(Sparkline)
        if list(spark.data or []) != values:
            spark.data = values
