"""CHAIR of region-evidence's captions at several `caption_strength` values, on the captions of a demo's world.

    PYTHONPATH=. python benchmarks/bench_evidence_captions.py /tmp/val_chair 30 1,2,4

WORLD_OUT is the world folder of a `grounding demo` run (its world/ and chair runs; e.g. the val run of
docs/benchmarks.md); the first N captioned images are captioned by region-evidence (fp32, greedy, 40 tokens) once
per strength into WORLD_OUT/caption_sweep/s<strength>, and CHAIR_s / CHAIR_i / recall are printed with 95%
bootstrap intervals over captions (eval.world_demo.chair_table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eval.benchmarks import CAPTION_PROMPT, score_captions
from eval.runner import Item, RunConfig, run_methods
from eval.world_demo import chair_table
from grounding import assets


def main() -> None:
    out, count, strengths = Path(sys.argv[1]), int(sys.argv[2]), [float(s) for s in sys.argv[3].split(",")]
    world = next((out / "world").rglob("world.json")).parent
    instances = json.loads((world / "annotations" / "instances.json").read_text())
    partners = {pair[1] for pair in json.loads((world / "world.json").read_text())["config"]["pairs"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    truth: dict = {}
    for ann in instances["annotations"]:
        truth.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    chosen = [im for im in instances["images"] if im["id"] in truth][:count]
    items = [Item(im["id"], world / "images" / im["file_name"], CAPTION_PROMPT, {}) for im in chosen]
    truth = {k: sorted(v) for k, v in truth.items()}
    print("| caption_strength | CHAIR_s | CHAIR_i | recall |\n|---|---|---|---|")
    for strength in strengths:
        run = RunConfig(model=str(assets.require(assets.WORLD_LLAVA)), methods=["region-evidence"],
                        out=str(out / "caption_sweep" / f"s{strength:g}"), tower=str(assets.require(assets.VIT)),
                        tower_short_side=224, batch_size=8, max_new_tokens=40, device="cpu", dtype="float32",
                        method_options={"region-evidence": {"caption_strength": strength}})
        scored = run_methods(run, items, "caption", lambda predictions: score_captions(
            [{"image_id": p["key"], "caption": p["answer"]} for p in predictions if "answer" in p], truth))
        table = chair_table(scored["region-evidence"]["per_caption"], partners, 1000)
        cells = [f"{table[k]['value']:.1f} [{table[k]['ci95'][0]:.0f}, {table[k]['ci95'][1]:.0f}]"
                 for k in ("chair_s", "chair_i", "recall")]
        print(f"| {strength:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
