"""`grounding world build`: generate the procedural hallucination world (see grounding/world/build.py)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

__all__ = ["add_world_command"]


def _cmd_world(args) -> int:
    from grounding.world import SPLITS, build_world

    from .atomic import check_new_folder
    from .config_checks import check_world_space, load_world_config

    config = load_world_config(args.config)  # every key's type and range, before any image is drawn
    if args.split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    out = check_new_folder(args.out, args.overwrite, "--out")
    check_world_space(out, args.images, config)
    try:
        if args.overwrite and out.is_dir() and any(out.iterdir()):
            summary = _rebuild(out, args, config)
        else:
            summary = build_world(out, args.seed, args.images, args.split, config)
    except FileExistsError as error:
        print(f"grounding world: error: {error}", file=sys.stderr)
        return 2
    rates = ", ".join(f"{pair} {rate:.2f}" if rate is not None else f"{pair} -" for pair, rate in
                      summary.partner_rates.items())
    print(f"{summary.num_images} {summary.split} images, {summary.num_annotations} objects "
          f"({summary.objects_per_image:.2f} per image), {summary.num_captions} captions in {summary.seconds:.1f} s "
          f"-> {summary.out_dir}")
    print(f"partner rates: {rates}")
    return 0


def _rebuild(out: Path, args, config):
    """--overwrite: the new world is built beside the old one and swapped in only once it is complete."""
    from grounding.world import build_world

    from .atomic import staging_folder

    staging = staging_folder(out)
    shutil.rmtree(staging, ignore_errors=True)
    summary = build_world(staging, args.seed, args.images, args.split, config)
    aside = out / ".replaced"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for name in ("images", "annotations", "world.json"):
        if (out / name).exists():
            (out / name).rename(aside / name)
        (staging / name).rename(out / name)
    shutil.rmtree(aside)
    shutil.rmtree(staging)
    summary.out_dir = out
    return summary


def add_world_command(commands: argparse._SubParsersAction) -> None:
    """Add `world build` to the top-level subcommands."""
    world = commands.add_parser("world", help="procedural COCO-format world with a planted language prior")
    actions = world.add_subparsers(dest="action", required=True)
    p = actions.add_parser("build", help="write images, COCO instances + captions and world.json")
    p.add_argument("--out", required=True, help="output folder (must be empty or new, unless --overwrite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=2000, help="number of images")
    p.add_argument("--split", default="train", help="train, val or test (sets the partner probability)")
    p.add_argument("--config", default=None, help="YAML world config (see configs/world/default.yaml)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace images/, annotations/ and world.json in --out (once the new world is complete)")
    p.set_defaults(func=_cmd_world)
