"""The dense-descriptor section of `grounding demo`: on the photos that show animals (all photos given when fewer
than two do), PCA pictures and a co-segmentation, and correspondences between two photos that share an animal
class (docs/descriptors.md)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from .descriptors_cli import write_correspondences, write_cosegment, write_pca

__all__ = ["run_descriptors_demo", "report_lines", "ANIMALS"]

ANIMALS = frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"})


def run_descriptors_demo(tower, items, photos: Path, out_dir: Path, stride: int = 7, short_side: int = 224) -> dict:
    """Descriptors of `items` (CorLoc items of the photo folder) on `tower`'s model at a finer stride."""
    from grounding.tower.backbone import PreprocessConfig, RegisterViT
    from grounding.descriptors import DenseExtractor
    from grounding.images import load_image

    start = time.perf_counter()
    config = replace(tower.config, preprocess=PreprocessConfig(short_side=short_side))
    small = RegisterViT(tower.model, config, tower.backend, tower.mean.flatten().tolist(), tower.std.flatten().tolist())
    extractor = DenseExtractor(small, stride)
    out = Path(out_dir) / "descriptors"
    classes = json.loads((Path(photos) / "objects.json").read_text())
    names = [item.path.name for item in items]
    animals = [name for name in names if ANIMALS & set(classes.get(name, []))]
    names = animals if len(animals) >= 2 else names  # the animal photos, or (too few of them) every photo given
    images = [load_image(Path(photos) / name) for name in names]
    described = extractor.describe(images)  # last-layer keys
    settings = {"stride": stride, "short_side": short_side, "layer": -1, "facet": "key", "bin": False}
    result: dict = {"stride": stride, "short_side": short_side,
                    "pca": write_pca(described, images, names, out, settings)["pictures"]}
    animals = [i for i, name in enumerate(names) if ANIMALS & set(classes.get(name, []))]
    if len(animals) >= 2:
        coseg = write_cosegment(described, images, names, out, settings)
        result["cosegment"] = {key: coseg[key] for key in ("k", "votes", "salient", "empty")}
        result["cosegment"]["images"] = [{k: e[k] for k in ("image", "foreground", "picture")} for e in coseg["images"]]
    pair = next(((a, b) for n, a in enumerate(animals) for b in animals[n + 1 :]
                 if ANIMALS & set(classes[names[a]]) & set(classes[names[b]])), None)
    if pair is not None:
        two = extractor.describe([images[i] for i in pair], layer=max(-small.num_layers, -3), bin=True)
        record = write_correspondences(two, [images[i] for i in pair], [names[i] for i in pair], out,
                                       {**settings, "layer": -3, "bin": True})
        result["correspond"] = {"images": [names[i] for i in pair], "pairs": len(record["pairs"]),
                                "layer": max(0, small.num_layers - 3),
                                "buddies": record["buddies"], "picture": record["picture"]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def report_lines(result: dict) -> list[str]:
    """The report's markdown for a `run_descriptors_demo` result (pictures under descriptors/)."""
    lines = ["## Dense descriptors", "",
             f"Overlapping patches at stride {result['stride']} on the same tower (short side {result['short_side']}); "
             "Amir et al.'s dense-descriptor applications, no training (docs/descriptors.md).", "",
             "### PCA of last-layer keys (components 2-4 as RGB, one PCA over these photos)", ""]
    lines += [f"![pca](descriptors/{picture})" for picture in result["pca"]] + [""]
    if "cosegment" in result:
        coseg = result["cosegment"]
        lines += ["### Co-segmentation of the photos that show animals", "",
                  f"k = {coseg['k']} clusters (elbow), saliency votes {coseg['votes']}; foreground clusters "
                  f"{[i for i, s in enumerate(coseg['salient']) if s] or 'none'}. Each row: photo | foreground | "
                  "clusters.", ""]
        lines += [f"![{e['image']}](descriptors/{e['picture']})" for e in coseg["images"]] + [""]
    if "correspond" in result:
        corr = result["correspond"]
        lines += [f"### Correspondences: {corr['images'][0]} and {corr['images'][1]}", "",
                  f"{corr['pairs']} pairs picked from {corr['buddies']} salient best buddies "
                  f"(layer {corr['layer']} keys, log-binned).",
                  "", f"![correspondences](descriptors/{corr['picture']})", ""]
    return lines
