"""CHAIR (Rohrbach et al., EMNLP 2018), scored the way the standard implementation does.

Per caption: lower-case, tokenise (word tokens; hyphenated words stay whole, "'s" splits off as in NLTK's
Treebank tokeniser), singularise (`eval.singular`, pattern-compatible), merge two-word phrases from the
double-word table ("hot dog" stays "hot dog", "baby cow" -> "cow", "toilet seat" -> "toilet"), drop "seat"
when "toilet" is present, keep words in the 80-category synonym table and map them to their category.

CHAIR_i = hallucinated mentions / all COCO-object mentions (repeats count); CHAIR_s = share of captions with
at least one hallucinated object; recall = ground-truth objects mentioned / ground-truth objects; length =
mean tokens per caption. Ground truth per image = instance categories UNION objects in its reference captions.

The standard implementation keeps a leading space on two synonyms (" motor bike", " cheesecake") so they never
match; the shipped table leaves them out, reproducing that. `fix_leading_space_synonyms=True` adds them back
(off by default: scores then differ from published ones).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from grounding.annotations import read_json

from .singular import singularize

__all__ = ["ChairScorer", "CaptionResult", "ChairMetrics", "ground_truth_from_coco", "ground_truth_from_json"]

_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|'[a-z]+|[^\sa-z0-9]")


def _data(name: str) -> Path:
    return Path(str(resources.files("grounding") / "data" / "chair" / name))


@dataclass
class CaptionResult:
    image_id: int | str
    caption: str
    mentions: list[tuple[str, str]]  # (word as found, COCO category) in order, repeats kept
    hallucinated: list[tuple[str, str]]
    correct: list[tuple[str, str]]
    ground_truth: list[str]
    num_tokens: int


@dataclass
class ChairMetrics:
    chair_s: float
    chair_i: float
    recall: float
    mean_length: float
    captions: int
    mentions: int
    hallucinated_mentions: int
    per_caption: list[CaptionResult] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "per_caption"}


class ChairScorer:
    def __init__(self, fix_leading_space_synonyms: bool = False):
        lines = [line.strip().split(", ") for line in _data("synonyms.txt").read_text().splitlines() if line.strip()]
        if fix_leading_space_synonyms:
            extra = {"motorcycle": "motor bike", "cake": "cheesecake"}
            lines = [line + ([extra[line[0]]] if line[0] in extra else []) for line in lines]
        self.categories = [line[0] for line in lines]
        self.synonym_to_category = {word: line[0] for line in lines for word in line}
        self.double_words: dict[str, str] = json.loads(_data("double_words.json").read_text())

    def words(self, caption: str) -> tuple[list[tuple[str, str]], int]:
        """(word, category) mentions in order, and the number of tokens."""
        tokens = [singularize(t) for t in _TOKEN.findall(caption.lower())]
        merged, i = [], 0
        while i < len(tokens):
            pair = " ".join(tokens[i : i + 2])
            if i + 1 < len(tokens) and pair in self.double_words:
                merged.append(self.double_words[pair])
                i += 2
            else:
                merged.append(tokens[i])
                i += 1
        if "toilet" in merged and "seat" in merged:
            merged = [w for w in merged if w != "seat"]
        return [(w, self.synonym_to_category[w]) for w in merged if w in self.synonym_to_category], len(tokens)

    def objects_in(self, caption: str) -> set[str]:
        return {category for _, category in self.words(caption)[0]}

    def score(self, captions: list[dict], ground_truth: dict) -> ChairMetrics:
        """captions: [{"image_id", "caption"}]; ground_truth: image id -> iterable of COCO category names."""
        results, mentions, hallucinated_mentions, hallucinated_captions = [], 0, 0, 0
        gt_total = gt_found = tokens_total = 0
        for item in captions:
            key = item["image_id"]
            truth = ground_truth.get(key, ground_truth.get(str(key)))
            if truth is None:
                raise KeyError(f"no ground-truth objects for image {key!r}")
            truth = {self.synonym_to_category.get(t, t) for t in truth}
            found, length = self.words(item["caption"])
            wrong = [m for m in found if m[1] not in truth]
            results.append(CaptionResult(key, item["caption"], found, wrong, [m for m in found if m[1] in truth],
                                         sorted(truth), length))
            mentions += len(found)
            hallucinated_mentions += len(wrong)
            hallucinated_captions += bool(wrong)
            gt_total += len(truth)
            gt_found += len(truth & {c for _, c in found})
            tokens_total += length
        count = len(results)
        return ChairMetrics(
            chair_s=100.0 * hallucinated_captions / count if count else float("nan"),
            chair_i=100.0 * hallucinated_mentions / mentions if mentions else 0.0,
            recall=100.0 * gt_found / gt_total if gt_total else float("nan"),
            mean_length=tokens_total / count if count else float("nan"),
            captions=count, mentions=mentions, hallucinated_mentions=hallucinated_mentions, per_caption=results,
        )


def ground_truth_from_coco(annotations_dir: str | Path, scorer: ChairScorer | None = None,
                           splits: tuple[str, ...] = ("train2014", "val2014")) -> dict[int, set[str]]:
    """Instance categories UNION objects in the reference captions, from COCO 2014 annotation files."""
    scorer = scorer or ChairScorer()
    directory = Path(annotations_dir)
    truth: dict[int, set[str]] = {}
    found_any = False
    for split in splits:
        instances, captions = directory / f"instances_{split}.json", directory / f"captions_{split}.json"
        if instances.is_file():
            found_any = True
            data = read_json(instances, "COCO instances file", ("annotations", "categories"))
            names = {c["id"]: c["name"] for c in data["categories"]}
            for image in data.get("images", []):
                truth.setdefault(image["id"], set())  # an image with no objects has an empty ground truth
            for ann in data["annotations"]:
                truth.setdefault(ann["image_id"], set()).add(scorer.synonym_to_category[names[ann["category_id"]]])
        if captions.is_file():
            found_any = True
            data = read_json(captions, "COCO captions file", ("annotations",))
            for image in data.get("images", []):
                truth.setdefault(image["id"], set())
            for ann in data["annotations"]:
                truth.setdefault(ann["image_id"], set()).update(scorer.objects_in(ann["caption"]))
    if not found_any:
        raise FileNotFoundError(f"no instances_/captions_{{{','.join(splits)}}}.json in {directory}")
    return truth


def ground_truth_from_json(path: str | Path) -> dict[str, list[str]]:
    """A JSON object mapping image id -> list of COCO object names (precomputed ground truth)."""
    data = read_json(path, "--ground-truth file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping image id -> list of object names")
    for key, names in data.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: image {key!r} must map to a list of object names, got {names!r}")
    return data
