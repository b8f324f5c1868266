"""POPE and CHAIR as runnable benchmarks: how items are made and how predictions are scored.

Registry `BENCHMARKS`: name -> class with `items(...)`, `score(predictions)` and the generation task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from grounding.annotations import read_json

from .chair import ChairScorer, ground_truth_from_coco, ground_truth_from_json
from .pope import load_questions, parse_answer, pope_metrics
from .runner import Item

__all__ = ["PopeBenchmark", "ChairBenchmark", "BENCHMARKS", "CAPTION_PROMPT", "chair_image_ids"]

CAPTION_PROMPT = "Please describe this image in detail."


@dataclass
class PopeBenchmark:
    questions: str  # shipped split name or a file
    images: str
    parser: str = "official"
    limit: int | None = None
    task: str = "question"

    def items(self) -> list[Item]:
        rows = load_questions(self.questions)[: self.limit] if self.limit else load_questions(self.questions)
        return [Item(row["question_id"], Path(self.images) / row["image"], row["text"],
                     {"question": row["text"], "label": row.get("label")}) for row in rows]

    def score(self, predictions: list[dict]) -> dict:
        """Metrics over the answered predictions (the runner counts the skipped ones)."""
        answered = [p for p in predictions if "answer" in p]
        unlabelled = [p["key"] for p in answered if p.get("label") is None]
        if unlabelled:
            raise ValueError(f"{self.questions}: {len(unlabelled)} questions have no label (e.g. {unlabelled[:3]}); "
                             "POPE needs a yes/no label per question to score")
        metrics = pope_metrics([p["label"] for p in answered],
                               [parse_answer(p["answer"], self.parser) for p in answered])
        return {**metrics, "parser": self.parser}


def chair_image_ids(annotations: str | Path, num_images: int, seed: int) -> list[dict]:
    """A fixed random list of val2014 images (id + file name) for a seed."""
    data = read_json(Path(annotations) / "instances_val2014.json", "COCO instances file (--annotations)",
                     ("images", "annotations", "categories"))
    images = sorted(data["images"], key=lambda im: im["id"])
    chosen = random.Random(seed).sample(images, min(num_images, len(images)))
    return [{"image_id": im["id"], "file_name": im["file_name"]} for im in chosen]


@dataclass
class ChairBenchmark:
    images: str
    annotations: str | None = None  # COCO 2014 annotation folder (instances_ + captions_)
    ground_truth: str | None = None  # or a JSON of image id -> object names
    image_list: list[dict] | None = None  # [{"image_id", "file_name"}], fixed by seed
    prompt: str = CAPTION_PROMPT
    task: str = "caption"

    def items(self) -> list[Item]:
        return [Item(entry["image_id"], Path(self.images) / entry["file_name"], self.prompt, {})
                for entry in self.image_list]

    def truth(self) -> dict:
        """image id (as a string) -> ground-truth objects; read once."""
        if "_truth" not in self.__dict__:
            if self.ground_truth:
                truth = ground_truth_from_json(self.ground_truth)
            elif self.annotations:
                truth = ground_truth_from_coco(self.annotations)
            else:
                raise ValueError("CHAIR needs --annotations DIR (COCO 2014 files) or --ground-truth FILE")
            self.__dict__["_truth"] = {str(k): v for k, v in truth.items()}
        return self.__dict__["_truth"]

    def check_truth(self) -> None:
        """Every image to caption has ground truth (checked before generating)."""
        truth = self.truth()
        missing = [entry["image_id"] for entry in self.image_list if str(entry["image_id"]) not in truth]
        if missing:
            raise ValueError(f"{len(missing)} images have no ground truth in {self.ground_truth or self.annotations} "
                             f"(e.g. {missing[:3]})")

    def score(self, predictions: list[dict]) -> dict:
        return score_captions([{"image_id": p["key"], "caption": p["answer"]} for p in predictions if "answer" in p],
                              self.truth())


def score_captions(captions: list[dict], truth: dict) -> dict:
    result = ChairScorer().score(captions, truth)
    per_caption = [{"image_id": r.image_id, "caption": r.caption, "hallucinated": r.hallucinated, "correct": r.correct,
                    "ground_truth": r.ground_truth} for r in result.per_caption]
    return {**result.summary(), "per_caption": per_caption}


BENCHMARKS = {"pope": PopeBenchmark, "chair": ChairBenchmark}
