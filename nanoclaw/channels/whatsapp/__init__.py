"""The WhatsApp backend, on neonize (whatsmeow in a Go library shipped in its wheel).

    backend    the channel's WhatsApp connection: intake, sends, lifecycle
    convert    neonize's protobufs to plain values (JIDs, text, media), pure
    format     Markdown to WhatsApp markup, and splitting into messages
    ratelimit  the outbound token bucket
    sentids    the ids WhatsApp gave our sends, remembered across restarts
    pairing    one `nanoclaw pair` in progress
"""

from nanoclaw.channels.whatsapp.backend import WhatsAppBackend

__all__ = ["WhatsAppBackend"]
