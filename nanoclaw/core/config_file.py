"""Reading config.toml (and detected.toml) into the settings' structs (core/config.py).

SUMMARY
    read(path=None) -> Config     the owner's file, the detected container options under
                                  it, the directories' environment overrides; checked
    load(path=None) -> Config     the same, as every process asks for it
    get() -> Config               the process-wide configuration, loaded once

DESCRIPTION
    The TOML tables are put in the shape of :class:`Config` (``[budgets]`` is its
    ``budget``, each ``[egress.groups.<folder>]`` its ``[egress]`` with the group's keys on
    top) and converted by msgspec in one go: a key no struct declares, or a value of the
    wrong type, stops the daemons at start with one line naming the file and the key.
    The checks that span keys (ranges, the egress policy's own) follow the conversion.

DIAGNOSTICS
    ConfigError: "<file>: <table>.<key>: expected int, got 'ten'", "<file>: <table>:
    unknown setting 'promt_cap'", and the range checks' sentences.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
import typing
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from nanoclaw.core.config import DETECTED, DETECTED_KEYS, FOLDER_RE, Config, ConfigError, ContainerConfig
from nanoclaw.core.costs import DEFAULT_PRICES, Budget, Price
from nanoclaw.core.egress import EgressPolicy
from nanoclaw.core import voice_config
from nanoclaw.core.model_choice import ModelError, checked_models

# Where a struct field is read from in config.toml, when its name there differs.
TABLE = {"": "config", "budget": "budgets", "egress_groups": "egress.groups", "budget_groups": "budgets.groups"}
DIRS = (("state_dir", "NANOCLAW_STATE_DIR"), ("runtime_dir", "NANOCLAW_RUNTIME_DIR"),
        ("config_dir", "NANOCLAW_CONFIG_DIR"))


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _path(kind: type, value: Any) -> Any:
    """msgspec's hook for the directories: TOML has strings, the settings Paths."""
    if kind is Path:
        if isinstance(value, str):
            return Path(value)
        raise TypeError("expected a path")
    raise NotImplementedError


def _groups(table: dict, name: str, what: str) -> dict:
    """A table's ``groups`` sub-tables, one per group folder, taken out of it."""
    groups = table.pop("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(t, dict) for t in groups.values()):
        raise ConfigError(f"{name}.groups: expected one table per group folder, [{name}.groups.<folder>]")
    for folder in groups:
        if not FOLDER_RE.fullmatch(folder):
            raise ConfigError(f"{name}.groups: {folder!r} is not a group folder name")
    return groups


def _renamed(values: dict, where: str) -> dict:
    """Before the egress cap was per day it was per container start, which a lead could reset
    by delegating. An old setting is read as a day's, which can only be stricter."""
    if "max_bytes_per_run" not in values:
        return values
    if "max_bytes_per_day" in values:
        raise ConfigError(f"{where}: max_bytes_per_run is replaced by max_bytes_per_day; remove it")
    values = {k: v for k, v in values.items() if k != "max_bytes_per_run"} | {
        "max_bytes_per_day": values["max_bytes_per_run"]}
    logging.getLogger("nanoclaw.config").warning(
        "%s.max_bytes_per_run is deprecated: read as max_bytes_per_day (the cap now counts a group's "
        "bytes per day, not per container start); rename it in the configuration", where)
    return values


def _shaped(data: dict) -> dict:
    """config.toml's tables in the shape of :class:`Config`."""
    data = dict(data)
    for key in ("egress_groups", "budget", "budget_groups"):  # Config's names, not the file's
        if key in data:
            raise ConfigError(f"config: unknown setting {key!r}")
    for table in ("egress", "budgets", "usage"):
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(f"{table}: expected a table, [{table}]")
    egress = _renamed(dict(data.get("egress", {})), "egress")
    egress_groups = _groups(egress, "egress", "egress")
    if "egress" in data:
        data["egress"] = egress
    if egress_groups:
        data["egress_groups"] = {f: {**egress, **_renamed(t, f"egress.groups.{f}")} for f, t in egress_groups.items()}
    if "budgets" in data:
        budgets = dict(data.pop("budgets"))
        data["budget_groups"] = _groups(budgets, "budgets", "budgets")
        data["budget"] = budgets
    prices = data.get("usage", {}).get("prices", {})
    if not isinstance(prices, dict) or not all(isinstance(t, dict) for t in prices.values()):
        raise ConfigError('usage.prices: expected one table per model, [usage.prices."<model>"]')
    for model, values in prices.items():
        if set(values) - {"input", "output", "cache_write", "cache_read"}:
            continue  # refused by the struct, naming the key
        if not {"input", "output"} <= set(values):
            raise ConfigError(f"usage.prices.{model}: input and output prices are required (USD per million tokens)")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise ConfigError(f"usage.prices.{model}: prices are numbers of USD per million tokens, 0 or more")
    return data


def _field_type(root: type, path: list[str]) -> Any:
    """The declared type at ``path`` below ``root`` (None where the path leaves the structs)."""
    kind: Any = root
    for part in path:
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            kind = typing.get_type_hints(kind).get(part)
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        else:
            return None
    return kind


def _value(data: dict, path: list[str]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _explain(exc: msgspec.ValidationError, data: dict, root: type = Config, top: str = "config") -> str:
    """msgspec's reason as the settings' one line: the table, the key, what is wrong."""
    text, _, at = str(exc).partition(" - at `$")
    path = [p for p in re.split(r"[.\[]", at.rstrip("`")) if p and not p.endswith("]")]
    if m := re.fullmatch(r"Object (contains unknown|missing required) field `([^`]*)`", text):
        where = ".".join([TABLE.get(path[0], path[0]), *path[1:]]) if path else top
        what = "unknown setting" if m[1] == "contains unknown" else "missing setting"
        return f"{where}: {what} {m[2]!r}"
    if not path:
        return f"{top}: {text}"
    table, key = ".".join([TABLE.get(path[0], path[0]), *path[1:-1]]) if len(path) > 1 else top, path[-1]
    kind, value = _field_type(root, path), _value(data, path)
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return f"{key}: expected a table, [{key}]" if table == "config" else f"{table}.{key}: expected a table"
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return f"{table}.{key}: expected a list of {'integers' if item is int else 'strings'}"
    if kind is bool:
        return f"{table}.{key}: expected true or false, got {value!r}"
    name = getattr(kind, "__name__", str(kind))
    return f"{table}.{key}: expected {'a path' if kind is Path else name}, got {value!r}"


def _detected(path: Path) -> dict:
    """``nanoclaw doctor --redetect``'s container options, checked; {} when there are none."""
    if not path.exists():
        return {}
    table = _read_toml(path).get("container", {})
    unknown = set(table) - set(DETECTED_KEYS)
    if unknown:
        raise ConfigError(f"{path}: not a detected setting: {', '.join(sorted(unknown))}")
    try:
        msgspec.convert(table, ContainerConfig, dec_hook=_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(exc, table, ContainerConfig, 'container')}") from None
    return table


def read(path: Path | None = None) -> Config:
    """The configuration: ``path``, else ``$NANOCLAW_CONFIG``, else /etc/nanoclaw/config.toml
    when present (an explicit file must exist)."""
    if path is None:
        env = os.environ.get("NANOCLAW_CONFIG")
        path = Path(env) if env else Path("/etc/nanoclaw/config.toml")
        explicit = bool(env)
    else:
        explicit = True
    data: dict = {}
    if path.exists():
        data = _read_toml(path)
    elif explicit:
        raise ConfigError(f"{path}: no such configuration file")
    for key, env in DIRS:
        if os.environ.get(env):
            data[key] = os.environ[env]
    config_dir = data.get("config_dir")
    detected = _detected(Path(config_dir if isinstance(config_dir, str) else Config().config_dir) / DETECTED)
    try:
        return _checked(_converted(data, detected))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _entries(table: dict, cls: type, where: str) -> dict:
    """A table of tables, one ``cls`` each (a group's budget, a model's price), each converted
    apart so that an error names its own table."""
    out = {}
    for key, values in table.items():
        try:
            out[key] = msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(_explain(exc, values, cls, f"{where}.{key}")) from None
    return out


def _converted(data: dict, detected: dict) -> Config:
    shaped = _shaped(data)
    if detected:
        if not isinstance(shaped.get("container", {}), dict):
            raise ConfigError("container: expected a table, [container]")
        shaped["container"] = {**detected, **shaped.get("container", {})}  # the owner's keys win
    usage = dict(shaped.get("usage", {}))
    prices = _entries(usage.pop("prices", {}), Price, "usage.prices")
    egress_groups = _entries(shaped.pop("egress_groups", {}), EgressPolicy, "egress.groups")
    budget_groups = _entries(shaped.pop("budget_groups", {}), Budget, "budgets.groups")
    if "usage" in shaped:
        shaped["usage"] = usage
    try:
        cfg = msgspec.convert(shaped, Config, dec_hook=_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, shaped)) from None
    cfg = msgspec.structs.replace(cfg, egress_groups=egress_groups, budget_groups=budget_groups,
                                  usage=msgspec.structs.replace(cfg.usage, prices={**DEFAULT_PRICES, **prices}))
    try:
        egress = cfg.egress.validated()
    except ValueError as exc:
        raise ConfigError(f"egress.{exc}") from None
    groups = {}
    for folder, policy in cfg.egress_groups.items():
        try:
            groups[folder] = policy.validated()
        except ValueError as exc:
            raise ConfigError(f"egress.groups.{folder}.{exc}") from None
    return msgspec.structs.replace(cfg, egress=egress, egress_groups=groups)


def _checked(cfg: Config) -> Config:
    """The checks that span keys, or bound a value."""
    container, api, usage, team, tasks = cfg.container, cfg.api, cfg.usage, cfg.team, cfg.tasks
    for where, b in (("budgets", cfg.budget), *((f"budgets.groups.{f}", b) for f, b in cfg.budget_groups.items())):
        if min(b.day_usd, b.month_usd, b.day_tokens, b.month_tokens) < 0:
            raise ConfigError(f"{where}: a budget is 0 (none) or more")
    if cfg.backup.keep < 1:
        raise ConfigError("[backup] keep must be at least 1 (nightly = false turns the nightly backup off)")
    if min(cfg.prompt_cap, cfg.prompt_batch, cfg.max_concurrent, cfg.max_attempts) < 1:
        raise ConfigError("prompt_cap, prompt_batch, max_concurrent and max_attempts must be at least 1")
    if cfg.approval_timeout <= 0:
        raise ConfigError("approval_timeout must be a positive number of seconds")
    if cfg.burst_window < 0:
        raise ConfigError("burst_window must be 0 (off) or a number of seconds")
    # The queue gives a job up as stale when the runner has not started its container within
    # 300 s, and a pre-check runs before that start.
    if container.paused_memory_mib < 0:
        raise ConfigError("[container] paused_memory_mib must be 0 (no container is paused) or more")
    if not 0 < container.precheck_timeout <= 240:
        raise ConfigError("[container] precheck_timeout must be more than 0 and at most 240 seconds")
    if not 1 <= container.precheck_max_output <= 65536:
        raise ConfigError("[container] precheck_max_output must be between 1 and 65536 bytes")
    if min(api.max_calls_per_group, api.max_calls_per_agent, api.max_body_bytes, api.max_buffered_per_group) < 1:
        raise ConfigError("[api] max_calls_per_group, max_calls_per_agent, max_body_bytes and "
                          "max_buffered_per_group must be at least 1")
    if min(usage.web_search_usd, usage.web_fetch_usd) < 0:
        raise ConfigError("[usage] web_search_usd and web_fetch_usd are USD per request, 0 or more")
    if min(team.max_depth, team.max_delegations) < 1 or team.max_members < 0:
        raise ConfigError("[team] max_depth and max_delegations must be at least 1, max_members at least 0")
    if tasks.max_per_group < 1 or tasks.min_interval < 60:
        raise ConfigError("[tasks] max_per_group must be at least 1, min_interval at least 60 seconds")
    try:
        voice_config.check(cfg.voice)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        models = checked_models(cfg.models, cfg.model, usage)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    return msgspec.structs.replace(cfg, models=models, model=models.default)


def load(path: Path | None = None) -> Config:
    """Read the configuration file (if any), the detected container options, and apply
    environment overrides; ConfigError (one line: the file, the key, what is wrong) if they
    do not make a configuration."""
    return read(path)


@cache
def get() -> Config:
    """The process-wide configuration, loaded once."""
    return load()
