"""team: a group's members as the queue sees them, and the answers owed between them.

SUMMARY
    A delegation is a message for a member (``Message.agent``); a member's answer is
    stored, in the same transaction as its cursor, as a message for whoever asked (once
    per delegation: its ``channel_id`` is ``result:<delegation>``). An asker runs on its
    answers when none of its delegations in that chain is still out, so a lead that
    handed out two tasks reads both answers in one turn; it holds no slot while it waits.

SYNOPSIS
    Team(q).members(group) -> list[str]
    Team.first_cursor(group, agent) -> Cursor
    Team.outstanding(group, asker, chain) -> bool
    Team.answer(group, agent, upto, text, forced=False)    (in a transaction)
    Team.dismiss(group, agent, last)

DESCRIPTION
    ``members`` reads ``groups/<folder>/agents/`` (core/team.py, through safefs) and keeps
    the names until the folder changes. A member removed with work still for it is
    dismissed: its askers are told it left, and its cursor passes that work, so nobody
    waits on it for ever.

HOSTILE INPUT
    Member files are the host's (the CLI, or ipc for the lead's ``create_agent``); answers'
    texts are agents' and are stored as messages, never interpreted here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from peewee import fn

from nanoclaw.core import team as team_mod
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Cursor, Group, Message, db

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon


class Team:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        self._cache: dict[str, tuple[int, list[str]]] = {}  # folder -> (agents/ mtime, member names)

    def members(self, group: Group) -> list[str]:
        """The names of a group's team (cached until its ``agents/`` folder changes)."""
        try:
            mtime = (self.q.cfg.groups_dir / group.folder / team_mod.AGENTS).stat().st_mtime_ns
        except OSError:
            return []
        cached = self._cache.get(group.folder)
        if cached is None or cached[0] != mtime:
            names = [m.name for m in team_mod.members(self.q.cfg, group.folder)]
            cached = self._cache[group.folder] = (mtime, names)
        return cached[1]

    @staticmethod
    def first_cursor(group: Group, agent: str) -> Cursor:
        """A member's first cursor: where the lead's is (what the group's agent already dealt with
        is not for a member that joined later), or before its first delegation if that is older."""
        lead = Cursor.get(Cursor.group == group, Cursor.agent == "").last_message_id
        first = Message.select(fn.MIN(Message.id)).where(Message.chat == group.jid, Message.agent == agent).scalar()
        return Cursor.create(group=group, agent=agent, last_message_id=min(lead, first - 1) if first else lead)

    @staticmethod
    def _delegations(group: Group) -> Any:
        """The group's delegations (team messages that answer nothing) with no answer yet."""
        answered = Message.select(Message.answers).where(Message.chat == group.jid, Message.answers.is_null(False))
        return Message.select().where(Message.chat == group.jid, Message.agent.is_null(False),
                                      Message.answers.is_null(), Message.id.not_in(answered))

    def outstanding(self, group: Group, asker: str, chain: int) -> bool:
        """Whether ``asker`` still waits on a delegation it made in ``chain``."""
        return self._delegations(group).where(Message.sender == team_mod.sender(asker),
                                              Message.chain == chain).exists()

    def answer(self, group: Group, agent: str, upto: int, text: str, forced: bool = False) -> None:
        """Store a member's answer for those who asked it (call in a transaction).

        The delegations to ``agent`` up to message ``upto`` that have no answer get this one,
        unless the member still waits on a delegation it made after that one arrived (work it
        handed on for it: its later turn, reading that answer, answers for it). Holding only
        for *later* delegations means no two agents can wait on each other. ``forced`` (it
        failed, or left the team) answers every one of them.
        """
        owed = list(self._delegations(group).where(Message.agent == agent, Message.id <= upto).order_by(Message.id))
        mine: dict[int, int] = {}  # chain -> the latest delegation the member still waits on
        if owed and not forced:
            for chain, latest in (self._delegations(group).select(Message.chain, fn.MAX(Message.id))
                                  .where(Message.sender == team_mod.sender(agent))
                                  .group_by(Message.chain).tuples()):
                mine[chain] = latest
        for d in owed:
            if mine.get(d.chain, 0) > d.id:
                continue
            asker = d.sender.removeprefix("agent:")
            Message.insert(chat=group.jid, sender=team_mod.sender(agent), sender_name=team_mod.display(agent),
                           text=text or f"({team_mod.display(agent)} finished without an answer.)",
                           timestamp=time.time(), channel_id=f"result:{d.id}",
                           agent="" if asker == "lead" else asker, chain=d.chain, depth=max(0, d.depth - 1),
                           answers=d.id).on_conflict_ignore().execute()
            self.q.log.info("answered delegation=%s for %s chain=%s", d.id, asker, d.chain,
                            extra=log_fields(group=group.folder, agent=agent))

    def dismiss(self, group: Group, agent: str, last: int) -> None:
        """A member removed with work still for it (up to message ``last``): its askers hear
        why, and its cursor passes that work."""
        with db.atomic("IMMEDIATE"):
            self.answer(group, agent, last, f"({team_mod.display(agent)} is no longer on the team.)", forced=True)
            Cursor.update(last_message_id=last).where(Cursor.group == group, Cursor.agent == agent).execute()
        self.q.log.warning("has work but no member file; its askers were told",
                           extra=log_fields(group=group.folder, agent=agent))
