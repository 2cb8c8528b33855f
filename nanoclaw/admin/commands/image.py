"""nanoclaw image build: the agent container image (admin/image.py builds it, offline-capable),
and the voice notes' transcription image when [voice] is on (admin/voice_image.py).

SYNOPSIS
    add_parsers(sub)                 the image command
    cmd_image(cfg, args)             build it, printing its progress (exit 1 if the build failed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanoclaw.core import config as config_mod


def cmd_image(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import image
    try:
        image.build(cfg, tag=args.tag, wheels=Path(args.wheels) if args.wheels else None,
                    progress=lambda line: print(f"image: {line}", flush=True), force=args.force)
        if cfg.voice.enabled:  # voice notes: the transcription image (admin/voice_image.py)
            from nanoclaw.admin import voice_image
            voice_image.build(cfg, progress=lambda line: print(f"image: {line}", flush=True), force=args.force)
    except image.ImageError as exc:
        print(f"nanoclaw: image build failed: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("image", help="build the agent container image (offline-capable)")
    isub = sp.add_subparsers(dest="action", required=True)
    ib = isub.add_parser("build", help="build [container] image from [container] base_image and a wheelhouse")
    ib.add_argument("--tag", help="image tag (default: [container] image)")
    ib.add_argument("--wheels", help="wheelhouse cache dir (default: STATE/cache/wheels)")
    ib.add_argument("--force", action="store_true", help="build even if the image is current")
    sp.set_defaults(run=cmd_image)
