"""Switchboard console (the agents' terminal app)."""

import os

# Textual draws at most 60 frames a second unless told otherwise, so a change waits up to 16.7 ms for its frame,
# and a thread switch paints three (the cursor, the header, the thread). At 120 a thread switch measured p50 / p95
# 35 / 47 ms against 48 / 58 ms, and an inbound text 18 / 42 against 21 / 48 ms (bench_console, 1M cache); frames
# are drawn only when something changed, so an idle console costs no more. Read when Textual is first imported:
# set here, before any module of the console imports it. TEXTUAL_FPS in the environment still wins.
os.environ.setdefault("TEXTUAL_FPS", "120")
