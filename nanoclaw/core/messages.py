"""The messages nanoclaw's processes hand each other through spools, one typed struct each.

SUMMARY
    Every kind of spool file is a ``msgspec.Struct`` that refuses fields it does not
    declare (``forbid_unknown_fields``): a message either is exactly what its struct says or
    goes to ``bad/`` with one line naming its kind and the field. An optional field is
    ``UNSET`` when absent, and absent again when written, so the JSON on disk is what the
    code before these structs wrote and read (``{"v": 1, "type": ..., "body": {...}}``).

SYNOPSIS
    KINDS: dict[str, type[Message]]           the registry: a spool file's ``type`` -> its struct
    decode(raw: bytes) -> tuple[str, dict]    a file's bytes, checked once; BadMessage with the reason
    validate(obj) -> tuple[str, dict]         the same for an envelope already parsed
    parse(raw: bytes) -> tuple[str, Message]  decode() that keeps the typed struct
    encode(kind, body: dict | Message) -> bytes   a message checked against its struct, as a file's bytes

DESCRIPTION
    ``decode`` reads the envelope, then the body straight into the kind's struct; the
    body dict consumers get is that struct's fields that were present. ``encode`` checks a
    dict (or takes a struct) before anything is written, so a producer's mistake is its
    own exception, never a file another daemon must reject.

HOSTILE INPUT
    An agent writes ``result``, ``send_message``, ``task_request``, ``register_group``,
    ``delegate``, ``create_agent`` and ``raise_budget`` into its own ``out/`` spool: their
    bytes are attacker-controlled. Decoding refuses anything but the declared fields and
    types; what the fields mean (whose job, which chat) the ipc daemon checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

VERSION = 1
# A stage name in a turn's clock readings (an agent's, through ipc to the queue's log line):
# plain words only, so no space or "=" can forge a log line or a journal field.
STAGE_NAME = re.compile(r"[a-z_]{1,20}")


class BadMessage(Exception):
    """A spool file or socket line that cannot be accepted; the text is the reason."""


class Message(Struct, forbid_unknown_fields=True):
    """A spool message's body. Subclasses inherit the refusal of undeclared fields; the order
    of their fields is the order they are written in."""


# -- queue -> runner --------------------------------------------------------------------------

class Job(Message):
    """Start an agent container for a job. A scheduled task's job may carry the task's
    pre-check: the runner runs it first, and starts the agent only if it says so."""
    job: int
    group: str
    chat: str
    is_main: bool
    prompt: str
    session_id: str | None
    agent: str | UnsetType = UNSET
    precheck: str | UnsetType = UNSET
    model: str | UnsetType = UNSET  # the model the queue chose (core/model_choice.py); "" = the CLI's


# -- host -> container (ipc/<group>/in) -------------------------------------------------------

class Prompt(Message):
    """A prompt for one turn."""
    job: int
    turn: int
    prompt: str
    session_id: str | None


class Close(Message):
    """A request to exit."""
    job: int


class Stop(Message):
    """The owner stopped this turn (container/interrupt.py interrupts it)."""
    job: int
    turn: int


# -- container -> host (ipc/<group>/out): hostile ---------------------------------------------

class Result(Message):
    """The outcome of one turn. ``usage`` is the agent's own account (tokens, duration, its
    clock readings): read by ipc, which passes on only the readings it can check."""
    job: int
    turn: int
    text: str
    session_id: str | None | UnsetType = UNSET
    error: str | None | UnsetType = UNSET
    usage: dict[str, Any] | None | UnsetType = UNSET


class SendMessage(Message):
    """The agent's send_message tool: text for its chat (or, the main group's, another)."""
    job: int
    text: str
    chat: str | None | UnsetType = UNSET


class TaskRequest(Message):
    """The agent's task tools; ``task`` is checked by core/tasks.py."""
    job: int
    action: str
    task: dict[str, Any]


class RegisterGroup(Message):
    job: int
    jid: str
    name: str
    folder: str
    trigger: str


class Delegate(Message):
    """Within a team: hand a member a task."""
    job: int
    agent: str
    task: str


class CreateAgent(Message):
    """Within a team: the lead's new (or changed) member."""
    job: int
    name: str
    description: str
    instructions: str
    model: str | UnsetType = UNSET
    tools: list[Any] | UnsetType = UNSET


class RaiseBudget(Message):
    """The main group's lead only: the owner's new budget for a group (or "all")."""
    job: int
    group: str
    period: str
    amount: int | float
    unit: str | UnsetType = UNSET
    mode: str | UnsetType = UNSET


# -- between the host's daemons ---------------------------------------------------------------

class BudgetSpent(Message):
    """proxy -> queue: a group's call was refused for a spent budget (the queue tells the chat once)."""
    group: str
    agent: str | UnsetType = UNSET
    key: str | UnsetType = UNSET


StageName = Annotated[str, Meta(pattern=r"^[a-z_]{1,20}$")]


class TurnUsage(Message):
    """What ipc passes on of a turn's usage: a new container's clock readings, a few."""
    stages: Annotated[dict[StageName, float], Meta(max_length=16)]


class TurnResult(Message):
    """ipc -> queue: a turn's result from a group's container (group taken from the directory)."""
    group: str
    job: int
    turn: int
    text: str
    session_id: str | None
    error: str | None
    agent: str | UnsetType = UNSET
    usage: TurnUsage | UnsetType = UNSET


class JobEvent(Message):
    """runner -> queue: a job's container started or ended, or its pre-check skipped it
    (``reason``); ``stopped``: ended because `nanoclaw run-all` stopped (not the agent's failure)."""
    job: int
    event: str
    exit_code: int | None | UnsetType = UNSET
    error: str | UnsetType = UNSET
    container: str | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    stopped: bool | UnsetType = UNSET


class TaskFire(Message):
    """A timer (``nanoclaw tasks fire``) -> queue: run a scheduled task now. ``due_at`` absent:
    a timer's light fire (admin/fire.py); the queue sets it and the next run. ``started_at``,
    ``python_at``: the firing process's start, and Python's (the timer's and systemd's shares
    of lateness)."""
    task: int
    fired_at: float
    due_at: float | None | UnsetType = UNSET
    started_at: float | UnsetType = UNSET
    python_at: float | UnsetType = UNSET


# -- voice notes (queue/voice.py, runner/transcribe.py) -------------------------------------

class Transcribe(Message):
    """queue -> runner: transcribe a voice note (its file in the group's inbox) in a container."""
    message: int
    group: str
    file: str
    deadline: int | float


class Transcript(Message):
    """runner -> queue: a note's transcript (hostile text: what the audio said) or why there is none."""
    message: int
    group: str
    ok: bool
    text: str | UnsetType = UNSET
    cut: bool | UnsetType = UNSET
    language: str | UnsetType = UNSET
    duration: int | float | None | UnsetType = UNSET
    engine: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    took: int | float | UnsetType = UNSET
    error: str | UnsetType = UNSET


class Outbound(Message):
    """anyone -> router: text for a chat; ``key`` makes it idempotent. ``sender`` is the name
    it goes out under (default: the assistant's); ``reply_to`` the message row it answers."""
    key: str
    chat: str
    text: str
    kind: str
    sender: str | UnsetType = UNSET
    reply_to: int | UnsetType = UNSET


KINDS: dict[str, type[Message]] = {
    "job": Job, "prompt": Prompt, "close": Close, "stop": Stop, "result": Result, "send_message": SendMessage,
    "task_request": TaskRequest, "register_group": RegisterGroup, "delegate": Delegate,
    "create_agent": CreateAgent, "raise_budget": RaiseBudget, "budget_spent": BudgetSpent,
    "turn_result": TurnResult, "job_event": JobEvent, "task_fire": TaskFire, "transcribe": Transcribe, "transcript": Transcript,
    "outbound": Outbound,
}


class _Wire(Struct, forbid_unknown_fields=True):
    """The envelope as it lies on disk; its body is read into its kind's struct apart."""
    v: Any = None
    type: Any = None
    body: msgspec.Raw = msgspec.Raw(b"null")


@dataclass(frozen=True)
class Envelope:
    type: str
    body: dict[str, Any]
    path: Path | None = None
    message: Message | None = None  # the typed struct ``body`` was read from

    @property
    def name(self) -> str:
        return self.path.name if self.path else ""


_PROBLEM = re.compile(r"Object (contains unknown|missing required) field `([^`]*)`")
_WRONG = re.compile(r"Expected `([^`]*)`, got `([^`]*)`")


def explain(kind: str, exc: msgspec.ValidationError) -> str:
    """msgspec's reason, said in one line naming the message kind and the field."""
    text, _, where = str(exc).partition(" - at ")
    path = where.rpartition("$")[2].strip("`.")  # "$.usage.stages", "`key` in `$.usage.stages`"
    if m := _PROBLEM.fullmatch(text):
        field = f"{path}.{m[2]}" if path else m[2]
        return f"{kind}: {'unknown' if m[1] == 'contains unknown' else 'missing'} field {field!r}"
    if not path and text.startswith("Expected `object`"):
        return f"{kind}: body is not an object"
    if m := _WRONG.fullmatch(text):
        return f"{kind}: field {path!r} has the wrong type (expected {m[1]}, got {m[2]})"
    return f"{kind}: field {path!r}: {text[0].lower()}{text[1:]}" if path else f"{kind}: {text}"


def _kind(wire: _Wire) -> type[Message]:
    if wire.v != VERSION or isinstance(wire.v, bool):
        raise BadMessage(f"unsupported version {wire.v!r} (expected {VERSION})")
    if not isinstance(wire.type, str) or wire.type not in KINDS:
        raise BadMessage(f"unknown type {wire.type!r}")
    return KINDS[wire.type]


def parse(raw: bytes) -> tuple[str, Message]:
    """A spool file's bytes as (kind, its struct), or BadMessage with the reason."""
    try:
        wire = msgspec.json.decode(raw, type=_Wire)
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `object`"):
            raise BadMessage("not a JSON object") from None
        raise BadMessage(explain("envelope", exc)) from None
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    cls = _kind(wire)
    try:
        return wire.type, msgspec.json.decode(wire.body, type=cls)
    except msgspec.ValidationError as exc:
        raise BadMessage(explain(wire.type, exc)) from None


def decode(raw: bytes) -> tuple[str, dict]:
    """Parse and check a spool file's bytes; (type, body) or BadMessage with the reason."""
    kind, msg = parse(raw)
    return kind, msgspec.to_builtins(msg)


def validate(obj: Any) -> tuple[str, dict]:
    """Check an envelope already decoded from JSON; return (type, body) or raise BadMessage."""
    if not isinstance(obj, dict):
        raise BadMessage("not a JSON object")
    unknown = set(obj) - {"v", "type", "body"}
    if unknown:
        raise BadMessage(f"envelope: unknown field {sorted(unknown)[0]!r}")
    cls = _kind(_Wire(v=obj.get("v"), type=obj.get("type")))
    try:
        return obj["type"], msgspec.to_builtins(msgspec.convert(obj.get("body"), cls))
    except msgspec.ValidationError as exc:
        raise BadMessage(explain(obj["type"], exc)) from None


def encode(kind: str, body: dict | Message) -> bytes:
    """Serialise a message, checking it against its struct first (BadMessage if it fails)."""
    cls = KINDS.get(kind)
    if cls is None:
        raise BadMessage(f"unknown type {kind!r}")
    if not isinstance(body, cls):
        try:
            body = msgspec.convert(body, cls)
        except msgspec.ValidationError as exc:
            raise BadMessage(explain(kind, exc)) from None
    return msgspec.json.encode({"v": VERSION, "type": kind, "body": body}) + b"\n"
