"""The lmms-eval plugin end to end, offline, on a tiny random LLaVA: lmms-eval's own CLI runs a local POPE task
through `--model grounded_vlm` (found through the `lmms_eval.models` entry point) and its answers equal
`grounding eval pope`'s; lmms-eval's POPE scoring beside the official one on hand-made answers."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


pytestmark = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                                reason="lmms-eval is not installed (pip install 'vlm-grounding[lmms]'; "
                                       "`make install` installs it)")

ROOT = Path(__file__).parents[1]
OPTIONS = {"object_dino": {"k": 2, "restarts": 2}}


@pytest.fixture(scope="module")
def pope(tmp_path_factory):
    """Three images, a yes and a no question each (POPE's question-file format)."""
    root = tmp_path_factory.mktemp("pope")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / "images" / name)
        for obj, label in (("dog", "yes"), ("cat", "no")):
            rows.append({"question_id": len(rows) + 1, "image": name, "text": f"is there a {obj} in the image ?",
                         "label": label})
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _entry_point_path(tmp_path: Path) -> list[str]:
    """The plugin's entry point as `pip install -e .` registers it; a stand-in dist-info when this checkout's
    metadata predates it (an older editable install)."""
    if any(ep.name == "grounded_vlm" for ep in entry_points(group="lmms_eval.models")):
        return []
    info = tmp_path / "entry" / "vlm_grounding_lmms_entry-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlm-grounding-lmms-entry\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\ngrounded_vlm = eval.lmms_model:manifest\n")
    return [str(info.parent)]


def _lmms_eval_failure(result: subprocess.CompletedProcess) -> str:
    """lmms-eval's own error lines (it logs "Error during evaluation: ..." and tracebacks), then its output's tail."""
    text = result.stdout + result.stderr
    errors = [line for line in text.splitlines() if re.search(r"Error|Traceback|Exception", line)]
    return (f"lmms-eval exited {result.returncode} and wrote no samples file; its errors:\n" + "\n".join(errors[-20:])
            + "\n--- output tail ---\n" + text[-3000:])


def test_lmms_eval_cli_answers_equal_the_runner(tiny_llava_dir, tiny_reg_dir, pope, tmp_path):
    from eval.cli import main
    from eval.lmms_pope import lmms_eval_pope_scores, write_pope_task

    task = write_pope_task(pope / "questions.jsonl", pope / "images", tmp_path / "tasks", max_new_tokens=6)
    model_args = (f"pretrained={tiny_llava_dir},method=highlight,tower={tiny_reg_dir},tower_short_side=32,device=cpu,"
                  f"method_options={json.dumps(OPTIONS, separators=(',', ':'))}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *_entry_point_path(tmp_path)]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "grounded_vlm", "--model_args", model_args,
               "--tasks", "pope_local", "--include_path", str(task.parent), "--batch_size", "2",
               "--output_path", str(tmp_path / "lmms"), "--log_samples"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    # lmms-eval logs an evaluation error and may still exit 0: judge by its outputs, and show its own words
    samples_file = next((tmp_path / "lmms").rglob("*_samples_pope_local.jsonl"), None)
    assert result.returncode == 0 and samples_file is not None, _lmms_eval_failure(result)
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    lmms_answers = {s["pope_accuracy"]["question_id"]: s["filtered_resps"] for s in samples}
    assert len(lmms_answers) == 6

    assert main(["eval", "pope", "--model", tiny_llava_dir, "--images", str(pope / "images"), "--questions",
                 str(pope / "questions.jsonl"), "--methods", "highlight", "--tower", tiny_reg_dir,
                 "--tower-short-side", "32", "--method-options", json.dumps({"highlight": OPTIONS}),
                 "--batch-size", "2", "--max-new-tokens", "6", "--device", "cpu", "--out", str(tmp_path / "ours")]) == 0
    ours = [json.loads(l) for l in (tmp_path / "ours" / "highlight" / "predictions.jsonl").read_text().splitlines()]
    assert {r["key"]: r["answer"] for r in ours} == lmms_answers

    # lmms-eval's reported figures are what lmms_eval_pope_scores computes on the same answers
    reported = json.loads(next((tmp_path / "lmms").rglob("*_results.json")).read_text())["results"]["pope_local"]
    labels = {r["key"]: r["label"] for r in ours}
    ids = sorted(lmms_answers)
    ours_of_theirs = lmms_eval_pope_scores(ids, [labels[i] for i in ids], [lmms_answers[i] for i in ids])
    for name, key in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                      ("f1_score", "f1"), ("yes_ratio", "yes_ratio")):
        assert reported[f"pope_{name},none"] * 100 == pytest.approx(ours_of_theirs[key])

    # the samples file scores with both rules
    assert main(["eval", "score", "pope", "--questions", str(pope / "questions.jsonl"), "--answers",
                 str(samples_file), "--lmms-eval", "--out", str(tmp_path / "both")]) == 0
    scored = json.loads((tmp_path / "both" / "metrics.json").read_text())["results"]["scored"]
    assert scored["lmms_eval"]["accuracy"] == pytest.approx(ours_of_theirs["accuracy"])


def test_lmms_eval_pope_scoring_beside_the_official_rule():
    from eval.lmms_pope import official_and_lmms_eval

    labels = ["yes", "no"] * 4
    answers = ["Yes", "Yes", "Yes, there is a dog.", "No.", "There is no dog.", "no", "yes", "I see a cat."]
    both = official_and_lmms_eval(list(range(1, 9)), labels, answers)
    official, lmms = both["official"], both["lmms_eval"]
    # official: every answer is a yes or a no (first sentence; "no"/"not" -> no): tp 3, fp 2, tn 2, fn 1
    assert (official["tp"], official["fp"], official["tn"], official["fn"]) == (3, 2, 2, 1)
    assert official["accuracy"] == 62.5 and official["recall"] == 75.0 and official["yes_ratio"] == 62.5
    # lmms-eval: only an exact yes / no counts; 4 answers are neither: wrong in accuracy, ignored by recall
    assert lmms["neither_yes_nor_no"] == 4 and lmms["accuracy"] == 37.5
    assert lmms["precision"] == pytest.approx(200 / 3) and lmms["recall"] == 100.0 and lmms["f1"] == pytest.approx(80)
    assert lmms["yes_ratio"] == 50.0  # the labels' yes share, whatever the answers


def test_the_entry_point_is_declared_in_pyproject():
    """What the end-to-end test's stand-in dist-info declares is what `pip install` registers."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["lmms_eval.models"] == {"grounded_vlm": "eval.lmms_model:manifest"}
    assert any(r.startswith("lmms-eval") for r in project["optional-dependencies"]["lmms"])


@pytest.mark.parametrize("method", ["region-evidence", "region-evidence@random", "highlight@random"])
def test_plugin_generate_until_runs_grounded_methods_and_twins(method, tiny_llava_dir, tiny_reg_dir, pope):
    """The plugin's generate_until on lmms-eval requests (no lmms-eval run): the answers of the method's generate."""
    from lmms_eval.api.instance import Instance

    from eval.lmms_model import GroundedVLM
    from grounding.methods import build_method

    options = {"object_dino": {"k": 2, "restarts": 2}, "seed": 2}
    if method.startswith("region-evidence"):
        options["strength"] = 100.0
    plugin = GroundedVLM(pretrained=tiny_llava_dir, method=method, tower=tiny_reg_dir, tower_short_side=32,
                         device="cpu", batch_size=2, method_options=json.dumps(options))
    rows = [json.loads(line) for line in (pope / "questions.jsonl").read_text().splitlines()][:4]
    docs = {i: row for i, row in enumerate(rows)}
    plugin.task_dict = {"pope_local": {"test": docs}}
    image_token = plugin.processor.image_token

    def visual(doc):
        return [Image.open(pope / "images" / doc["image"]).convert("RGB")]

    requests = [Instance(request_type="generate_until", idx=0,
                         metadata={"task": "pope_local", "doc_id": i, "repeats": 1},
                         arguments=(f"{image_token}\n{row['text']}", {"max_new_tokens": 5, "until": ["\n\n"]}, visual,
                                    i, "pope_local", "test"))
                for i, row in docs.items()]
    answers = plugin.generate_until(requests)
    reference = build_method(method, plugin.tower, plugin.processor, task="question", **options)
    images = [visual(row)[0] for row in rows]
    expected = []
    for start in range(0, len(rows), 2):  # the plugin's batches of 2
        expected += reference.generate(plugin.model, images[start:start + 2], [r["text"] for r in rows[start:start + 2]],
                                       max_new_tokens=5, do_sample=False)
    assert answers == expected
    assert plugin.method.config.mask_source == ("random" if "@random" in method else "object-dino")


def test_plugin_oracle_twin_needs_its_instances(tiny_llava_dir):
    from eval.lmms_model import GroundedVLM

    with pytest.raises(ValueError, match="needs oracle_instances"):
        GroundedVLM(pretrained=tiny_llava_dir, method="highlight@oracle", device="cpu")
