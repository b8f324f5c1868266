"""Training records in LLaVA's format, made from COCO files and written once as JSON lines for `datasets`.

A record is {"image": file name under the image root, "conversations": [{"from": "human", "value": "<image>\\nQ"},
{"from": "gpt", "value": "A"}, ...]} (LLaVA-Instruct-665k's layout, multi-turn). Captions and grounded yes/no
questions are generated here; `records_file` writes them to a JSON-lines file named by a hash of the sources and
options, so `load_dataset("json", ...)` reads them like any instruction file and caches what follows.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Literal

from grounding.annotations import objects_per_image

__all__ = ["CAPTION_PROMPT", "grounded_questions", "join_per_image", "caption_records", "records_file"]

CAPTION_PROMPT = "Please describe this image in detail."


def grounded_questions(instances: dict, per_image: int = 3, seed: int = 0, grouped: bool = False,
                       negatives: Literal["random", "balanced"] = "random") -> list[dict]:
    """Yes/no object questions per image (LLaVA-format records): one record per question, or per image if grouped.

    negatives="random": the first `per_image` present objects get "Yes", as many absent ones drawn uniformly (with
    `seed`) get "No" (POPE's random split). With a frequency skew this lets a model answer from the category name
    alone: frequent categories are mostly asked as positives, rare ones mostly as negatives.
    negatives="balanced": `per_image` present objects drawn at random get "Yes", and each absent category is drawn
    for "No" with weight n_c / (N - n_c) (n_c of N images hold it), so every category is asked about as often
    absent as present in expectation and only the image tells the answer. The co-occurrence prior (partners) stays
    in the images. grouped=True puts one image's questions into one multi-turn conversation, in a seeded order."""
    if negatives not in ("random", "balanced"):
        raise ValueError(f"negatives must be 'random' or 'balanced', got {negatives!r}")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    present = objects_per_image(instances)
    holding = Counter(name for objs in present.values() for name in objs)  # category -> images holding it
    total = len(instances["images"])
    odds = {n: holding[n] / max(1, total - holding[n]) for n in names.values()}
    rng = random.Random(seed)
    records = []
    for image_id in sorted(present):
        objs = present[image_id]
        absent = [n for n in names.values() if n not in objs]
        if negatives == "random":
            positives = objs[:per_image]
            negatives_ = rng.sample(absent, min(len(positives), len(absent)))
        else:
            positives = rng.sample(objs, min(per_image, len(objs)))
            negatives_ = _weighted_sample(absent, [odds[n] for n in absent], len(positives), rng)
        pairs = [(o, "Yes") for o in positives] + [(o, "No") for o in negatives_]
        turns = [[{"from": "human", "value": f"Is there a {obj} in the image?"}, {"from": "gpt", "value": answer}]
                 for obj, answer in pairs]
        if grouped:
            rng.shuffle(turns)
            turns = [[turn for qa in turns for turn in qa]]
        for conversation in turns:
            conversation[0] = {**conversation[0], "value": "<image>\n" + conversation[0]["value"]}
            records.append({"image": files[image_id], "conversations": conversation})
    return records


def _weighted_sample(items: list[str], weights: list[float], k: int, rng: random.Random) -> list[str]:
    """k distinct items, each draw proportional to its weight among those left (items of weight 0 come last)."""
    items, weights, chosen = list(items), list(weights), []
    while items and len(chosen) < k:
        if sum(weights) <= 0:
            weights = [1.0] * len(items)
        i = rng.choices(range(len(items)), weights=weights)[0]
        chosen.append(items.pop(i))
        weights.pop(i)
    return chosen


def join_per_image(records: list[dict]) -> list[dict]:
    """One conversation per image: its records' turns in order (the image stays in the first user turn only).

    The image tokens are the bulk of every row, so one row per image trains on the same answers at a fraction of
    the compute of one row per question set and one per caption."""
    joined: dict[str, list[dict]] = {}
    for record in records:
        turns = joined.setdefault(record["image"], [])
        for turn in record["conversations"]:
            value = turn["value"]
            if turns and "<image>" in value:
                value = value.replace("<image>", "").strip()
            turns.append({**turn, "value": value})
    return [{"image": image, "conversations": turns} for image, turns in joined.items()]


def caption_records(data: dict, per_image: int | None = None) -> list[dict]:
    """COCO captions -> "Please describe this image in detail." / the caption (at most `per_image` per image)."""
    files = {im["id"]: im["file_name"] for im in data["images"]}
    counts: dict[int, int] = {}
    records = []
    for a in data["annotations"]:
        if a["image_id"] not in files or (per_image is not None and counts.get(a["image_id"], 0) >= per_image):
            continue
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
        records.append({"image": files[a["image_id"]], "conversations": [
            {"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"}, {"from": "gpt", "value": a["caption"].strip()}]})
    return records


def _source_key(path: str | None) -> list:
    if path is None:
        return [None]
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def records_file(directory: str | Path, captions: str | None, instances: str | None, *, captions_per_image: int | None,
                 questions_per_image: int, seed: int, group_questions: bool, one_record_per_image: bool,
                 question_negatives: str = "random") -> Path | None:
    """The captions' and questions' records as a JSON-lines file under `directory` (None when there are none).

    Order: captions then questions, or (one_record_per_image) one row per image holding its questions then its
    caption. The file is named by a hash of the sources (path, size, mtime) and the options; an existing file is
    reused, a new one is written to a temporary name and renamed (safe when several processes race)."""
    if not captions and not instances:
        return None
    # the last number: this file format's version
    options = [_source_key(captions), _source_key(instances), captions_per_image, questions_per_image, seed,
               group_questions, one_record_per_image, question_negatives, 1]
    digest = hashlib.sha256(json.dumps(options).encode()).hexdigest()[:16]
    path = Path(directory).expanduser() / f"records-{digest}.jsonl"
    if path.is_file():
        return path
    caption_rows = caption_records(json.loads(Path(captions).read_text()), captions_per_image) if captions else []
    questions = grounded_questions(json.loads(Path(instances).read_text()), questions_per_image, seed,
                                   grouped=group_questions, negatives=question_negatives) if instances else []
    records = join_per_image(questions + caption_rows) if one_record_per_image else caption_rows + questions
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with partial.open("w") as handle:
        for record in records:
            handle.write(json.dumps({"image": record["image"], "conversations": record["conversations"]}) + "\n")
    os.replace(partial, path)
    return path
