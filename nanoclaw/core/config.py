"""Where nanoclaw keeps things and how it is tuned.

Everything comes from one TOML file (``$NANOCLAW_CONFIG``, else
``/etc/nanoclaw/config.toml`` when present) with environment overrides for the
directories, so tests and a development checkout run against a temp dir
without touching a system install.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import cache
from pathlib import Path

from nanoclaw.core.costs import DEFAULT_PRICES, ApiConfig, Budget, Price, UsageConfig
from nanoclaw.core.egress import EgressPolicy
from nanoclaw.core.model_choice import ModelsConfig, read_models

# A group's folder name (and a team member's): here, not in core/groups.py, so that reading the
# configuration (which names groups in its tables) loads neither the database nor peewee; the
# timer's fire (nanoclaw/admin/fire.py) reads it.
# Match whole names with fullmatch (`$` would accept "family\n").
FOLDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ConfigError(Exception):
    """The configuration file is unreadable or holds a bad value."""


@dataclass(frozen=True)
class ContainerConfig:
    """How the runner starts agent containers.

    Runtime quirks (OCI runtime name, ulimits, network) live here rather than
    in code because hosts differ: a cgroups-v1 box needs ``runc`` and lowered
    ulimits, a stock Debian 12 server does not.
    """

    image: str = "localhost/nanoclaw-agent:0.1.0"
    base_image: str = "localhost/nanoclaw-base:bookworm-2"  # FROM for `nanoclaw image build`
    podman_url: str = ""  # empty: derived from the runtime dir (see podman_socket)
    runtime: str = ""  # OCI runtime; empty lets podman choose
    ulimits: tuple[str, ...] = ()  # e.g. ("nofile=1024:1024", "nproc=4096:4096")
    network: str = "none"
    volumes: tuple[str, ...] = ()  # extra host:container[:ro] binds a host needs (e.g. the cgroup tree)
    userns: str = ""  # empty: "keep-id" when rootless (the agent runs as the service user)
    user: str = ""  # uid:gid inside; empty: the service user's (rootless) or 1000:1000 (rootful)
    memory: str = "2g"  # empty: no limit (rootless on cgroups v1 cannot set one)
    pids_limit: int = 512  # 0: no limit
    timeout: float = 1800.0  # hard limit for one container's whole life
    idle_timeout: float = 600.0  # an answered container waits this long for follow-ups
    # Then it is paused (frozen, no CPU) rather than stopped, so the group's next message is
    # answered without a cold start: the paused containers' memory (PSS) in all stays within
    # this, the longest paused stopped first. 0: idle containers exit, as before.
    paused_memory_mib: int = 1024
    extra_env: tuple[str, ...] = ()  # NAME=VALUE pairs passed to every agent
    # podman build options; "same-as-run" (the default) uses runtime and ulimits, never volumes
    build_args: tuple[str, ...] = ("same-as-run",)
    # A scheduled task's pre-check (a shell command run before the agent, in a container of
    # the same image with no network): its time limit, and how much of its output the agent sees.
    precheck_timeout: float = 60.0
    precheck_max_output: int = 8192  # bytes


# whatsmeow shows 6 QR codes, the first for 60 s and the others for 20 s each: about 160 s
# in all, after which it gives up. A pairing timeout beyond it would wait for nothing.
QR_WINDOW = 160.0


@dataclass(frozen=True)
class WhatsAppConfig:
    """The WhatsApp channel (``[whatsapp]``). Only read when ``channels`` has "whatsapp"."""

    store_unregistered: bool = False  # keep messages from unregistered chats (never answered)
    # Outbound rate, all chats together. WhatsApp publishes no limit; whatsmeow's users report
    # more than about 5 messages a minute as what gets accounts banned: stay under it.
    send_rate_per_minute: float = 4.0
    send_burst: int = 3  # messages that may go out back to back (a 3-part answer at once)
    max_message_chars: int = 4000  # longer replies are split into several messages
    download_media: bool = True  # images, voice notes, documents into groups/<folder>/inbox/
    max_media_bytes: int = 25 * 1024 * 1024  # bigger media is referenced, not downloaded
    reconnect_min: float = 2.0  # first retry delay after a failed connect (doubles each time)
    reconnect_max: float = 300.0  # cap on that delay
    pair_timeout: float = 150.0  # how long `nanoclaw pair` waits for the phone (at most QR_WINDOW)
    name_refresh: float = 3600.0  # seconds between refreshes of registered groups' names
    # neonize marks messages to people (not groups) as sent by a bot unless told not to
    # (NEONIZE_BOT_TAG); the assistant writes as the owner, so no label by default.
    bot_label: bool = False
    # A connect, or a stop, of the WhatsApp client taking longer than this is a hang: the
    # channel stops feeding systemd's watchdog and is restarted. whatsmeow's own dial gives
    # up after 60 s, so this must be longer.
    client_timeout: float = 120.0
    proxy: str = ""  # e.g. socks5://127.0.0.1:1080 or http://proxy:3128 for all WhatsApp traffic

    def __post_init__(self) -> None:
        if not 0 < self.pair_timeout <= QR_WINDOW:
            raise ConfigError(f"whatsapp.pair_timeout must be between 0 and {QR_WINDOW:.0f} seconds "
                              "(whatsmeow's QR codes run out after that)")
        if self.client_timeout <= 0:
            raise ConfigError("whatsapp.client_timeout must be positive")


def _under(base: str, *parts: str) -> property:
    """A location below one of the configured directories."""
    return property(lambda self: getattr(self, base).joinpath(*parts))


@dataclass(frozen=True)
class TeamConfig:
    """Teams of agents in a group (``[team]``)."""

    max_members: int = 5  # members one group may have
    max_depth: int = 3  # delegations within delegations, from one human message
    max_delegations: int = 10  # delegations in all, from one human message


@dataclass(frozen=True)
class BackupConfig:
    """``[backup]``: the nightly backup (``nanoclaw backup --nightly``, from a timer)."""

    nightly: bool = True  # false: the timer's run does nothing
    keep: int = 3  # the newest this many of each kind nanoclaw makes itself are kept


@dataclass(frozen=True)
class TasksConfig:
    """Scheduled tasks (``[tasks]``): limits an agent cannot reset (the owner may go beyond
    them from the CLI with ``--over-limits``)."""

    max_per_group: int = 20  # active and paused tasks one group may have
    min_interval: int = 300  # seconds: the least time between two runs of one task


@dataclass(frozen=True)
class Config:
    """Resolved settings for every daemon and the CLI."""

    state_dir: Path = Path("/var/lib/nanoclaw")
    runtime_dir: Path = Path("/run/nanoclaw")
    config_dir: Path = Path("/etc/nanoclaw")
    assistant_name: str = "Andy"
    default_trigger: str = "@Andy"
    prompt_cap: int = 10  # older context messages (not addressed to the agent) a prompt shows
    prompt_batch: int = 50  # messages addressed to the agent in one prompt; more go in the next turn
    max_concurrent: int = 3
    max_attempts: int = 5
    backoff_base: float = 5.0
    backoff_max: float = 300.0
    timezone: str = ""
    channels: tuple[str, ...] = ("terminal",)
    proxy_upstream: str = "https://api.anthropic.com"
    model: str = ""  # the older spelling of [models] default (load() makes them the same)
    scheduler: str = "auto"  # timer backend: auto (systemd if PID 1, else crontab), systemd, crontab
    systemd_unit_dir: str = "/etc/systemd/system"
    crontab_file: str = ""  # empty: the service user's crontab
    max_spool_bytes: int = 1 << 20
    approval_timeout: float = 3600.0  # seconds an unknown chat's (or sender's) request waits for the owner
    # Seconds a group's chat must be quiet before its messages go to the agent, so a burst of
    # them is one turn (at most BURST_CAP times this after the first); 0: at once.
    burst_window: float = 0.0
    container: ContainerConfig = field(default_factory=ContainerConfig)
    whatsapp: WhatsAppConfig = field(default_factory=WhatsAppConfig)
    egress: EgressPolicy = field(default_factory=EgressPolicy)  # [egress]: every group's web access
    egress_groups: dict[str, EgressPolicy] = field(default_factory=dict)  # [egress.groups.<folder>]
    team: TeamConfig = field(default_factory=TeamConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    budget: Budget = field(default_factory=Budget)  # [budgets]: all groups together
    budget_groups: dict[str, Budget] = field(default_factory=dict)  # [budgets.groups.<folder>]
    backup: BackupConfig = field(default_factory=BackupConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)

    # Derived locations: one state dir, one runtime dir.
    db_path = _under("state_dir", "nanoclaw.db")
    groups_dir = _under("state_dir", "groups")  # each group's folder: its agent's cwd and memory
    global_dir = _under("state_dir", "groups", "global")  # memory every group's agent reads
    spool_dir = _under("state_dir", "spool")  # the daemons' spools
    ipc_dir = _under("state_dir", "ipc")  # each group's in/ (host -> agent) and out/ (agent -> host)
    sessions_dir = _under("state_dir", "sessions")  # each group's Claude session state
    timer_spec_dir = _under("state_dir", "timers")  # the scheduler's timer specs for the root sync
    backup_dir = _under("state_dir", "backups")  # the archives nanoclaw makes (core/backups.py)

    def egress_for(self, folder: str) -> EgressPolicy:
        """A group's web egress policy: its own table over ``[egress]``, else ``[egress]``."""
        return self.egress_groups.get(folder, self.egress)

    def agent_ipc(self, folder: str, agent: str = "") -> Path:
        """A group's lead's IPC directory (``in``, ``out``), or a member's: never inside what
        another agent of the team has mounted."""
        return self.ipc_dir / folder / "agents" / agent if agent else self.ipc_dir / folder

    def agent_session(self, folder: str, agent: str = "") -> Path:
        """The Claude session state of a group's lead, or of a member (``.team`` cannot be a folder)."""
        return self.sessions_dir / ".team" / folder / agent if agent else self.sessions_dir / folder

    def socket(self, daemon: str) -> Path:
        """The Unix socket a daemon listens on."""
        return self.runtime_dir / f"{daemon}.sock"

    @property
    def podman_socket(self) -> str:
        return self.container.podman_url or f"unix://{self.runtime_dir / 'podman.sock'}"

    @property
    def tz(self) -> str:
        """The owner's timezone name, so '9 am' in a container means the owner's 9 am."""
        if self.timezone:
            return self.timezone
        if os.environ.get("TZ"):
            return os.environ["TZ"].lstrip(":")
        try:
            link = os.readlink("/etc/localtime")
            return link.split("zoneinfo/", 1)[1]
        except (OSError, IndexError):
            pass
        try:
            return Path("/etc/timezone").read_text().strip() or "UTC"
        except OSError:
            return "UTC"


def _coerce(cls: type, table: dict, where: str) -> dict:
    """Check a TOML table against a dataclass's fields; refuse unknown keys."""
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in table.items():
        if key not in known or known[key].default is MISSING:  # tables (egress_groups) are read apart
            raise ConfigError(f"{where}: unknown setting {key!r}")
        default = known[key].default
        if isinstance(default, tuple):
            kind = type(default[0]) if default else str  # (80, 443): a list of integers
            if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                      for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of {'integers' if kind is int else 'strings'}")
            value = tuple(value)
        elif isinstance(default, Path):
            value = Path(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, type(default)):
            if not (isinstance(default, float) and isinstance(value, int)):
                raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
            value = float(value)
        out[key] = value
    return out


def _egress(table: dict) -> tuple[EgressPolicy, dict[str, EgressPolicy]]:
    """``[egress]`` and its ``[egress.groups.<folder>]`` tables; a group's table changes only
    the keys it names. Every value is checked here, so a typo stops the daemons at start."""
    table = dict(table)
    groups = table.pop("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(t, dict) for t in groups.values()):
        raise ConfigError("egress.groups: expected one table per group folder, [egress.groups.<folder>]")

    def policy(base: EgressPolicy, values: dict, where: str) -> EgressPolicy:
        values = dict(values)
        if "max_bytes_per_run" in values:
            # Before the cap was per day it was per container start, which a lead could reset
            # by delegating. An old setting is read as a day's, which can only be stricter.
            if "max_bytes_per_day" in values:
                raise ConfigError(f"{where}: max_bytes_per_run is replaced by max_bytes_per_day; remove it")
            values["max_bytes_per_day"] = values.pop("max_bytes_per_run")
            logging.getLogger("nanoclaw.config").warning(
                "%s.max_bytes_per_run is deprecated: read as max_bytes_per_day (the cap now counts a group's "
                "bytes per day, not per container start); rename it in the configuration", where)
        try:
            return replace(base, **_coerce(EgressPolicy, values, where)).validated()
        except ValueError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    default = policy(EgressPolicy(), table, "egress")
    per_group = {}
    for folder, values in groups.items():
        if not FOLDER_RE.fullmatch(folder):
            raise ConfigError(f"egress.groups: {folder!r} is not a group folder name")
        per_group[folder] = policy(default, values, f"egress.groups.{folder}")
    return default, per_group


def _usage(table: dict) -> UsageConfig:
    """``[usage]``: the allowed models and the price table (the owner's rows over the defaults)."""
    table = dict(table)
    prices = dict(DEFAULT_PRICES)
    given = table.pop("prices", {})
    if not isinstance(given, dict) or not all(isinstance(t, dict) for t in given.values()):
        raise ConfigError('usage.prices: expected one table per model, [usage.prices."<model>"]')
    for model, values in given.items():
        where = f"usage.prices.{model}"
        unknown = set(values) - {"input", "output", "cache_write", "cache_read"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        if not {"input", "output"} <= set(values):
            raise ConfigError(f"{where}: input and output prices are required (USD per million tokens)")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise ConfigError(f"{where}: prices are numbers of USD per million tokens, 0 or more")
        prices[model] = Price(**{k: float(v) for k, v in values.items()})
    usage = _coerce(UsageConfig, table, "usage")
    return UsageConfig(prices=prices, **usage)


def _budgets(table: dict) -> tuple[Budget, dict[str, Budget]]:
    """``[budgets]`` (all groups together) and ``[budgets.groups.<folder>]`` (one group each)."""
    table = dict(table)
    groups = table.pop("groups", {})
    if not isinstance(groups, dict) or not all(isinstance(t, dict) for t in groups.values()):
        raise ConfigError("budgets.groups: expected one table per group folder, [budgets.groups.<folder>]")

    def budget(values: dict, where: str) -> Budget:
        b = Budget(**_coerce(Budget, values, where))
        if min(b.day_usd, b.month_usd, b.day_tokens, b.month_tokens) < 0:
            raise ConfigError(f"{where}: a budget is 0 (none) or more")
        return b

    per_group = {}
    for folder, values in groups.items():
        if not FOLDER_RE.fullmatch(folder):
            raise ConfigError(f"budgets.groups: {folder!r} is not a group folder name")
        per_group[folder] = budget(values, f"budgets.groups.{folder}")
    return budget(table, "budgets"), per_group


# What `nanoclaw doctor --redetect` finds by trying; kept apart from the owner's config.toml
# (which wins where it sets the same key) so re-detecting never touches the owner's file.
DETECTED = "detected.toml"
DETECTED_KEYS = ("runtime", "ulimits", "volumes", "memory", "pids_limit", "build_args")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load(path: Path | None = None) -> Config:
    """Read the configuration file (if any), the detected container options, and apply
    environment overrides."""
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
    owner_container = _coerce(ContainerConfig, data.pop("container", {}), "container")
    whatsapp = WhatsAppConfig(**_coerce(WhatsAppConfig, data.pop("whatsapp", {}), "whatsapp"))
    egress, egress_groups = _egress(data.pop("egress", {}))
    team = TeamConfig(**_coerce(TeamConfig, data.pop("team", {}), "team"))
    tasks = TasksConfig(**_coerce(TasksConfig, data.pop("tasks", {}), "tasks"))
    usage = _usage(data.pop("usage", {}))
    api = ApiConfig(**_coerce(ApiConfig, data.pop("api", {}), "api"))
    budget, budget_groups = _budgets(data.pop("budgets", {}))
    backup = BackupConfig(**_coerce(BackupConfig, data.pop("backup", {}), "backup"))
    models = read_models(data.pop("models", {}), data.get("model", ""), usage)  # [models], checked
    if backup.keep < 1:
        raise ConfigError("[backup] keep must be at least 1 (nightly = false turns the nightly backup off)")
    settings = _coerce(Config, data, "config")
    for key, env in (("state_dir", "NANOCLAW_STATE_DIR"), ("runtime_dir", "NANOCLAW_RUNTIME_DIR"),
                     ("config_dir", "NANOCLAW_CONFIG_DIR")):
        if os.environ.get(env):
            settings[key] = Path(os.environ[env])
    detected_path = settings.get("config_dir", Config.config_dir) / DETECTED
    detected: dict = {}
    if detected_path.exists():
        table = _read_toml(detected_path).get("container", {})
        unknown = set(table) - set(DETECTED_KEYS)
        if unknown:
            raise ConfigError(f"{detected_path}: not a detected setting: {', '.join(sorted(unknown))}")
        detected = _coerce(ContainerConfig, table, f"{detected_path.name}: container")
    container = ContainerConfig(**{**detected, **owner_container})
    settings["model"] = models.default
    cfg = Config(container=container, whatsapp=whatsapp, egress=egress, egress_groups=egress_groups, team=team,
                 tasks=tasks, usage=usage, api=api, budget=budget, budget_groups=budget_groups, backup=backup,
                 models=models, **settings)
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
    return cfg


@cache
def get() -> Config:
    """The process-wide configuration, loaded once."""
    return load()
