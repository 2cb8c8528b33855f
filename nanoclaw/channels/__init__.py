"""Chat backends for the channel daemon, by configuration name."""

from __future__ import annotations

from .base import Backend, Inbound, SendError
from .terminal import TerminalBackend

BACKENDS: dict[str, type[Backend]] = {"terminal": TerminalBackend}

__all__ = ["BACKENDS", "Backend", "Inbound", "SendError", "TerminalBackend"]
