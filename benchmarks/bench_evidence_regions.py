"""Which regions and which rule should region-evidence read? First-token POPE decisions on a val world.

    PYTHONPATH=. python benchmarks/bench_evidence_margins.py /tmp/eff/v2:val:2:80:80     # margins first
    PYTHONPATH=. python benchmarks/bench_evidence_regions.py /tmp/eff/v2 2 80

For every image of the world (OUT/world, as bench_evidence_margins.py built it) this computes once and caches in
OUT/regions_cache.pt: the image tokens of world-llava (fp32, `get_image_features`), the Object-DINO maps (k 5) and
instances (`ObjectDINO.instances`, up to 8). Region sets on the 12 x 12 token grid: `oracle` (one region per
ground-truth instance), `od-inst` (Object-DINO instances), `od-cc` (connected regions of the map > 0.5, the earlier
default), `random-inst` / `random-cc` (those regions moved at random, seeded per image), `none` (the whole grid).
Rules: `votes` (an object is seen when >= min_support tokens inside the union of the regions vote for it, the
method's rule), `plural` / `plural2` (the top one / two object words by votes inside each region), `pooled` /
`pooled2` (the nearest one / two object words to the mean image token of each region). Decision: yes iff
logit(Yes) - logit(No) - strength * (object not seen) > 0, on the images whose questions all have margins.
Prints two tables (rules at strengths 2 / 4 / 100; votes at min_support 1 / 2 and strengths 4 ... 100).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.pope import objects_per_image
from eval.world_demo import WorldDemoConfig, _pope_items
from grounding import assets
from grounding.images import load_image
from grounding.methods.evidence import ObjectVocabulary, _image_features
from grounding.objects.instance_registry import instance_pixel_masks
from grounding.objects.mask_source import OracleMasks, instance_cells, placement_seed, random_regions, region_cells
from grounding.objects.object_dino import ObjectDINO
from grounding.objects.regions import connected_components
from grounding.tower.backbone import RegisterViT
from grounding.vlm import load_vlm

GRID = (12, 12)
SOURCES = ("oracle", "od-inst", "od-cc", "random-inst", "random-cc", "none")
RULES = ("votes", "plural", "plural2", "pooled", "pooled2")


def main() -> None:
    out, seed, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    world = out / "world"
    instances = json.loads((world / "annotations" / "instances.json").read_text())
    _, splits = _pope_items(world, instances, WorldDemoConfig(seed=seed, split="val", images=count), out)
    names = [im["file_name"] for im in instances["images"]]
    model, processor = load_vlm(str(assets.require(assets.WORLD_LLAVA)), "float32", "cpu")
    vocabulary = ObjectVocabulary()
    words = vocabulary.embeddings(model, processor.tokenizer)  # (81, D)
    cache_path = out / "regions_cache.pt"
    cache = torch.load(cache_path, weights_only=False) if cache_path.exists() else {}
    if len(cache) < len(names):
        tower = RegisterViT.from_pretrained(str(assets.require(assets.VIT)), preprocess={"short_side": 224})
        maps_od, instances_od = ObjectDINO(k=5), ObjectDINO(k=12)
        start = time.perf_counter()
        for name in names:
            if name in cache:
                continue
            image = load_image(world / "images" / name)
            encoded = processor.image_processor([image], return_tensors="pt")
            with torch.no_grad():
                tokens, shape = _image_features(model, {"pixel_values": encoded["pixel_values"].float()})[0]
            assert tuple(shape) == GRID
            found = tower([image])
            objects = instances_od.instances(found, max_objects=8, tower=tower)
            cache[name] = {"tokens": tokens.float(), "map": maps_od.object_maps(found, upsample=True)[0].cpu(),
                           "instances": instance_pixel_masks(objects, found, 0).numpy()}
        torch.save(cache, cache_path)
        print(f"cached {len(names)} images in {time.perf_counter() - start:.0f} s", flush=True)
    oracle = OracleMasks(str(world / "annotations" / "instances.json"))
    regions = {}
    for name in names:
        image = load_image(world / "images" / name)
        entry = cache[name]
        od_inst = list(instance_cells(entry["instances"], GRID, 0.3))
        labels = connected_components(region_cells((entry["map"] > 0.5).numpy(), GRID, 0.3))
        od_cc = [labels == label for label in range(1, int(labels.max()) + 1)]
        key = placement_seed(0, name)
        regions[name] = {
            "oracle": list(instance_cells(oracle.instance_masks(image), GRID, 0.3)), "od-inst": od_inst, "od-cc": od_cc,
            "random-inst": [random_regions(r, key + i) for i, r in enumerate(od_inst)],
            "random-cc": [random_regions(r, key + i) for i, r in enumerate(od_cc)],
            "none": [torch.ones(GRID, dtype=torch.bool)]}
    unit = {name: F.normalize(cache[name]["tokens"], dim=-1) for name in names}
    votes = {name: (unit[name] @ words.T).argmax(-1).view(GRID) for name in names}
    categories = ["background", *vocabulary.categories]
    index = {c: i for i, c in enumerate(categories)}

    def support(name: str, source: str) -> torch.Tensor:
        union = torch.zeros(GRID, dtype=torch.bool)
        for region in regions[name][source]:
            union |= region
        return torch.bincount(votes[name][union].flatten(), minlength=len(categories))

    def seen(name: str, source: str, rule: str) -> set[str]:
        if rule == "votes":
            return {categories[i] for i, c in enumerate(support(name, source).tolist()) if i and c}
        found = set()
        for region in regions[name][source]:
            if not region.any():
                continue
            if rule.startswith("plural"):
                counts = torch.bincount(votes[name][region].flatten(), minlength=len(categories))[1:]
                for _ in range(1 if rule == "plural" else 2):
                    if counts.max() > 0:
                        top = int(counts.argmax())
                        found.add(categories[1 + top])
                        counts[top] = 0
            else:
                mean = cache[name]["tokens"].view(*GRID, -1)[region].mean(0)
                scores = (F.normalize(mean, dim=-1) @ words.T)[1:]
                found |= {categories[1 + i] for i in scores.topk(1 if rule == "pooled" else 2).indices.tolist()}
        return found

    margins = json.loads((out / "margins.json").read_text())
    pairs = json.loads((world / "world.json").read_text())["config"]["pairs"]
    partner_of: dict[str, set] = {}
    for first, second in pairs:
        partner_of.setdefault(first, set()).add(second)
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    present = {files[i]: set(o) for i, o in objects_per_image(instances).items()}
    have = {n for n in names if all(r["key"] in margins for rows in splits.values() for r in rows if r["image"] == n)}
    questions = {r["key"]: r for rows in splits.values() for r in rows}

    def table(decide) -> str:
        cells = []
        for rows in splits.values():
            rows = [r for r in rows if r["image"] in have]
            cells.append(f"{100 * np.mean([decide(r) == (r['label'] == 'yes') for r in rows]):.1f}")
        absent = [r for r in questions.values() if r["label"] == "no" and r["image"] in have]
        trap = [decide(r) for r in absent if any(r["object"] in partner_of.get(o, ()) for o in present[r["image"]])]
        other = [decide(r) for r in absent
                 if not any(r["object"] in partner_of.get(o, ()) for o in present[r["image"]])]
        return f"{'/'.join(cells)} {100 * np.mean(trap):.0f}%/{len(trap)} {100 * np.mean(other):.0f}%"

    print(f"val world seed {seed}: {len(have)} images with margins; cells: random/popular/adversarial accuracy, "
          "yes to absent partners / their number, yes to other absent")
    print("baseline", table(lambda r: margins[r["key"]][0] > 0))
    for source in SOURCES:
        for rule in RULES:
            found = {name: seen(name, source, rule) for name in names}
            rate = {label: 100 * np.mean([r["object"] in found[r["image"]] for r in questions.values()
                                          if r["label"] == label]) for label in ("yes", "no")}
            line = f"{source:12s} {rule:8s} present seen {rate['yes']:5.1f} absent seen {rate['no']:5.1f} |"
            for strength in (2, 4, 100):
                line += f" s{strength}: " + table(lambda r, s=strength: margins[r["key"]][0]
                                                  - s * (r["object"] not in found[r["image"]]) > 0) + " |"
            print(line, flush=True)
    for source in ("oracle", "od-inst", "random-inst", "od-cc", "none"):
        counts = {name: support(name, source) for name in names}
        for min_support in (1, 2):
            line = f"{source:12s} votes ms{min_support} |"
            for strength in (4, 6, 8, 12, 100):
                line += f" s{strength}: " + table(lambda r, s=strength, m=min_support: margins[r["key"]][0] - s * (
                    int(counts[r["image"]][index[r["object"]]]) < m) > 0) + " |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
