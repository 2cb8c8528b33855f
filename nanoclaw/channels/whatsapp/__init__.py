"""The WhatsApp backend, on neonize (whatsmeow in a Go library shipped in its wheel).

    backend    the face the channel daemon uses: wires the parts below
    connection neonize's client: the connect loop, stop, lifecycle events, liveness
    intake     message events to stored messages (media downloaded, in chat order)
    outbound   replies out in chunks; our own messages known when they echo back
    presence   "typing…" while an agent works
    groups     the account's groups: discover, names refreshed, an unknown group's card
    convert    neonize's protobufs to plain values (JIDs, text, media), pure
    format     Markdown to WhatsApp markup, and splitting into messages
    ratelimit  the outbound token bucket
    sentids    the ids WhatsApp gave our sends, remembered across restarts
    ordering   a chat's messages stored in arrival order (a photo before its question)
    session    whether whatsmeow's store holds a linked device (read without neonize)
    liveness   the client's connect and stop, each with a deadline; which one is overdue
    pairing    one `nanoclaw pair` as the daemon runs it: the pairing process, relayed
    pairproc   the pairing process itself (a child that a neonize hang dies with)
    goenv      what neonize's Go side reads from the environment (the bot label)
"""

from nanoclaw.channels.whatsapp.backend import WhatsAppBackend

__all__ = ["WhatsAppBackend"]
