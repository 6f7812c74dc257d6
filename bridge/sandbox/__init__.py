"""The sandbox: a local stand-in for Twilio (REST subset, signed webhooks, simulated customers)."""
