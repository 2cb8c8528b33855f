"""Models per kind of work (issue 31): the precedence of core/model_choice.py, the checks on
every name (the configuration's, the owner's CLI, an agent's), what the CLI shows.

The runs themselves (which model the real agent's API requests carry) are in
tests/container/test_agent_models.py."""

from __future__ import annotations

import itertools
from msgspec.structs import replace

import pytest

from nanoclaw.core import model_choice
from nanoclaw.core.config import Config, ConfigError, ModelsConfig
from nanoclaw.core.config_file import load
from nanoclaw.core.costs import UsageConfig

LADDER = {"task": "T", "member": "M", "group": "G"}


def cfg_with(default="", tasks="", members="", allowed=()) -> Config:
    return Config(models=ModelsConfig(default, tasks, members), usage=UsageConfig(allowed_models=tuple(allowed)))


def expected(kind: str, names: dict, models: ModelsConfig) -> str:
    """The rule, written out plainly: most specific first."""
    ladder = [names.get("task", "") if kind == "task" else "", names.get("member", "") if kind == "member" else "",
              names.get("group", ""), {"task": models.tasks, "member": models.members}.get(kind, ""), models.default]
    return next((n for n in ladder if n), "")


def test_precedence_task_member_group_kind_default_for_every_combination():
    """Every combination of names set or not, for each kind: the most specific one set wins, a
    task's own model never applies to a member or the chat and a member's never to a task."""
    for kind in model_choice.KINDS:
        for present in itertools.product((False, True), repeat=6):
            names = {k: v for (k, v), on in zip(LADDER.items(), present[:3], strict=True) if on}
            models = ModelsConfig(*(v if on else "" for v, on in zip(("D", "KT", "KM"), present[3:], strict=True)))
            cfg = replace(cfg_with(), models=models)
            got = model_choice.choose(cfg, kind, **names)
            assert got.model == expected(kind, names, models), (kind, names, models, got)
            assert not got.refused


def test_sources_are_named():
    cfg = cfg_with(default="claude-sonnet-4-5", tasks="claude-haiku-4-5")
    assert model_choice.choose(cfg, "task").source == "[models] tasks"
    assert model_choice.choose(cfg, "chat").source == "[models] default"
    assert model_choice.choose(cfg, "member").source == "[models] default"
    assert model_choice.choose(cfg, "task", group="g-1").source == "the group's model"
    assert model_choice.choose(cfg, "task", group="g-1", task="t-1") == model_choice.Choice("t-1", "the task's own model")
    assert model_choice.choose(cfg_with(), "chat") == model_choice.Choice("", "the CLI's default")
    with pytest.raises(ValueError):
        model_choice.choose(cfg, "heartbeat")


def test_a_chosen_name_outside_allowed_models_is_refused_not_replaced():
    """The name that wins is checked; a refused one is not silently swapped for the next one."""
    cfg = cfg_with(default="claude-haiku-4-5", allowed=("claude-haiku-4-5*",))
    got = model_choice.choose(cfg, "chat", group="claude-opus-4-5", where="family")
    assert got.model == "claude-opus-4-5"
    assert got.refused.startswith("family: the group's model: the model claude-opus-4-5 is not in [usage] "
                                  "allowed_models (claude-haiku-4-5*)")
    assert "\n" not in got.refused
    assert not model_choice.choose(cfg, "chat").refused
    # a malformed name (a member file's, say) is refused too
    assert "is not a model name" in model_choice.choose(cfg_with(), "member", member="x y").refused


@pytest.mark.parametrize("name", ["claude-*", "claude-haiku-4-5\n", "a" * 101, "-x", "x y", "claude?",
                                  "claude[1]", "ключ", "x\x00", " claude-haiku-4-5"])
def test_names_are_exact_ids(name):
    with pytest.raises(model_choice.ModelError, match="is not a model name"):
        model_choice.check(cfg_with(), name, "the task's model")


@pytest.mark.parametrize("value", [1, None, ["claude-haiku-4-5"], {"a": 1}, True])
def test_a_name_that_is_not_text_is_refused(value):
    with pytest.raises(model_choice.ModelError, match="must be a model name"):
        model_choice.check(cfg_with(), value, "the task's model")


def test_allowed_models_are_patterns_the_name_must_match():
    cfg = cfg_with(allowed=("claude-haiku-4-5*", "claude-sonnet-4-5"))
    assert model_choice.check(cfg, "claude-haiku-4-5-20251001", "x") == "claude-haiku-4-5-20251001"
    assert model_choice.check(cfg, "", "x") == ""
    with pytest.raises(model_choice.ModelError) as exc:
        model_choice.check(cfg, "claude-sonnet-4-5-20250929", "the task's model")
    assert str(exc.value) == ("the task's model: the model claude-sonnet-4-5-20250929 is not in [usage] "
                              "allowed_models (claude-haiku-4-5*, claude-sonnet-4-5): the proxy would refuse its "
                              "calls; choose one of those, or add it there")


def test_config_models_section_is_read_and_checked_at_load(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOCLAW_CONFIG_DIR", raising=False)
    path = tmp_path / "config.toml"
    path.write_text(f'config_dir = "{tmp_path}"\n[models]\ndefault = "claude-sonnet-4-5"\ntasks = "claude-haiku-4-5"\n')
    cfg = load(path)
    assert cfg.models == ModelsConfig("claude-sonnet-4-5", "claude-haiku-4-5", "")
    assert cfg.model == "claude-sonnet-4-5"
    # the older top-level spelling is the default
    path.write_text(f'config_dir = "{tmp_path}"\nmodel = "claude-haiku-4-5"\n')
    assert load(path).models.default == "claude-haiku-4-5"
    path.write_text(f'config_dir = "{tmp_path}"\nmodel = "a-1"\n[models]\ndefault = "b-1"\n')
    with pytest.raises(ConfigError, match="name two models"):
        load(path)
    path.write_text(f'config_dir = "{tmp_path}"\n[models]\nheartbeat = "a-1"\n')
    with pytest.raises(ConfigError, match="models: unknown setting 'heartbeat'"):
        load(path)
    # a [models] name the proxy would refuse stops the daemons at start, with one line
    path.write_text(f'config_dir = "{tmp_path}"\n[usage]\nallowed_models = ["claude-haiku-4-5*"]\n'
                    '[models]\nmembers = "claude-opus-4-5"\n')
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}: [models] members: the model claude-opus-4-5 is not in [usage] allowed_models")
    path.write_text(f'config_dir = "{tmp_path}"\n[models]\ntasks = "claude haiku"\n')
    with pytest.raises(ConfigError, match=r"\[models\] tasks: 'claude haiku' is not a model name"):
        load(path)


def test_the_cli_sets_a_tasks_model_shows_it_and_refuses_one_not_allowed(make_system):
    s = make_system(usage={"allowed_models": ["claude-haiku-4-5*", "claude-sonnet-4-5*"]},
                    models={"default": "claude-sonnet-4-5", "tasks": "claude-haiku-4-5"})
    s.cli("groups", "add", "main", "--main")
    bad = s.cli("tasks", "add", "main", "--every", "1h", "--model", "claude-opus-4-5", "digest", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("nanoclaw: the task's model: the model claude-opus-4-5 is not in [usage] "
                                  "allowed_models (claude-haiku-4-5*, claude-sonnet-4-5*): the proxy would refuse "
                                  "its calls; choose one of those, or add it there")
    assert s.cli("tasks", "add", "main", "--every", "1h", "--model", "claude-*", "x", check=False).returncode == 2
    assert "no scheduled tasks" in s.cli("tasks", "list").stdout  # nothing was stored
    out = s.cli("tasks", "add", "main", "--every", "1h", "--model", "claude-sonnet-4-5", "digest").stdout
    assert out.rstrip().endswith("; on claude-sonnet-4-5")
    s.cli("tasks", "add", "main", "--every", "2h", "plain")
    listing = s.cli("tasks", "list").stdout.splitlines()
    assert "model claude-sonnet-4-5 (the task's own model)" in listing[0]
    assert "model claude-haiku-4-5 ([models] tasks)" in listing[1]
    s.cli("groups", "set", "main", "--model", "claude-haiku-4-5-20251001")
    assert "model claude-haiku-4-5-20251001 (the group's model)" in s.cli("tasks", "list").stdout.splitlines()[1]
    # update: a refused name changes nothing; "default" drops the task's own
    assert s.cli("tasks", "update", "1", "--model", "gpt-4o", check=False).returncode == 2
    assert "claude-sonnet-4-5 (the task's own model)" in s.cli("tasks", "list").stdout
    assert "on claude" not in s.cli("tasks", "update", "1", "--model", "default").stdout
    assert "(the task's own model)" not in s.cli("tasks", "list").stdout
    with s.db() as con:
        assert [r[0] for r in con.execute("select model from task order by id")] == ["", ""]


def _queue_with_refused_group_model(make_cfg):
    """A queue daemon in process (real SQLite, real spools) whose main group's model was set
    before [usage] allowed_models was narrowed: every run of the group's is refused."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core.models import Group
    from nanoclaw.daemons.queue import QueueDaemon

    cfg = make_cfg('max_attempts = 1\n[usage]\nallowed_models = ["claude-haiku-4-5*"]\n')
    group = groups_mod.add_group(cfg, "main", is_main=True)
    Group.update(model="claude-opus-4-5").where(Group.id == group.id).execute()
    q = QueueDaemon(cfg)
    q.setup()
    return cfg, Group.get_by_id(group.id), q


def _spooled(cfg, daemon: str) -> list[dict]:
    import json
    return [json.loads(p.read_text())["body"] for p in sorted((cfg.spool_dir / daemon / "new").iterdir())]


def test_the_queue_starts_nothing_on_a_refused_model_and_the_chat_is_told_why(make_cfg):
    """A chat job whose chosen model is refused is recorded with that model, never handed to the
    runner, and fails with the line; its retries spent, the chat is given the line."""
    import os
    import time

    from nanoclaw.core.models import Job, Message

    cfg, group, q = _queue_with_refused_group_model(make_cfg)
    Message.create(chat=group.jid, sender="owner@term", text="hello", timestamp=time.time(),
                   channel_id=os.urandom(6).hex())
    q.work()
    assert _spooled(cfg, "runner") == []
    [job] = Job.select()
    assert (job.status, job.model) == ("failed", "claude-opus-4-5")
    assert job.error.startswith("its model is refused: main: the group's model: the model claude-opus-4-5 is not "
                                "in [usage] allowed_models (claude-haiku-4-5*)")
    [notice] = _spooled(cfg, "router")
    assert notice["kind"] == "notice"
    assert notice["text"].startswith("Sorry, I could not answer that: its model is refused: main: the group's model")
    assert "groups set GROUP --model NAME" in notice["text"] and "\n" not in notice["text"]


def test_a_scheduled_run_on_a_refused_model_fails_with_the_line_and_records_the_model(make_cfg):
    import time

    from nanoclaw.core import tasks as tasks_mod
    from nanoclaw.core.models import Job, TaskRun

    cfg, group, q = _queue_with_refused_group_model(make_cfg)
    task = tasks_mod.create(cfg, group, "digest", "interval", "1h")
    run = TaskRun.create(task=task, fire_key="fire-1", fired_at=time.time(), due_at=time.time())
    q.work()
    assert _spooled(cfg, "runner") == []
    [job] = Job.select()
    run = TaskRun.get_by_id(run.id)
    assert (job.task_run, job.model, run.model, run.status) == (run.id, "claude-opus-4-5", "claude-opus-4-5", "error")
    assert run.error.startswith("its model is refused: main: the group's model: the model claude-opus-4-5")
    [notice] = _spooled(cfg, "router")
    assert notice["text"].startswith(f"Scheduled task {task.id} failed 1 times (its model is refused: main: ")
