"""Reading answer and caption files for `grounding eval score`: matched to questions by id, never by position.

Every file this tool writes scores to the figure its run printed: a run's records (`RUN/<method>/shard-*.jsonl`,
`predictions.jsonl`) carry `key` (the question or image id) and `answer`, and their skipped items (a `skipped`
field, no answer) are left out of the figures exactly as the run left them out. Other tools' files are read as:

* JSON lines with an id (`question_id` or `key`; CHAIR: `image_id` or `key`) and the answer (`answer`, `text`,
  `output` or `prediction`; CHAIR: `caption` or `answer`), in any order;
* lmms-eval `--log_samples` rows (`filtered_resps` and the doc's `question_id`);
* JSON lines without ids that carry the question text (`question` or `prompt`, as the official POPE answer files
  do): each line's question must be the question file's question on that line, else the file is refused;
* plain text, one answer per line, as many lines as questions (the only form matched by position: it has nothing
  else to match by).

A file that cannot be matched is refused: an answer for an id not among the questions, a question answered twice
or not at all, a label that differs from the question file's, a JSON file whose lines have neither ids nor
question texts.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["pope_answers", "caption_rows", "ANSWER_FIELDS"]

ANSWER_FIELDS = ("answer", "text", "output", "prediction")


def _id(value, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: the id must be an integer or a string, got {value!r}")
    return str(value)


def _lines(path: str | None, option: str, what: str) -> tuple[Path, list[tuple[int, dict]] | None, list[str]]:
    """(path, JSON rows or None for a plain-text file, the raw lines)."""
    if not path:
        raise ValueError(f"missing {option} FILE ({what})")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} file {path} does not exist")
    text = path.read_text()
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"{option} {path}: no rows (an empty file)")
    first = next(line for line in lines if line.strip())
    try:
        json_file = isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        json_file = first.lstrip().startswith("{")  # a broken JSON line: read as JSON to name the line
    if not json_file:
        return path, None, lines
    from .records import read_jsonl

    return path, list(read_jsonl(path, f"{option} file")), lines


def _lmms_eval_sample(row: dict) -> dict:
    response = row["filtered_resps"]
    response = response[0] if isinstance(response, list) else response
    metric = next((v for v in row.values() if isinstance(v, dict) and "question_id" in v), row.get("doc", {}))
    return {"question_id": metric["question_id"], "answer": response}


def pope_answers(path: str | None, questions: list[dict]) -> tuple[list[dict], list[str], list[dict]]:
    """(the questions answered, their answers in the same order, the questions whose record is a skip)."""
    path, rows, lines = _lines(path, "--answers", "JSONL: question_id + answer / text / output / prediction")
    if rows is None:  # plain text: one answer per line
        if lines and not lines[-1].strip() and len(lines) == len(questions) + 1:
            lines = lines[:-1]
        if len(lines) != len(questions):
            raise ValueError(f"{path}: {len(lines)} plain-text answers (one per line) for {len(questions)} "
                             "questions: cannot tell which answer is whose; give JSON lines with question_id")
        return list(questions), [line.strip() for line in lines], []
    if "filtered_resps" in rows[0][1]:  # lmms-eval's --log_samples file
        rows = [(number, _lmms_eval_sample(row)) for number, row in rows]
    text_field = next((f for f in ANSWER_FIELDS if f in rows[0][1]), None)
    if text_field is None and not any("skipped" in row for _, row in rows):
        raise ValueError(f"{path} line {rows[0][0]}: no answer field (answer / text / output / prediction)")
    text_field = text_field or next((f for f in ANSWER_FIELDS if any(f in r for _, r in rows)), "answer")
    id_field = next((f for f in ("question_id", "key") if f in rows[0][1]), None)
    if id_field is None:
        return _by_question_text(path, rows, questions, text_field)
    by_id = {str(q["question_id"]): q for q in questions}
    answers: dict[str, str] = {}
    skipped: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for number, row in rows:
        here = f"{path} line {number}"
        if id_field not in row:
            raise ValueError(f"{here}: no {id_field} (line {rows[0][0]} has one: every answer needs one)")
        key = _id(row[id_field], here)
        if key in seen:
            raise ValueError(f"{here}: {id_field} {row[id_field]!r} answered again (line {seen[key]}); one answer "
                             "per question")
        seen[key] = number
        if key in by_id and row.get("label") is not None and by_id[key].get("label") is not None \
                and row["label"] != by_id[key]["label"]:
            raise ValueError(f"{here}: {id_field} {row[id_field]!r} has label {row['label']!r} but the question file "
                             f"says {by_id[key]['label']!r}: answers to another question file?")
        if "skipped" in row and text_field not in row:
            skipped[key] = row
            continue
        if not isinstance(row.get(text_field), str):
            raise ValueError(f"{here}: {text_field} must be a string (the model's answer), got {row.get(text_field)!r}")
        answers[key] = row[text_field]
    extra = sorted(set(seen) - set(by_id))
    if extra:
        raise ValueError(f"{path}: answers for {len(extra)} question ids not in the question file (e.g. {extra[:3]}): "
                         "another question file?")
    missing = [q["question_id"] for q in questions if str(q["question_id"]) not in seen]
    if missing:
        raise ValueError(f"{path}: no answers for {len(missing)} of {len(questions)} questions (e.g. {missing[:3]})")
    answered = [q for q in questions if str(q["question_id"]) in answers]
    if not answered:
        raise ValueError(f"{path}: every one of the {len(questions)} questions was skipped: nothing to score")
    return (answered, [answers[str(q["question_id"])] for q in answered],
            [q for q in questions if str(q["question_id"]) in skipped])


def _by_question_text(path: Path, rows, questions: list[dict], text_field: str):
    """Rows without ids: matched only when each carries its question's text (question / prompt)."""
    if len(rows) != len(questions):
        raise ValueError(f"{path}: {len(rows)} answers without question ids for {len(questions)} questions")
    for (number, row), question in zip(rows, questions):
        here = f"{path} line {number}"
        asked = row.get("question", row.get("prompt"))
        if not isinstance(asked, str):
            raise ValueError(f"{here}: no question_id (nor the question text, question / prompt): the answers cannot "
                             "be matched to the questions; give each line its question_id")
        if asked.strip() != question["text"].strip() and question["text"].strip() not in asked:
            raise ValueError(f"{here}: the question {asked!r} is not the question file's question on that line "
                             f"({question['text']!r}, question_id {question['question_id']!r}): another order or "
                             "another question file; give each line its question_id")
        if not isinstance(row.get(text_field), str):
            raise ValueError(f"{here}: {text_field} must be a string (the model's answer), got {row.get(text_field)!r}")
    return list(questions), [row[text_field] for _, row in rows], []


def caption_rows(path: str | None) -> tuple[list[dict], list[dict]]:
    """(captions as {image_id, caption}, skipped records): `image_id` + `caption`, or a run's `key` + `answer`."""
    path, rows, _ = _lines(path, "--captions", "JSONL: image_id + caption")
    if rows is None:
        raise ValueError(f"--captions {path}: not JSON lines (each line a JSON object with image_id and caption)")
    captions, skipped, seen = [], [], {}
    for number, row in rows:
        here = f"{path} line {number}"
        id_field = "image_id" if "image_id" in row or "key" not in row else "key"
        text_field = "caption" if "caption" in row or "answer" not in row else "answer"
        if id_field not in row:
            raise ValueError(f"{here}: no image_id (each line needs image_id and caption)")
        key = _id(row[id_field], here)
        if key in seen:
            raise ValueError(f"{here}: image_id {row[id_field]!r} again (line {seen[key]}); one caption per image")
        seen[key] = number
        if "skipped" in row and text_field not in row:
            skipped.append(row)
            continue
        if text_field not in row:
            raise ValueError(f"{here}: no caption (each line needs image_id and caption)")
        if not isinstance(row[text_field], str):
            raise ValueError(f"{here}: caption must be a string, got {row[text_field]!r}")
        captions.append({"image_id": row[id_field], "caption": row[text_field]})
    if not captions:
        raise ValueError(f"--captions {path}: every one of the {len(rows)} images was skipped: nothing to score")
    return captions, skipped
