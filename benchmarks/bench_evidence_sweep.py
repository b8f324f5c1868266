"""The region-evidence decision on saved margins (benchmarks/bench_evidence_margins.py): yes iff margin - strength *
[support < min_support] > 0, with the support counts of RegionEvidence(mask_source=...).support (the method
itself), for every mask source and each "strength,min_support" of the grid; POPE accuracy per split (95% bootstrap
intervals over images on a test world) and the "yes" rates to absent partners and other absent objects.

    SUPPORT_IMAGES=30 PYTHONPATH=. python benchmarks/bench_evidence_sweep.py /tmp/eff/v2 val 2 80 "2,1;4,1"
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eval.world_demo import WorldDemoConfig, _pope_items, bootstrap_interval
from grounding.annotations import objects_per_image
from grounding.images import load_image
from grounding.methods.evidence import ObjectVocabulary, RegionEvidence
from grounding.tower.backbone import RegisterViT
from grounding.vlm import load_vlm

torch.set_num_threads(1)

out = Path(sys.argv[1])
split = sys.argv[2]
seed = int(sys.argv[3])
n = int(sys.argv[4])
grid = [tuple(map(float, g.split(","))) for g in sys.argv[5].split(";")]  # (strength, min_support)
world = out / "world"
inst = json.loads((world / "annotations/instances.json").read_text())
items, splits = _pope_items(world, inst, WorldDemoConfig(seed=seed, split=split, images=n), out)
M = json.loads((out / "margins.json").read_text())
done_images = sorted(
    {
        k.split("|")[0]
        for k in M
        if all(r["key"] in M for s in splits.values() for r in s if r["image"] == k.split("|")[0])
    }
)
splits = {s: [r for r in rows if r["image"] in done_images] for s, rows in splits.items()}
print(
    split,
    "images with margins",
    len(done_images),
    "questions",
    {s: len(r) for s, r in splits.items()},
    "first token yes/no share",
    round(np.mean([v[1] for v in M.values()]), 3),
)
sup_path = out / "support.pt"
S = torch.load(sup_path) if sup_path.exists() else {}
all_images = sorted({it.image.name for it in items})[: int(os.environ.get("SUPPORT_IMAGES", "0"))] or done_images
need = [im for im in all_images if any(im not in S.get(src, {}) for src in ("object-dino", "random", "oracle", "none"))]
if need:
    model, proc = load_vlm("/root/.cache/vlm-grounding/world-llava", "float32", "cpu")
    tower = RegisterViT.from_pretrained(
        "/root/.cache/vlm-grounding/dinov2-s14-imgfocus", device="cpu", preprocess={"short_side": 224}
    )
    imgs = [load_image(world / "images" / im) for im in need]
    prev = None
    for src in ("object-dino", "random", "oracle", "none"):
        method = RegionEvidence(
            tower, proc, mask_source=src, oracle_instances=str(world / "annotations/instances.json")
        )
        if src == "random":  # same Object-DINO maps: reuse
            method.object_dino = prev.object_dino
        t = time.time()
        counts = []
        for i in range(0, len(imgs), 8):
            counts += method.support(model, imgs[i : i + 8])
        S.setdefault(src, {}).update({im: c for im, c in zip(need, counts)})
        print(src, "support", round(time.time() - t), flush=True)
        prev = method
    torch.save(S, sup_path)
cats = ObjectVocabulary().categories
idx = {c: i + 1 for i, c in enumerate(cats)}
pairs = json.loads((world / "world.json").read_text())["config"]["pairs"]
partner_of = {}
for a, b in pairs:
    partner_of.setdefault(a, set()).add(b)
files = {im["id"]: im["file_name"] for im in inst["images"]}
present = {files[i]: set(o) for i, o in objects_per_image(inst).items()}


def table(decide, boot=False):
    res = {}
    for sp, rows in splits.items():
        ims = sorted({r["image"] for r in rows})
        ix = {im: i for i, im in enumerate(ims)}
        c = np.zeros((len(ims), 2))
        for r in rows:
            c[ix[r["image"]]] += [decide(r) == (r["label"] == "yes"), 1]
        def acc(s, c=c):
            return 100 * c[s, 0].sum() / c[s, 1].sum()

        v = acc(np.arange(len(ims)))
        res[sp] = f"{v:.1f}" + (" [%.0f, %.0f]" % bootstrap_interval(acc, len(ims), 1000) if boot else "")
    seen = {}
    for rows in splits.values():
        for r in rows:
            if r["label"] == "no":
                seen[r["key"]] = r
    trap = [decide(r) for r in seen.values() if any(r["object"] in partner_of.get(o, ()) for o in present[r["image"]])]
    oth = [
        decide(r) for r in seen.values() if not any(r["object"] in partner_of.get(o, ()) for o in present[r["image"]])
    ]
    res["trap_yes"] = f"{100 * np.mean(trap):.0f}% ({sum(trap)}/{len(trap)})"
    res["other_yes"] = f"{100 * np.mean(oth):.0f}% ({sum(oth)}/{len(oth)})"
    return res


boot = split == "test"
print("| design | random | popular | adversarial | yes to absent partner | yes to other absent |")
print("|---|---|---|---|---|---|")


def row(name, decide):
    t = table(decide, boot)
    print(
        f"| {name} | {t['random']} | {t['popular']} | {t['adversarial']} | {t['trap_yes']} | {t['other_yes']} |",
        flush=True,
    )


row("baseline (greedy first token)", lambda r: M[r["key"]][0] > 0)
for src in ("object-dino", "random", "oracle", "none"):
    for s, m in grid:
        row(
            f"region-evidence {src} strength {s:g} min_support {m:g}",
            lambda r, s=s, m=m, src=src: M[r["key"]][0] - s * (int(S[src][r["image"]][idx[r["object"]]]) < m) > 0,
        )
