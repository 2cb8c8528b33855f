"""What neonize's Go side reads from the environment (goenv.py): only what the process started with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from whatsapp_offline import closed_port


def test_neonizes_go_side_sees_only_the_environment_the_process_started_with():
    """Why the channel executes itself again for NEONIZE_BOT_TAG: setting os.environ, even
    before the library loads, changes nothing for Go (GODEBUG=inittrace makes Go's runtime
    print a line per package init when, and only when, it sees the variable)."""
    late = "import os; os.environ['GODEBUG'] = 'inittrace=1'; import neonize.aioze.client"
    seen_late = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=60)
    seen_at_start = subprocess.run([sys.executable, "-c", "import neonize.aioze.client"], capture_output=True,
                                   text=True, timeout=60, env={**os.environ, "GODEBUG": "inittrace=1"})
    assert "init " not in seen_late.stderr
    assert "init " in seen_at_start.stderr


@pytest.mark.parametrize("bot_label,expected", [(None, "off"), (True, "on")])
def test_the_channel_runs_with_neonizes_bot_label_as_configured(make_system, bot_label, expected):
    """neonize adds <bot biz_bot="1"/> to every message to a person unless NEONIZE_BOT_TAG=off
    is in the environment its Go side started with: the channel process has it, from the start
    of its (re-executed) image, whatever it was started with."""
    whatsapp = {"proxy": closed_port()} | ({"bot_label": bot_label} if bot_label is not None else {})
    s = make_system(channels=["whatsapp", "terminal"], whatsapp=whatsapp)
    s.env.pop("NEONIZE_BOT_TAG", None)
    s.start("channel")
    pid = s.procs["channel"].pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    status = s.request("channel", {"op": "status"})["status"]
    s.stop("channel")
    assert f"NEONIZE_BOT_TAG={expected}".encode() in environ
    assert status.startswith("whatsapp: not paired")  # the same process, serving as usual
