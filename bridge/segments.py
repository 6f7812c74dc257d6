"""How many SMS segments a body costs, and in which encoding — as Twilio counts them.

A segment carries 140 octets. A body that fits in one segment is sent alone; a longer body is split and every part
gives up 6 octets to the concatenation header, which leaves 153 GSM-7 septets or 67 UCS-2 code units per part.
Twilio never splits a GSM-7 escape pair (``€``, ``[`` …) or a user-perceived character (an emoji, a flag, a letter
with its accents) across two parts, so packing is done grapheme by grapheme. The body is UCS-2 as soon as one
grapheme is not a single GSM-7 character.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import regex

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 default alphabet (ESC excluded) and the characters reached through its extension table.
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

SINGLE: Final = {"GSM-7": 160, "UCS-2": 70}
CONCATENATED: Final = {"GSM-7": 153, "UCS-2": 67}

_GRAPHEME = regex.compile(r"\r\n|\X")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """The cost of one body. ``units`` are septets (GSM-7) or UTF-16 code units (UCS-2)."""

    encoding: Encoding
    segments: int
    characters: int
    units: int
    per_segment: int
    remaining: int

    def summary(self) -> str:
        """A short line for a composer's status bar, e.g. ``GSM-7 · 2 segments · 146 left``."""
        noun = "segment" if self.segments == 1 else "segments"
        return f"{self.encoding} · {self.segments} {noun} · {self.remaining} left"


def graphemes(body: str) -> list[str]:
    """User-perceived characters; CR LF counts as two, as Twilio's calculator counts it."""
    out: list[str] = []
    for g in _GRAPHEME.findall(body):
        if g == "\r\n":
            out += ["\r", "\n"]
        else:
            out.append(g)
    return out


def _septets(grapheme: str) -> int | None:
    if grapheme in GSM7_BASIC:
        return 1
    if grapheme in GSM7_EXTENSION:
        return 2
    return None


def _code_units(grapheme: str) -> int:
    return len(grapheme.encode("utf-16-le")) // 2


def analyze(body: str) -> SegmentInfo:
    """Encoding, segment count and room left for ``body``. Pure; safe on any ``str``."""
    parts = graphemes(body)
    septets = [_septets(g) for g in parts]
    costs: list[int]
    encoding: Encoding
    if all(s is not None for s in septets):
        encoding, costs = "GSM-7", [s for s in septets if s is not None]
    else:
        encoding, costs = "UCS-2", [_code_units(g) for g in parts]
    units = sum(costs)
    if units <= SINGLE[encoding]:
        return SegmentInfo(encoding, 1, len(parts), units, SINGLE[encoding], SINGLE[encoding] - units)
    capacity = CONCATENATED[encoding]
    segments, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            if cost > capacity:
                # A grapheme longer than a whole part (a very long ZWJ or combining run) has to be split after all.
                total = used + cost
                segments += (total - 1) // capacity
                used = total - (total - 1) // capacity * capacity
                continue
            segments, used = segments + 1, 0
        used += cost
    return SegmentInfo(encoding, segments, len(parts), units, capacity, capacity - used)
