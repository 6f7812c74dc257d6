"""Test helpers for the sandbox and anything else served on loopback during tests."""
