"""The daemons: one long-running process per systemd unit (``nanoclaw-<name>``).

    channel    chat connections in and out; stores what arrives before acknowledging it
    queue      decides when a group's agent runs and what it is told
    runner     starts and watches the agent containers (Podman API)
    ipc        reads what agents ask for, and decides if they may
    router     the outbox: formats, keeps and hands replies to the channel
    proxy      the Anthropic API for containers: holds the credential, meters, keeps budgets
    egress     the web for containers, under each group's egress policy (no credential)
    scheduler  keeps each scheduled task's timer equal to the database

They talk only through spools and socket nudges (nanoclaw.core.protocol).
"""
