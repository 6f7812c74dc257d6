"""Domain identifiers: parse at the edge, pass these typed values inside."""

from __future__ import annotations

import hashlib
from typing import NewType

MessageSid = NewType("MessageSid", str)
"""Twilio's id for a message: SM or MM followed by 32 hex digits."""
E164 = NewType("E164", str)
"""A phone number in E.164 form, e.g. +14155550100."""
ConversationId = NewType("ConversationId", str)
"""One customer and one of the team's Twilio numbers: CV followed by 32 hex digits."""
AgentName = NewType("AgentName", str)
MessageId = NewType("MessageId", str)
"""The bridge's id for a message: the MessageSid for inbound ones, OB + 32 hex digits for agents' replies."""


def conversation_id(twilio_number: str, customer_number: str) -> ConversationId:
    """The stable id of the conversation between one of our numbers and one customer."""
    digest = hashlib.sha256(f"{twilio_number}|{customer_number}".encode()).hexdigest()
    return ConversationId("CV" + digest[:32])
