"""First-token margins logit(Yes) - logit(No) of world-llava (fp32) on every distinct POPE question of a world
(the questions of `grounding demo`, eval.world_demo._pope_items), one forward per question, saved per image to
OUT/margins.json (resumable). Specs: OUT:SPLIT:SEED:IMAGES:LIMIT (LIMIT: the first images in name order).

    PYTHONPATH=. python benchmarks/bench_evidence_margins.py /tmp/eff/v2:val:2:80:30
"""

import json
import sys
import time
from pathlib import Path

import torch

from eval.world_demo import WorldDemoConfig, _pope_items
from grounding.decoding.chat import encode_chat
from grounding.images import load_image
from grounding.vlm import load_vlm
from grounding.world import WorldConfig, build_world

torch.set_num_threads(2)

model, proc = load_vlm("/root/.cache/vlm-grounding/world-llava", "float32", "cpu")
tok = proc.tokenizer
yes = tok.encode("Yes", add_special_tokens=False)[0]
no = tok.encode("No", add_special_tokens=False)[0]
for spec in sys.argv[1:]:
    out, split, seed, n, limit = spec.split(":")
    seed, n, limit = int(seed), int(n), int(limit)
    out = Path(out)
    world = out / "world"
    if not (world / "world.json").exists():
        build_world(world, seed, n, split, WorldConfig(), overwrite=True)
    inst = json.loads((world / "annotations/instances.json").read_text())
    items, splits = _pope_items(world, inst, WorldDemoConfig(seed=seed, split=split, images=n), out)
    path = out / "margins.json"
    M = json.loads(path.read_text()) if path.exists() else {}
    by_image = {}
    for it in items:
        by_image.setdefault(it.image.name, []).append(it)
    t = time.time()
    for k, name in enumerate(sorted(by_image)[:limit]):
        todo = [it for it in by_image[name] if it.key not in M]
        if not todo:
            continue
        img = load_image(world / "images" / name)
        enc = encode_chat(proc, [img] * len(todo), [it.prompt for it in todo], "cpu", torch.float32)
        with torch.no_grad():
            lg = model(**enc).logits[:, -1].float()
        for it, l in zip(todo, lg):
            M[it.key] = [float(l[yes] - l[no]), int(l.argmax()) in (yes, no), float(l[yes]), float(l[no])]
        path.write_text(json.dumps(M))
        print(out.name, k, len(M), round(time.time() - t), flush=True)
