"""`grounding descriptors pca|cosegment|parts|correspond`: the dense-descriptor applications on a folder of images.

Each command writes PNG pictures and one JSON record (`<command>.json`) to --out. The `write_*` functions take
`DenseDescription`s (from `DenseExtractor.describe`) and are reused by `grounding demo`. See docs/descriptors.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .cli_types import positive_int, unit_float

__all__ = ["add_descriptors_command", "write_pca", "write_cosegment", "write_parts", "write_correspondences",
           "COMMAND_DEFAULTS"]

# per command: (layer, binned) as the reference scripts use them on a 12-layer ViT (layer 11 = -1, layer 9 = -3)
COMMAND_DEFAULTS = {"pca": (-1, False), "cosegment": (-1, False), "parts": (-1, False), "correspond": (-3, True)}


def _label_colours(count: int):
    import numpy as np
    from matplotlib import colormaps

    name, size = ("tab10", 10) if count <= 10 else ("tab20", 20)
    return (np.asarray(colormaps[name](np.arange(max(count, 1)) % size))[:, :3] * 255).astype(np.uint8)  # (n, 3)


def _blend(image, colours, where, alpha: float = 0.55):
    """Paint (H, W, 3) colours over the image where the (H, W) bool array is set; dim everything else."""
    import numpy as np
    from PIL import Image

    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    painted = np.where(where[..., None], (1 - alpha) * base + alpha * colours, 0.35 * base)
    return Image.fromarray(painted.round().clip(0, 255).astype(np.uint8))


def _common(described, names, settings: dict) -> dict:
    return {**settings, "images": [{"image": n, "grid": list(d.grid), "image_size": list(d.image_size)}
                                   for n, d in zip(names, described)]}


def write_pca(described, images, names: Sequence[str], out_dir: Path, settings: dict) -> dict:
    """PCA-as-RGB pictures (image | components 2-4 of a joint PCA) in out_dir/pca/."""
    import numpy as np
    import torch
    from PIL import Image

    from grounding.descriptors.pca import pca_project, pca_rgb
    from grounding.viz import grid_to_image, side_by_side

    folder = Path(out_dir) / "pca"
    folder.mkdir(parents=True, exist_ok=True)
    pictures = pca_rgb([d.descriptors for d in described])
    for name, image, rgb in zip(names, images, pictures):
        up = grid_to_image(rgb, (image.height, image.width), nearest=False)
        side_by_side(image, Image.fromarray((up * 255).round().clip(0, 255).astype(np.uint8))).save(
            folder / f"{Path(name).stem}.png")
    _, variance = pca_project(torch.cat([d.descriptors.reshape(-1, d.descriptors.shape[-1]) for d in described]), 4)
    return {**_common(described, names, settings), "explained_variance": [round(float(v), 6) for v in variance],
            "pictures": [f"pca/{Path(n).stem}.png" for n in names]}


def write_cosegment(described, images, names: Sequence[str], out_dir: Path, settings: dict, config=None) -> dict:
    """Co-segmentation masks (out_dir/cosegment/<stem>_mask.png) and pictures (image | foreground | clusters)."""
    import numpy as np
    from PIL import Image

    from grounding.descriptors.cosegment import cosegment
    from grounding.viz import grid_to_image, side_by_side

    folder = Path(out_dir) / "cosegment"
    folder.mkdir(parents=True, exist_ok=True)
    result = cosegment([d.descriptors for d in described], [d.saliency for d in described], config)
    palette = _label_colours(result.k)
    records = []
    for name, image, mask, labels in zip(names, images, result.masks, result.labels):
        size = (image.height, image.width)
        full = grid_to_image(mask, size, nearest=True) > 0.5
        clusters = palette[grid_to_image(labels, size, nearest=True).astype(int)]
        stem = Path(name).stem
        Image.fromarray((full * 255).astype(np.uint8)).save(folder / f"{stem}_mask.png")
        side_by_side(image, _blend(image, np.asarray(image, dtype=np.float32), full, alpha=0.0),
                      Image.fromarray(clusters)).save(folder / f"{stem}.png")
        records.append({"image": name, "foreground": round(float(mask.float().mean()), 4),
                        "picture": f"cosegment/{stem}.png", "mask": f"cosegment/{stem}_mask.png"})
    record = _common(described, names, settings)
    for entry, extra in zip(record["images"], records):
        entry.update(extra)
    return {**record, "k": result.k, "votes": result.votes.tolist(), "salient": result.salient.tolist(),
            "objectives": [round(v, 6) for v in result.objectives], "empty": result.empty}


def write_parts(described, images, names: Sequence[str], out_dir: Path, settings: dict, config=None) -> dict:
    """Part co-segmentation pictures (image | parts painted on the foreground) in out_dir/parts/."""
    import numpy as np

    from grounding.descriptors.part_cosegment import part_cosegment
    from grounding.viz import grid_to_image, side_by_side

    folder = Path(out_dir) / "parts"
    folder.mkdir(parents=True, exist_ok=True)
    result = part_cosegment([d.descriptors for d in described], [d.saliency for d in described], config)
    palette = _label_colours(max(result.num_parts, 1)).astype(np.float32)
    record = _common(described, names, settings)
    for entry, image, parts in zip(record["images"], images, result.parts):
        labels = grid_to_image(parts, (image.height, image.width), nearest=True).astype(int)  # (H, W), -1: background
        stem = Path(entry["image"]).stem
        side_by_side(image, _blend(image, palette[labels.clip(0)], labels >= 0)).save(folder / f"{stem}.png")
        entry.update(picture=f"parts/{stem}.png",
                     parts=[round(float((parts == p).float().mean()), 4) for p in range(result.num_parts)])
    return {**record, "num_parts": result.num_parts, "cosegment_k": result.cosegmentation.k}


def write_correspondences(described, images, names: Sequence[str], out_dir: Path, settings: dict, config=None) -> dict:
    """Best-buddy correspondences between the first two images: out_dir/correspond.png (points joined by lines)."""
    from PIL import ImageDraw

    from grounding.descriptors.correspond import correspondences
    from grounding.viz import side_by_side

    if len(described) < 2:
        raise ValueError("correspond needs two images (got one); put two in --images or name them with --pair")
    first, second = described[:2]
    found = correspondences(first.descriptors, second.descriptors, first.saliency, second.saliency, config)
    points1, points2 = first.centres(found.cells1), second.centres(found.cells2)  # (K, 2) x, y
    canvas = side_by_side(images[0], images[1])
    pen = ImageDraw.Draw(canvas)
    palette = _label_colours(len(found))
    shift = images[0].width + 4
    radius = max(3, min(canvas.size) // 60)
    for n, ((x1, y1), (x2, y2)) in enumerate(zip(points1.tolist(), points2.tolist())):
        colour = tuple(int(c) for c in palette[n])
        pen.line([(x1, y1), (x2 + shift, y2)], fill=colour, width=1)
        for x, y in ((x1, y1), (x2 + shift, y2)):
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    canvas.save(Path(out_dir) / "correspond.png")
    pairs = [{"point1": [round(v, 1) for v in p1], "point2": [round(v, 1) for v in p2],
              "similarity": round(float(s), 4), "saliency": round(float(r), 4)}
             for p1, p2, s, r in zip(points1.tolist(), points2.tolist(), found.similarity, found.saliency)]
    return {**_common(described[:2], names[:2], settings), "pairs": pairs, "buddies": found.buddies,
            "picture": "correspond.png"}


def _cmd_descriptors(args) -> int:
    from grounding.tower.backbone import PreprocessConfig, RegisterViT, TowerConfig
    from grounding.descriptors.correspond import CorrespondenceConfig
    from grounding.descriptors.cosegment import CosegmentConfig
    from grounding.descriptors import DenseExtractor
    from grounding.images import load_image
    from grounding.descriptors.part_cosegment import PartsConfig

    from .atomic import check_new_folder
    from .discover import list_images
    from .preflight import check_device, check_weights, loading
    from .records import run_metadata, write_json

    check_new_folder(args.out, args.overwrite, "--out", (f"{args.action}.json",))
    check_device(args.device)
    check_weights(args.model, "--model", "tower")
    paths = list_images(args.images)
    if args.pair:
        wanted = [name.strip() for name in args.pair.split(",")]
        by_name = {p.name: p for p in paths}
        missing = [name for name in wanted if name not in by_name]
        if len(wanted) != 2 or missing:
            raise ValueError(f"--pair takes two file names in {args.images} (missing: {missing or 'none'})")
        paths = [by_name[name] for name in wanted]
    if args.action == "correspond":
        paths = paths[:2]
    with loading("--model", args.model):
        tower = RegisterViT.from_config(TowerConfig(model=args.model, device=args.device, dtype=args.dtype,
                                                    preprocess=PreprocessConfig(short_side=args.short_side)))
    if args.layer is not None and not -tower.num_layers <= args.layer < tower.num_layers:
        raise ValueError(f"--layer {args.layer}: the tower has {tower.num_layers} layers "
                         f"({-tower.num_layers}..{tower.num_layers - 1})")
    stride = args.stride if args.stride else max(1, tower.patch_size // 2)
    extractor = DenseExtractor(tower, stride)
    layer_default, bin_default = COMMAND_DEFAULTS[args.action]
    layer = max(-tower.num_layers, layer_default) if args.layer is None else args.layer  # shallow towers: the first
    binned = bin_default if args.bin is None else args.bin == "yes"
    heads = [int(h) for h in args.heads.split(",")] if args.heads else None
    images = [load_image(p, max_side=tower.max_input_side) for p in paths]
    described = extractor.describe(images, layer=layer, facet=args.facet, bin=binned, heads=heads)
    names = [p.name for p in paths]
    settings = {"command": args.action, "model": args.model, "stride": stride, "patch_size": tower.patch_size,
                "layer": layer, "facet": args.facet, "bin": binned, "short_side": args.short_side}
    coseg = CosegmentConfig(elbow=args.elbow, threshold=0.065 if args.threshold is None else args.threshold,
                            votes=args.votes)
    out = Path(args.out)
    if args.action == "pca":
        record = write_pca(described, images, names, out, settings)
    elif args.action == "cosegment":
        record = write_cosegment(described, images, names, out, settings, coseg)
    elif args.action == "parts":
        record = write_parts(described, images, names, out, settings, PartsConfig(num_parts=args.num_parts,
                                                                                  cosegment=coseg))
    else:
        threshold = 0.05 if args.threshold is None else args.threshold
        config = CorrespondenceConfig(num_pairs=args.num_pairs, threshold=threshold)
        record = write_correspondences(described, images, names, out, settings, config)
    write_json(out / f"{args.action}.json", {**record, **run_metadata(vars(args))})
    print(f"{args.action}: {len(described)} images, stride {stride}, grids "
          f"{', '.join('x'.join(map(str, d.grid)) for d in described)} -> {out / (args.action + '.json')}")
    return 0


def add_descriptors_command(commands: argparse._SubParsersAction, default_device: str) -> None:
    """Add `descriptors pca|cosegment|parts|correspond` to the top-level subcommands."""
    parser = commands.add_parser("descriptors",
                                 help="dense ViT descriptors: PCA, co-segmentation, parts, correspondences")
    actions = parser.add_subparsers(dest="action", required=True)
    helps = {"pca": "PCA of the descriptors as RGB", "cosegment": "co-segment the common object of the images",
             "parts": "co-segment the common object's parts", "correspond": "point correspondences of two images"}
    for action, text in helps.items():
        p = actions.add_parser(action, help=text)
        p.add_argument("--model", required=True, help="hub name or local directory of the tower")
        p.add_argument("--images", required=True, help="folder of images (correspond: the first two, or --pair)")
        p.add_argument("--out", required=True, help="output folder (PNGs and <command>.json)")
        p.add_argument("--stride", type=positive_int, default=None,
                       help="patch stride, a divisor of the patch size (default: half the patch size, e.g. 7 on /14)")
        p.add_argument("--short-side", type=positive_int, default=224,
                       help="the shorter side becomes ~this (patch multiple)")
        p.add_argument("--layer", type=int, default=None,
                       help=f"layer (0-based, negative from the end; default {COMMAND_DEFAULTS[action][0]})")
        p.add_argument("--facet", choices=["key", "query", "value", "token"], default="key")
        p.add_argument("--bin", choices=["yes", "no"], default=None,
                       help=f"log-binned descriptors (default {'yes' if COMMAND_DEFAULTS[action][1] else 'no'})")
        p.add_argument("--heads", default=None, help="comma-separated heads for the saliency map (default: all)")
        p.add_argument("--threshold", type=unit_float, default=None,
                       help="saliency threshold (default 0.065 for co-segmentation, 0.05 for correspondences)")
        p.add_argument("--device", default=default_device)
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
        p.add_argument("--overwrite", action="store_true", help=f"replace an earlier {action}.json and its pictures")
        if action in ("cosegment", "parts"):
            p.add_argument("--elbow", type=unit_float, default=0.975, help="k-means elbow coefficient")
            p.add_argument("--votes", type=unit_float, default=0.75,
                           help="share of images that must find a cluster salient")
        else:
            p.set_defaults(elbow=0.975, votes=0.75)
        p.set_defaults(num_parts=4, num_pairs=10, pair=None)
        if action == "parts":
            p.add_argument("--num-parts", type=positive_int, default=4)
        if action == "correspond":
            p.add_argument("--num-pairs", type=positive_int, default=10)
            p.add_argument("--pair", default=None, help="two file names in --images, comma-separated")
        p.set_defaults(func=_cmd_descriptors)
