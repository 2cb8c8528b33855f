"""nanoclaw credential set: the Anthropic API key or OAuth token, for the proxy alone.

``--voice``: the voice API's key instead (``[voice] engine = "api"``), kept and handed to the
proxy the same way; not checked with that API (a check would cost a transcription).

SYNOPSIS
    add_parsers(sub)                 the credential command
    cmd_credential(cfg, args)        store it (core/credentials.py), have the proxy take it, check it with the API

The secret is read from standard input (or a prompt that does not echo) and is never
printed or logged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from nanoclaw.core import config as config_mod


def _read_secret(voice: bool = False) -> str:
    """The secret from standard input, or typed at a prompt without echo."""
    if sys.stdin.isatty():
        import getpass
        return getpass.getpass("the voice API's key (not shown): " if voice else
                               "Anthropic API key or OAuth token (not shown): ")
    return sys.stdin.read()


def cmd_credential(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Set the credential so that the proxy, and only the proxy, holds it."""
    import pwd
    import time

    from nanoclaw.admin.status import ask_status, systemd_is_pid1
    from nanoclaw.core import credentials
    voice = bool(getattr(args, "voice", False))
    name = credentials.VOICE_CREDENTIAL_NAME if voice else credentials.CREDENTIAL_NAME
    try:
        (credentials.parse_voice if voice else credentials.parse)(secret := _read_secret(voice), "what you gave")
    except credentials.CredentialError as exc:
        print(f"nanoclaw: {exc}; nothing was changed", file=sys.stderr)
        return 2
    units = systemd_is_pid1() and os.geteuid() == 0
    try:
        user = pwd.getpwnam("nanoclaw") if os.geteuid() == 0 else None
    except KeyError:
        user = None
    if os.geteuid() != 0 and systemd_is_pid1():
        print(f"nanoclaw: run it as root (sudo nanoclaw credential set{' --voice' if voice else ''}): the file is "
              "root's", file=sys.stderr)
        return 2
    # Under the units the file stays root's: systemd's LoadCredential= hands it to the proxy
    # alone. Without them the proxy reads it itself, so it is the service user's.
    owner = (user.pw_uid, user.pw_gid) if user and not units else None
    path = credentials.store(cfg, secret, owner, name)
    print(f"saved {path} (mode 0600)")
    if voice and cfg.voice.engine != "api":
        print('not used until [voice] engine = "api" (with api_url) is in config.toml: voice notes are '
              "transcribed on this machine")
        return 0
    missing = "NO VOICE CREDENTIAL" if voice else "NO CREDENTIAL"

    def proxy_holds() -> tuple[bool, str]:
        for _ in range(50):
            reply, error = ask_status(cfg, "proxy", timeout=2)
            if reply is not None:
                return missing not in reply.get("status", ""), reply.get("status", "")
            time.sleep(0.2)
        return False, error

    if units:
        subprocess.run(["systemctl", "restart", "nanoclaw-proxy"], check=False)
        held, _ = proxy_holds()
        how = "handed over by systemd (LoadCredential=)"
        if not held and user:
            # This host's systemd gives User= services no credentials: the proxy reads the file.
            credentials.open_to_service_user(cfg, user.pw_uid, user.pw_gid, name)
            subprocess.run(["systemctl", "restart", "nanoclaw-proxy"], check=False)
            held, _ = proxy_holds()
            how = (f"read from the file, which is now {user.pw_name}'s (this host's systemd does not hand "
                   "credentials to User= services)")
    else:
        from nanoclaw.core.protocol import request
        try:
            reply = request(cfg.socket("proxy"), {"op": "reload"}, timeout=5)
            held = bool(reply.get("voice") if voice else reply.get("ok"))
        except OSError:
            print("the proxy is not running: it reads the credential when it starts")
            return 0
        how = "read from the file"
    if not held:
        print("nanoclaw: the proxy still holds no credential; journalctl -u nanoclaw-proxy -n 20 says why",
              file=sys.stderr)
        return 1
    print(f"the proxy holds it: {how}")
    if voice:
        print(f"voice notes go to {cfg.voice.api_url} (model {cfg.voice.api_model}); not checked with it")
        return 0
    from nanoclaw.core.protocol import request
    try:
        check = request(cfg.socket("proxy"), {"op": "check"}, timeout=40)
    except OSError as exc:
        print(f"could not ask the proxy to check it: {exc}")
        return 0
    status = check.get("status", 0)
    if status == 200:
        print("the API accepted it")
    elif status in (401, 403):
        print(f"nanoclaw: the API refused it ({status}): {check.get('detail') or 'not a valid credential'}",
              file=sys.stderr)
        return 1
    elif status == 0:
        print(f"not checked: {check.get('detail') or check.get('error')} (saved anyway)")
    else:
        print(f"the API answered {status} to a check ({check.get('detail')}); saved anyway")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("credential", help="set the Anthropic API key or OAuth token the proxy uses")
    sp.add_argument("action", choices=["set"],
                    help="read it from standard input (or a prompt that does not echo), store it "
                         "for the proxy alone, restart the proxy and check it with the API")
    sp.add_argument("--voice", action="store_true",
                    help='the voice API\'s key instead ([voice] engine = "api"), held by the proxy the same way')
    sp.set_defaults(run=cmd_credential)
