"""Settings neonize's Go side reads from the environment, and how they reach it.

Go inside neonize's shared library copies the environment the process
*started* with; what Python puts into ``os.environ`` later (even before the
library loads) is never seen there (tests: GODEBUG=inittrace shows it). So a
channel whose environment does not already say what the configuration wants
executes itself again, once, with it, before anything else happens.
"""

from __future__ import annotations

import logging
import os
import sys

from nanoclaw.core.config import WhatsAppConfig

log = logging.getLogger("nanoclaw.whatsapp")


def go_environment(wcfg: WhatsAppConfig) -> dict[str, str]:
    """What the Go side must find in the environment for this configuration.

    NEONIZE_BOT_TAG: neonize 0.5.2 adds ``<bot biz_bot="1"/>`` (an AI/bot label) to every
    message to a person's JID unless it is "off".
    """
    return {"NEONIZE_BOT_TAG": "on" if wcfg.bot_label else "off"}


def exec_with_go_environment(wcfg: WhatsAppConfig) -> None:
    """Return if the process environment already holds ``go_environment``; otherwise replace
    this process (same pid, same arguments) by one that does. Call before neonize loads and
    before any socket or file is opened: nothing survives the exec."""
    wanted = go_environment(wcfg)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    if "neonize" in sys.modules:  # pragma: no cover - a programming error, not a runtime state
        raise RuntimeError("neonize was loaded before its environment was set")
    env = {**os.environ, **wanted}
    log.info("restarting in place with %s (neonize's Go side reads only the environment it started "
             "with)", " ".join(f"{k}={v}" for k, v in wanted.items()))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execve(sys.executable, sys.orig_argv, env)
