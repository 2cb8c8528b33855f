"""The ``nanoclaw`` command: the daemons, the terminal chat and group administration."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from nanoclaw import DAEMONS, __version__
from nanoclaw.core import config as config_mod
from nanoclaw.core import log as log_mod
from nanoclaw.core.protocol import LineClient, nudge


def _daemon(name: str) -> int:
    from nanoclaw.core.migrations import EX_SCHEMA, SchemaError
    log_mod.setup(name)
    module = __import__(f"nanoclaw.daemons.{name}", fromlist=["main"])
    try:
        module.main()
    except SchemaError as exc:  # a database of another version: nothing is touched, and no restart helps
        logging.getLogger(f"nanoclaw.{name}").error("refusing to start: %s", exc)
        return EX_SCHEMA
    return 0


class _Version(argparse.Action):
    """``--version``: the version, the commit and the schema (worked out only when asked)."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version, commit and schema, and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from nanoclaw.core.migrations import LATEST
        from nanoclaw.core.release import commit
        print(f"nanoclaw {__version__} (commit {commit()}, database schema {LATEST})")
        parser.exit()


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
                    _print_line(str(who), event.get("text", ""))
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
    return 0


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


def cmd_groups(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core.models import AllowedSender, Group, open_db

    if args.action == "discover":
        return cmd_discover(cfg)
    open_db(cfg.db_path)
    if args.action == "mount":
        return cmd_mount(cfg, args)
    try:
        if args.action == "add":
            group = groups_mod.add_group(cfg, args.folder, name=args.name, jid=args.jid,
                                         trigger=args.trigger, is_main=args.main,
                                         requires_trigger=False if args.no_trigger else None)
            print(f"added group {group.folder} (chat {group.jid}"
                  f"{', main' if group.is_main else ''}, trigger {group.trigger!r}"
                  f"{'' if group.requires_trigger else ' not required'})")
        elif args.action == "set":
            return cmd_groups_set(cfg, args)
        elif args.action == "remove":
            groups_mod.remove_group(cfg, args.folder)
            print(f"removed group {args.folder} (its folder {cfg.groups_dir / args.folder} is kept)")
        else:
            rows = list(Group.select().order_by(Group.folder))
            if not rows:
                print("no groups yet: nanoclaw groups add main --main")
            for g in rows:
                flags = ("main " if g.is_main else "") + (f"trigger={g.trigger}" if g.requires_trigger
                                                           else "every message")
                flags += f" policy={groups_mod.policy_of(cfg, g)}"
                approved = AllowedSender.select().where(AllowedSender.group == g.id).count()
                flags += f" (+{approved} approved)" if approved else ""
                print(f"{g.folder:<20} {g.jid:<32} {g.name:<20} {flags}" + (f" model={g.model}" if g.model else ""))
    except groups_mod.GroupError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    for daemon in ("queue", "ipc", "proxy", "channel"):
        nudge(cfg.socket(daemon))
    return 0


def cmd_pending(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Unknown chats and senders waiting for the owner's answer (core/approvals.py)."""
    import time as time_mod
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from nanoclaw.core import approvals
    from nanoclaw.core.models import Message, open_db
    open_db(cfg.db_path)
    action = getattr(args, "pending_action", None) or args.command
    if action in ("approve", "deny", "forget") and args.n is None:
        print(f"nanoclaw: {action} needs the request's number (see: nanoclaw pending)", file=sys.stderr)
        return 2
    try:
        if action == "approve":
            print(approvals.approve(cfg, args.n, args.folder, by="cli"))
        elif action == "deny":
            print(approvals.deny(cfg, args.n, by="cli"))
        elif action == "forget":
            print(approvals.forget(cfg, args.n))
        else:
            rows = approvals.listing(cfg, everything=args.all)
            if not rows:
                print("no requests waiting" + ("" if args.all else " (nanoclaw pending --all: the last week's)"))
            zone, now = ZoneInfo(cfg.tz), time_mod.time()
            for r in rows:
                asked = Message.get_or_none(Message.id == r.message) if r.kind != "budget" else None
                said = approvals.clean(asked.text, 50) if asked else "(message gone)" if r.kind != "budget" else ""
                if r.status == "pending" and r.expires_at > now:
                    state = f"waits, expires in {max(1, int((r.expires_at - now) // 60))} min"
                else:
                    state = "expired" if r.status == "pending" else r.status
                    if r.decided_at:
                        state += " " + datetime.fromtimestamp(r.decided_at, zone).strftime("%m-%d %H:%M")
                print(f"{r.id:>4}  {r.kind:<6} {approvals.describe(r)}  [{r.chat}]  {state}"
                      + (f"  \"{said}\"" if said else ""))
            if any(r.status == "pending" and r.expires_at > now for r in rows):
                print("\nanswer:  nanoclaw approve N [--folder NAME]   or   nanoclaw deny N")
            return 0
    except approvals.ApprovalError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    for daemon in ("queue", "ipc", "proxy", "channel", "router"):
        nudge(cfg.socket(daemon))


MODEL_RE = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}"


def cmd_groups_set(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Change a registered group's settings: who may wake its agent, and its model (from its
    next container on). Everything is checked before anything is changed."""
    import fnmatch
    import re

    from nanoclaw.core import groups as groups_mod
    if args.model is None and args.policy is None:
        print("nanoclaw: nothing to set (give --policy open|allowlist|ask and/or --model MODEL)", file=sys.stderr)
        return 2
    model = None if args.model is None else "" if args.model in ("", "default") else args.model
    if model and not re.fullmatch(MODEL_RE, model):
        print(f"nanoclaw: {model!r} is not a model name (e.g. claude-sonnet-4-5)", file=sys.stderr)
        return 2
    allowed = cfg.usage.allowed_models
    if model and allowed and not any(fnmatch.fnmatchcase(model, p) for p in allowed):
        print(f"nanoclaw: {model} is not in [usage] allowed_models ({', '.join(allowed)}): the proxy would "
              "refuse it", file=sys.stderr)
        return 2
    group = groups_mod.find_group(args.group)
    if args.policy is not None:
        group = groups_mod.set_policy(cfg, group.folder, args.policy)
        print(f"{group.folder}: policy {args.policy}"
              + {"open": " (anyone in the chat may wake its agent)",
                 "allowlist": f" (only the senders in {groups_mod.allowlist_path(cfg, group.folder)})",
                 "ask": " (the allowlist's senders; anyone else asks you first: nanoclaw pending)"}[args.policy])
    if model is not None:
        group.model = model
        group.save()
        default = f"the default ({cfg.model or 'the CLI chooses'})"
        print(f"{group.folder}: model {model or default}, from its next container on")
    return 0


def cmd_usage(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """What the agents spent, from the proxy's records."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import open_db
    if args.days < 1:
        print("nanoclaw: --days must be 1 or more", file=sys.stderr)
        return 2
    open_db(cfg.db_path)
    folder = None
    if args.group:
        try:
            folder = groups_mod.find_group(args.group).folder
        except groups_mod.GroupError:
            folder = args.group  # a removed group's spending is still on record
    print("\n".join(usage.report(cfg, folder, args.days, args.by)))
    return 0


def _budget_scope(ref: str) -> str:
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import usage
    return usage.ALL if ref in ("all", usage.ALL) else groups_mod.find_group(ref).folder


def cmd_budget(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Budgets: list them with what is spent; set, raise or clear the owner's overrides."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import BudgetLimit, Group, open_db
    open_db(cfg.db_path)
    action = args.budget_action or "list"
    try:
        if action == "list":
            scopes = [usage.ALL] + [g.folder for g in Group.select().order_by(Group.folder)]
            shown = 0
            for scope in scopes:
                for lim in usage.limits(cfg, scope):
                    used = usage.spent(cfg, scope, lim.period)
                    value = used.usd if lim.unit == "usd" else used.tokens
                    amount = (lambda v: f"${v:.2f}") if lim.unit == "usd" else (lambda v: f"{int(v):,} tokens")
                    state = "SPENT" if value >= lim.limit else f"{value / lim.limit:.0%} used"
                    print(f"{'all groups' if scope == usage.ALL else scope:<16} per {lim.period:<5} "
                          f"{amount(lim.limit):>18}  spent {amount(value):>18}  {state:<9} ({lim.source})")
                    shown += 1
            if not shown:
                print("no budgets (set one: nanoclaw budget set GROUP|all day|month AMOUNT [--tokens])")
            return 0
        scope = _budget_scope(args.scope)
        unit = "tokens" if args.tokens else "usd"
        if action == "clear":
            gone = BudgetLimit.delete().where(BudgetLimit.scope == scope, BudgetLimit.period == args.period,
                                              BudgetLimit.unit == unit).execute()
            print(f"{args.scope}: {'the override of ' if gone else 'no override of '}the {args.period} {unit} "
                  "budget removed; the configuration's applies")
        else:
            amount = usage.parse_amount(args.amount, tokens=args.tokens)
            lim = usage.set_limit(cfg, scope, args.period, unit, None if action == "raise" else amount,
                                  add=amount if action == "raise" else None, by="cli")
            shown = f"${lim.limit:.2f}" if unit == "usd" else f"{int(lim.limit):,} tokens"
            print(f"{'all groups' if scope == usage.ALL else scope}: {shown} per {args.period}"
                  + (" (no limit)" if not lim.limit else ""))
    except (usage.BudgetError, groups_mod.GroupError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    nudge(cfg.socket("queue"))  # work held by a spent budget may go on now
    return 0


def cmd_mount(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """The owner's folders in a group's containers (only ever set here, never by an agent)."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import mounts
    from nanoclaw.core.models import Group, Mount
    try:
        if args.mount_action == "list":
            rows = Mount.select().join(Group).order_by(Group.folder, Mount.name)
            if args.group:
                rows = rows.where(Group.id == groups_mod.find_group(args.group).id)
            rows = list(rows)
            if not rows:
                print("no mounts (add one: nanoclaw groups mount add GROUP HOST_PATH [--as NAME] [--rw])")
            for m in rows:
                try:
                    mounts.check(cfg, m.host_path, m.rw)
                    state = "ok"
                except mounts.MountError as exc:
                    state = f"REFUSED now: {exc}"
                mode = ("rw, git config writable" if m.allow_git_config else "rw") if m.rw else "ro"
                print(f"{m.group.folder:<16} /workspace/extra/{m.name:<20} {mode}  {m.host_path}  {state}")
            return 0
        group = groups_mod.find_group(args.group)
        if args.mount_action == "add":
            m = mounts.add(cfg, group, args.host_path, args.name, args.rw, args.allow_git_config)
            mode = "read-only" if not m.rw else "read-write" + (
                ", git's configuration and hooks too" if m.allow_git_config else
                "; git's configuration and hooks read-only to the agent")
            print(f"{group.folder}: {m.host_path} at /workspace/extra/{m.name} ({mode}), from its next container on")
        else:
            mounts.remove(group, args.name)
            print(f"{group.folder}: /workspace/extra/{args.name} removed, from its next container on")
    except (mounts.MountError, groups_mod.GroupError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_agents(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """A group's team: the members its lead can delegate to (files the host writes)."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import team
    from nanoclaw.core.models import Group, Job, open_db
    open_db(cfg.db_path)
    try:
        if args.agents_action == "list":
            groups = [groups_mod.find_group(args.group)] if args.group else list(Group.select().order_by(Group.folder))
            shown = 0
            for group in groups:
                live = {j.agent: j.status for j in Job.select().where(Job.group == group, Job.agent != "",
                                                                      Job.status.in_(("queued", "running")))}
                for m in team.members(cfg, group.folder):
                    extra = "".join([f"  model={m.model}" if m.model else "",
                                     f"  tools={','.join(m.tools)}" if m.tools else "",
                                     f"  [{live[m.name]}]" if m.name in live else ""])
                    print(f"{group.folder:<16} {m.name:<16} {m.description}{extra}")
                    shown += 1
            if not shown:
                print("no team members (add one: nanoclaw agents add GROUP NAME --description TEXT "
                      "--instructions TEXT)")
            return 0
        group = groups_mod.find_group(args.group)
        if args.agents_action == "add":
            instructions = args.instructions
            if args.file:
                instructions = Path(args.file).read_text()
            if not instructions:
                raise team.TeamError("give the member's instructions: --instructions TEXT or --file PATH")
            tools = tuple(t.strip() for t in (args.tools or "").split(",") if t.strip())
            m = team.write(cfg, group.folder, team.Member(args.name, args.description or "", instructions,
                                                          args.model or "", tools))
            print(f"{group.folder}: {m.display} ({m.name}) is on the team: {m.description}")
            nudge(cfg.socket("queue"))
        else:
            team.remove(cfg, group.folder, args.name)
            print(f"{group.folder}: {args.name} removed from the team (its memory is kept)")
    except (team.TeamError, groups_mod.GroupError, OSError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_ping(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Ask each daemon for its status line."""
    from nanoclaw.admin.status import ask_status
    worst = 0
    for name in DAEMONS:
        reply, error = ask_status(cfg, name)
        if reply is None:
            print(f"{name:<8} DOWN  {error}")
            worst = 1
        else:
            print(f"{name:<8} up    {reply.get('status', '')}")
    return worst


def cmd_tasks(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    if args.action == "fire" and not args.if_due:  # a timer: the light path, no database
        from nanoclaw.admin import fire
        fire.fire(cfg, args.id)
        return 0
    from datetime import datetime

    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import tasks as tasks_mod
    from nanoclaw.core.models import Task, open_db
    from nanoclaw.core.schedules import ScheduleError

    open_db(cfg.db_path)

    def stamp(ts: float | None) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"

    try:
        if args.action == "fire":
            fired = tasks_mod.fire(cfg, args.id, if_due=args.if_due)
            if not fired and not args.if_due:
                print(f"nanoclaw: task {args.id} is not active; not fired", file=sys.stderr)
                return 1
            return 0
        if args.action == "list":
            rows = Task.select().order_by(Task.id)
            if not args.all:
                rows = rows.where(Task.status.in_(("active", "paused")))
            rows = list(rows)
            if not rows:
                print("no scheduled tasks (add one: nanoclaw tasks add GROUP --cron '0 9 * * *' PROMPT)")
            for t in rows:
                check = f"  if {t.precheck[:30]!r}" if t.precheck else ""
                print(f"{t.id:>4}  {t.group.folder:<14} {t.status:<9} {t.schedule_type:<8} {t.schedule_value:<26} "
                      f"next {stamp(t.next_run)}  {t.prompt[:40]!r}{check}")
            return 0
        if args.action in ("add", "update") and args.precheck is not None and not args.precheck.strip():
            raise tasks_mod.TaskError("--if needs a command" + (" (--no-if removes the pre-check)"
                                                                if args.action == "update" else ""))
        if args.action == "add":
            kind, value = ("cron", args.cron) if args.cron else ("interval", args.every) if args.every \
                else ("once", args.at)
            group = groups_mod.find_group(args.group)
            task = tasks_mod.create(cfg, group, " ".join(args.prompt), kind, value, tz=args.tz,
                                    context_mode="isolated" if args.isolated else "group",
                                    precheck=args.precheck or "", over_limits=args.over_limits)
            print(f"added {tasks_mod.describe(task)}")
        elif args.action == "update":
            kind, value = ("cron", args.cron) if args.cron else ("interval", args.every) if args.every \
                else ("once", args.at) if args.at else (None, None)
            task = tasks_mod.update(cfg, tasks_mod.find(args.id, None), prompt=args.prompt, kind=kind, value=value,
                                    precheck="" if args.no_precheck else args.precheck, over_limits=args.over_limits)
            print(f"updated {tasks_mod.describe(task)}")
        elif args.action in ("pause", "resume", "cancel"):
            task = tasks_mod.change(tasks_mod.find(args.id, None), args.action)
            print(f"task {task.id} is now {task.status}")
        elif args.action == "run-now":
            task = tasks_mod.find(args.id, None)
            if task.status != "active":
                print(f"nanoclaw: task {task.id} is {task.status}; resume it first", file=sys.stderr)
                return 1
            tasks_mod.fire(cfg, task.id)
            print(f"task {task.id} handed to the queue")
            return 0
        elif args.action == "log":
            task = tasks_mod.find(args.id, None)
            print(tasks_mod.describe(task))
            if task.precheck:
                print(f"  pre-check: {task.precheck}")
            for run in tasks_mod.runs(task):
                took = f"{run.finished_at - run.started_at:.1f}s" if run.finished_at and run.started_at else "-"
                detail = run.error if run.status == "error" else run.result  # a skipped run's result says why
                print(f"  run {run.id:>4}  {stamp(run.fired_at)}  {run.status:<8} {took:>7}  "
                      f"{detail[:60]!r}")
            return 0
    except (tasks_mod.TaskError, ScheduleError, groups_mod.GroupError) as exc:
        hint = " (--over-limits to go beyond it)" if isinstance(exc, tasks_mod.LimitError) else ""
        print(f"nanoclaw: {exc}{hint}", file=sys.stderr)
        return 2
    nudge(cfg.socket("scheduler"))
    return 0


def cmd_timers(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import timer_sync
    if os.geteuid() != 0:
        print("nanoclaw: timers sync writes systemd units; run it as root (systemctl start nanoclaw-timers)",
              file=sys.stderr)
        return 2
    for change in timer_sync.sync(cfg.timer_spec_dir, Path(cfg.systemd_unit_dir)):
        logging.getLogger("nanoclaw.timers").info("timers: %s", change)
    return 0


def _read_secret() -> str:
    """The secret from standard input, or typed at a prompt without echo."""
    if sys.stdin.isatty():
        import getpass
        return getpass.getpass("Anthropic API key or OAuth token (not shown): ")
    return sys.stdin.read()


def cmd_credential(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Set the credential so that the proxy, and only the proxy, holds it."""
    import pwd
    import time

    from nanoclaw.admin.status import ask_status, systemd_is_pid1
    from nanoclaw.core import credentials
    try:
        credentials.parse(secret := _read_secret(), "what you gave")
    except credentials.CredentialError as exc:
        print(f"nanoclaw: {exc}; nothing was changed", file=sys.stderr)
        return 2
    units = systemd_is_pid1() and os.geteuid() == 0
    try:
        user = pwd.getpwnam("nanoclaw") if os.geteuid() == 0 else None
    except KeyError:
        user = None
    if os.geteuid() != 0 and systemd_is_pid1():
        print("nanoclaw: run it as root (sudo nanoclaw credential set): the file is root's", file=sys.stderr)
        return 2
    # Under the units the file stays root's: systemd's LoadCredential= hands it to the proxy
    # alone. Without them the proxy reads it itself, so it is the service user's.
    owner = (user.pw_uid, user.pw_gid) if user and not units else None
    path = credentials.store(cfg, secret, owner)
    print(f"saved {path} (mode 0600)")

    def proxy_holds() -> tuple[bool, str]:
        for _ in range(50):
            reply, error = ask_status(cfg, "proxy", timeout=2)
            if reply is not None:
                return "NO CREDENTIAL" not in reply.get("status", ""), reply.get("status", "")
            time.sleep(0.2)
        return False, error

    if units:
        subprocess.run(["systemctl", "restart", "nanoclaw-proxy"], check=False)
        held, _ = proxy_holds()
        how = "handed over by systemd (LoadCredential=)"
        if not held and user:
            # This host's systemd gives User= services no credentials: the proxy reads the file.
            credentials.open_to_service_user(cfg, user.pw_uid, user.pw_gid)
            subprocess.run(["systemctl", "restart", "nanoclaw-proxy"], check=False)
            held, _ = proxy_holds()
            how = (f"read from the file, which is now {user.pw_name}'s (this host's systemd does not hand "
                   "credentials to User= services)")
    else:
        from nanoclaw.core.protocol import request
        try:
            held = bool(request(cfg.socket("proxy"), {"op": "reload"}, timeout=5).get("ok"))
        except OSError:
            print("the proxy is not running: it reads the credential when it starts")
            return 0
        how = "read from the file"
    if not held:
        print("nanoclaw: the proxy still holds no credential; journalctl -u nanoclaw-proxy -n 20 says why",
              file=sys.stderr)
        return 1
    print(f"the proxy holds it: {how}")
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


def cmd_spool(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """What waits or was refused in the spools; show, retry or drop one file."""
    from nanoclaw.admin import spools
    try:
        if args.action == "list":
            print("\n".join(spools.listing(cfg)))
        elif not args.name:
            print(f"nanoclaw: spool {args.action} needs a file name (see: nanoclaw spool)", file=sys.stderr)
            return 2
        else:
            print({"show": spools.show, "retry": spools.retry, "drop": spools.drop}[args.action](cfg, args.name))
    except (ValueError, OSError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_doctor(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import doctor
    return doctor.main(cfg, redetect_=args.redetect, check_only=args.check_runtime, storage=args.storage)


def cmd_status(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import status
    return status.show(cfg)


def cmd_image(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import image
    try:
        image.build(cfg, tag=args.tag, wheels=Path(args.wheels) if args.wheels else None,
                    progress=lambda line: print(f"image: {line}", flush=True), force=args.force)
        if cfg.voice.enabled:  # voice notes: the transcription image (admin/voice_image.py)
            from nanoclaw.admin import voice_image
            voice_image.build(cfg, progress=lambda line: print(f"image: {line}", flush=True), force=args.force)
    except image.ImageError as exc:
        print(f"nanoclaw: image build failed: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_backup(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import backup
    return backup.command(cfg, args)


def cmd_restore(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import restore
    return restore.command(cfg, args)


def cmd_migrate(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import migrate
    return migrate.command(cfg, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoclaw", description=__doc__)
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in DAEMONS:
        sub.add_parser(name, help=f"run the {name} daemon (normally started by systemd)")
    sp = sub.add_parser("run-all", help="run every daemon in the foreground, without systemd (a laptop, a container)")
    sp.add_argument("--no-check", action="store_true", help="start without checking image, container options, "
                    "credential and cron first")
    sp = sub.add_parser("chat", help="chat with a group's agent from this terminal")
    sp.add_argument("group", nargs="?", default="main", help="group folder, name or chat id (default: main)")
    sp = sub.add_parser("send", help="send one message to a group")
    sp.add_argument("group")
    sp.add_argument("text", nargs="+")
    sp.add_argument("--file", metavar="PATH", help="attach a file (a photo, a PDF, …): it goes to the group's "
                                                  "inbox/ and the agent is told where")
    sp.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for the reply and print it")
    sp.add_argument("--id", help="message id (resending with the same id stores it once)")
    sp.add_argument("--sender", default="owner@term", help="sender id (default: owner@term)")
    sp = sub.add_parser("groups", help="register, list and remove groups")
    gsub = sp.add_subparsers(dest="action", required=True)
    ga = gsub.add_parser("add", help="register a group")
    ga.add_argument("folder", help="folder name: letters, digits, _ and -")
    ga.add_argument("--name", help="display name")
    ga.add_argument("--jid", help="chat id (default: FOLDER@term, a terminal chat)")
    ga.add_argument("--trigger", help="trigger word (default from config, @Andy)")
    ga.add_argument("--no-trigger", action="store_true", help="answer every message")
    ga.add_argument("--main", action="store_true", help="make this the main (admin) group")
    gr = gsub.add_parser("remove", help="unregister a group (its folder is kept)")
    gr.add_argument("folder")
    gsub.add_parser("list", help="list groups")
    gs = gsub.add_parser("set", help="change a group's settings (the model from its next container on)")
    gs.add_argument("group", help="group folder, name or chat id")
    gs.add_argument("--policy", choices=["open", "allowlist", "ask"],
                    help="who may wake its agent: anyone in the chat (open), the senders in its allowlist "
                         "file (allowlist), or those and anyone else you approve when they ask (ask)")
    gs.add_argument("--model", help="the model its agents use ('default': the configured one); a team "
                                    "member's own model wins")
    gsub.add_parser("discover", help="list the WhatsApp account's groups (to register one)")
    gm = gsub.add_parser("mount", help="the owner's folders in a group's containers (allowlist: "
                                       "CONFIG/mount-allowlist.toml)")
    msub = gm.add_subparsers(dest="mount_action", required=True)
    ma = msub.add_parser("add", help="mount HOST_PATH at /workspace/extra/NAME in GROUP's containers")
    ma.add_argument("group")
    ma.add_argument("host_path")
    ma.add_argument("--as", dest="name", help="the name inside (default: the folder's name)")
    ma.add_argument("--rw", action="store_true", help="read-write (where the allowlist permits it)")
    ma.add_argument("--allow-git-config", action="store_true",
                    help="with --rw: let the agent change the repositories' .git/config, hooks and commondir "
                         "too, i.e. what git runs when you use it there (read-only to it otherwise)")
    ml = msub.add_parser("list", help="every mount, and whether the allowlist allows it now")
    ml.add_argument("group", nargs="?")
    mr = msub.add_parser("remove", help="remove GROUP's mount NAME")
    mr.add_argument("group")
    mr.add_argument("name")
    sp = sub.add_parser("agents", help="a group's team of agents: list, add, remove")
    asub = sp.add_subparsers(dest="agents_action", required=True)
    al = asub.add_parser("list", help="the members of one group's team, or of all")
    al.add_argument("group", nargs="?")
    aa = asub.add_parser("add", help="add (or replace) a member: groups/GROUP/agents/NAME.md")
    aa.add_argument("group")
    aa.add_argument("name", help="letters, digits, - and _ (it speaks as its name in title case)")
    aa.add_argument("--description", required=True, help="what it is for, in one line")
    aa.add_argument("--instructions", help="its standing instructions")
    aa.add_argument("--file", help="read the instructions from this file")
    aa.add_argument("--model", help="a model of its own (default: the group's)")
    aa.add_argument("--tools", help="only these built-in tools, comma-separated (e.g. Read,Bash,WebFetch)")
    ar = asub.add_parser("remove", help="remove a member (its session and memory are kept)")
    ar.add_argument("group")
    ar.add_argument("name")
    sp = sub.add_parser("pending", help="unknown chats and senders asking for the assistant: list, approve, deny")
    psub = sp.add_subparsers(dest="pending_action")
    sp.add_argument("--all", action="store_true", help="also the last week's answered and expired requests")
    pa = psub.add_parser("approve", help="approve request N: register the chat (or allow the sender), replay its message")
    pd = psub.add_parser("deny", help="deny request N: no answer, and no new card from it for a week")
    pf = psub.add_parser("forget", help="lift the denial of request N: it may ask again")
    for parser in (pa, pd, pf):
        parser.add_argument("n", type=int, nargs="?", metavar="N")
    pa.add_argument("--folder", help="the new group's folder (default: from the chat's name)")
    sp = sub.add_parser("approve", help="approve request N (as: nanoclaw pending approve N)")
    sp.add_argument("n", type=int, nargs="?", metavar="N")
    sp.add_argument("--folder", help="the new group's folder (default: from the chat's name)")
    sp = sub.add_parser("deny", help="deny request N (as: nanoclaw pending deny N)")
    sp.add_argument("n", type=int, nargs="?", metavar="N")
    sp = sub.add_parser("usage", help="what the agents spent: API calls, tokens and estimated cost")
    sp.add_argument("group", nargs="?", help="one group (default: all)")
    sp.add_argument("--days", type=int, default=1, help="today and the days before it (default: 1, today)")
    sp.add_argument("--by", choices=["model", "group", "agent", "day"], default="group",
                    help="one row per (default: group; agent: the lead as GROUP, a member as GROUP/MEMBER)")
    sp = sub.add_parser("budget", help="spending limits per group or for all: list, set, raise, clear")
    bsub = sp.add_subparsers(dest="budget_action")
    bsub.add_parser("list", help="every budget in force and what is spent of it")
    for action, what in (("set", "set a budget (0: none, even where the configuration has one)"),
                         ("raise", "add AMOUNT to a budget in force"),
                         ("clear", "drop the owner's override: the configuration's budget applies")):
        bp = bsub.add_parser(action, help=what)
        bp.add_argument("scope", metavar="GROUP", help="a group, or 'all' for all groups together")
        bp.add_argument("period", choices=["day", "month"])
        if action != "clear":
            bp.add_argument("amount", help="USD (2, 2.50, $2.50) or with --tokens a count (500k, 2M)")
        bp.add_argument("--tokens", action="store_true", help="a budget in tokens, not USD")
    sp = sub.add_parser("pair", help="link WhatsApp: scan a QR code, or --phone for a pairing code")
    sp.add_argument("--phone", metavar="NUMBER", help="your number in international format, e.g. +491701234567: "
                                                     "show a code to type on the phone instead of a QR code")
    sub.add_parser("ping", help="ask every daemon for its status")
    sp = sub.add_parser("doctor", help="check every prerequisite and print fixes")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--redetect", action="store_true",
                      help="find the container options this host needs by trying them; write them to "
                           "CONFIG/detected.toml and say what changed")
    mode.add_argument("--check-runtime", action="store_true",
                      help="only try the configured container options (exit 0 if a container starts)")
    mode.add_argument("--storage", action="store_true",
                      help="(install.sh) use fuse-overlayfs where Podman would fall back to the slow vfs driver")
    sub.add_parser("status", help="one screen: units, channel, groups, agents, queue, tasks")
    sp = sub.add_parser("spool", help="what waits or was refused in the spools; show, retry or drop a file")
    sp.add_argument("action", nargs="?", default="list", choices=["list", "show", "retry", "drop"])
    sp.add_argument("name", nargs="?", help="a spool file's name (or an unambiguous start of it)")
    sp = sub.add_parser("credential", help="set the Anthropic API key or OAuth token the proxy uses")
    sp.add_argument("action", choices=["set"],
                    help="read it from standard input (or a prompt that does not echo), store it "
                         "for the proxy alone, restart the proxy and check it with the API")
    sp = sub.add_parser("tasks", help="scheduled tasks: list, add, pause, resume, cancel, run-now, log")
    tsub = sp.add_subparsers(dest="action", required=True)
    tl = tsub.add_parser("list", help="list tasks")
    tl.add_argument("--all", action="store_true", help="include completed and cancelled tasks")
    ta = tsub.add_parser("add", help="schedule a prompt for a group")
    ta.add_argument("group")
    when = ta.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="cron expression, e.g. '0 9 * * *' or @daily")
    when.add_argument("--every", help="interval, e.g. 30m, 2h, 1d")
    when.add_argument("--at", help="one-off ISO time, e.g. 2026-12-01T09:00")
    ta.add_argument("--tz", help="timezone (default: the owner's)")
    ta.add_argument("--isolated", action="store_true", help="run in a fresh session, not the group's")
    ta.add_argument("--if", dest="precheck", metavar="CMD",
                    help="pre-check: a shell command run first in a container with no network and the group's "
                         "folder read-only; the agent runs (shown its output) only if it exits 0 and prints "
                         "something, else the run is logged as skipped")
    ta.add_argument("prompt", nargs="+")
    over = ("go beyond [tasks] max_per_group and min_interval (they bind agents; you set them, and may "
            "pass them here)")
    ta.add_argument("--over-limits", action="store_true", help=over)
    tu = tsub.add_parser("update", help="change a task's prompt and/or schedule")
    tu.add_argument("id", type=int)
    when = tu.add_mutually_exclusive_group()
    when.add_argument("--cron", help="a new cron schedule")
    when.add_argument("--every", help="a new interval")
    when.add_argument("--at", help="a new one-off time")
    tu.add_argument("--prompt", help="a new prompt")
    check = tu.add_mutually_exclusive_group()
    check.add_argument("--if", dest="precheck", metavar="CMD", help="a new pre-check command (see tasks add)")
    check.add_argument("--no-if", dest="no_precheck", action="store_true", help="remove the pre-check")
    tu.add_argument("--over-limits", action="store_true", help=over)
    for action in ("pause", "resume", "cancel", "run-now", "log"):
        tsub.add_parser(action, help=f"{action} a task").add_argument("id", type=int)
    tf = tsub.add_parser("fire", help="(run by timers) hand a task to the queue")
    tf.add_argument("id", type=int)
    tf.add_argument("--if-due", action="store_true", help="only if its next run time has come")
    sp = sub.add_parser("timers", help="(run by nanoclaw-timers.service, as root) task timers")
    sp.add_argument("action", choices=["sync"], help="make the timer units equal the scheduler's specs")
    sp = sub.add_parser("backup", help="one archive of the database, groups, sessions, WhatsApp session and "
                                       "configuration (safe while nanoclaw runs)")
    sp.add_argument("file", nargs="?", help="where (default: STATE/backups/nanoclaw-<when>-schema<N>.tar.gz)")
    sp.add_argument("--with-secrets", action="store_true", help="include the Anthropic credential")
    sp.add_argument("--nightly", action="store_true", help="(the timer) a nightly backup; keeps the newest "
                                                           "[backup] keep of them")
    sp.add_argument("--kind", choices=["pre-upgrade"], help="(install.sh) name it as made before an upgrade")
    sp = sub.add_parser("restore", help="put a backup back (nanoclaw stopped); what it replaces is kept aside")
    sp.add_argument("file")
    sp = sub.add_parser("migrate", help="bring the database to this nanoclaw's schema (nanoclaw stopped; "
                                        "a backup first)")
    sp.add_argument("--no-backup", action="store_true", help="(install.sh, which made one) no backup first")
    sp = sub.add_parser("image", help="build the agent container image (offline-capable)")
    isub = sp.add_subparsers(dest="action", required=True)
    ib = isub.add_parser("build", help="build [container] image from [container] base_image and a wheelhouse")
    ib.add_argument("--tag", help="image tag (default: [container] image)")
    ib.add_argument("--wheels", help="wheelhouse cache dir (default: STATE/cache/wheels)")
    ib.add_argument("--force", action="store_true", help="build even if the image is current")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.get()
    except config_mod.ConfigError as exc:
        raise SystemExit(f"nanoclaw: configuration error: {exc}") from None
    if args.command in DAEMONS:
        sys.exit(_daemon(args.command))
    log_mod.setup("timers" if args.command == "timers" else "cli")  # the root one-shot logs what it changed
    if args.command == "run-all":
        from nanoclaw.admin.supervise import run_all
        sys.exit(run_all(check=not args.no_check))
    handler = {"chat": cmd_chat, "send": cmd_send, "groups": cmd_groups, "ping": cmd_ping,
               "image": cmd_image, "tasks": cmd_tasks, "timers": cmd_timers, "doctor": cmd_doctor,
               "status": cmd_status, "pair": cmd_pair, "credential": cmd_credential,
               "spool": cmd_spool, "agents": cmd_agents, "pending": cmd_pending, "approve": cmd_pending,
               "deny": cmd_pending, "usage": cmd_usage, "budget": cmd_budget, "backup": cmd_backup,
               "restore": cmd_restore, "migrate": cmd_migrate}[args.command]
    from nanoclaw.core.migrations import EX_SCHEMA, SchemaError
    try:
        sys.exit(handler(cfg, args))
    except SchemaError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        sys.exit(EX_SCHEMA)
    except KeyboardInterrupt:
        sys.exit(130)
