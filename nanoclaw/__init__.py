"""nanoclaw: a personal Claude assistant for your chats, one contained agent per group."""

__version__ = "0.1.0"
