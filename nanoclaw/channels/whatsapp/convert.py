"""Pure helpers between neonize's protobufs and nanoclaw's plain values.

Nothing here talks to the network or keeps state, so it is tested directly
with real neonize protobuf objects. ``neonize`` is imported lazily: importing
it loads a 60 MB Go library and reconfigures logging, which the terminal-only
channel and the CLI must not pay for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nanoclaw.channels import attachments
from nanoclaw.channels.base import LOOK_UP, Inbound
from nanoclaw.channels.whatsapp.session import bare_jid

if TYPE_CHECKING:  # pragma: no cover - types only
    from neonize.proto.Neonize_pb2 import JID, MessageSource

PHONE_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
LID_SERVER = "lid"
SERVERS = (PHONE_SERVER, GROUP_SERVER, LID_SERVER)

# user[.agent][:device]@server, the inverse of neonize's Jid2String
_JID_RE = re.compile(r"(?:(?P<user>[^@.:]*)(?:\.(?P<agent>\d+))?(?::(?P<device>\d+))?@)?(?P<server>[^@:]+)")
_PHONE_RE = re.compile(r"\+?[0-9][0-9 ]{4,30}")  # these two: fullmatch
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class JIDError(ValueError):
    """A string that is not a WhatsApp JID."""


def parse_jid(text: str) -> JID:
    """A JID string (``491701234567@s.whatsapp.net``, ``1203…@g.us``, ``123:4@lid``)
    as neonize's protobuf JID. A bare phone number is a phone JID.

    neonize has no string-to-JID parser of its own, and its ``_ensure_jid``
    drops the device part; this one round-trips with ``Jid2String``.
    """
    from neonize.proto.Neonize_pb2 import JID

    text = text.strip()
    if _PHONE_RE.fullmatch(text):
        return JID(User=phone_digits(text), RawAgent=0, Device=0, Integrator=0, Server=PHONE_SERVER,
                   IsEmpty=False)
    m = _JID_RE.fullmatch(text)
    if not m or not text:
        raise JIDError(f"not a WhatsApp JID: {text!r}")
    return JID(User=m["user"] or "", RawAgent=int(m["agent"] or 0), Device=int(m["device"] or 0),
               Integrator=0, Server=m["server"], IsEmpty=False)


def jid_str(jid: JID, *, device: bool = False) -> str:
    """A JID as a string; without ``device`` the device/agent part is dropped, so
    one person's phone, web and desktop sessions are the same sender."""
    if device and jid.RawAgent > 0:
        return f"{jid.User}.{jid.RawAgent}:{jid.Device}@{jid.Server}"
    if device and jid.Device > 0:
        return f"{jid.User}:{jid.Device}@{jid.Server}"
    return f"{jid.User}@{jid.Server}" if jid.User else jid.Server


def phone_digits(text: str) -> str:
    """'+49 170 1234567' -> '491701234567' (what WhatsApp's pairing expects)."""
    return re.sub(r"\D", "", text)


def is_phone(text: str) -> bool:
    return bool(_PHONE_RE.fullmatch(text.strip())) and len(phone_digits(text)) >= 6


def sender_of(src: MessageSource, own_lid: str = "", own_phone: str = "") -> str:
    """The sender as one stable string: the phone JID when WhatsApp tells us it.

    In groups WhatsApp increasingly names senders by LID (a per-account alias)
    and puts the phone JID in ``SenderAlt``; preferring the phone form makes
    one person one sender whichever form a message arrives in (allowlists and
    prompts name the same person). ``SenderAlt`` is always present; an unknown
    one has an empty ``User``.
    """
    sender = src.Sender
    if sender.Server == LID_SERVER and src.SenderAlt.User and src.SenderAlt.Server == PHONE_SERVER:
        sender = src.SenderAlt
    text = jid_str(sender)
    return own_phone if own_lid and own_phone and text == own_lid else text


def chat_of(src: MessageSource, own_lid: str = "", own_phone: str = "", destination: str = "") -> str:
    """The chat as one stable string: a direct chat in its phone form when known.

    A direct chat's ``Chat`` may be the other side's LID; the phone form is in
    ``SenderAlt`` (their message) or ``RecipientAlt`` (ours). The owner's own
    self-chat (the main group) maps to the owner's phone JID.

    ``destination`` is the message's ``DeviceSentMeta.DestinationJID`` (what the owner's
    phone says it sent to). The main group answers every message, so a DM the owner typed
    to someone else must never pass for the self-chat; it has been seen arriving with
    ``Chat`` = our own JID and the real recipient only there. A self-chat message's
    destination is us: one naming someone else puts the message in that chat.
    """
    if src.IsGroup:
        return jid_str(src.Chat)
    dest = bare_jid(destination) if src.IsFromMe else ""
    if dest and dest not in (own_phone, own_lid) and dest.partition("@")[0] != src.Chat.User:
        return dest  # a DM to someone else (a LID there is mapped later, as any LID chat)
    chat = jid_str(src.Chat)
    if src.Chat.Server != LID_SERVER:
        return chat
    if own_lid and own_phone and chat == own_lid:
        return own_phone
    alt = src.RecipientAlt if src.IsFromMe else src.SenderAlt
    if alt.User and alt.Server == PHONE_SERVER:
        return jid_str(alt)
    return chat


def message_text(msg: Any) -> str:
    """The text of a waE2E Message: plain, extended, or a media caption."""
    if msg is None:
        return ""
    if msg.conversation:
        return msg.conversation
    if msg.HasField("extendedTextMessage"):
        return msg.extendedTextMessage.text
    for field in ("imageMessage", "videoMessage", "documentMessage"):
        if msg.HasField(field) and getattr(msg, field).caption:
            return getattr(msg, field).caption
    if msg.HasField("documentWithCaptionMessage"):
        return message_text(msg.documentWithCaptionMessage.message)
    return ""


_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
        "video/mp4": ".mp4", "audio/ogg": ".ogg", "audio/mpeg": ".mp3", "audio/mp4": ".m4a",
        "audio/aac": ".aac", "audio/amr": ".amr", "application/pdf": ".pdf", "text/plain": ".txt"}


@dataclass(frozen=True)
class Media:
    """A downloadable attachment: what to call it and where it would be saved."""

    label: str  # "image", "voice note", "audio", "video", "document"
    filename: str  # inside the group's inbox/
    size: int  # bytes, as the sender declared (0: unknown)
    mime: str = ""  # as the sender declared, parameters dropped
    seconds: int = 0  # audio and video: the length the sender declared

    def describe(self, file: str | None, note: str = "") -> dict:
        """The attachment as stored with its message (``Message.media``)."""
        return attachments.describe(self.label, self.mime, self.size, file, self.seconds, note)


def media_of(msg: Any, msg_id: str) -> Media | None:
    """The attachment a waE2E Message carries, if any (stickers are ignored)."""
    if msg is None:
        return None
    if msg.HasField("documentWithCaptionMessage"):
        msg = msg.documentWithCaptionMessage.message
    base = _SAFE_NAME.sub("_", msg_id)[:80] or "media"
    for field, label in (("imageMessage", "image"), ("audioMessage", "audio"), ("videoMessage", "video"),
                         ("documentMessage", "document")):
        if not msg.HasField(field):
            continue
        part = getattr(msg, field)
        mime = (part.mimetype or "").split(";")[0].strip().lower()
        ext = _EXT.get(mime, "")
        seconds = int(getattr(part, "seconds", 0) or 0)
        if field == "audioMessage" and part.PTT:
            label, ext = "voice note", ".ogg"  # voice notes are always Opus in Ogg
        if field == "documentMessage" and part.fileName:
            name = _SAFE_NAME.sub("_", part.fileName).strip("._")[:100]
            return Media(label, f"{base}-{name}" if name else base + ext, part.fileLength, mime, seconds)
        return Media(label, base + (ext or ".bin"), part.fileLength, mime, seconds)
    return None


def to_inbound(ev: Any, *, chat: str, text: str, own_lid: str = "", own_phone: str = "",
               media: dict | None = None, sender: str = "", group: Any = LOOK_UP) -> Inbound:
    """A MessageEv as the channel stores it. WhatsApp's timestamps are milliseconds.
    ``sender`` replaces the one read from the event (a LID the store mapped to a phone);
    ``group`` is the registered group already found for ``chat`` (None: none is)."""
    info = ev.Info
    src = info.MessageSource
    return Inbound(chat=chat, sender=sender or sender_of(src, own_lid, own_phone), sender_name=info.Pushname,
                   text=text, channel_id=info.ID, timestamp=info.Timestamp / 1000.0, from_me=src.IsFromMe,
                   media=media, group=group)
