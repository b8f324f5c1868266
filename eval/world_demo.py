"""`grounding demo`'s measurement on the procedural world: does grounding make the embedded VLM hallucinate less?

On a test world generated from its seed (`grounding.world`; the partner of each planted pair is absent in about
half the images that hold the first object), the embedded `world-llava` answers:

* POPE random / popular / adversarial, built by the project's POPE builder (`eval.pope.build_pope`). The three
  splits share their positive questions, so each distinct (image, question) is generated once and scored in
  every split that asks it;
* CHAIR on its captions of the first `caption_images` test images (ground truth: the world's instances);

for every method (baseline, highlight, masked-contrast, vcd, region-tokens, ...), through the same runner that
`grounding eval pope|chair` uses (run folders, resume). Beside region tokens, their control: the `control` row is
the baseline on `world-llava-control`, world-llava fine-tuned by the region-token recipe (same steps, world, seeds)
with no region tokens, a separate model whose run folder is pope/runs/control (chair/runs/control) with the
baseline's answers in its baseline/ folder; so the gain of the fine-tune is always shown apart from the tokens'.

Object discovery on the same images: CorLoc and mask IoU of LOST, TokenCut, DINO-seg, Object-DINO boxes, and the
mask IoU of Object-DINO's object maps, against the world's boxes and instance masks.

Every figure has a 95% bootstrap confidence interval over images (POPE, discovery) or captions (CHAIR).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from grounding.annotations import objects_per_image

from .benchmarks import CAPTION_PROMPT, score_captions
from .discovery_eval import CachedObjectDINO, save_instance_picture
from .pope import build_pope, parse_answer
from .records import run_metadata, write_json
from .run_folder import weights_identity
from .runner import Item, RunConfig, run_methods

__all__ = ["WorldDemoConfig", "run_world_demo", "bootstrap_interval", "WORLD_METHODS", "DISCOVERY_METHODS"]

CONTROL = "control"  # a row, not a method: the baseline on the control model (`WorldDemoConfig.control`)
# the demo's default rows: the baseline, the non-grounded control VCD, the trained region tokens beside the same-steps
# fine-tune without them, and the grounded method with its ablation twins. highlight and masked-contrast (and their
# @random / @oracle twins) run with --methods; docs/benchmarks.md measures them all
WORLD_METHODS = ("baseline", "vcd", "region-tokens", CONTROL,
                 "region-evidence", "region-evidence@random", "region-evidence@oracle")
DISCOVERY_METHODS = ("lost", "tokencut", "dinoseg", "object-dino",  # the references, exactly
                     "lost-centred", "tokencut-adaptive", "object-dino-adaptive",  # the library's variants
                     "object-dino-map", "object-dino-compact",  # the largest map region; its most compact one
                     "object-dino-whole")  # the library's default: the compact region or the whole it is part of
# the box and mask of the whole Object-DINO map > 0 (every object region together): its mask IoU is the union map's
FOREGROUND = "object-dino-foreground"
POPE_SPLITS = ("random", "popular", "adversarial")


@dataclass
class WorldDemoConfig:
    seed: int = 1
    split: Literal["test", "val"] = "test"  # val: a world to check settings on, leaving the test split untouched
    images: int = 12  # test-world images (POPE uses those with >= 3 objects; 12: absent-partner questions too)
    caption_images: int = 4
    methods: tuple[str, ...] = WORLD_METHODS
    caption_tokens: int = 40
    batch_size: int = 8
    bootstrap: int = 1000
    model: str | None = None  # default: the built world-llava asset
    tower: str | None = None  # default: the built DINOv2-S/14 asset
    regions: str | None = None  # default: the built world-llava-regions adapter
    # the `control` row's VLM (a folder, hub name or `grounding fit` LoRA export); default: the built
    # world-llava-control (world-llava + the region-token recipe's LoRA steps without region tokens)
    control: str | None = None
    world_config: str | None = None  # a WorldConfig YAML (default: the shipped defaults)
    device: str = "cpu"
    # the VLM's dtype; auto: bfloat16 on CUDA (world-llava was trained on a bf16 frozen backbone), float32 on a CPU
    # (without bf16 matmul units a CPU runs bf16 about 50x slower)
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    method_options: dict = field(default_factory=dict)
    map_k: int = 5  # Object-DINO clusters for the object maps (its MLLM setting)
    discovery_k: int = 12  # ... and for discovery boxes
    dinoseg_head: int = 4

    def __post_init__(self):
        self.methods = tuple(self.methods)
        if self.images < 1 or self.caption_images < 0:
            raise ValueError("images must be >= 1 and caption_images >= 0")
        if self.dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16 or float32, got {self.dtype!r}")
        if self.dtype == "auto":
            self.dtype = "bfloat16" if str(self.device).startswith("cuda") else "float32"
        if self.split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {self.split!r}")
        if self.model and not self.regions and "region-tokens" in self.methods:
            raise ValueError("region-tokens runs the world-llava-regions adapter, which was trained on world-llava, "
                             f"not on {self.model}: leave region-tokens out of the methods, or give the model's own "
                             "region adapter (regions=, on the command line --world-regions DIR)")
        if self.regions and not Path(self.regions).expanduser().is_dir():
            raise ValueError(f"no such region adapter folder: {self.regions} (a `grounding fit` export with "
                             "region_grounding.json)")
        if self.regions and "region-tokens" not in self.methods:
            raise ValueError(f"a region adapter ({self.regions}) is given but region-tokens is not among the methods "
                             f"({', '.join(self.methods)})")
        if self.model and not self.control and CONTROL in self.methods:
            raise ValueError("the control row runs world-llava-control, world-llava fine-tuned without region "
                             f"tokens, not a control of {self.model}: leave control out of the methods, or give the "
                             "model's own control (control=, on the command line --world-control DIR)")
        if self.control and CONTROL not in self.methods:
            raise ValueError(f"a control model ({self.control}) is given but control is not among the methods "
                             f"({', '.join(self.methods)})")


def bootstrap_interval(statistic, groups: int, draws: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `statistic(indices)` over `draws` resamples of `groups` units with replacement."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, groups, groups)) for _ in range(draws)], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _figure(value: float, interval: tuple[float, float]) -> dict:
    return {"value": round(float(value), 2), "ci95": [round(interval[0], 2), round(interval[1], 2)]}


# ------------------------------------------------------------------ the test world and its questions
def _world(out: Path, cfg: WorldDemoConfig) -> tuple[Path, dict]:
    from grounding.world import build_world

    from .config_checks import load_world_config

    folder = out / "world"

    world_config = load_world_config(cfg.world_config)  # every key's type and range checked
    wanted = {"seed": cfg.seed, "images": cfg.images, "split": cfg.split, "config": world_config.to_dict()}
    stamp = folder / "demo_world.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        build_world(folder, cfg.seed, cfg.images, cfg.split, world_config, overwrite=True)
        stamp.write_text(json.dumps(wanted, sort_keys=True))
    return folder, json.loads((folder / "annotations" / "instances.json").read_text())


def _pope_items(world: Path, instances: dict, cfg: WorldDemoConfig, out: Path) -> tuple[list[Item], dict]:
    """Distinct (image, question) items over the three splits, and each split's questions keyed by item."""
    splits, items = {}, {}
    for split in POPE_SPLITS:
        questions = build_pope(instances, split, num_images=len(instances["images"]), seed=cfg.seed)
        (out / "pope").mkdir(parents=True, exist_ok=True)
        (out / "pope" / f"{split}.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
        rows = []
        for q in questions:
            key = f"{q['image']}|{q['text']}"
            items.setdefault(key, Item(key, world / "images" / q["image"], q["text"], {"question": q["text"]}))
            name = q["text"][len("Is there a "):-len(" in the image?")]
            rows.append({"key": key, "image": q["image"], "label": q["label"], "object": name})
        splits[split] = rows
    if not items:
        raise ValueError(f"no test image holds 3 objects: generate more images (--world-images > {cfg.images})")
    return list(items.values()), splits


# ------------------------------------------------------------------ POPE with intervals
def pope_table(splits: dict, answers: dict[str, str], draws: int) -> dict:
    """Per split: accuracy, precision, recall, F1, yes-ratio (official parser), each with a 95% CI over images."""
    table = {}
    for split, rows in splits.items():
        images = sorted({r["image"] for r in rows})
        index = {im: i for i, im in enumerate(images)}
        counts = np.zeros((len(images), 4))  # tp, fp, tn, fn per image
        for r in rows:
            if r["key"] not in answers:
                raise ValueError(f"POPE item {r['key']!r} has no answer: the run is incomplete")
            yes = parse_answer(answers[r["key"]], "official") == "yes"
            positive = r["label"] == "yes"
            counts[index[r["image"]], [0 if yes and positive else 1 if yes else 3 if positive else 2]] += 1

        def metrics(sample: np.ndarray) -> dict:
            tp, fp, tn, fn = counts[sample].sum(0)
            total = tp + fp + tn + fn
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            return {"accuracy": 100 * (tp + tn) / total, "precision": 100 * precision, "recall": 100 * recall,
                    "f1": 100 * f1, "yes_ratio": 100 * (tp + fp) / total}

        full = metrics(np.arange(len(images)))
        table[split] = {name: _figure(value, bootstrap_interval(lambda s, n=name: metrics(s)[n], len(images), draws))
                        for name, value in full.items()}
        table[split]["questions"] = len(rows)
        table[split]["images"] = len(images)
    return table


def partner_trap(splits: dict, answers: dict[str, str], present: dict[str, set[str]], pairs: list) -> dict:
    """The planted prior at the question level: over the distinct POPE questions whose answer is "no" (all splits),
    the "yes" rate on an absent partner of an object in the image (fork present, knife asked) beside the "yes" rate
    on every other absent object. A rate over no questions is None, never NaN."""
    partner_of: dict[str, set[str]] = {}
    for first, partner in pairs:
        partner_of.setdefault(first, set()).add(partner)
    counts = {"trap": [0, 0], "other": [0, 0]}  # [questions, "yes" answers]
    seen = set()
    for rows in splits.values():
        for r in rows:
            if r["label"] != "no" or r["key"] in seen:
                continue
            seen.add(r["key"])
            trap = any(r["object"] in partner_of.get(o, ()) for o in present.get(r["image"], ()))
            bucket = counts["trap" if trap else "other"]
            bucket[0] += 1
            bucket[1] += parse_answer(answers[r["key"]], "official") == "yes"
    return {f"{name}_{field}": value for name, (n, yes) in counts.items()
            for field, value in (("questions", n), ("yes", yes), ("yes_pct", round(100 * yes / n, 1) if n else None))}


# ------------------------------------------------------------------ CHAIR with intervals
def chair_table(per_caption: list[dict], partners: set[str], draws: int) -> dict:
    if not per_caption:
        raise ValueError("no captions to score")
    halluc = np.array([len(c["hallucinated"]) for c in per_caption], dtype=float)
    mentions = np.array([len(c["hallucinated"]) + len(c["correct"]) for c in per_caption], dtype=float)
    found = np.array([len({cat for _, cat in c["correct"]}) for c in per_caption], dtype=float)
    truth = np.array([len(c["ground_truth"]) for c in per_caption], dtype=float)
    stats = {
        "chair_s": lambda s: 100 * float((halluc[s] > 0).mean()),
        "chair_i": lambda s: 100 * halluc[s].sum() / mentions[s].sum() if mentions[s].sum() else 0.0,
        "recall": lambda s: 100 * found[s].sum() / truth[s].sum(),
    }
    every = np.arange(len(per_caption))
    table = {name: _figure(f(every), bootstrap_interval(f, len(per_caption), draws)) for name, f in stats.items()}
    words = Counter(cat for c in per_caption for _, cat in c["hallucinated"])
    table["hallucinated_objects"] = dict(words.most_common())
    table["hallucinated_partners"] = sum(n for cat, n in words.items() if cat in partners)
    table["captions"] = len(per_caption)
    return table


# ------------------------------------------------------------------ discovery on the world
def discovery_table(world: Path, instances: dict, tower, draws: int, map_k: int = 5, discovery_k: int = 12,
                    dinoseg_head: int = 4, pictures: Path | None = None, max_objects: int = 10) -> dict:
    """CorLoc and mask IoU of the discovery methods on the world; with `pictures`, each image's objects from the
    default instance method (grounding.objects.instances) as coloured masks with their boxes, saved there."""
    from pycocotools import mask as mask_utils

    from grounding.objects.discovery import discover
    from grounding.images import load_image
    from grounding.objects.object_dino import ObjectDINO
    from grounding.objects.regions import upsample_maps

    from .corloc import iou

    maps_od, discovery_od = ObjectDINO(k=map_k), CachedObjectDINO(k=discovery_k)  # one analysis per image
    by_image: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    names = DISCOVERY_METHODS + (FOREGROUND,)
    correct = {m: [] for m in names}
    mask_iou = {m: [] for m in names}
    for image_info in instances["images"]:
        anns = by_image.get(image_info["id"], [])
        if not anns:
            continue
        height, width = image_info["height"], image_info["width"]
        truth = np.zeros((height, width), dtype=bool)
        for ann in anns:
            truth |= mask_utils.decode(ann["segmentation"]).astype(bool)
        gt_boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                 for a in anns], dtype=torch.float32)
        image = load_image(world / "images" / image_info["file_name"])
        out = tower([image])
        if pictures is not None:
            pictures.mkdir(parents=True, exist_ok=True)
            save_instance_picture(image, out, discovery_od, tower,
                                  pictures / f"{Path(image_info['file_name']).stem}.png",
                                  {}, max_objects)
        for method in DISCOVERY_METHODS:
            options = ({"object_dino": discovery_od} if method.startswith("object-dino") else
                       {"head": dinoseg_head} if method == "dinoseg" else {})
            found = discover(method, out, **options)
            correct[method].append(float(iou(found.boxes[0], gt_boxes).max()) >= 0.5)
            predicted = upsample_maps(found.masks[:1].float(), out.patch_scale, out.image_sizes)[0] > 0.5
            mask_iou[method].append(_mask_iou(predicted.cpu().numpy(), truth))
        full_map = maps_od.object_maps(out, upsample=True)[0].cpu().numpy()
        predicted = full_map > 0
        box = _box_of(predicted)
        correct[FOREGROUND].append(box is not None and float(iou(box, gt_boxes).max()) >= 0.5)
        mask_iou[FOREGROUND].append(_mask_iou(predicted, truth))
    table = {}
    for method in names:
        hits, ious = np.array(correct[method], dtype=float), np.array(mask_iou[method])
        table[method] = {
            "corloc": _figure(100 * hits.mean(), bootstrap_interval(lambda s: 100 * hits[s].mean(), len(hits), draws)),
            "mask_iou": _figure(100 * ious.mean(),
                                bootstrap_interval(lambda s: 100 * ious[s].mean(), len(ious), draws)),
            "images": len(hits)}
    return table


def _mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 0.0


def _box_of(mask: np.ndarray) -> torch.Tensor | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


# ------------------------------------------------------------------ the whole measurement
def run_world_demo(out_dir: str | Path, cfg: WorldDemoConfig) -> dict:
    from grounding import assets
    from grounding.tower.backbone import RegisterViT

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.model or str(assets.require(assets.WORLD_LLAVA))
    tower = cfg.tower or str(assets.require(assets.VIT))
    options = {name: dict(values) for name, values in cfg.method_options.items()}
    if "region-tokens" in cfg.methods:
        adapter = cfg.regions or str(assets.require(assets.WORLD_REGIONS))
        options.setdefault("region-tokens", {}).setdefault("adapter", adapter)
    control = (cfg.control or str(assets.require(assets.WORLD_CONTROL))) if CONTROL in cfg.methods else None
    control_options = {"baseline": options.pop(CONTROL)} if CONTROL in options else {}
    world, instances = _world(out, cfg)
    for name in cfg.methods:  # METHOD@oracle rows read the world's own instance masks
        if name.endswith("@oracle"):
            options.setdefault(name, {}).setdefault("oracle_instances", str(world / "annotations" / "instances.json"))
    # one load: examples + discovery
    grounding_tower = RegisterViT.from_pretrained(tower, device=cfg.device, preprocess={"short_side": 224})
    _fresh_runs(out, run_stamp(cfg, model, tower, options.get("region-tokens", {}).get("adapter"), control))
    pairs = json.loads((world / "world.json").read_text())["config"]["pairs"]
    partners = {p[1] for p in pairs}
    timings = {}

    start = time.perf_counter()
    items, splits = _pope_items(world, instances, cfg, out)
    rows = {"model": model, "options": options, "control": control, "control_options": control_options}
    pope_run = partial(RunConfig, tower=tower, tower_short_side=224, batch_size=cfg.batch_size, max_new_tokens=8,
                       device=cfg.device, dtype=cfg.dtype)
    answered = _run_rows(cfg.methods, out / "pope" / "runs", items, "question",
                         lambda predictions: {"answered": sum("answer" in p for p in predictions)}, pope_run, **rows,
                         extra_config={"world": str(world)})
    pope = {}
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    present = {files[i]: set(objects) for i, objects in objects_per_image(instances).items()}
    for method in cfg.methods:
        answers = _answers(_row_folder(out / "pope" / "runs", method))
        pope[method] = pope_table(splits, answers, cfg.bootstrap)
        pope[method]["answered"] = answered.get(method, {}).get("answered")
        pope[method]["partner_trap"] = partner_trap(splits, answers, present, pairs)
    timings["pope_s"] = round(time.perf_counter() - start, 1)
    runs_answers = {m: _answers(_row_folder(out / "pope" / "runs", m)) for m in cfg.methods}
    examples = partner_examples(world, splits["adversarial"], partners, runs_answers, grounding_tower, cfg, out,
                                present=present, pairs=pairs)

    chair = {}
    if cfg.caption_images:
        start = time.perf_counter()
        truth = {}
        names = {c["id"]: c["name"] for c in instances["categories"]}
        for ann in instances["annotations"]:
            truth.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
        chosen = [im for im in instances["images"] if im["id"] in truth][: cfg.caption_images]
        caption_items = [Item(im["id"], world / "images" / im["file_name"], CAPTION_PROMPT, {}) for im in chosen]
        truth = {k: sorted(v) for k, v in truth.items()}
        caption_run = partial(RunConfig, tower=tower, tower_short_side=224, batch_size=cfg.batch_size,
                              max_new_tokens=cfg.caption_tokens, device=cfg.device, dtype=cfg.dtype)
        scored = _run_rows(cfg.methods, out / "chair" / "runs", caption_items, "caption",
                           lambda predictions: score_captions([{"image_id": p["key"], "caption": p["answer"]}
                                                               for p in predictions if "answer" in p], truth),
                           caption_run, **rows)
        chair = {m: chair_table(scored[m]["per_caption"], partners, cfg.bootstrap) for m in cfg.methods}
        timings["chair_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    discovery = discovery_table(world, instances, grounding_tower, cfg.bootstrap, cfg.map_k, cfg.discovery_k,
                                cfg.dinoseg_head, pictures=out / "instances")
    timings["discovery_s"] = round(time.perf_counter() - start, 1)

    result = {"world": {"seed": cfg.seed, "split": cfg.split, "images": cfg.images, "pairs": pairs,
                        "folder": str(world), "model": cfg.model or "world-llava",
                        **({"control": cfg.control or assets.WORLD_CONTROL,
                            "labels": {CONTROL: control_label(cfg.control)}} if control else {})},
              "pope": pope, "chair": chair, "discovery": discovery, "examples": examples, "timings": timings,
              **run_metadata({**asdict(cfg), "model": model, "tower": tower, "control": control})}
    _check_finite(result)
    write_json(out / "world_metrics.json", result)
    return result


def _run_rows(rows: tuple[str, ...], out: Path, items: list[Item], task: str, score, make_run, model: str,
              options: dict, control: str | None, control_options: dict, extra_config: dict | None = None) -> dict:
    """`run_methods` in `out` for the methods of `rows` on the demo's model, then (the control row among them) for the
    control: the baseline on the `control` model in its own run folder `out/control` (same resume and identity
    rules). make_run(model=, methods=, out=, method_options=) builds each RunConfig. {row: metrics} in rows' order."""
    methods = [m for m in rows if m != CONTROL]
    results = {}
    if methods:
        results = run_methods(make_run(model=model, methods=methods, out=str(out), method_options=options), items,
                              task, score, extra_config)
    if CONTROL in rows:
        control_run = make_run(model=control, methods=["baseline"], out=str(out / CONTROL),
                               method_options=control_options)
        results[CONTROL] = run_methods(control_run, items, task, score, extra_config)["baseline"]
    return {m: results[m] for m in rows}


def _row_folder(runs: Path, row: str) -> Path:
    """A row's method folder in a runs/ folder: the control's answers are the baseline's of its own run."""
    return runs / CONTROL / "baseline" if row == CONTROL else runs / row


def control_label(control: str | None = None) -> str:
    """What the control row is, for tables and charts: the shipped world-llava-control (its steps from the recipe the
    asset was built from, said to be the region-token fit's when they match), or the model given."""
    if control:
        return f"control: {control} (no region tokens)"
    from grounding import assets

    steps = {}
    for name in (assets.WORLD_CONTROL, assets.WORLD_REGIONS):
        record = assets.asset_dir(name) / "DONE.json"
        steps[name] = json.loads(record.read_text()).get("max_steps") if record.is_file() else None
    same = steps[assets.WORLD_CONTROL] is not None and steps[assets.WORLD_CONTROL] == steps[assets.WORLD_REGIONS]
    count = f"{steps[assets.WORLD_CONTROL]} " if same else ""
    return f"control: world-llava + the same {count}LoRA steps, no region tokens"


def partner_examples(world: Path, adversarial: list[dict], partners: set[str], answers: dict[str, dict[str, str]],
                     tower, cfg: WorldDemoConfig, out: Path, limit: int = 4, present: dict | None = None,
                     pairs: list | None = None) -> list[dict]:
    """The adversarial questions about an ABSENT partner object (the planted prior's trap), with every method's
    answer and what the highlight branch sees (the image tinted where Object-DINO's map is high). With `present`
    (image -> its categories) and `pairs`, only real traps: the image holds the first of the pair, not the partner."""
    from grounding.decoding.highlight import red_tint
    from grounding.images import load_image
    from grounding.objects.object_dino import ObjectDINO

    rows = [r for r in adversarial if r["label"] == "no" and r["object"] in partners]
    if present is not None and pairs is not None:
        rows = [r for r in rows if any(partner == r["object"] and first in present.get(r["image"], ())
                                       for first, partner in pairs)]
    if not rows:
        return []
    object_dino = ObjectDINO(k=cfg.map_k)
    (out / "examples").mkdir(exist_ok=True)
    examples = []
    for row in rows[:limit]:
        image = load_image(world / "images" / row["image"])
        object_map = object_dino.object_maps(tower([image]), upsample=True)[0].cpu()
        name = f"{Path(row['image']).stem}_{row['object'].replace(' ', '_')}.png"
        red_tint(image, object_map).save(out / "examples" / name)
        examples.append({"image": row["image"], "question": f"Is there a {row['object']} in the image?", "label": "no",
                         "answers": {m: a[row["key"]] for m, a in answers.items()}, "picture": f"examples/{name}"})
    return examples


def run_stamp(cfg: WorldDemoConfig, model: str, tower: str, regions: str | None, control: str | None = None) -> dict:
    """What the answers of a world demo's run folders depend on beyond each method's own settings. Not the list of
    methods (each method's folder checks its own settings: adding or dropping a row keeps the other rows' answers)
    nor the bootstrap draws."""
    config = {k: v for k, v in asdict(cfg).items() if k not in ("methods", "bootstrap")}
    return {"config": config, "model": weights_identity(model), "tower": weights_identity(tower),
            "regions": weights_identity(regions), "control": weights_identity(control)}


def _fresh_runs(out: Path, stamp: dict) -> None:
    """Answers in `out` are reused only when they came from the same models and settings; otherwise they go."""
    import shutil

    path = out / "runs_stamp.json"
    text = json.dumps(stamp, sort_keys=True, default=str)
    if path.is_file() and path.read_text() == text:
        return
    for folder in (out / "pope" / "runs", out / "chair" / "runs"):
        shutil.rmtree(folder, ignore_errors=True)
    path.write_text(text)


def _answers(folder: Path) -> dict[str, str]:
    answers = {}
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "answer" not in record:
            raise ValueError(f"{folder}: item {record['key']!r} was skipped ({record.get('skipped')}): "
                             "cannot score POPE")
        answers[record["key"]] = record["answer"]
    return answers


def _check_finite(value, path: str = "") -> None:
    """Refuse NaN or infinite figures: a number the demo prints is right or it is not printed."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")
    elif isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"the world measurement produced a non-finite figure at {path.lstrip('.')}")


# ------------------------------------------------------------------ presentation
def table_lines(result: dict) -> list[str]:
    lines = []
    pope, chair = result["pope"], result["chair"]
    methods = list(pope)
    labels = result["world"].get("labels", {})  # rows that are not a method on the demo's model say what they are
    head = ("| method | " + " | ".join(f"POPE {s} acc" for s in POPE_SPLITS) +
            " | adv. F1 | adv. yes % | yes to absent partner | yes to other absent |")
    if chair:
        head += " CHAIR_s | CHAIR_i | recall | partner halluc. |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for m in methods:
        cells = [_cell(pope[m][s]["accuracy"]) for s in POPE_SPLITS]
        cells += [_cell(pope[m]["adversarial"]["f1"]), _cell(pope[m]["adversarial"]["yes_ratio"])]
        trap = pope[m].get("partner_trap")
        cells += [_rate(trap, "trap"), _rate(trap, "other")] if trap else ["-", "-"]
        if chair:
            cells += [_cell(chair[m]["chair_s"]), _cell(chair[m]["chair_i"]), _cell(chair[m]["recall"]),
                      str(chair[m]["hallucinated_partners"])]
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "| discovery | CorLoc | mask IoU |", "|---|---|---|"]
    for m, row in result["discovery"].items():
        lines.append(f"| {m} | {_cell(row['corloc'])} | {_cell(row['mask_iou'])} |")
    return lines


def _rate(trap: dict, name: str) -> str:
    if not trap[f"{name}_questions"]:
        return "- (0 questions)"
    return f"{trap[f'{name}_yes_pct']:.0f}% ({trap[f'{name}_yes']}/{trap[f'{name}_questions']})"


def _cell(figure: dict) -> str:
    lo, hi = figure["ci95"]
    return f"{figure['value']:.1f} [{lo:.0f}, {hi:.0f}]"


def bar_charts(result: dict, out: Path) -> list[str]:
    """One bar chart (with 95% CI whiskers) per metric; returns the file names."""
    from grounding.viz import figure_to_image, new_figure

    panels = [(f"POPE {s} accuracy", {m: r[s]["accuracy"] for m, r in result["pope"].items()}) for s in POPE_SPLITS]
    panels.append(("POPE adversarial yes-ratio", {m: r["adversarial"]["yes_ratio"] for m, r in result["pope"].items()}))
    if result["chair"]:
        for name in ("chair_s", "chair_i", "recall"):
            panels.append((f"CHAIR {name}", {m: r[name] for m, r in result["chair"].items()}))
    panels.append(("discovery CorLoc", {m: r["corloc"] for m, r in result["discovery"].items()}))
    panels.append(("discovery mask IoU", {m: r["mask_iou"] for m, r in result["discovery"].items()}))
    labels = result["world"].get("labels", {})
    marks = {m: "*" * (i + 1) for i, m in enumerate(labels)}  # control* on the axis, its label below the chart
    files = []
    for title, figures in panels:
        figure = new_figure(figsize=(5.5, 3.0), dpi=100)
        axes = figure.add_subplot(1, 1, 1)
        names = list(figures)
        values = np.array([figures[n]["value"] for n in names])
        low = values - np.array([figures[n]["ci95"][0] for n in names])
        high = np.array([figures[n]["ci95"][1] for n in names]) - values
        axes.bar(range(len(names)), values, yerr=[low, high], capsize=3, color="#4C72B0")
        axes.set_xticks(range(len(names)), [n + marks.get(n, "") for n in names], rotation=20, fontsize=8)
        axes.set_title(title, fontsize=10)
        notes = [f"{marks[n]} {labels[n]}" for n in names if n in marks]
        if notes:
            figure.text(0.01, 0.01, "\n".join(notes), fontsize=7, ha="left", va="bottom")
        figure.tight_layout(rect=(0, 0.04 * len(notes) + 0.02 if notes else 0, 1, 1))
        name = "world_" + title.lower().replace(" ", "_").replace("-", "_") + ".png"
        figure_to_image(figure).save(out / name)
        files.append(name)
    return files
