"""Rig orchestration: settings, session runner, subject state, data store, control socket and CLI."""

__version__ = "0.1.0"
