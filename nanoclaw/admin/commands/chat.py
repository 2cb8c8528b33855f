"""nanoclaw chat and nanoclaw send: talk to a group's agent through the channel daemon's socket.

SYNOPSIS
    add_parsers(sub)                 the chat and send commands
    ChannelClient(cfg, timeout)      the channel daemon's socket, with an owner-facing error
    cmd_chat(cfg, args)              an interactive chat in this terminal
    cmd_send(cfg, args)              one message (with --file, an attachment; with --wait, its reply)

The channel daemon treats this terminal as one more chat network: what is typed here is
stored and answered like a WhatsApp message (its sender is owner@term unless --sender says
otherwise).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import uuid
from pathlib import Path

from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import LineClient
from nanoclaw.core.socket_replies import BadReply


class ChannelClient(LineClient):
    """The channel daemon's socket, with an owner-facing error when it is not there."""

    def __init__(self, cfg: config_mod.Config, timeout: float | None = 10.0) -> None:
        path = cfg.socket("channel")
        try:
            super().__init__(path, timeout)
        except OSError as exc:
            raise SystemExit(f"nanoclaw: cannot reach the channel daemon at {path}: {exc.strerror}\n"
                             "  is it running? (systemctl status nanoclaw-channel, or nanoclaw run-all)") from None


def _print_line(sender: str, text: str) -> None:
    print(f"[{sender}] {text}", flush=True)


def _attach(cfg: config_mod.Config, group_ref: str, path: str) -> dict:
    """Put a file into the group's inbox (as a chat network's attachment is) and describe it."""
    import mimetypes

    from nanoclaw.channels import attachments
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core.models import open_db
    open_db(cfg.db_path)
    group = groups_mod.find_group(group_ref)
    data = Path(path).read_bytes()
    if len(data) > cfg.whatsapp.max_media_bytes:
        raise ValueError(f"{path} is {len(data)} bytes; attachments may be {cfg.whatsapp.max_media_bytes}")
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    where = attachments.save(cfg, group.folder, f"{uuid.uuid4().hex[:8]}-{Path(path).name}", data)
    return attachments.describe(attachments.kind_of(mime), mime, len(data), where)


def cmd_send(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    text = " ".join(args.text)
    if not text.strip():
        print("nanoclaw: refusing to send an empty message", file=sys.stderr)
        return 2
    media = None
    if args.file:
        from nanoclaw.core.groups import GroupError
        try:
            media = _attach(cfg, args.group, args.file)
        except (OSError, ValueError, GroupError) as exc:
            print(f"nanoclaw: cannot attach {args.file}: {exc}", file=sys.stderr)
            return 2
    client = ChannelClient(cfg)
    if args.wait:
        reply = client.call({"op": "watch", "group": args.group})
        if not reply.get("ok"):
            print(f"nanoclaw: {reply.get('error')}", file=sys.stderr)
            return 1
    reply = client.call({"op": "inbound", "group": args.group, "text": text, "media": media,
                         "id": args.id or uuid.uuid4().hex, "sender": args.sender})
    if not reply.get("ok"):
        print(f"nanoclaw: {reply.get('error')}", file=sys.stderr)
        return 1
    if not args.wait:
        print(f"stored as message {reply['message_id']}" + (" (duplicate)" if reply["duplicate"] else ""))
        return 0
    client.sock.settimeout(args.wait)
    try:
        while True:
            event = client.recv()
            if event.get("op") == "message" and event.get("from") == "assistant":
                _print_line(event.get("name") or cfg.assistant_name, event["text"])
                return 0
    except (socket.timeout, TimeoutError):
        print(f"nanoclaw: no reply within {args.wait:.0f}s (it may still come: nanoclaw chat "
              f"{args.group})", file=sys.stderr)
        return 3


def cmd_chat(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    client = ChannelClient(cfg, timeout=None)
    reply = client.call({"op": "watch", "group": args.group})
    if not reply.get("ok"):
        print(f"nanoclaw: {reply.get('error')}", file=sys.stderr)
        return 1
    print(f"chatting in {reply['group']} ({reply['chat']}); Ctrl-D to leave", flush=True)
    for m in reply["history"]:
        _print_line((m.get("name") or cfg.assistant_name) if m["from"] == "assistant" else m["from"], m["text"])
    from nanoclaw.admin.chat_status import StatusLine
    status = StatusLine(sys.stdout)
    mine: set[str] = set()
    acks: list[dict] = []
    got_ack = threading.Condition()
    leaving = threading.Event()

    def reader() -> None:
        try:
            while True:
                event = client.recv()
                if "ok" in event:
                    with got_ack:
                        acks.append(event)
                        got_ack.notify()
                elif event.get("op") == "message" and event.get("id") not in mine:
                    who = ((event.get("name") or cfg.assistant_name) if event.get("from") == "assistant"
                           else event.get("from"))  # a team member speaks under its own name
                    status.say(str(who), event.get("text", ""))
                elif event.get("op") == "progress":  # what the agent is doing: the status line
                    status.update(event)
        except BadReply as exc:  # another release's channel, say: said, not taken for a lost connection
            print(f"nanoclaw: {exc}", file=sys.stderr, flush=True)
            os._exit(1)
        except (ConnectionError, OSError):
            if leaving.is_set():
                return
            print("nanoclaw: connection to the channel daemon lost (it stopped: nanoclaw run-all or its unit); "
                  "run nanoclaw chat again once it runs", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)  # the main thread is blocked reading the terminal; a message typed now would be lost

    threading.Thread(target=reader, daemon=True).start()
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        msg_id = uuid.uuid4().hex
        mine.add(msg_id)
        client.send({"op": "inbound", "group": args.group, "text": text, "id": msg_id})
        with got_ack:
            got_ack.wait_for(lambda: acks, timeout=10)
            ack = acks.pop(0) if acks else {"ok": False, "error": "no acknowledgement within 10s"}
        if not ack.get("ok"):
            print(f"nanoclaw: not sent: {ack.get('error')}", file=sys.stderr)
    leaving.set()
    status.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("chat", help="chat with a group's agent from this terminal")
    sp.set_defaults(run=cmd_chat)
    sp.add_argument("group", nargs="?", default="main", help="group folder, name or chat id (default: main)")
    sp = sub.add_parser("send", help="send one message to a group")
    sp.set_defaults(run=cmd_send)
    sp.add_argument("group")
    sp.add_argument("text", nargs="+")
    sp.add_argument("--file", metavar="PATH", help="attach a file (a photo, a PDF, …): it goes to the group's "
                                                  "inbox/ and the agent is told where")
    sp.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for the reply and print it")
    sp.add_argument("--id", help="message id (resending with the same id stores it once)")
    sp.add_argument("--sender", default="owner@term", help="sender id (default: owner@term)")
