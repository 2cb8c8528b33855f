"""``nanoclaw image build``: the agent image, built with no registry and no network.

1. The base image: ``[container] base_image``. The default,
   ``localhost/nanoclaw-base:bookworm-2``, is made here with debootstrap when
   missing (``container/build-base.sh``); any other name is pulled.
2. A wheelhouse: ``pip download`` of ``container/requirements.txt`` on the host,
   for the base image's Python version and platform, cached between builds.
3. ``podman build --network none`` of ``container/Containerfile`` (two stages,
   plain COPY, no bind mounts) from a context under the state directory
   (never /tmp, which may be a nosuid,nodev tmpfs), tagged ``[container] image``.

An image whose labels name the current sources and base image is current:
``build`` leaves it alone unless forced, so re-running install.sh is quick.

Steps 2 and 3 are ``build_image``, given a ``Recipe`` (the context's files, the
wheelhouse's requirements, extra build arguments and labels); the transcription image
(``voice_image.py``) is built by it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nanoclaw import __version__
from nanoclaw.admin import hostcheck
from nanoclaw.core import member_file, messages, progress, protocol, safefs, spool
from nanoclaw.core.config import Config

Progress = Callable[[str], None]
# nanoclaw modules the agent runner imports inside the image (as top-level modules, beside its own).
SHARED_MODULES = tuple(Path(m.__file__) for m in (protocol, messages, spool, safefs, member_file, progress))
# container/: what runs in the image (agent_runner.py is its command).
RUNNER_FILES = ("agent_runner.py", "context.py", "early_cli.py", "forwarders.py", "interrupt.py", "session.py",
                "settings.py", "team.py", "tools.py")
PLATFORMS = ("manylinux_2_36", "manylinux_2_34", "manylinux_2_31", "manylinux_2_28", "manylinux_2_17",
             "manylinux2014")


class ImageError(Exception):
    """The image could not be built; the text says which step failed and why."""


def container_dir() -> Path:
    """The Containerfile and agent runner: in the checkout, or where install.sh put them."""
    from nanoclaw.core.groups import share_dirs
    candidates = share_dirs("container")
    for candidate in candidates:
        if (candidate / "Containerfile").exists():
            return candidate
    raise ImageError("cannot find container/Containerfile (looked in "
                     + ", ".join(map(str, candidates)) + ")")


def build_args(cfg: Config) -> list[str]:
    """``podman build`` flags this host needs: what detection found for builds, else the
    run options without their volumes (mounts agents need can break a build)."""
    c = cfg.container
    if c.build_args != ("same-as-run",):
        return list(c.build_args)
    return hostcheck.runtime_args(c.runtime, c.ulimits, ())


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {r.returncode}):\n{tail}")
    return r


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name]).returncode == 0


def ensure_base(cfg: Config, progress: Progress) -> str:
    base = cfg.container.base_image
    if image_exists(base):
        progress(f"base image {base} present")
        return base
    if base.startswith("localhost/nanoclaw-base"):
        progress(f"making base image {base} with debootstrap (about a minute)")
        _run([str(container_dir() / "build-base.sh"), base], "debootstrap base image")
    else:
        progress(f"pulling base image {base}")
        _run(["podman", "pull", base], f"pulling {base}")
    return base


def base_python(cfg: Config, base: str) -> tuple[str, str]:
    """(major.minor, machine) of the base image's python3, so the wheels fit it."""
    r = _run(["podman", "run", "--rm", "--network", "none", *build_args(cfg), base, "python3", "-c",
              "import sys, platform; print('%d.%d' % sys.version_info[:2], platform.machine())"],
             f"running python3 in {base}")
    version, machine = r.stdout.split()
    return version, machine


@dataclass(frozen=True)
class Recipe:
    """One image nanoclaw builds offline (the agent's, the transcription's): its build context
    and what its messages call it."""

    files: tuple[Path, ...]  # copied into the context by name; a Containerfile among them
    requirements: Path  # the requirements.txt its wheelhouse is downloaded for
    wheels: str  # the wheelhouse's default folder under STATE/cache
    context: str  # the prefix of its build context's folder
    what: str = "wheels"  # the wheelhouse, as the progress line names it
    size: str = "~180 MB"  # its size the first time
    pip: str = "pip download"  # the download, as an error names it
    build_args: tuple[str, ...] = ()  # NAME=VALUE, after BASE and VERSION
    labels: tuple[str, ...] = ()  # NAME=VALUE, after nanoclaw.source and nanoclaw.base
    fill: Callable[[Path], None] | None = None  # puts more into the context (the owner's model)


def download_wheels(dest: Path, python: str, machine: str, progress: Progress, recipe: Recipe) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {recipe.what} for Python {python} ({machine}) into {dest} "
             f"(cached; {recipe.size} the first time)")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
           "--dest", str(dest), "--only-binary=:all:", "--python-version", python, "-r", str(recipe.requirements)]
    for p in PLATFORMS:
        cmd += ["--platform", f"{p}_{machine}"]
    _run(cmd, recipe.pip)
    shutil.copyfile(recipe.requirements, dest / "requirements.txt")


def build_image(cfg: Config, recipe: Recipe, *, tag: str, base: str, source: str, wheels: Path | None,
                workdir: Path | None, progress: Progress) -> str:
    """Build ``recipe`` as ``tag`` on ``base`` with the network off: its wheels downloaded on
    the host for the base's Python, its context made beside them, labelled with ``source``
    (its sources' digest) and the base's id, which tell whether it is current."""
    python, machine = base_python(cfg, base)
    wheels = wheels or cfg.state_dir / "cache" / recipe.wheels
    download_wheels(wheels, python, machine, progress, recipe)
    # The context lives beside the wheel cache (so wheels are hard links, not copies) and
    # never in /tmp, which on many hosts is a nosuid,nodev tmpfs.
    ctx_root = workdir or cfg.state_dir / "cache" / "build"
    ctx_root.mkdir(parents=True, exist_ok=True)
    ctx = Path(tempfile.mkdtemp(prefix=recipe.context, dir=ctx_root))
    try:
        for path in recipe.files:
            shutil.copyfile(path, ctx / path.name)
        if recipe.fill is not None:
            recipe.fill(ctx)
        (ctx / "wheels").mkdir()
        for w in wheels.iterdir():
            try:
                os.link(w, ctx / "wheels" / w.name)
            except OSError:
                shutil.copyfile(w, ctx / "wheels" / w.name)
        progress(f"building {tag} from {base} (network off)")
        args = (f"BASE={base}", f"VERSION={__version__}", *recipe.build_args)
        labels = (f"nanoclaw.source={source}", f"nanoclaw.base={image_id(base)}", *recipe.labels)
        _run(["podman", "build", "--network", "none", *build_args(cfg),
              *(word for a in args for word in ("--build-arg", a)), *(word for a in labels for word in ("--label", a)),
              "-t", tag, "-f", str(ctx / "Containerfile"), str(ctx)], f"podman build of {tag}")
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    progress(f"built {tag}")
    return tag


def source_digest() -> str:
    """A digest of what goes into the image besides wheels (to tell stale images apart)."""
    h = hashlib.sha256()
    for path in (container_dir() / "Containerfile", *(container_dir() / name for name in RUNNER_FILES),
                 container_dir() / "requirements.txt", *SHARED_MODULES):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def image_labels(name: str) -> dict[str, str]:
    r = subprocess.run(["podman", "image", "inspect", "--format", "{{json .Labels}}", name],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {}
    try:
        return json.loads(r.stdout) or {}
    except ValueError:
        return {}


def image_id(name: str) -> str:
    r = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def current(cfg: Config, tag: str | None = None) -> bool:
    """Whether the image exists and was built from these sources on the present base image."""
    labels = image_labels(tag or cfg.container.image)
    base = image_id(cfg.container.base_image)
    return bool(labels) and labels.get("nanoclaw.source") == source_digest() and \
        bool(base) and labels.get("nanoclaw.base") == base


def build(cfg: Config, *, tag: str | None = None, wheels: Path | None = None,
          progress: Progress = print, force: bool = False, workdir: Path | None = None) -> str:
    """Build the agent image unless it is current (or ``force``); returns its tag.

    ``wheels`` (the wheelhouse cache) and ``workdir`` (where build contexts are made)
    default to STATE/cache/wheels and STATE/cache/build."""
    tag = tag or cfg.container.image
    base = ensure_base(cfg, progress)
    if not force and current(cfg, tag):
        progress(f"{tag} is current (sources {source_digest()}, base {image_id(base)[:12]}); not rebuilt")
        return tag
    src = container_dir()
    recipe = Recipe(files=(src / "Containerfile", *(src / name for name in RUNNER_FILES), *SHARED_MODULES),
                    requirements=src / "requirements.txt", wheels="wheels", context="context-")
    return build_image(cfg, recipe, tag=tag, base=base, source=source_digest(), wheels=wheels, workdir=workdir,
                       progress=progress)
