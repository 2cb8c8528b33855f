"""Chat backends for the channel daemon, by configuration name, and what they share:
``base`` (the seam every backend plugs into) and ``attachments`` (files sent with a message)."""

from __future__ import annotations

from nanoclaw.channels.base import LOOK_UP, Backend, Inbound, SendError, StoreError
from nanoclaw.channels.terminal import TerminalBackend
from nanoclaw.channels.whatsapp import (
    WhatsAppBackend,  # imports neonize only when started
)

BACKENDS: dict[str, type[Backend]] = {"terminal": TerminalBackend, "whatsapp": WhatsAppBackend}

__all__ = ["BACKENDS", "LOOK_UP", "Backend", "Inbound", "SendError", "StoreError", "TerminalBackend", "WhatsAppBackend"]
