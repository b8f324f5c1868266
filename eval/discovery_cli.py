"""`grounding eval discovery`: CorLoc, AR@N (boxes, masks) and union mask IoU with bootstrap intervals."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["add_discovery_eval", "cmd_eval_discovery"]

INSTANCE_DEFAULT = "maskcut,maskcut-adaptive,object-dino-map-cut"


def add_discovery_eval(evaluation, tower_args, discovery_default: str) -> None:
    p = evaluation.add_parser("discovery", help="single-object CorLoc and instance AR@1/5/10 (boxes, masks) on a "
                                                "COCO-format set, with bootstrap intervals")
    tower_args(p, resize_mode="resize")
    p.add_argument("--root", required=True, help="COCO-format folder (images/ + annotations/instances.json, ...)")
    p.add_argument("--method", default=f"{discovery_default}",
                   help="comma-separated single-object methods (grounding.objects.discovery.DISCOVERY_METHODS; "
                        "'' for none)")
    p.add_argument("--instances", default=INSTANCE_DEFAULT,
                   help="comma-separated instance methods (grounding.objects.instances.INSTANCE_METHODS; "
                        "'' for none) "
                        f"(default: {INSTANCE_DEFAULT})")
    p.add_argument("--max-objects", type=int, default=10, help="instance rounds per image (AR@N needs N <= this)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the 95%% intervals")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--out", required=True, help="output folder: records.jsonl, metrics.json")
    p.set_defaults(func=cmd_eval_discovery)


def cmd_eval_discovery(args) -> int:
    from grounding.objects.discovery import DISCOVERY_METHODS
    from grounding.objects.instances import INSTANCE_METHODS
    from .preflight import load_tower
    from .discovery_eval import CachedObjectDINO, evaluate_discovery, format_table, load_instance_dataset, summarise
    from .records import run_metadata, write_json, write_jsonl

    methods = [m for m in args.method.split(",") if m]
    instance_methods = [m for m in args.instances.split(",") if m]
    unknown = [m for m in methods if m not in DISCOVERY_METHODS] + [
        m for m in instance_methods if m not in INSTANCE_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; --method takes {', '.join(DISCOVERY_METHODS)}; "
                         f"--instances takes {', '.join(INSTANCE_METHODS)}")
    if args.max_objects < 1:
        raise ValueError("--max-objects must be >= 1")
    items = load_instance_dataset(args.root, args.limit)
    if not items:
        raise ValueError(f"{args.root}: no images with annotations to score")
    tower = load_tower(args)
    options = {"object_dino": CachedObjectDINO(k=args.k), "head": args.dinoseg_head, "tower": tower, "tau": args.tau}
    timings: dict = {}
    start = time.perf_counter()
    records = evaluate_discovery(tower, items, methods, instance_methods, options, args.max_objects,
                                 timings=timings)
    summary = summarise(records, methods, instance_methods, args.bootstrap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", records)
    write_json(out / "metrics.json", {"root": str(args.root), "images": len(records),
                                      "objects": sum(r["objects"] for r in records), **summary,
                                      "seconds": {k: round(v, 2) for k, v in timings.items()},
                                      "total_seconds": round(time.perf_counter() - start, 1),
                                      **run_metadata(vars(args))})
    print(f"{len(records)} images, {sum(r['objects'] for r in records)} objects ({args.root})")
    print(format_table(summary))
    return 0


def cmd_discover_instances(args, tower, jobs, out: Path, object_dino) -> int:
    """`grounding discover --instances N`: up to N objects per image -> out/instances.jsonl (boxes in the file's
    pixels, scores, patch-grid size) and out/instances/<stem>.png (coloured masks with their boxes)."""
    from tqdm.auto import tqdm

    from grounding.images import ImageError, load_image, to_original_pixels
    from grounding.objects.instances import instance_pixel_masks, instances
    from grounding.viz import instance_picture

    from .records import write_jsonl

    rows = []
    (out / "instances").mkdir(parents=True, exist_ok=True)
    options = {"object_dino": object_dino, "tower": tower, "tau": args.tau}
    for job in tqdm(jobs, desc=f"instances {args.instance_method}", unit="img"):
        try:
            image = load_image(job.path, max_side=tower.max_input_side)
        except ImageError as error:
            rows.append({"image": job.key, "skipped": str(error)})
            continue
        result = tower([image])
        found = instances(args.instance_method, result, args.instances, **options)
        keep = found.valid[0]
        boxes = [to_original_pixels(b, image).tolist() for b in found.boxes[0][keep]]
        scores = found.scores[0][keep].tolist()
        rows.append({"image": job.key, "method": args.instance_method, "map_size": list(result.grid),
                     "instances": [{"box": [round(v, 2) for v in box], "score": round(score, 4)}
                                   for box, score in zip(boxes, scores)]})
        masks = instance_pixel_masks(found, result, 0).numpy()
        picture_boxes = [b.tolist() for b in found.boxes[0][keep]]  # in the loaded image's pixels
        instance_picture(image, masks, picture_boxes, scores).save(out / "instances" / f"{Path(job.key).stem}.png")
    write_jsonl(out / "instances.jsonl", rows)
    done = [r for r in rows if "instances" in r]
    print(f"{sum(len(r['instances']) for r in done)} instances in {len(done)} images written to "
          f"{out / 'instances.jsonl'} (pictures in {out / 'instances'})")
    return 0
