"""POPE (Li et al., EMNLP 2023): question files, answer parsing, metrics, and a builder for new sets.

Parsers (registry `PARSERS`):
* "official" (default): first sentence, commas dropped, split on spaces; "no" if any word is "No", "no" or
  "not", else "yes" (the POPE repository's rule).
* "strict": the answer must start with yes/no (case-insensitive, punctuation ignored); anything else is
  "unknown" (counted, and scored as wrong).
* "substring": "yes" if the word "yes" occurs and "no" does not, "no" if the reverse, else "unknown".

Metrics: accuracy, precision, recall, F1 (positive class = yes), yes-ratio of the PREDICTIONS, unknown count.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from grounding.annotations import objects_per_image

__all__ = ["PARSERS", "parse_answer", "pope_metrics", "load_questions", "check_questions", "question_id",
           "SHIPPED_SPLITS", "build_pope"]

SHIPPED_SPLITS = [f"{source}_{split}" for source in ("coco", "aokvqa", "gqa")
                  for split in ("random", "popular", "adversarial")]
_SHIPPED_FILES = {f"{s}_{k}": (f"{s}_pope_{k}.json" if s == "coco" else f"{s}_pope_seem_{k}.json")
                  for s in ("coco", "aokvqa", "gqa") for k in ("random", "popular", "adversarial")}


def _official(answer: str) -> str:
    text = answer  # no strip: the official script does not strip either
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def _strict(answer: str) -> str:
    first = re.sub(r"[^a-z ]", " ", answer.strip().lower()).split()
    return first[0] if first and first[0] in ("yes", "no") else "unknown"


def _substring(answer: str) -> str:
    words = set(re.findall(r"[a-z]+", answer.lower()))
    has_yes, has_no = "yes" in words, "no" in words
    return "yes" if has_yes and not has_no else "no" if has_no and not has_yes else "unknown"


PARSERS: dict[str, Callable[[str], str]] = {"official": _official, "strict": _strict, "substring": _substring}


def parse_answer(answer: str, parser: str = "official") -> str:
    if parser not in PARSERS:
        raise KeyError(f"unknown POPE parser {parser!r}; choose from {sorted(PARSERS)}")
    return PARSERS[parser](answer)


def pope_metrics(labels: list[str], predictions: list[str]) -> dict:
    """labels in {yes, no}; predictions in {yes, no, unknown} (unknown counts as wrong, never as yes)."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels vs {len(predictions)} predictions")
    if not labels:
        raise ValueError("no answers to score")
    tp = sum(l == "yes" and p == "yes" for l, p in zip(labels, predictions))
    fp = sum(l == "no" and p == "yes" for l, p in zip(labels, predictions))
    tn = sum(l == "no" and p == "no" for l, p in zip(labels, predictions))
    fn = sum(l == "yes" and p != "yes" for l, p in zip(labels, predictions))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    counts = Counter(predictions)
    return {"accuracy": 100.0 * (tp + tn) / len(labels), "precision": 100.0 * precision, "recall": 100.0 * recall,
            "f1": 100.0 * f1, "yes_ratio": 100.0 * counts["yes"] / len(labels), "unknown": counts["unknown"],
            "questions": len(labels), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def load_questions(split_or_path: str | Path) -> list[dict]:
    """A shipped split name (e.g. "coco_adversarial", or just "adversarial" for COCO) or a JSON-lines/array file."""
    name = str(split_or_path)
    if name in ("random", "popular", "adversarial"):
        name = f"coco_{name}"
    if name in _SHIPPED_FILES:
        path = Path(str(resources.files("eval") / "data" / "pope" / _SHIPPED_FILES[name]))
    else:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"POPE questions {name!r}: not a file and not one of {SHIPPED_SPLITS}")
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
        where = "entry"
    else:
        from .records import read_jsonl

        rows, where = list(read_jsonl(path, "POPE question file")), "line"
    return check_questions(rows, path, where)


def question_id(value, where: str):
    """A question or image id as given (integer or string); anything else is an error naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: the id must be an integer or a string, got {value!r}")
    return value


def check_questions(rows: list[tuple[int, dict]], path: Path, where: str = "line") -> list[dict]:
    """Each (line number, row): an object with question_id, image and text (strings), a unique id (1 and "1"
    count as the same id), and a label, when present, of "yes" or "no"."""
    seen: dict[str, int] = {}
    questions = []
    for number, row in rows:
        here = f"{path} {where} {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{here}: expected a JSON object, got {type(row).__name__}")
        missing = [f for f in ("question_id", "image", "text") if f not in row]
        if missing:
            raise ValueError(f"{here}: question lacks {missing} (each needs question_id, image, text and a yes/no "
                             "label)")
        key = str(question_id(row["question_id"], here))
        if key in seen:
            raise ValueError(f"{here}: question_id {row['question_id']!r} again ({where} {seen[key]} has it); ids must "
                             "be unique")
        seen[key] = number
        for name in ("image", "text"):
            if not isinstance(row[name], str) or not row[name]:
                raise ValueError(f"{here}: {name} must be a non-empty string, got {row[name]!r}")
        if "label" in row and row["label"] not in ("yes", "no"):
            raise ValueError(f"{here}: label must be \"yes\" or \"no\", got {row['label']!r}")
        questions.append(row)
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def build_pope(instances: dict, split: str, num_images: int = 500, seed: int = 0, min_objects: int = 3,
               per_image: int = 3) -> list[dict]:
    """New POPE questions from a COCO-format instance file (a loaded dict), with the official rules.

    Images with >= `min_objects` distinct categories; positives = the first `per_image` distinct categories in
    annotation order; negatives = absent categories chosen uniformly (random), by frequency over the chosen
    images (popular) or by co-occurrence with the image's present categories (adversarial). Questions
    alternate yes/no per image: 2 * per_image per image.
    """
    if split not in ("random", "popular", "adversarial"):
        raise ValueError(f"split must be random, popular or adversarial, got {split!r}")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    per_image_objects = objects_per_image(instances)
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    eligible = sorted(i for i, objs in per_image_objects.items() if len(objs) >= min_objects and i in files)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(eligible, min(num_images, len(eligible))))
    frequency = Counter(o for i in chosen for o in per_image_objects[i])
    cooccur: dict[str, Counter] = {}
    for i in chosen:
        for a in per_image_objects[i]:
            cooccur.setdefault(a, Counter()).update(b for b in per_image_objects[i] if b != a)
    questions, qid = [], 1
    for image_id in chosen:
        present = per_image_objects[image_id]
        positives = present[:per_image]
        absent = [n for n in names.values() if n not in present]
        if split == "random":
            negatives = rng.sample(absent, min(per_image, len(absent)))
        elif split == "popular":
            negatives = sorted(absent, key=lambda n: (-frequency[n], n))[:per_image]
        else:
            score = Counter()
            for p in present:
                score.update(cooccur.get(p, Counter()))
            negatives = sorted(absent, key=lambda n: (-score[n], n))[:per_image]
        for positive, negative in zip(positives, negatives):
            for obj, label in ((positive, "yes"), (negative, "no")):
                questions.append({"question_id": qid, "image": files[image_id], "text":
                                  f"Is there a {obj} in the image?", "label": label})
                qid += 1
    return questions
