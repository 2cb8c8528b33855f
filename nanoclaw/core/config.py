"""Where nanoclaw keeps things and how it is tuned: the settings, one typed struct per table.

Everything comes from one TOML file (``$NANOCLAW_CONFIG``, else
``/etc/nanoclaw/config.toml`` when present) with environment overrides for the
directories, so tests and a development checkout run against a temp dir
without touching a system install. ``config_file.load()`` (core/config_file.py)
reads it into these structs, which refuse a key they do not declare;
``config_file.get()`` is the process-wide copy. (The reading sits above these
structs, never beside them: this module imports nothing that reads the file.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from msgspec import Struct, field

from nanoclaw.core.costs import ApiConfig, Budget, UsageConfig
from nanoclaw.core.egress import EgressPolicy
from nanoclaw.core.voice_config import VoiceConfig

# A group's folder name (and a team member's): here, not in core/groups.py, so that reading the
# configuration (which names groups in its tables) loads neither the database nor peewee; the
# timer's fire (nanoclaw/admin/fire.py) reads it.
# Match whole names with fullmatch (`$` would accept "family\n").
FOLDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ConfigError(Exception):
    """The configuration file is unreadable or holds a bad value."""


class Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A table of config.toml: its keys are the struct's fields, any other is an error."""


class ContainerConfig(Section):
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


class WhatsAppConfig(Section):
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
    status_reactions: bool = True  # a reaction on the message being answered shows what the agent does

    def __post_init__(self) -> None:
        if not 0 < self.pair_timeout <= QR_WINDOW:
            raise ConfigError(f"whatsapp.pair_timeout must be between 0 and {QR_WINDOW:.0f} seconds "
                              "(whatsmeow's QR codes run out after that)")
        if self.client_timeout <= 0:
            raise ConfigError("whatsapp.client_timeout must be positive")


def _under(base: str, *parts: str) -> property:
    """A location below one of the configured directories."""
    return property(lambda self: getattr(self, base).joinpath(*parts))


class TeamConfig(Section):
    """Teams of agents in a group (``[team]``)."""

    max_members: int = 5  # members one group may have
    max_depth: int = 3  # delegations within delegations, from one human message
    max_delegations: int = 10  # delegations in all, from one human message


class BackupConfig(Section):
    """``[backup]``: the nightly backup (``nanoclaw backup --nightly``, from a timer)."""

    nightly: bool = True  # false: the timer's run does nothing
    keep: int = 3  # the newest this many of each kind nanoclaw makes itself are kept


class TasksConfig(Section):
    """Scheduled tasks (``[tasks]``): limits an agent cannot reset (the owner may go beyond
    them from the CLI with ``--over-limits``)."""

    max_per_group: int = 20  # active and paused tasks one group may have
    min_interval: int = 300  # seconds: the least time between two runs of one task


class ModelsConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """``[models]``: which model each kind of work runs on (core/model_choice.py chooses, in
    the precedence it describes); "" falls through to the next, and ``default`` "" lets the
    CLI choose."""

    default: str = ""  # the chat (a group's lead), and what the others fall back to
    tasks: str = ""  # scheduled runs
    members: str = ""  # team members without a model of their own


class Config(Section):
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
    model: str = ""  # the older spelling of [models] default (config_file.read makes them the same)
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
    voice: VoiceConfig = field(default_factory=VoiceConfig)  # [voice]: voice_config.py

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


# What `nanoclaw doctor --redetect` finds by trying; kept apart from the owner's config.toml
# (which wins where it sets the same key) so re-detecting never touches the owner's file.
DETECTED = "detected.toml"
DETECTED_KEYS = ("runtime", "ulimits", "volumes", "memory", "pids_limit", "build_args")
