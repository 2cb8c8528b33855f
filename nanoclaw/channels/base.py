"""The seam every chat backend (terminal, WhatsApp, …) plugs into."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from nanoclaw.core.config import Config
    from nanoclaw.core.models import Group

LOOK_UP = "look up"  # Inbound.group when the backend did not look the chat's group up


@dataclass(frozen=True)
class Inbound:
    """A message as a backend received it, before it is stored."""

    chat: str
    sender: str
    text: str
    channel_id: str
    timestamp: float
    sender_name: str = ""
    from_me: bool = False
    media: dict | None = None  # an attachment: kind, type, size, file (under the group folder), note
    # For a chat no group is registered for (it may ask the owner, core/approvals.py): its
    # name and size as the network gave them (hostile: cleaned before anyone sees them).
    chat_name: str = ""
    members: int | None = None
    # The registered group the backend already found for ``chat`` (None: none is), so the
    # commit need not look again; LOOK_UP when the backend did not look.
    group: Group | None | str = LOOK_UP


@dataclass(frozen=True)
class Progress:
    """What an agent is doing on a turn (core/progress.py's states), for the chat to show."""

    chat: str
    state: str
    seq: int  # newer lines have larger ones: a line that overtook a newer one is dropped
    job: int
    turn: int
    who: str = ""  # the assistant's name, or the team member's
    since: float = 0.0  # when the turn began working (0: not yet)
    tool: str = ""
    kind: str = ""  # the tool's kind: shell, web, team, files, tool
    detail: str = ""
    # The message the turn answers, as the network knows it (its id and sender), if any.
    message_id: str = ""
    message_sender: str = ""
    message_from_me: bool = False


# The channel daemon's store-then-acknowledge callback. The call itself takes the message's
# place in the commit line (calls are stored in their order); what it returns gives
# (row id, duplicate?) once stored, or raises StoreError.
Receive = Callable[[Inbound], Awaitable[tuple[int, bool]]]


class SendError(Exception):
    """A send that did not happen; the router will retry it."""


class StoreError(Exception):
    """An inbound message that could not be stored (the text says why): not acknowledged."""


class Backend(ABC):
    """One chat network. The channel daemon routes outbound text by ``owns(chat)``."""

    name = "backend"

    @classmethod
    def create(cls, cfg: "Config") -> "Backend":
        """Build the backend for the channel daemon (backends that need settings override this)."""
        return cls()

    @abstractmethod
    def owns(self, chat: str) -> bool:
        """Whether chat ids of this form belong to this backend."""

    async def start(self, receive: Receive) -> None:
        """Connect; call ``receive`` for every inbound message (it stores before returning)."""
        self.receive = receive

    @abstractmethod
    async def send(self, chat: str, text: str, msg_id: str, quote: dict | None = None, sender: str = "") -> str:
        """Send text to a chat, as message ``msg_id`` where the network lets us choose
        (so a repeated send is recognised); return the id used, or raise SendError.
        ``quote`` ({id, sender, text}) is the message this answers, where the network
        can show it quoted; ``sender`` the name it goes out under (the assistant's, or
        a team member's), for networks where it must be shown in the text."""

    async def typing(self, chat: str, on: bool) -> None:
        """Show or clear a typing indicator where the network has one."""

    async def progress(self, update: Progress) -> None:
        """Show what the agent is doing on a turn, where the network can (cosmetic)."""

    async def stop(self) -> None:
        """Disconnect cleanly."""

    def status(self) -> str:
        return "ready"

    def on_status(self) -> None:
        """Called when ``status()`` changes; the channel daemon replaces it to publish at once."""

    def on_alert(self, text: str) -> None:
        """Called with what the owner must read elsewhere (this network stopped for good, or
        for hours); the channel daemon replaces it to post ``text`` to the main chat."""

    def stuck(self) -> str:
        """What of this backend is stuck past its time ("" when nothing): the channel then
        stops feeding the watchdog, so the process is replaced."""
        return ""
