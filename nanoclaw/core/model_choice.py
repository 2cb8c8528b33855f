"""Which model an agent's run uses, and whether that name may be used: one rule for the
queue (which decides when it makes a job), the runner, the CLI and the ipc daemon.

Precedence, most specific first:

    a task's own model > a team member's own > the group's > the kind's default
    (``[models] tasks`` for scheduled runs, ``[models] members`` for team members)
    > ``[models] default`` > "" (the CLI's built-in default)

Every name is an exact model id (``MODEL_RE``: no fnmatch patterns, no spaces, at most 100
characters) and, when ``[usage] allowed_models`` is set, must match one of its patterns:
the proxy would refuse the calls of any other, so a run on it is refused before it starts,
with one line saying which name, where it came from and how to fix it. A name an agent
gives (its ``schedule_task``/``update_task`` argument) is hostile: checked here as every
other field is, never trusted for its shape.

``[models]`` is checked here too (:func:`checked_models`, called by ``config_file.read``), so its names
are checked by the same rule when the configuration loads.

No I/O in :func:`choose` and :func:`check`; :func:`for_job` reads the group and the team
member (peewee is imported there only, so the configuration loads without it).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from nanoclaw.core.config import Config, ModelsConfig
    from nanoclaw.core.costs import UsageConfig

MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")
KINDS = ("chat", "task", "member")
DEFAULT_WORDS = ("", "default")  # what a CLI --model or an agent's update says to drop a task's own model


# Where the owner changes a refused name, by where it came from.
FIXES = {"the task's own model": "or give the task another: nanoclaw tasks update ID --model NAME",
         "the member's own model": "or give the member another: its file's model:, nanoclaw agents add",
         "the group's model": "or give the group another: nanoclaw groups set GROUP --model NAME"}


class ModelError(ValueError):
    """A model name that is refused; the text is one line saying why and how to fix it."""


@dataclass(frozen=True)
class Choice:
    """The model a run uses ("" lets the CLI choose), where that came from, and, when the
    name may not be used, the one line that says so (``refused``; then nothing runs)."""

    model: str
    source: str
    refused: str = ""


def _allowed(patterns: Sequence[str], name: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _shown(name: object) -> str:
    return repr(name)[:60] if isinstance(name, str) else f"a {type(name).__name__}"


def check(cfg: Config, name: object, where: str) -> str:
    """``name`` as it may be stored, or ModelError (one line). ``where`` says whose name it is
    ("the task", "[models] tasks", ...). "" is no model of its own, always fine."""
    return _check(cfg.usage.allowed_models, name, where)


def _check(patterns: Sequence[str], name: object, where: str) -> str:
    if not isinstance(name, str):
        raise ModelError(f"{where}: the model must be a model name (text), not {_shown(name)}")
    if name == "":
        return name
    if not MODEL_RE.fullmatch(name):
        raise ModelError(f"{where}: {_shown(name)} is not a model name (letters, digits and ._:@-, "
                         "at most 100 characters, e.g. claude-haiku-4-5)")
    if not _allowed(patterns, name):
        raise ModelError(f"{where}: the model {name} is not in [usage] allowed_models "
                         f"({', '.join(patterns)}): the proxy would refuse its calls; "
                         "choose one of those, or add it there")
    return name


def choose(cfg: Config, kind: str, *, group: str = "", member: str = "", task: str = "",
           where: str = "") -> Choice:
    """The model for one run of ``kind`` ("chat": the lead answering its chat; "task": a
    scheduled run; "member": a team member), given the names set on the task, the member and
    the group ("" where none). ``where`` names the group (and member or task) in a refusal."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of run {kind!r}")
    models = cfg.models
    kind_default = {"task": (models.tasks, "[models] tasks"),
                    "member": (models.members, "[models] members")}.get(kind, ("", ""))
    ladder = [(task if kind == "task" else "", "the task's own model"),
              (member if kind == "member" else "", "the member's own model"),
              (group, "the group's model"),
              kind_default,
              (models.default, "[models] default")]
    for name, source in ladder:
        if name:
            try:
                check(cfg, name, f"{where}: {source}" if where else source)
            except ModelError as exc:
                return Choice(name, source, f"{exc} ({FIXES.get(source, 'or change it in the configuration')})")
            return Choice(name, source)
    return Choice("", "the CLI's default")


def for_job(cfg: Config, folder: str, agent: str = "", task_model: str | None = None) -> Choice:
    """The choice for a job of group ``folder``: a scheduled run when ``task_model`` is given
    (the task's own model, "" for none), else the lead's chat or team member ``agent``."""
    from nanoclaw.core import team as team_mod
    from nanoclaw.core.models import Group

    g = Group.get_or_none(Group.folder == folder)
    group_model = (g.model if g is not None else "") or ""
    if task_model is not None:
        return choose(cfg, "task", group=group_model, task=task_model, where=folder)
    if agent:
        m = team_mod.member(cfg, folder, agent)
        return choose(cfg, "member", group=group_model, member=(m.model if m is not None else "") or "",
                      where=f"{folder}/{agent}")
    return choose(cfg, "chat", group=group_model, where=folder)


def checked_models(models: ModelsConfig, old_default: str, usage: UsageConfig) -> ModelsConfig:
    """``[models]`` as config.toml gave it (core/config_file.py), each name checked as any model
    name is: a name the proxy would refuse stops the daemons at start, not at the first run.
    The top-level ``model`` is the older spelling of ``default``. Raises ModelError (one line;
    config_file says it as a ConfigError)."""
    if old_default and models.default and old_default != models.default:
        raise ModelError("model and [models] default name two models; keep one ([models] default)")
    if old_default and not models.default:
        models = msgspec.structs.replace(models, default=old_default)
    for key in ("default", "tasks", "members"):
        _check(usage.allowed_models, getattr(models, key), f"[models] {key}")
    return models
