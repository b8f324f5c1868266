"""Seconds per POPE question and per caption: plain greedy vs region-evidence on world-llava, side by side.

    PYTHONPATH=. python benchmarks/bench_evidence_speed.py --images 8 --captions 4 --repeats 2

A val world (seed 2) is generated under --out; its POPE questions (all three splits, distinct) are answered by
baseline and by region-evidence in batches of 8, each image's questions together and each method with its prefix
cache, as `grounding eval pope` runs them. Region evidence starts cold every repeat (a new method: its Object-DINO
maps and its image-token reading are computed, once per image, inside the timed call). The two methods alternate
within each repeat so load on a shared machine falls on both; the ratio is taken per repeat, the median reported.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/evidence_speed")
    parser.add_argument(
        "--images", type=int, default=8, help="world images with >= 3 objects whose questions are asked"
    )
    parser.add_argument("--captions", type=int, default=4)
    parser.add_argument("--caption-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", help="float32: bf16 without bf16 units is ~50x slower")
    args = parser.parse_args()

    from eval.benchmarks import CAPTION_PROMPT
    from eval.pope import build_pope
    from grounding.vlm import load_vlm
    from grounding import assets
    from grounding.tower.backbone import RegisterViT
    from grounding.images import load_image
    from grounding.methods import build_method
    from grounding.decoding.prefix_cache import PrefixCache
    from grounding.world import WorldConfig, build_world

    out = Path(args.out)
    world = out / "world"
    if not (world / "world.json").is_file():
        build_world(world, 2, max(4 * args.images, 24), "val", WorldConfig(), overwrite=True)
    instances = json.loads((world / "annotations" / "instances.json").read_text())
    questions = {}
    for split in ("random", "popular", "adversarial"):
        for q in build_pope(instances, split, num_images=len(instances["images"]), seed=2):
            questions.setdefault((q["image"], q["text"]), q)
    chosen = sorted({image for image, _ in questions})[: args.images]
    rows = sorted((image, text) for image, text in questions if image in chosen)
    images = {name: load_image(world / "images" / name) for name in chosen}
    captions = [load_image(world / "images" / im["file_name"]) for im in instances["images"][: args.captions]]

    model, processor = load_vlm(str(assets.require(assets.WORLD_LLAVA)), args.dtype, "cpu")
    tower = RegisterViT.from_pretrained(str(assets.require(assets.VIT)), device="cpu", preprocess={"short_side": 224})

    def run(name: str, task: str) -> float:
        method = build_method(name, tower, processor, **({"task": task} if name != "baseline" else {}))
        method.prefix_cache = PrefixCache() if task == "question" else None
        start = time.perf_counter()
        if task == "question":
            for i in range(0, len(rows), 8):
                batch = rows[i : i + 8]
                method.generate(
                    model, [images[im] for im, _ in batch], [t for _, t in batch], max_new_tokens=8, do_sample=False
                )
        else:
            for i in range(0, len(captions), 8):
                batch = captions[i : i + 8]
                method.generate(
                    model, batch, [CAPTION_PROMPT] * len(batch), max_new_tokens=args.caption_tokens, do_sample=False
                )
        return time.perf_counter() - start

    run("baseline", "question")  # warm-up (first-call allocations)
    table = {}
    for task, count in (("question", len(rows)), ("caption", len(captions))):
        ratios, times = [], {"baseline": [], "region-evidence": []}
        for _ in range(args.repeats):
            plain = run("baseline", task)
            evidence = run("region-evidence", task)
            times["baseline"].append(plain / count)
            times["region-evidence"].append(evidence / count)
            ratios.append(evidence / plain)
        table[task] = (count, {k: statistics.median(v) for k, v in times.items()}, statistics.median(ratios), ratios)
    print(
        f"world-llava ({args.dtype}, CPU, {torch.get_num_threads()} threads): {len(chosen)} images, "
        f"{len(rows)} POPE questions, {len(captions)} captions of {args.caption_tokens} tokens, "
        f"{args.repeats} repeats\n"
    )
    print("| task | items | baseline s/item | region-evidence s/item | ratio (median) | ratios |")
    print("|---|---|---|---|---|---|")
    for task, (count, seconds, ratio, ratios) in table.items():
        print(
            f"| {task} | {count} | {seconds['baseline']:.3f} | {seconds['region-evidence']:.3f} | {ratio:.2f} | "
            f"{', '.join(f'{r:.2f}' for r in ratios)} |"
        )


if __name__ == "__main__":
    main()
