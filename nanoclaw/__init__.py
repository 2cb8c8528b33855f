"""nanoclaw: a personal Claude assistant for your chats, one contained agent per group."""

__version__ = "0.1.0"

# Every long-running process, one systemd unit each; `nanoclaw <name>` runs one.
DAEMONS = ("channel", "queue", "runner", "ipc", "router", "proxy", "egress", "scheduler")
