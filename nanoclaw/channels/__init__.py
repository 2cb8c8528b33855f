"""Chat backends for the channel daemon, by configuration name."""

from __future__ import annotations

from .base import Backend, Inbound, SendError, StoreError
from .terminal import TerminalBackend
from .whatsapp import WhatsAppBackend  # imports neonize only when started

BACKENDS: dict[str, type[Backend]] = {"terminal": TerminalBackend, "whatsapp": WhatsAppBackend}

__all__ = ["BACKENDS", "Backend", "Inbound", "SendError", "StoreError", "TerminalBackend", "WhatsAppBackend"]
