"""POPE through lmms-eval, offline: a local task for any POPE question file, and lmms-eval's POPE figures beside
the official ones on the same answers.

`write_pope_task(questions, images, out)` writes `out/<name>.yaml` and `out/<name>.jsonl` (one doc per question:
question_id, question, answer, image_path). The task is lmms-eval's own POPE task - its `pope_doc_to_text`,
`pope_process_results` and aggregations, referenced from `lmms_eval.tasks.pope.utils` - reading the local file
through `datasets`' json loader (cache inside `out/`), with images read from disk by `pope_doc_to_visual`
(`grounding.images.load_image` at the runner's max side). The prompt is the question as it is (`grounding eval
pope`'s prompt); `post_prompt` adds lmms-eval's "\\nAnswer the question using a single word or phrase."

    grounding eval lmms-task --questions q.jsonl --images DIR --out tasks/
    lmms-eval --model grounded_vlm --model_args pretrained=DIR,method=highlight --tasks pope_local \\
        --include_path tasks/ --output_path runs/lmms --log_samples

Where lmms-eval's POPE scoring (`lmms_eval/tasks/pope/utils.py`) differs from the official rule (`eval/pope.py`):
1. parser: the answer, lowercased and stripped, must BE "yes" or "no"; anything else ("Yes.", "Yes, there is a
   dog.") matches neither. The official parser takes the first sentence and says "no" if a word is "no"/"not"/
   "No", else "yes", so every answer is a yes or a no.
2. accuracy counts those answers wrong; precision ignores them; recall ignores them on yes-questions (a false
   negative is only an exact "no"), so it can be higher than the official recall.
3. yes-ratio: the share of yes in the ground-truth labels (50% on every balanced POPE split), not in the answers.
4. fractions in [0, 1] where ours are percent (`lmms_eval_pope_scores` reports percent for the comparison).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_pope_task", "pope_doc_to_visual", "lmms_eval_pope_scores", "official_and_lmms_eval", "TASK_NAME",
           "LMMS_POST_PROMPT"]

TASK_NAME = "pope_local"
LMMS_POST_PROMPT = "\nAnswer the question using a single word or phrase."  # lmms-eval's pope.yaml default
_UTILS = "lmms_eval.tasks.pope.utils"
_METRICS = ("accuracy", "precision", "recall", "f1_score", "yes_ratio")


class _Function(str):
    """A dotted function name, written as lmms-eval's `!function` YAML tag."""


def _task_dumper():
    import yaml

    class TaskDumper(yaml.SafeDumper):  # a subclass: yaml's own dumpers stay unchanged
        pass

    TaskDumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))
    return TaskDumper


def pope_doc_to_visual(doc: dict) -> list:
    """The doc's image from disk, decoded as the runner decodes it."""
    from grounding.images import load_image

    return [load_image(doc["image_path"], max_side=doc.get("max_image_side"))]


def write_pope_task(questions: str | Path, images: str | Path, out: str | Path, name: str = TASK_NAME,
                    post_prompt: str = "", max_image_side: int | None = 2048, max_new_tokens: int = 128,
                    limit: int | None = None) -> Path:
    """Write an lmms-eval task folder for a POPE question file (or shipped split) and its image folder."""
    import yaml

    from .pope import load_questions

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = load_questions(questions)[:limit] if limit else load_questions(questions)
    missing_labels = [r["question_id"] for r in rows if r.get("label") not in ("yes", "no")]
    if missing_labels:
        raise ValueError(f"{questions}: lmms-eval scores POPE against labels; questions {missing_labels[:3]} have none")
    images = Path(images).resolve()
    docs = [{"question_id": r["question_id"], "question": r["text"], "answer": r["label"],
             "image_source": r["image"], "image_path": str(images / r["image"]), "max_image_side": max_image_side}
            for r in rows]
    data = out / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    function = _Function
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(out / "datasets-cache")},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_visual": function(f"{__name__}.pope_doc_to_visual"),
        "doc_to_text": function(f"{_UTILS}.pope_doc_to_text"),
        "doc_to_target": "answer",
        "generation_kwargs": {"max_new_tokens": max_new_tokens, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                              "do_sample": False},
        "process_results": function(f"{_UTILS}.pope_process_results"),
        "metric_list": [{"metric": f"pope_{m}", "aggregation": function(f"{_UTILS}.pope_aggregate_{m}"),
                         "higher_is_better": True} for m in _METRICS],
        "lmms_eval_specific_kwargs": {"default": {"pre_prompt": "", "post_prompt": post_prompt}},
        "metadata": [{"version": 0.0}],
    }
    text = yaml.dump(config, Dumper=_task_dumper(), sort_keys=False, width=1000)
    path = out / f"{name}.yaml"
    path.write_text(f"# lmms-eval task written by `grounding eval lmms-task` from {questions}\n{text}")
    return path


def lmms_eval_pope_scores(question_ids: Sequence, labels: Sequence[str], answers: Sequence[str]) -> dict:
    """lmms-eval's own POPE functions on these answers, in percent (needs lmms-eval installed)."""
    from importlib import import_module

    pope = import_module(_UTILS)
    per_doc = [pope.pope_process_results({"question_id": q, "answer": label}, [answer])
               for q, label, answer in zip(question_ids, labels, answers)]
    scores = {m: 100.0 * getattr(pope, f"pope_aggregate_{m}")([d[f"pope_{m}"] for d in per_doc]) for m in _METRICS}
    scores["f1"] = scores.pop("f1_score")
    unmatched = sum(d["pope_accuracy"]["prediction"] not in ("yes", "no") for d in per_doc)
    return {**scores, "neither_yes_nor_no": unmatched, "questions": len(per_doc)}


def official_and_lmms_eval(question_ids: Sequence, labels: Sequence[str], answers: Sequence[str]) -> dict:
    """{"official": our scorer (official parser), "lmms_eval": lmms-eval's} on the same answers."""
    from .pope import parse_answer, pope_metrics

    official = pope_metrics(list(labels), [parse_answer(a, "official") for a in answers])
    return {"official": official, "lmms_eval": lmms_eval_pope_scores(question_ids, labels, answers)}
