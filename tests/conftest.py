"""Shared fixtures: a session-wide folder of generated zoo models (made once, reused)."""
