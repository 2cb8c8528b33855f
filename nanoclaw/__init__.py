"""nanoclaw: a personal Claude assistant for your chats, one contained agent per group."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``nanoclaw.DAEMONS``: the daemons' names, from the one registry (nanoclaw/registry.py).
    # Read on first use, so that ``python3 -m nanoclaw.registry`` (install.sh) is not imported
    # twice.
    if name == "DAEMONS":
        from nanoclaw.registry import NAMES
        return NAMES
    raise AttributeError(f"module 'nanoclaw' has no attribute {name!r}")
