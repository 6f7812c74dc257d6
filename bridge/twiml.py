"""TwiML documents, built with ElementTree (never by formatting strings, so no caller-supplied text can break out).

Each function returns the bytes of one ``<Response>`` document as twilio-python writes them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
VOICE = "Polly.Joanna"


def _attrs(values: Mapping[str, str | int | bool | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


class Document:
    """A ``<Response>`` under construction: add verbs in order, then ``bytes()``."""

    def __init__(self) -> None:
        self.root = ET.Element("Response")

    def verb(self, name: str, text: str | None = None, **attrs: str | int | bool | None) -> ET.Element:
        element = ET.SubElement(self.root, name, _attrs(attrs))
        if text is not None:
            element.text = text
        return element

    def say(self, text: str) -> Document:
        self.verb("Say", text, voice=VOICE)
        return self

    def play_or_pause(self, url: str, pause: int = 1) -> Document:
        """Music, or (no music configured) a short pause, so a wait loop still takes time."""
        if url:
            self.verb("Play", url)
        else:
            self.verb("Pause", length=pause)
        return self

    def hangup(self) -> Document:
        self.verb("Hangup")
        return self

    def __bytes__(self) -> bytes:
        return DECLARATION + ET.tostring(self.root, encoding="unicode", short_empty_elements=True).encode("utf-8")


def empty() -> bytes:
    return bytes(Document())


def enqueue(queue: str, greeting: str | None, action: str, wait_url: str) -> bytes:
    """Greet (unless re-queued after a failed handoff) and wait in ``queue``."""
    doc = Document()
    if greeting:
        doc.say(greeting)
    doc.verb("Enqueue", queue, action=action, method="POST", waitUrl=wait_url, waitUrlMethod="POST")
    return bytes(doc)


def wait(position: int | None, music: str) -> bytes:
    """One turn of the wait loop: where the caller is in line, then music; Twilio asks again when it runs out."""
    doc = Document()
    if position is not None:
        doc.say("You are the next caller." if position <= 1 else f"You are caller number {position} in line.")
    doc.play_or_pause(music, pause=1)
    return bytes(doc)


def leave() -> bytes:
    """Out of the queue (the longest wait has passed): the ``<Enqueue>`` action decides what comes next."""
    doc = Document()
    doc.verb("Leave")
    return bytes(doc)


def voicemail(prompt: str, action: str, status_callback: str, max_length: int = 120) -> bytes:
    doc = Document()
    doc.say(prompt)
    doc.verb(
        "Record",
        action=action,
        method="POST",
        maxLength=max_length,
        playBeep=True,
        finishOnKey="#",
        recordingStatusCallback=status_callback,
        recordingStatusCallbackMethod="POST",
        recordingStatusCallbackEvent="completed",
    )
    return bytes(doc)


def goodbye(text: str = "Thank you. Goodbye.") -> bytes:
    return bytes(Document().say(text).hangup())


def join_conference(name: str, status_callback: str, wait_url: str) -> bytes:
    """The caller, taken out of the queue, joins the call's conference; they end it if they hang up (even on hold)."""
    doc = Document()
    dial = doc.verb("Dial")
    conference = ET.SubElement(
        dial,
        "Conference",
        _attrs(
            {
                "startConferenceOnEnter": True,
                "endConferenceOnExit": True,
                "beep": False,
                "waitUrl": wait_url,
                "statusCallback": status_callback,
                "statusCallbackMethod": "POST",
                "statusCallbackEvent": "start end join leave hold mute",
                "participantLabel": "customer",
            }
        ),
    )
    conference.text = name
    return bytes(doc)
