"""Switchboard console (the agents' terminal app)."""
