"""The runner's one container spec: what validate() refuses, and a pre-check's spec as the
agent's made strictly narrower. Real configuration, database and descriptors; the last test
runs the real daemons against real Podman."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from podman_harness import _podman

from nanoclaw.core import groups as groups_mod
from nanoclaw.core import team
from nanoclaw.core.mounts import BUILTIN_BLOCKED, Allowlist, Root
from nanoclaw.daemons.runner import binds, precheck, validate
from nanoclaw.daemons.runner.driver import options
from nanoclaw.daemons.runner.spec import Mount, Spec, agent_spec
from nanoclaw.daemons.runner.validate import SpecError

CGROUP = "/sys/fs/cgroup:/sys/fs/cgroup:ro"


@pytest.fixture
def cfg(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    c = make_cfg('[container]\nnetwork = "slirp4netns"\n'
                 f'volumes = ["{CGROUP}", "{tmp_path}/cache:/cache"]\nextra_env = ["CLAUDE_CODE_MAX_RETRIES=0"]\n')
    groups_mod.add_group(c, "main", is_main=True)
    groups_mod.add_group(c, "family")
    team.write(c, "family", team.Member("researcher", "d", "i"))
    return c


@pytest.fixture
def owner(tmp_path):
    """The owner's projects (an allowlisted root, writable) with a git repository in one, a
    folder outside every root, and what is opened for a spec (closed after the test)."""
    projects = tmp_path / "home" / "projects"
    (projects / "site" / ".git").mkdir(parents=True)
    (projects / ".ssh").mkdir()
    (tmp_path / "home" / "elsewhere").mkdir()
    opened: list[binds.Bind] = []

    def open_(path: Path, name: str, read_only: bool = False, guards: bool = False) -> list[binds.Bind]:
        folder = binds.open_checked(path.resolve(), f"/workspace/extra/{name}", read_only, name)
        out = [folder, *(binds.git_guards(folder) if guards else [])]
        opened.extend(out)
        return out

    allow = Allowlist((Root(projects.resolve(), True),), BUILTIN_BLOCKED)
    yield projects, allow, open_
    binds.close(opened)


def job(group: str, is_main: bool = False, agent: str = "", number: int = 7) -> dict:
    return {"job": number, "group": group, "is_main": is_main, "agent": agent, "chat": f"{group}@term",
            "prompt": "", "session_id": None}


def at(spec: Spec, target: str) -> Mount:
    return next(m for m in spec.mounts if m.target == target)


def swap(spec: Spec, target: str, **change) -> Spec:
    """``spec`` with the mount at ``target`` changed."""
    return replace(spec, mounts=tuple(replace(m, **change) if m.target == target else m for m in spec.mounts))


def add(spec: Spec, *mounts: Mount) -> Spec:
    return replace(spec, mounts=spec.mounts + mounts)


def test_every_mount_of_an_agents_spec_has_its_class(cfg, owner):
    projects, allow, open_ = owner
    site = open_(projects / "site", "site", guards=True)
    for spec in (agent_spec(cfg, job("main", True)), agent_spec(cfg, job("family"), site),
                 agent_spec(cfg, job("family", agent="researcher"))):
        kinds = validate.validate(spec, cfg, allow)
        assert list(kinds) == [m.target for m in spec.mounts]
        assert {t: k for t, k in kinds.items() if not t.startswith("/workspace/extra/")} == {
            "/workspace/group": validate.GROUP_STATE, "/workspace/group/agents": validate.GROUP_STATE,
            "/workspace/global": validate.GLOBAL, "/workspace/ipc/in": validate.GROUP_STATE,
            "/workspace/ipc/out": validate.GROUP_STATE, "/workspace/session": validate.GROUP_STATE,
            "/run/nanoclaw-proxy": validate.GROUP_STATE, "/tmp": validate.SCRATCH, "/sys/fs/cgroup": validate.HOST,
            "/cache": validate.HOST}
    extra = {t: k for t, k in validate.validate(agent_spec(cfg, job("family"), site), cfg, allow).items()
             if t.startswith("/workspace/extra/")}
    assert extra["/workspace/extra/site"] == validate.OWNER_FOLDER
    assert len(extra) > 1 and set(extra.values()) == {validate.OWNER_FOLDER}  # git's files, guarded
    assert not at(agent_spec(cfg, job("main", True)), "/workspace/global").read_only  # main writes global memory
    assert not at(agent_spec(cfg, job("main", True)), "/cache").read_only  # a volume as configured


def refusals(cfg, tmp_path, owner) -> list[tuple[str, Spec, str]]:
    """(what, a spec, the refusal's words): each the valid spec of family's lead (with an
    owner's folder) or of a pre-check, with one thing wrong."""
    projects, allow, open_ = owner
    site = open_(projects / "site", "site")
    base = agent_spec(cfg, job("family"), site)
    lead_of_main = agent_spec(cfg, job("main", True))
    member = agent_spec(cfg, job("family", agent="researcher"))
    member_of_main = agent_spec(cfg, job("main", False, agent="researcher"))
    pre = precheck.narrow(base, "true", cfg.container)
    state, conf = cfg.state_dir, cfg.config_dir
    (conf / "credentials").mkdir(parents=True)

    def owners(path: Path, name: str, read_only: bool = False) -> Mount:
        [b] = open_(path, name, read_only)
        return Mount(b.target, str(b.source), read_only, checked=b)

    elsewhere = tmp_path / "home" / "elsewhere"
    return [
        ("a folder outside the group's that no allowlist admitted",
         add(base, Mount("/workspace/extra/elsewhere", str(elsewhere))), "no owner's folder opened"),
        ("an owner's folder under no allowlisted root", add(base, owners(elsewhere, "elsewhere")),
         "under no root of the allowlist"),
        ("a host folder at a place of its own", add(base, Mount("/workspace/data", str(projects / "site"), True)),
         "is none of"),
        ("an allowlisted folder mounted writable where its root is read only",
         replace(base, mounts=base.mounts), "read only", Allowlist((Root(projects.resolve(), False),), ())),
        ("a folder checked read-only, mounted writable",
         swap(base, "/workspace/extra/site", checked=replace(site[0], read_only=True)), "no owner's folder"),
        ("the credentials directory", add(base, owners(conf / "credentials", "creds", True)), "identity material"),
        ("the configuration directory", add(base, Mount("/workspace/extra/etc", str(conf), True)),
         "identity material"),
        ("a .ssh folder, even under an allowed root", add(base, owners(projects / ".ssh", "ssh", True)),
         "'.ssh' is blocked"),
        ("all of the state", add(base, Mount("/workspace/extra/state", str(state), True)), "holds all of"),
        ("the database", add(base, Mount("/workspace/extra/db", str(cfg.db_path), True)), "identity material"),
        ("global memory writable to a group that is not main", swap(base, "/workspace/global", read_only=False),
         "only the main group's agent writes"),
        ("global memory writable to a member of main", swap(member_of_main, "/workspace/global", read_only=False),
         "only the main group's agent writes"),
        ("another folder as global memory", swap(base, "/workspace/global", source=str(state / "groups" / "main")),
         "global memory is"),
        ("another group's folder", swap(base, "/workspace/group", source=str(state / "groups" / "main")),
         "its own"),
        ("the lead's session for a member",
         swap(member, "/workspace/session", source=at(base, "/workspace/session").source), "its own"),
        ("main's sockets for family", swap(base, "/run/nanoclaw-proxy",
                                             source=at(lead_of_main, "/run/nanoclaw-proxy").source), "its own"),
        ("the host's prompts writable", swap(base, "/workspace/ipc/in", read_only=False), "must be read-only"),
        ("the team's files writable", swap(base, "/workspace/group/agents", read_only=False), "must be read-only"),
        ("the sockets' directory writable", swap(base, "/run/nanoclaw-proxy", read_only=False), "must be read-only"),
        ("a host volume not configured", add(base, Mount("/srv", "/srv", True)), "is none of"),
        ("a configured volume made writable", swap(base, "/sys/fs/cgroup", read_only=False), "is none of"),
        ("a tmpfs elsewhere", add(base, Mount("/var/tmp", size="1m")), "only scratch space"),
        ("a target with ..", add(base, Mount("/workspace/extra/../../etc", str(elsewhere), True)), "plain absolute"),
        ("two mounts at one target", add(base, Mount("/workspace/group", str(state / "groups" / "family"))),
         "two mounts"),
        ("a group name that climbs", replace(base, group="../main"), "not a group's or member's name"),
        ("root inside", replace(base, user="0:0"), "never runs as root"),
        ("the credential in the environment", replace(base, env={**base.env, "ANTHROPIC_API_KEY": "sk-x"}),
         "credential's"),
        ("a pre-check with the host's writable volume", swap(pre, "/cache", read_only=False),
         "nothing is, in a pre-check"),
        ("a pre-check with a network", replace(pre, network="slirp4netns"), "a pre-check has none"),
        ("a pre-check that writes the group's folder", swap(pre, "/workspace/group", read_only=False),
         "must be read-only"),
        ("a pre-check that writes an owner's folder",
         swap(pre, "/workspace/extra/site", read_only=False, checked=site[0]), "nothing is, in a pre-check"),
        ("a pre-check with the agent's session", add(pre, at(base, "/workspace/session")),
         "none of its agent's directories"),
        ("a pre-check with the proxy's sockets", add(pre, at(base, "/run/nanoclaw-proxy")),
         "none of its agent's directories"),
        ("a pre-check with global memory", add(pre, at(base, "/workspace/global")), "for an agent only"),
    ]


def test_the_validator_refuses_each_mount_and_setting_it_must(cfg, tmp_path, owner):
    allow = owner[1]
    cases = refusals(cfg, tmp_path, owner)
    for what, spec, words, *other in cases:
        try:
            validate.validate(spec, cfg, other[0] if other else allow)
        except SpecError as exc:
            assert words in str(exc), (what, str(exc))
        else:
            pytest.fail(f"{what}: passed")
    assert len({what for what, *_ in cases}) == len(cases)


def test_the_specs_each_refusal_starts_from_pass(cfg, owner):
    """So each refusal above is its one change."""
    projects, allow, open_ = owner
    site = open_(projects / "site", "site")
    base = agent_spec(cfg, job("family"), site)
    validate.validate(base, cfg, allow)
    validate.validate(precheck.narrow(base, "true", cfg.container), cfg, allow)
    validate.validate(agent_spec(cfg, job("main", True)), cfg)
    validate.validate(agent_spec(cfg, job("main", False, agent="researcher")), cfg)
    with pytest.raises(SpecError, match="no allowlist admitted it"):  # the folders need the allowlist they passed
        validate.validate(base, cfg, None)


def size(tmpfs: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", tmpfs).groups()
    return int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


@pytest.mark.parametrize("which", ["family's lead, with a writable owner's folder", "main's lead", "a member"])
def test_a_precheck_is_its_agents_spec_made_strictly_narrower(cfg, owner, which):
    projects, allow, open_ = owner
    agent = {"family's lead, with a writable owner's folder":
             lambda: agent_spec(cfg, job("family"), open_(projects / "site", "site", guards=True)),
             "main's lead": lambda: agent_spec(cfg, job("main", True)),
             "a member": lambda: agent_spec(cfg, job("family", agent="researcher"))}[which]()
    pre = precheck.narrow(agent, "test -s inbox/new", cfg.container)
    kinds = validate.validate(pre, cfg, allow)
    assert set(kinds.values()) <= {validate.GROUP_STATE, validate.OWNER_FOLDER, validate.HOST, validate.SCRATCH}
    assert list(kinds)[0] == "/workspace/group" and kinds["/workspace/group"] == validate.GROUP_STATE

    # mounts: fewer, each one the agent has, none writable, scratch no bigger
    theirs = {m.target: m for m in agent.mounts}
    assert len(pre.mounts) < len(agent.mounts)
    for m in pre.mounts:
        same = theirs[m.target]
        assert (m.source, m.checked is None) == (same.source, same.checked is None), m
        assert m.read_only or not m.source, m
        if not m.source:
            assert size(m.size) <= size(same.size)
    assert not {"/workspace/global", "/workspace/ipc/in", "/workspace/ipc/out", "/workspace/session",
                "/run/nanoclaw-proxy", "/workspace/group/agents"} & {m.target for m in pre.mounts}
    assert [m.target for m in pre.mounts if m.checked] == [m.target for m in agent.mounts if m.checked]

    # the environment: a subset of the agent's names, nothing of the model, the job or the owner's extras
    assert set(pre.env) < set(agent.env)
    assert {k: v for k, v in pre.env.items() if k != "HOME"} == {k: agent.env[k] for k in pre.env if k != "HOME"}
    assert not {"NANOCLAW_MODEL", "NANOCLAW_JOB", "NANOCLAW_MOUNTS", "CLAUDE_CODE_MAX_RETRIES"} & set(pre.env)

    # no network where the agent has one; the same image, identity and resources
    assert (agent.network, pre.network) == ("slirp4netns", "none")
    assert (pre.image, pre.user, pre.userns, pre.runtime, pre.resources) == \
        (agent.image, agent.user, agent.userns, agent.runtime, agent.resources)
    assert pre.timeout == cfg.container.precheck_timeout  # its own limit, as configured
    assert pre.name == f"nanoclaw-{agent.group}-{agent.labels['nanoclaw.job']}-check"  # the job's, a member's too
    assert pre.labels["nanoclaw.job"] == agent.labels["nanoclaw.job"] and pre.role == "precheck"

    # and the hardening every container gets is the driver's, in both
    for spec in (agent, pre):
        kw = options(spec)
        assert (kw["cap_drop"], kw["security_opt"], kw["read_only"]) == (["ALL"], ["no-new-privileges"], True)
    assert options(pre)["network_mode"] == "none" and options(pre)["log_config"]["Config"]["size"] > 0


@pytest.mark.podman
def test_a_spec_the_validator_refuses_is_never_made(make_system, agent_image, podman_service):
    """An owner's setting that would put a credential's name in every agent's environment: the
    runner refuses the container before Podman hears of it, gives the job up at once (made
    again it would be refused again), and the value reaches no log."""
    secret = "sk-ant-" + "x" * 20
    s = make_system(container={"image": agent_image, "podman_url": podman_service,
                               "extra_env": [f"ANTHROPIC_API_KEY={secret}"]}, max_attempts=1)
    s.cli("groups", "add", "main", "--main")
    s.start()
    w = s.watch("main")
    try:
        s.send("main", "hello")
        assert "could not answer" in w.reply(60)
        [(status, error)] = s.db().execute("select status, error from job").fetchall()
        assert status == "failed" and error.startswith("the container was refused: environment variable "
                                                       "ANTHROPIC_API_KEY is a credential's"), error
        log = s.log("runner")
        assert "refused to make the container" in log and " started " not in log and "podman error" not in log
        assert secret not in log and secret not in error
        assert not _podman("ps", "-a", "--filter", "label=nanoclaw.job", "--format", "{{.Names}}").stdout.split()
    finally:
        w.close()


def test_a_groups_model_reaches_its_containers_and_a_members_own_wins(tmp_path, monkeypatch):
    from nanoclaw.admin.cli import main as cli_main
    from nanoclaw.core import config_file
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import team
    from nanoclaw.core.models import open_db
    from nanoclaw.daemons.runner.dirs import prepare_dirs
    from nanoclaw.daemons.runner.driver import options
    from nanoclaw.daemons.runner.spec import agent_spec
    for env, sub in (("NANOCLAW_STATE_DIR", "state"), ("NANOCLAW_RUNTIME_DIR", "run"), ("NANOCLAW_CONFIG_DIR", "etc")):
        monkeypatch.setenv(env, str(tmp_path / sub))
    conf = tmp_path / "config.toml"
    conf.write_text('timezone = "UTC"\nmodel = "claude-sonnet-4-5"\n')
    monkeypatch.setenv("NANOCLAW_CONFIG", str(conf))
    config_file.get.cache_clear()
    cfg = config_file.get()
    open_db(cfg.db_path)
    groups_mod.add_group(cfg, "family")
    team.write(cfg, "family", team.Member("researcher", "d", "i", model="claude-opus-4-5"))
    team.write(cfg, "family", team.Member("planner", "d", "i"))

    def env(agent: str = "") -> dict:
        prepare_dirs(cfg, "family", False, agent)
        return options(agent_spec(cfg, {"job": 3, "group": "family", "is_main": False, "agent": agent,
                                        "chat": "family@term", "prompt": "", "session_id": None}))

    assert env()["environment"]["NANOCLAW_MODEL"] == "claude-sonnet-4-5"
    with pytest.raises(SystemExit) as done:
        cli_main(["groups", "set", "family", "--model", "claude-haiku-4-5"])
    assert done.value.code == 0
    assert env()["environment"]["NANOCLAW_MODEL"] == "claude-haiku-4-5"
    assert env("planner")["environment"]["NANOCLAW_MODEL"] == "claude-haiku-4-5"
    assert env("researcher")["environment"]["NANOCLAW_MODEL"] == "claude-opus-4-5"
    # a member mounts its own proxy directory; the lead's path is as before
    mounts = {m["target"]: m["source"] for m in env("researcher")["mounts"]}
    assert mounts["/run/nanoclaw-proxy"] == str(cfg.runtime_dir / "proxy" / ".team" / "family" / "researcher")
    mounts = {m["target"]: m["source"] for m in env()["mounts"]}
    assert mounts["/run/nanoclaw-proxy"] == str(cfg.runtime_dir / "proxy" / "family")
    with pytest.raises(SystemExit) as done:
        cli_main(["groups", "set", "family", "--model", "bad model!"])
    assert done.value.code == 2
    config_file.get.cache_clear()


def test_container_mounts_give_a_member_its_own_ipc_and_session_and_the_team_read_only(cfg):
    from nanoclaw.daemons.runner.dirs import prepare_dirs
    from nanoclaw.daemons.runner.driver import options
    from nanoclaw.daemons.runner.spec import agent_spec
    team.write(cfg, "main", team.Member("researcher", "d", "i", model="claude-haiku"))
    prepare_dirs(cfg, "main", True, "researcher")
    kw = options(agent_spec(cfg, {"job": 7, "group": "main", "is_main": False, "agent": "researcher",
                                  "chat": "main@term", "prompt": "", "session_id": None}))
    mounts = {m["target"]: m for m in kw["mounts"]}
    assert kw["name"] == "nanoclaw-main--researcher-7" and kw["labels"]["nanoclaw.agent"] == "researcher"
    assert mounts["/workspace/group"]["source"] == str(cfg.groups_dir / "main")
    assert mounts["/workspace/group/agents"]["read_only"] is True
    assert mounts["/workspace/ipc/in"]["source"] == str(cfg.ipc_dir / "main" / "agents" / "researcher" / "in")
    assert mounts["/workspace/session"]["source"] == str(cfg.sessions_dir / ".team" / "main" / "researcher")
    assert mounts["/workspace/global"]["read_only"] is True  # a member of main is not main
    assert kw["environment"]["NANOCLAW_AGENT"] == "researcher"
    assert kw["environment"]["NANOCLAW_MODEL"] == "claude-haiku"
    lead = options(agent_spec(cfg, {"job": 8, "group": "main", "is_main": True, "chat": "main@term",
                                    "prompt": "", "session_id": None}))
    lead_sources = {m["source"] for m in lead["mounts"] if m["type"] == "bind"}
    assert not any(".team" in s or "/agents/researcher" in s for s in lead_sources)
    assert Path(mounts["/workspace/ipc/in"]["source"]).is_dir()
