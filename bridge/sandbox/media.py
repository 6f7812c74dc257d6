"""Media the sandbox hosts itself: generated PNG pictures for simulated MMS, WAV audio for recordings."""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import wave
import zlib

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

MEDIA_PATH = "/sandbox/media"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.png$")
SIZE = 16


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def picture(name: str, size: int = SIZE) -> bytes:
    """A ``size``×``size`` RGB PNG: a box in a colour taken from ``name``, with a dark crack across it.

    Generated rather than stored, so the package carries no binary files; the same name gives the same bytes.
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    box = bytes((96 + digest[0] // 2, 64 + digest[1] // 3, 32 + digest[2] // 4))
    crack = bytes((40, 30, 20))
    rows = []
    for y in range(size):
        row = b"".join(crack if abs(x - y) <= 0 or x == size - 1 - y // 2 else box for x in range(size))
        rows.append(b"\x00" + row)  # filter type 0 (None) per scanline
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + _chunk(b"IEND", b"")
    )


WAV_RATE = 8000
MAX_WAV_SECONDS = 120


def voice_wav(name: str, seconds: int) -> bytes:
    """A mono 8 kHz 16-bit WAV of ``seconds`` (at most 2 minutes): a soft, wavering tone, like a far voice.

    Generated from ``name`` rather than stored, like the pictures: the same recording gives the same bytes.
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    pitch = 140 + digest[0]  # 140-395 Hz, somewhere in a speaking voice's range
    frames = WAV_RATE * max(0, min(seconds, MAX_WAV_SECONDS))
    samples = bytearray()
    for n in range(frames):
        t = n / WAV_RATE
        # Syllable-like swells four times a second, so it does not sound like a dial tone.
        envelope = 0.5 - 0.5 * math.cos(2 * math.pi * 4 * t)
        value = int(6000 * envelope * math.sin(2 * math.pi * pitch * t))
        samples += struct.pack("<h", value)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(WAV_RATE)
        writer.writeframes(bytes(samples))
    return out.getvalue()


def media_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}{MEDIA_PATH}/{name}"


async def media(request: Request) -> Response:
    """GET /sandbox/media/{name}: a picture for any ``*.png`` name."""
    name = request.path_params["name"]
    if not _NAME.match(name):
        return PlainTextResponse("no such media: names are letters, digits, - and _, ending in .png\n", 404)
    return Response(picture(name), media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


def routes() -> list[Route]:
    return [Route(f"{MEDIA_PATH}/{{name}}", media, methods=["GET", "HEAD"])]
