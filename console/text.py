"""Customer text is data: it is shown exactly as written, never as markup, escape sequences or cursor moves.

Rich ``Text`` never parses markup, so ``[red]hi[/]`` stays those characters. Control characters are the other half:
ESC, C1 controls, DEL and bidirectional overrides could still drive the terminal or reorder what an agent reads, so
each is replaced by a visible stand-in (ESC becomes ``␛``). No textual import: the cache-side code may use it too.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls except tab and newline, DEL, C1 controls, line/paragraph separators, bidi embeddings and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _stand_in(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode "control pictures": ␛ for ESC, ␇ for BEL …
    if code == 0x7F:
        return "␡"
    return "\ufffd"


def inert(text: str) -> str:
    """``text`` with every character that could act on a terminal made visible instead. Keeps newlines and tabs."""
    return _UNSAFE.sub(_stand_in, text)


def one_line(text: str) -> str:
    """Inert, on a single line: newlines and tabs become spaces and runs of spaces collapse (for rows and titles)."""
    return " ".join(inert(text).split())


def plain(text: str, style: str = "") -> Text:
    """A ``Text`` of customer-supplied ``text``: no markup parsed, no control character kept."""
    return Text(inert(text).expandtabs(4), style=style, end="")
