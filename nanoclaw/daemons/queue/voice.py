"""voice: voice notes transcribed before the agent's turn that covers them.

SUMMARY
    The channel stores a voice note (its file in the group's ``inbox/``) like any message:
    nothing waits on a transcription to be stored. Each pass, before the plan, the queue
    asks the runner to transcribe the notes stored since (``transcribe`` in ``spool/runner``,
    then the note's state ``asked`` in its row), and ``plan()`` holds a turn that would cover
    a note until its transcript (or its failure) is there, at most ``[voice] wait``. The
    runner's answer (``transcript`` in ``spool/queue``) is kept in the note's row; a note that
    could not be transcribed, or not in time, is told to its chat in one line ("could not
    transcribe the voice note: ..."), and the agent still gets the file.

    A transcript is checked against the spoken trigger here, once, with the group's name for
    the assistant (``core/spoken_trigger.py``): in a group that needs the trigger, a note that
    starts with it wakes the agent as a typed one does.

SYNOPSIS
    Voice(q).ask_new(now);  Voice.expire(now);  Voice.on_transcript(envelope);  Voice.waiting()

HOSTILE INPUT
    A transcript's text (what a recogniser made of someone's audio): kept as data in the row,
    shown to the agent escaped (``core/transcripts.py``), never a journal field. The runner
    checked the rest; the message it names must be an audio note of the group it names.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from peewee import fn

from nanoclaw.core import transcripts
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Cursor, Group, Message
from nanoclaw.core.protocol import Envelope, nudge
from nanoclaw.core.spoken_trigger import starts_with_name

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon


class Voice:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        # Notes past every cursor are all that can still be waited for: start looking there.
        self.seen = Cursor.select(fn.MIN(Cursor.last_message_id)).scalar() or 0
        self.asked: dict[int, float] = {}  # message id -> when its wait ends (for status and expiry)

    @property
    def on(self) -> bool:
        return self.q.cfg.voice.enabled

    def ask_new(self, now: float) -> None:
        """Ask the runner to transcribe each audio note stored since the last pass."""
        top = Message.select(fn.MAX(Message.id)).scalar() or 0
        if top <= self.seen:
            return
        rows = list(Message.select().where(Message.id > self.seen, Message.media.is_null(False),
                                           Message.is_bot == False).order_by(Message.id))  # noqa: E712
        groups = {g.jid: g for g in Group.select()} if rows else {}
        asked = False
        for m in rows:
            group = groups.get(m.chat)
            t = transcripts.state(m.media)
            if t is not None and t.get("state") == transcripts.ASKED:
                self.asked[m.id] = float(t.get("at", now)) + self.q.cfg.voice.wait  # after a restart
            if group is None or not self.on or not transcripts.wanted(m.media):
                continue
            media = transcripts.as_dict(m.media)
            self.q.put(self.q.runner_spool, "transcribe", {
                "message": m.id, "group": group.folder, "file": media["file"],
                "deadline": now + self.q.cfg.voice.wait})
            self._set(m, {"state": transcripts.ASKED, "at": now})
            self.asked[m.id] = now + self.q.cfg.voice.wait
            asked = True
            self.q.log.info("voice note sent to be transcribed", extra=log_fields(group=group.folder, msg=m.channel_id))
        self.seen = top
        if asked:
            nudge(self.q.cfg.socket("runner"))

    def expire(self, now: float) -> None:
        """A note whose transcript did not come in time is given up: the chat is told, and the
        turn goes ahead with the file alone."""
        for msg_id, until in list(self.asked.items()):
            if until > now:
                continue
            m = Message.get_or_none(Message.id == msg_id)
            t = transcripts.state(m.media) if m is not None else None
            if m is not None and t is not None and t.get("state") == transcripts.ASKED:
                self._fail(m, f"it was not ready within {self.q.cfg.voice.wait:.0f} s")
            self.asked.pop(msg_id, None)

    def on_transcript(self, env: Envelope) -> bool:
        """Keep the runner's answer in the note's row. False: the event was refused (bad/)."""
        body = env.body
        try:
            msg_id, folder, ok = int(body["message"]), body["group"], body["ok"] is True
        except (KeyError, TypeError, ValueError):
            self.q.inbox.reject(env.path, "a transcript without its message, group or ok")
            return False
        m = Message.get_or_none(Message.id == msg_id)
        group = Group.get_or_none(Group.folder == folder)
        t = transcripts.state(m.media) if m is not None else None
        if m is None or group is None or m.chat != group.jid or t is None:
            self.q.log.warning("transcript for a message that is no audio note of that group; dropped",
                               extra=log_fields(group=folder if isinstance(folder, str) else None))
            return True
        self.asked.pop(msg_id, None)
        if t.get("state") != transcripts.ASKED:
            return True  # given up already (or a second answer): the first word stands
        if not ok:
            self._fail(m, str(body.get("error", "the transcriber failed"))[:200])
            return True
        text = body.get("text") if isinstance(body.get("text"), str) else ""
        names = [n for n in (group.trigger, self.q.cfg.assistant_name) if n]
        wakes = self.q.cfg.voice.spoken_trigger and starts_with_name(text, names)
        self._set(m, {"state": transcripts.DONE, "text": text, "language": transcripts.language(body.get("language")),
                      "duration": body.get("duration") if isinstance(body.get("duration"), (int, float)) else None,
                      "engine": str(body.get("engine", ""))[:40], "model": str(body.get("model", ""))[:80],
                      "cut": body.get("cut") is True, "trigger": wakes})
        self.q.log.info("voice note transcribed (%d characters%s)", len(text), ", the spoken trigger" if wakes else "",
                        extra=log_fields(group=group.folder, msg=m.channel_id))
        return True

    def waiting(self) -> int:
        return len(self.asked)

    def _fail(self, m: Message, why: str) -> None:
        group = Group.get_or_none(Group.jid == m.chat)
        self._set(m, {"state": transcripts.FAILED, "error": why})
        self.asked.pop(m.id, None)
        if group is None:
            return
        self.q.put(self.q.router_spool, "outbound", {
            "key": f"voice:{m.id}", "chat": group.jid, "kind": "notice", "text": transcripts.FAILED_LINE + why},
            then=lambda: nudge(self.q.cfg.socket("router")))
        self.q.log.info("voice note not transcribed; chat told", extra=log_fields(group=group.folder, msg=m.channel_id))

    def _set(self, m: Message, state: dict) -> None:
        media = transcripts.as_dict(m.media) or {}
        media["transcript"] = state
        m.media = json.dumps(media)
        Message.update(media=m.media).where(Message.id == m.id).execute()
        group = Group.get_or_none(Group.jid == m.chat)
        if group is not None:  # the reader looks at the group again: the note may now wake it
            self.q.reader.nothing_for.pop(group.id, None)
