"""Cost of instance discovery against single-object discovery on the same tower output, side by side.

    python benchmarks/bench_instances.py                                   # shipped DINOv2-S/14, 224 px photos, CPU
    python benchmarks/bench_instances.py --model PATH --images eval/data/photos --short-side 224 --rounds 5
    python benchmarks/bench_instances.py --device cuda --batch 8

One tower pass per image (not timed in the ratios); then, in rounds (each round times every pipeline once; the
table takes each one's median over rounds, so a busy machine slows all of them alike), on a CPU with this
process's CPU time as the clock:

* single: `discover(<single>, out)` for each single-object method (`object-dino-whole`, the default;
  `object-dino-compact`; `object-dino-map`; the cut of the Object-DINO affinity `object-dino-adaptive`; the cut of
  the keys `tokencut-adaptive`);
* instances: `instances(<method>, out, max_objects)` for `object-dino-map-cut` (the default), `object-dino-map`,
  `object-dino` and `maskcut-adaptive`.

Printed: ms per image for each pipeline, and the ratios instances / single for the like-for-like pairs, with and
without the tower forward. A fresh `ObjectDINO` per call: nothing is shared between pipelines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grounding.tower.backbone import PreprocessConfig, RegisterViT, TowerConfig  # noqa: E402
from grounding.objects.discovery import discover  # noqa: E402
from grounding.images import load_image  # noqa: E402
from grounding.objects.instances import instances  # noqa: E402
from grounding.objects.object_dino import ObjectDINO  # noqa: E402

PAIRS = [("object-dino-map-cut", "object-dino-whole"), ("object-dino-map-cut", "object-dino-compact"),
         ("object-dino-map-cut", "object-dino-map"),
         ("object-dino-map", "object-dino-map"),
         ("object-dino", "object-dino-adaptive"), ("maskcut-adaptive", "tokencut-adaptive")]


def clock(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the shipped dinov2-s14-imgfocus asset")
    parser.add_argument("--images", default="eval/data/photos")
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--max-objects", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.model is None:
        from grounding.assets import require

        args.model = str(require("dinov2-s14-imgfocus"))
    tower = RegisterViT.from_config(TowerConfig(model=args.model, device=args.device,
                                                preprocess=PreprocessConfig(mode="resize", short_side=args.short_side)))
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in {".jpg", ".png"})[: args.num_images]
    outs = []
    start = clock(args.device)
    for path in paths:
        outs.append(tower([load_image(path)]))
    tower_ms = 1000 * (clock(args.device) - start) / len(outs)
    pipelines = {}
    for multi, single in PAIRS:
        pipelines[f"single {single}"] = lambda out, m=single: discover(m, out, object_dino=ObjectDINO(k=12),
                                                                       tower=tower)
        pipelines[f"instances {multi}"] = lambda out, m=multi: instances(m, out, args.max_objects, tower=tower,
                                                                         object_dino=ObjectDINO(k=12))
    for fn in pipelines.values():  # warm-up
        fn(outs[0])
    times = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, fn in pipelines.items():
            start = clock(args.device)
            for out in outs:
                fn(out)
            times[name].append(1000 * (clock(args.device) - start) / len(outs))
    median = {name: statistics.median(values) for name, values in times.items()}
    grids = sorted({tuple(out.grid) for out in outs})
    print(f"{len(outs)} images, grids {grids}, short side {args.short_side}, max_objects {args.max_objects}, "
          f"device {args.device}, {args.rounds} rounds; tower forward {tower_ms:.0f} ms / image")
    for name, value in median.items():
        print(f"  {name:32s} {value:8.1f} ms / image")
    for multi, single in PAIRS:
        a, b = median[f"instances {multi}"], median[f"single {single}"]
        print(f"ratio instances {multi} / single {single}: {a / b:.2f} "
              f"(with the tower forward: {(a + tower_ms) / (b + tower_ms):.2f})")


if __name__ == "__main__":
    main()
