"""The one registry of units (nanoclaw/registry.py) against what is on disk: units/, the
target, the shared drop-ins, the daemons' code and the README's file map. Fast: files only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nanoclaw import registry

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "units"
SUFFIXES = (".service", ".target", ".path", ".timer")
LISTS = {"SystemCallFilter", "CapabilityBoundingSet", "RestrictAddressFamilies", "ReadWritePaths", "ReadOnlyPaths",
         "InaccessiblePaths", "Environment", "LoadCredential", "AmbientCapabilities"}


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys repeat in unit files)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return out


def unit_files_in(units: Path) -> set[str]:
    return {p.name for p in units.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)}


def registry_problems(units: Path) -> list[str]:
    """What in ``units`` disagrees with the registry (empty: all agrees)."""
    problems = []
    on_disk = unit_files_in(units)
    for extra in sorted(on_disk - set(registry.UNITS)):
        problems.append(f"units/{extra} has no row in nanoclaw/registry.py")
    for missing in sorted(set(registry.UNITS) - on_disk):
        problems.append(f"nanoclaw/registry.py names {missing}, which units/ does not have")
    shared = {source for _, source, _ in registry.dropins()}
    for conf in sorted(p.name for p in units.glob("*.conf")):
        if conf not in shared:
            problems.append(f"units/{conf} is a shared drop-in no registry row takes")
    for d in sorted(units.glob("*.d")):
        if d.name.removesuffix(".d") not in registry.UNITS:
            problems.append(f"units/{d.name}: drop-ins of a unit the registry does not have")
    return problems


def test_units_agree_with_the_registry():
    assert registry_problems(UNITS) == []


def test_a_unit_file_added_without_its_row_is_found(tmp_path):
    """The check above can fail: a copy of units/ with one unit more (and one less)."""
    copy = tmp_path / "units"
    subprocess.run(["cp", "-r", str(UNITS), str(copy)], check=True)
    (copy / "nanoclaw-newd.service").write_text((UNITS / "nanoclaw-router.service").read_text())
    (copy / "nanoclaw-router.service").unlink()
    (copy / "nanoclaw-stray.conf").write_text("[Service]\n")
    assert registry_problems(copy) == [
        "units/nanoclaw-newd.service has no row in nanoclaw/registry.py",
        "nanoclaw/registry.py names nanoclaw-router.service, which units/ does not have",
        "units/nanoclaw-stray.conf is a shared drop-in no registry row takes"]


@pytest.mark.parametrize("daemon", registry.DAEMONS, ids=registry.NAMES)
def test_each_daemon_unit_is_its_row(daemon):
    """Its command, watchdog, network and credential as its row says; the rest from the shared
    drop-in, which its unit does not repeat."""
    unit = unit_file(UNITS / daemon.unit)["Service"]
    assert unit["ExecStart"] == [f"/opt/nanoclaw/bin/nanoclaw {daemon.name}"]
    assert unit["WatchdogSec"] == [str(daemon.watchdog)]
    families = " ".join(unit["RestrictAddressFamilies"]).split()
    if daemon.network:
        assert {"AF_INET", "AF_INET6"} <= set(families) and "PrivateNetwork" not in unit
    else:
        assert families == ["AF_UNIX"] and unit["PrivateNetwork"] == ["yes"] and unit["IPAddressDeny"] == ["any"]
    assert ("LoadCredential" in unit) == daemon.credential
    assert {source for u, source, _ in registry.dropins() if u == daemon.unit} == {registry.SANDBOX,
                                                                                   registry.DAEMON_CONF}
    daemon_conf = unit_file(UNITS / registry.DAEMON_CONF)["Service"]
    assert daemon_conf["User"] == [daemon.user]


def effective(unit: str) -> dict[str, list[str]]:
    """A unit's [Service] as systemd reads it: the unit file, then its drop-ins by name (the
    shared ones under the names install.sh gives them). A list setting adds up, an empty value
    resets it; any other setting is its last value."""
    layers = [unit_file(UNITS / unit)]
    dropins = {name: UNITS / source for u, source, name in registry.dropins() if u == unit}
    dropins |= {p.name: p for p in (UNITS / f"{unit}.d").glob("*.conf")}
    layers += [unit_file(dropins[name]) for name in sorted(dropins)]
    out: dict[str, list[str]] = {}
    for layer in layers:
        for key, values in layer.get("Service", {}).items():
            for value in values:
                if key not in LISTS:
                    out[key] = [value]
                else:
                    out[key] = [] if value == "" else [*out.get(key, []), value]
    return out


@pytest.mark.parametrize("unit", [u for u, source, _ in registry.dropins() if source == registry.SANDBOX])
def test_each_sandboxed_unit_takes_the_whole_sandbox_and_repeats_none_of_it(unit):
    """Its unit file sets no key of the shared sandbox (systemd reads drop-ins after it, so such
    a line would be dead or, for lists, merged in the wrong order); what it needs otherwise is
    in a drop-in of its own, named to come after the shared one."""
    sandbox = unit_file(UNITS / registry.SANDBOX)["Service"]
    own = unit_file(UNITS / unit).get("Service", {})
    assert not set(sandbox) & set(own), f"{unit} repeats {sorted(set(sandbox) & set(own))} of the sandbox"
    assert all(p.name > "10-sandbox.conf" for p in (UNITS / f"{unit}.d").glob("*.conf"))
    got = effective(unit)
    for key in ("ProtectProc", "ProcSubset", "DevicePolicy", "RemoveIPC", "SystemCallErrorNumber",
                "ProtectSystem", "NoNewPrivileges", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert got[key] == sandbox[key], (unit, key)
    assert got.get("PrivateNetwork") == ["yes"] or unit in {d.unit for d in registry.DAEMONS if d.network}
    assert got["SystemCallFilter"][0] == "@system-service", unit  # an allow list first: all else refused


def test_what_a_unit_sets_otherwise_than_the_sandbox_is_on_purpose():
    """The differences, by key: the runner reads the owner's folders under /home, the root
    sync keeps one capability and the system-service call set, the one-shots refuse
    @resources too."""
    assert effective("nanoclaw-runner.service")["ProtectHome"] == ["read-only"]
    timers = effective("nanoclaw-timers.service")
    assert timers["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    assert timers["SystemCallFilter"] == ["@system-service"] and "User" not in timers
    assert "/etc/systemd/system" in timers["ReadWritePaths"]
    for unit in ("nanoclaw-task@.service", "nanoclaw-backup.service"):
        assert effective(unit)["SystemCallFilter"] == ["@system-service", "~@privileged", "~@resources"], unit
        assert effective(unit)["User"] == ["nanoclaw"]
    for daemon in registry.DAEMONS:
        assert effective(daemon.unit)["SystemCallFilter"] == ["@system-service", "~@privileged"]
        assert effective(daemon.unit)["CapabilityBoundingSet"] == []


def test_the_other_units_run_as_their_rows_say():
    for row in registry.OTHERS:
        parsed = unit_file(UNITS / row.unit)
        assert parsed.get("Service", {}).get("User", ["root"]) == [row.user], row.unit


def test_the_target_wants_and_install_enables_what_the_registry_says():
    wants = " ".join(unit_file(UNITS / "nanoclaw.target")["Unit"]["Wants"]).split()
    assert sorted(wants) == sorted(registry.in_target())
    has_install = sorted(u for u in registry.UNITS if "Install" in unit_file(UNITS / u))
    assert has_install == sorted(registry.enabled())


def test_each_daemons_spools_are_its_rows():
    """The spools a daemon's code opens are those its row names; the one it reads is capped
    (``max_bytes=``) and named under ``reads``."""
    for daemon in registry.DAEMONS:
        package = ROOT / "nanoclaw" / "daemons" / daemon.name
        files = sorted(package.glob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
        code = "\n".join(f.read_text() for f in files)
        opened = {f"spool/{name}" for name in re.findall(r'spool_dir / "(\w+)"', code)}
        read = {f"spool/{name}" for name in re.findall(r'spool_dir / "(\w+)", max_bytes', code)}
        named = {s for s in daemon.reads + daemon.writes if s.startswith("spool/")}
        assert opened == named, daemon.name
        assert read <= set(daemon.reads), daemon.name


def test_the_readme_file_map_names_every_daemon_as_the_tree_has_it():
    """The map's daemons row names each daemon's module (a package or a file, as it is now),
    and the tree has no daemon module without a row."""
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `nanoclaw/daemons/` |"))
    daemons_dir = ROOT / "nanoclaw" / "daemons"
    in_tree = {p.name.removesuffix(".py") for p in daemons_dir.iterdir()
               if p.name != "__init__.py" and not p.name.startswith(("_", ".")) and
               (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert in_tree == set(registry.NAMES)
    for name in registry.NAMES:
        module = f"`{name}/`" if (daemons_dir / name).is_dir() else f"`{name}.py`"
        assert module in row, f"the README's file map does not name {module}"
    units_row = next(line for line in readme.splitlines() if line.startswith("| `units/` |"))
    for source in {source for _, source, _ in registry.dropins()}:
        assert f"`{source}`" in units_row
    assert "`nanoclaw/registry.py`" in readme


def test_the_readme_file_map_names_every_module_of_each_daemon_package():
    """A module added to a daemon's package is named in the map's daemons row, so the map a
    newcomer reads is the tree as it is."""
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `nanoclaw/daemons/` |"))
    modules = [p for p in (ROOT / "nanoclaw" / "daemons").glob("*/*.py") if p.name != "__init__.py"]
    assert modules
    missing = sorted(f"{p.parent.name}/{p.name}" for p in modules if f"`{p.name}`" not in row)
    assert not missing, f"the README's file map does not name {', '.join(missing)}"


def test_install_sh_reads_the_registry_with_the_system_python():
    """install.sh runs ``python3 -m nanoclaw.registry`` from the checkout, before any venv:
    the module must import nothing but the standard library, and say each list."""
    code = ("import sys, runpy; sys.argv = ['registry', 'units']\n"
            "try:\n    runpy.run_module('nanoclaw.registry', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'__main__'}))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code],
                         capture_output=True, text=True, check=True, cwd="/")
    *units, loaded = out.stdout.splitlines()
    assert units == list(registry.UNITS)
    assert loaded == "['nanoclaw']", out.stderr  # nothing else outside the standard library
    for what, want in (("enabled", registry.enabled()), ("running", registry.running()),
                       ("dropins", [" ".join(r) for r in registry.dropins()])):
        r = subprocess.run([sys.executable, "-m", "nanoclaw.registry", what], capture_output=True, text=True,
                           check=True, cwd=ROOT)
        assert r.stdout.splitlines() == want and r.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "nanoclaw.registry", "nonsense"], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "usage:" in bad.stderr



def test_the_proxy_reads_the_runners_voice_notes_read_only_and_loads_both_credentials():
    """[voice] engine = "api": the proxy opens the runner's copy of a note, where the runner
    puts it under the units' state directory, through a read-only path; systemd hands it the
    voice credential beside the Anthropic one, from the files install.sh makes (a missing
    one would stop the unit)."""
    from nanoclaw.core import config as config_mod
    from nanoclaw.core.credentials import CREDENTIAL_NAME, VOICE_CREDENTIAL_NAME, file_path
    from nanoclaw.daemons.runner.transcribe import note_dir
    proxy = effective("nanoclaw-proxy.service")
    env = dict(kv.split("=", 1) for line in proxy["Environment"] for kv in line.split())
    cfg = config_mod.Config(state_dir=Path(env["NANOCLAW_STATE_DIR"]), config_dir=Path("/etc/nanoclaw"))
    assert f"-{note_dir(cfg, 1).parent}" in proxy["ReadOnlyPaths"]
    assert proxy["LoadCredential"] == [f"{n}:{file_path(cfg, n)}" for n in (CREDENTIAL_NAME, VOICE_CREDENTIAL_NAME)]
    install = (ROOT / "install.sh").read_text()
    assert '"$STATE/voice"' in install and "VOICE_CREDENTIAL=$CONF/credentials/voice-api-credential" in install
    assert '> "$VOICE_CREDENTIAL")' in install
    for daemon in registry.DAEMONS:  # no other daemon gets either credential
        if daemon.name != "proxy":
            assert "LoadCredential" not in effective(daemon.unit), daemon.name
