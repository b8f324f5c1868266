"""Discovery quality at patch stride 14 vs 7 on a /14 tower: CorLoc and mask IoU on a world split, CorLoc on photos.

    grounding world build --out /tmp/w --seed 1 --images 40 --split test
    python benchmarks/stride_quality.py --model ~/.cache/vlm-grounding/dinov2-s14-imgfocus --world /tmp/w \
        --photos eval/data/photos --strides 14,7 --short-side 224

World: every discovery method (and the thresholded Object-DINO map) scored as `grounding demo`'s world section
scores them (CorLoc: box IoU >= 0.5 with any object; mask IoU against the union of all object masks; 95 %
bootstrap intervals over images). Photos: CorLoc against the shipped boxes. Prints markdown tables and seconds
per image for each stride.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from eval.corloc import corloc, iou, load_dataset
from eval.world_demo import DISCOVERY_METHODS, discovery_table
from grounding.tower.backbone import PreprocessConfig, RegisterViT, TowerConfig
from grounding.descriptors import DenseExtractor
from grounding.objects.discovery import discover
from grounding.images import load_image
from grounding.objects.object_dino import ObjectDINO


def photo_corloc(extractor: DenseExtractor, root: Path, methods) -> dict:
    items = load_dataset("coco", root)
    hits = {m: [] for m in methods}
    for item in items:
        out = extractor([load_image(item.path)])
        for method in methods:
            options = ({"object_dino": ObjectDINO(k=12)} if method.startswith("object-dino") else
                       {"head": 4} if method == "dinoseg" else {})
            box = discover(method, out, **options).boxes[0]
            hits[method].append({"correct": float(iou(box, torch.tensor(item.boxes)).max()) >= 0.5})
    return {m: round(corloc(r), 1) for m, r in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--world", default=None, help="a `grounding world build` folder")
    parser.add_argument("--photos", default=None, help="a COCO-format photo folder (e.g. eval/data/photos)")
    parser.add_argument("--strides", default="14,7")
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    tower = RegisterViT.from_config(TowerConfig(model=args.model,
                                                preprocess=PreprocessConfig(short_side=args.short_side)))
    results: dict = {}
    for stride in (int(s) for s in args.strides.split(",")):
        extractor = DenseExtractor(tower, stride)
        entry: dict = {}
        if args.world:
            world = Path(args.world)
            instances = json.loads((world / "annotations" / "instances.json").read_text())
            start = time.perf_counter()
            entry["world"] = discovery_table(world, instances, extractor, args.draws)
            entry["world_seconds_per_image"] = round((time.perf_counter() - start) / len(instances["images"]), 2)
        if args.photos:
            start = time.perf_counter()
            entry["photos"] = photo_corloc(extractor, Path(args.photos), DISCOVERY_METHODS)
            photos = len(load_dataset("coco", Path(args.photos)))
            entry["photos_seconds_per_image"] = round((time.perf_counter() - start) / photos, 2)
        results[stride] = entry
        print(f"stride {stride} done", flush=True)
    strides = list(results)
    if args.world:
        print(f"\nworld {args.world} (short side {args.short_side}): CorLoc / mask IoU [95% CI]\n")
        print("| method | " + " | ".join(f"CorLoc s={s} | mask IoU s={s}" for s in strides) + " |")
        print("|---|" + "---|---|" * len(strides))
        for method in results[strides[0]]["world"]:
            cells = []
            for s in strides:
                row = results[s]["world"][method]
                for metric in ("corloc", "mask_iou"):
                    value, (low, high) = row[metric]["value"], row[metric]["ci95"]
                    cells.append(f"{value:.1f} [{low:.1f}, {high:.1f}]")
            print(f"| {method} | " + " | ".join(cells) + " |")
        print("\nseconds per image (all methods): " + ", ".join(f"s={s}: {results[s]['world_seconds_per_image']}"
                                                          for s in strides))
    if args.photos:
        print(f"\nphotos {args.photos} (short side {args.short_side}): CorLoc\n")
        print("| method | " + " | ".join(f"s={s}" for s in strides) + " |")
        print("|---|" + "---|" * len(strides))
        for method in results[strides[0]]["photos"]:
            print(f"| {method} | " + " | ".join(f"{results[s]['photos'][method]:.1f}" for s in strides) + " |")
        print("\nseconds per image (all methods): " + ", ".join(f"s={s}: {results[s]['photos_seconds_per_image']}"
                                                          for s in strides))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
