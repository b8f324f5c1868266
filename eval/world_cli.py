"""`grounding world build`: generate the procedural hallucination world (see grounding/world/build.py)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_world_command"]


def _cmd_world(args) -> int:
    from grounding.world import WorldConfig, build_world

    config = WorldConfig.from_yaml(args.config) if args.config else WorldConfig()
    try:
        summary = build_world(args.out, args.seed, args.images, args.split, config, overwrite=args.overwrite)
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
    p.add_argument("--overwrite", action="store_true", help="replace images/, annotations/ and world.json in --out")
    p.set_defaults(func=_cmd_world)
