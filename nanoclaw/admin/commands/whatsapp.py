"""nanoclaw pair and nanoclaw groups discover: link the WhatsApp account, list its groups.

SYNOPSIS
    add_parsers(sub)                 the pair command
    cmd_pair(cfg, args)              a QR code (or with --phone a code to type) until the phone links
    cmd_discover(cfg)                the account's groups, and the command that registers one
    draw_qr(data, out)               a pairing QR code drawn in the terminal

Both ask the channel daemon (its socket), which holds the WhatsApp session.
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.admin.commands.chat import ChannelClient
from nanoclaw.core import config as config_mod


def draw_qr(data: str, out=None) -> None:
    """Draw a pairing QR code in the terminal, replacing the previous one."""
    import segno  # a neonize dependency, so present wherever WhatsApp is

    out = out or sys.stdout
    if out.isatty():
        out.write("\033[2J\033[H")  # codes rotate: redraw in place rather than scroll
    out.write("Scan with WhatsApp on your phone: Settings > Linked devices > Link a device\n\n")
    segno.make_qr(data).terminal(out=out, compact=True)
    out.write("\n(the code changes every 20-60 s; waiting for the phone...)\n")
    out.flush()


def cmd_pair(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Link the channel daemon's WhatsApp session to the owner's phone."""
    client = ChannelClient(cfg, timeout=None)  # pairing waits for a human
    req: dict = {"op": "pair"}
    if args.phone:
        req["phone"] = args.phone
    client.send(req)
    while True:
        try:
            event = client.recv()
        except ConnectionError as exc:
            print(f"nanoclaw: pairing failed: {exc}", file=sys.stderr)
            return 1
        if "ok" in event:
            break
        if event.get("event") == "qr":
            draw_qr(str(event.get("data", "")))
        elif event.get("event") == "code":
            print("On your phone: WhatsApp > Settings > Linked devices > Link a device > "
                  f"Link with phone number instead, and enter\n\n    {event.get('code')}\n", flush=True)
    if not event.get("ok"):
        print(f"nanoclaw: pairing failed: {event.get('error')}", file=sys.stderr)
        return 1
    if event.get("already"):
        print(f"already paired as {event['paired']}; WhatsApp: {event.get('status', '?')}\n"
              "(to link another account, unlink this device on the phone first)")
    else:
        print(f"paired as {event['paired']}")
    return 0


def cmd_discover(cfg: config_mod.Config) -> int:
    """List the WhatsApp account's groups so the owner can register one."""
    reply = ChannelClient(cfg, timeout=60).call({"op": "discover_groups"})
    if not reply.get("ok"):
        print(f"nanoclaw: {reply.get('error')}", file=sys.stderr)
        return 1
    rows = reply["groups"]
    if not rows:
        print("this WhatsApp account is in no groups")
    else:
        width = max(len(r["name"]) for r in rows) + 2
        print(f"{'NAME':<{width}}{'JID':<34}{'MEMBERS':>7}  REGISTERED AS")
        for r in rows:
            print(f"{r['name']:<{width}}{r['jid']:<34}{r['participants']:>7}  {r['folder'] or '-'}")
        print("\nregister one:  nanoclaw groups add FOLDER --jid JID --name 'NAME'")
    if reply.get("self"):
        print(f"your own chat (the main group):  nanoclaw groups add main --main --jid {reply['self']}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("pair", help="link WhatsApp: scan a QR code, or --phone for a pairing code")
    sp.add_argument("--phone", metavar="NUMBER", help="your number in international format, e.g. +491701234567: "
                                                     "show a code to type on the phone instead of a QR code")
    sp.set_defaults(run=cmd_pair)
