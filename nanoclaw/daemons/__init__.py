"""The daemons: one long-running process per systemd unit (``nanoclaw-<name>``), each a
module or package here named for it. Which there are, and each one's user, spools, sockets,
network and credential: the registry, ``nanoclaw/registry.py``.

Work is handed over through spools (write, fsync, rename; ``nanoclaw.core.protocol``) with
a nudge on the consumer's socket, and the database. A few requests go over a daemon's
socket and wait for the answer: the router's ``deliver`` to the channel (a reply counts as
sent once the channel confirms it), the runner's ``ensure`` to proxy and egress (an agent's
sockets exist before its container starts), and the owner's commands (``status``,
``nanoclaw chat``); the queue's ``progress`` to the channel (a turn's state, for the chat to
show) is told and not awaited.
"""
