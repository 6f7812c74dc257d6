"""Switchboard bridge: Twilio webhooks in, a durable event log, a WebSocket stream out."""
