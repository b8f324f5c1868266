"""Trust gaps a hostile trial found (issue 26), one test per class: identity by content, every written file scores
to the run's own figure, nothing replaced before the new work has succeeded, configs checked key by key, every
input checked before a model loads, Ctrl-C, and the smaller ones. On a tiny random LLaVA."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def bench(tmp_path):
    """images/im0.jpg, im1.jpg and q.jsonl: 12 questions (ids 1..12, odd: dog/yes, even: cat/no)."""
    (tmp_path / "images").mkdir()
    for i in range(2):
        _image(tmp_path / "images" / f"im{i}.jpg", i)
    rows = [{"question_id": i, "image": f"im{i % 2}.jpg", "text": f"Is there a {'dog' if i % 2 else 'cat'} in the "
             f"image?", "label": "yes" if i % 2 else "no"} for i in range(1, 13)]
    _write_rows(tmp_path / "q.jsonl", rows)
    return tmp_path


def _pope(model, bench, out, *extra, questions=None):
    return ["eval", "pope", "--model", str(model), "--images", str(bench / "images"), "--questions",
            str(questions or bench / "q.jsonl"), "--device", "cpu", "--batch-size", "4", "--max-new-tokens", "2",
            "--out", str(out), *extra]


def _error(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


# ------------------------------------------------------------------ 1. identity is content
def test_a_model_and_an_input_are_identified_by_their_content(tiny_llava_dir, bench, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    model = tmp_path / "model"
    shutil.copytree(tiny_llava_dir, model)
    (model / "DONE.json").write_text(json.dumps({"asset": "tiny", "built": "2026-01-01"}))  # as asset builds write
    out = tmp_path / "run"
    assert main(_pope(model, bench, out)) == 0
    capsys.readouterr()

    # another model's weights under the same names (the DONE marker unchanged): other settings
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    other = AutoModelForImageTextToText.from_pretrained(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.01)
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", weights)
    assert main(_pope(model, bench, out)) == 2
    assert "other settings" in (error := _error(capsys)) and "model:" in error
    weights.write_bytes(original)  # the same bytes again (a new mtime): the same model, resumed
    assert main(_pope(model, bench, out)) == 0
    capsys.readouterr()

    # the chat template file is part of the model
    templates = sorted(model.glob("*.jinja"))
    assert templates, "the processor saves its chat template as a .jinja file"
    text = templates[0].read_text()
    templates[0].write_text(text.replace("ASSISTANT:", "ASSISTANT: "))
    assert main(_pope(model, bench, out)) == 2
    assert "model:" in _error(capsys)
    templates[0].write_text(text)

    # other pixels under the same image name: other inputs
    _image(bench / "images" / "im0.jpg", 99)
    assert main(_pope(model, bench, out)) == 2
    assert "other inputs under the same ids" in _error(capsys)
    (bench / "images" / "im0.jpg").unlink()  # unreadable now: its answers, made from the bytes it had, stand
    assert main(_pope(model, bench, out)) == 0
    assert json.loads((out / "metrics.json").read_text())["results"]["baseline"]["scored"] == 12

    # a copied model folder is the same model; large weights are identified by header and sampled blocks
    from eval import identity
    from eval.identity import file_identity, folder_identity

    shutil.copytree(model, tmp_path / "copy")
    assert folder_identity(tmp_path / "copy") == folder_identity(model)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 19], "data_offsets": [0, 1 << 21]}}).encode()
    big_a, big_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    body = np.random.default_rng(0).random(1 << 19).astype(np.float32).tobytes()
    big_a.write_bytes(len(header).to_bytes(8, "little") + header + body)
    big_b.write_bytes(len(header).to_bytes(8, "little") + header + body[:-4] + b"\0\0\0\1")
    old = identity.SMALL_FILE
    identity.SMALL_FILE = 1024
    try:
        assert file_identity(big_a).startswith("sampled:") and file_identity(big_a) != file_identity(big_b)
    finally:
        identity.SMALL_FILE = old


# ------------------------------------------------------------------ 2. every written file scores the same
@pytest.fixture
def by_prompt(monkeypatch):
    """Answers decided by the prompt (dog: Yes, cat: No): a figure that depends on matching answers correctly."""
    from eval import runner

    class Scripted:
        def generate(self, model, images, prompts, **kwargs):
            if "image?" in prompts[0]:
                return ["Yes" if "dog" in p else "No" for p in prompts]
            return ["A dog on a table." for _ in prompts]

    monkeypatch.setattr(runner, "build_method", lambda *args, **kwargs: Scripted())


def test_every_file_a_run_writes_scores_to_the_runs_own_figure(tiny_llava_dir, bench, tmp_path, capsys, by_prompt):
    rows = _rows(bench / "q.jsonl") + [{"question_id": 13, "image": "gone.jpg", "text": "Is there a dog in the "
                                        "image?", "label": "yes"}]  # a skipped item: left out by run and score
    questions = _write_rows(tmp_path / "q13.jsonl", rows)
    out = tmp_path / "run"
    assert main(_pope(tiny_llava_dir, bench, out, questions=questions)) == 0
    run = json.loads((out / "metrics.json").read_text())["results"]["baseline"]
    assert run["accuracy"] == 100.0 and run["scored"] == 12 and run["skipped"] == 1
    for answers in (out / "baseline" / "predictions.jsonl", out / "baseline" / "shard-0.jsonl"):
        score = tmp_path / f"score-{answers.stem}"
        assert main(["eval", "score", "pope", "--questions", str(questions), "--answers", str(answers),
                     "--out", str(score)]) == 0
        scored = json.loads((score / "metrics.json").read_text())["results"]["scored"]
        assert {k: scored[k] for k in ("accuracy", "f1", "yes_ratio")} == \
               {k: run[k] for k in ("accuracy", "f1", "yes_ratio")}, answers
        assert scored["skipped"] == 1 and "skipped by their run" in capsys.readouterr().err

    # answers without ids or question texts cannot be matched: refused, not read in line order
    stripped = _write_rows(tmp_path / "noid.jsonl", [{"answer": r.get("answer", "")} for r in
                                                     _rows(out / "baseline" / "predictions.jsonl")])
    assert main(["eval", "score", "pope", "--questions", str(questions), "--answers", str(stripped),
                 "--out", str(tmp_path / "s-noid")]) == 2
    assert "cannot be matched" in _error(capsys)

    # CHAIR: the run's captions score to the run's figure
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "instances_val2014.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"im{i}.jpg"} for i in range(2)],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "dining table"}],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 5, 5]},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5]}]}))
    chair = tmp_path / "chair"
    assert main(["eval", "chair", "--model", tiny_llava_dir, "--images", str(bench / "images"), "--annotations",
                 str(annotations), "--num-images", "2", "--max-new-tokens", "2", "--device", "cpu",
                 "--out", str(chair)]) == 0
    run = json.loads((chair / "metrics.json").read_text())["results"]["baseline"]
    assert main(["eval", "score", "chair", "--captions", str(chair / "baseline" / "predictions.jsonl"),
                 "--annotations", str(annotations), "--out", str(tmp_path / "s-chair")]) == 0
    scored = json.loads((tmp_path / "s-chair" / "metrics.json").read_text())["results"]["scored"]
    assert (scored["chair_s"], scored["chair_i"], scored["recall"]) == (run["chair_s"], run["chair_i"], run["recall"])


# ------------------------------------------------------------------ 3. nothing replaced before success
def test_output_is_replaced_only_when_asked_and_after_the_new_work_succeeded(tiny_llava_dir, bench, tmp_path,
                                                                             capsys):
    out = tmp_path / "run"
    assert main(_pope(tiny_llava_dir, bench, out)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    broken = tmp_path / "broken"  # a folder that looks like a model but cannot be loaded
    shutil.copytree(tiny_llava_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    for model in (tmp_path / "absent", broken):
        assert main(_pope(model, bench, out, "--overwrite")) == 2, model
        _error(capsys)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, model
    assert main(_pope(tiny_llava_dir, bench, out, "--overwrite", "--max-new-tokens", "3")) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["max_new_tokens"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["baseline", "metrics.json"]  # no staging left behind

    # build-pope: an existing file is kept unless --overwrite, and replaced whole
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [{"id": c, "name": n} for c, n in enumerate(("dog", "cat", "car", "cup", "bus"), 1)],
        "annotations": [{"id": c, "image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1]} for c in (1, 2, 3)]}))
    questions = tmp_path / "pope.jsonl"
    questions.write_text("mine\n")
    build = ["eval", "build-pope", "--instances", str(instances), "--out", str(questions)]
    assert main(build) == 2
    assert "already exists; pass --overwrite" in _error(capsys) and questions.read_text() == "mine\n"
    assert main(build + ["--overwrite"]) == 0 and len(_rows(questions)) == 4

    # score: an earlier score is kept unless --overwrite
    score = ["eval", "score", "pope", "--questions", str(bench / "q.jsonl"), "--answers",
             str(out / "baseline" / "predictions.jsonl"), "--out", str(tmp_path / "s")]
    assert main(score) == 0
    assert main(score) == 2 and "already holds metrics.json" in _error(capsys)
    assert main(score + ["--overwrite"]) == 0

    # a full disk while writing: the old file stays whole, no temporary file stays behind
    from eval.records import write_json

    target = tmp_path / "m.json"
    write_json(target, {"a": 1})

    def full(_):
        raise OSError(28, "No space left on device")

    real = os.fsync
    os.fsync = full
    try:
        with pytest.raises(OSError):
            write_json(target, {"a": 2})
    finally:
        os.fsync = real
    assert json.loads(target.read_text()) == {"a": 1} and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ 4. configs checked key by key
def test_configs_are_checked_key_by_key_before_any_work(tmp_path, capsys):
    config = tmp_path / "world.yaml"
    world = ["world", "build", "--out", str(tmp_path / "w"), "--images", "2", "--config", str(config)]
    for text, message in (("short_side: [100, 200\n", "line 2: not valid YAML"),
                          ("captions_per_image: 2.5\n", "captions_per_image must be an integer in 1..100, got 2.5"),
                          ("captions_per_image: true\n", "captions_per_image must be an integer in 1..100, got True"),
                          ("short_side: [100000, 100000]\n", "short_side must be [min, max], integers in 16..4096"),
                          ("aspect: [1, .nan]\n", "aspect must be [min, max], numbers"),
                          ("partner_prob: {train: 2}\n", "partner_prob must map train, val and test")):
        config.write_text(text)
        assert main(world) == 2, text
        assert message in _error(capsys), text
        assert not (tmp_path / "w").exists(), text
    assert main(["world", "build", "--out", str(tmp_path / "w"), "--images", "1000000000"]) == 2
    assert "--images must be >= 1 and at most 10000000" in _error(capsys)
    assert main(["world", "build", "--out", str(tmp_path / "w"), "--images", "5000000"]) == 2
    assert "GiB free" in _error(capsys) and not (tmp_path / "w").exists()

    from lightning_modules.fit_checks import FitConfigError, check_fit_config

    with pytest.raises(FitConfigError, match="model.learning_rate is nan"):
        check_fit_config({"model": {"learning_rate": float("nan")}})
    fit = tmp_path / "fit.yaml"
    fit.write_text("trainer: {accelerator: cpu, max_steps: 1}\nmodel: {vlm: /nonexistent, lora_r: -4}\n"
                   "data: {image_root: /nonexistent}\n")
    assert main(["fit", "--config", str(fit)]) == 2
    assert "model.lora_r must be an integer in 1..4096, got -4" in _error(capsys)


# ------------------------------------------------------------------ 5. inputs checked before a model loads
def test_every_input_and_every_methods_needs_are_checked_before_a_model_loads(tiny_llava_dir, bench, tmp_path,
                                                                              capsys, monkeypatch):
    from eval import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the inputs were checked")

    monkeypatch.setattr(runner, "load_vlm", refuse)
    unlabelled = _write_rows(tmp_path / "u.jsonl", [{k: v for k, v in r.items() if k != "label" or r["question_id"] != 5}
                                                     for r in _rows(bench / "q.jsonl")])
    assert main(_pope(tiny_llava_dir, bench, tmp_path / "a", questions=unlabelled)) == 2
    assert "1 questions have no yes/no label (e.g. [5])" in _error(capsys)
    argv = _pope(tiny_llava_dir, bench, tmp_path / "b")
    argv[argv.index("--device") + 1] = "foo"
    assert main(argv) == 2
    assert "--device 'foo': not a device" in _error(capsys)
    if not torch.cuda.is_available():
        argv[argv.index("--device") + 1] = "cuda:1"
        assert main(argv) == 2
        assert "--device cuda:1: this machine has no CUDA device" in _error(capsys)
    assert main(_pope(tiny_llava_dir, bench, tmp_path / "c", "--methods", "baseline,highlight",
                      "--tower", str(tmp_path / "no_tower"))) == 2
    assert "--tower: cannot load grounding tower (for highlight)" in _error(capsys)
    assert not list((tmp_path / "c").rglob("settings.json"))


# ------------------------------------------------------------------ 6. Ctrl-C
def test_ctrl_c_ends_with_one_line_and_status_130(tiny_llava_dir, bench, tmp_path, capsys, monkeypatch):
    from eval import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "load_vlm", interrupted)
    try:
        status = main(_pope(tiny_llava_dir, bench, tmp_path / "run"))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert status == 130
    error = _error(capsys)
    assert error.strip() == "grounding: interrupted; rerun the same command to resume"


# ------------------------------------------------------------------ 7. the smaller ones
def test_smaller_gaps(tiny_llava_dir, bench, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--methods", "vcd", "--limit", "4"]
    assert main(_pope(tiny_llava_dir, bench, out, *common)) == 0
    shard = out / "vcd" / "shard-0.jsonl"
    lines = len(shard.read_text().splitlines())
    # an option given at its default is no change
    assert main(_pope(tiny_llava_dir, bench, out, *common, "--method-options", '{"vcd": {"noise_step": 500}}')) == 0
    # the same ids as strings are the same items: resumed, nothing stored twice
    strings = _write_rows(tmp_path / "s.jsonl", [{**r, "question_id": str(r["question_id"])}
                                                 for r in _rows(bench / "q.jsonl")])
    assert main(_pope(tiny_llava_dir, bench, out, *common, questions=strings)) == 0
    assert len(shard.read_text().splitlines()) == lines
    # a run given its own questions names no shipped split
    assert json.loads((out / "metrics.json").read_text())["config"]["split"] is None
    # a stale temporary file of a killed writer is removed by the next run
    stale = out / "vcd" / ".metrics.json.99999999.tmp"
    stale.write_text("{")
    assert main(_pope(tiny_llava_dir, bench, out, *common)) == 0
    assert not stale.exists()
    capsys.readouterr()

    # a file given as --out is named
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(_pope(tiny_llava_dir, bench, a_file)) == 2
    assert f"--out {a_file} is a file" in _error(capsys)

    # score pope takes the plain one-answer-per-line form its help offers
    plain = tmp_path / "plain.txt"
    plain.write_text("".join(("Yes" if r["label"] == "yes" else "No") + "\n" for r in _rows(bench / "q.jsonl")))
    assert main(["eval", "score", "pope", "--questions", str(bench / "q.jsonl"), "--answers", str(plain),
                 "--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["results"]["scored"]["accuracy"] == 100.0

    # an instances file that yields no question is an error, not "0 questions"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert main(["eval", "build-pope", "--instances", str(empty), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "no POPE questions can be made" in _error(capsys) and not (tmp_path / "p.jsonl").exists()

    # a refused run (the model cannot be loaded) leaves no settings.json behind
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llava_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    assert main(_pope(broken, bench, tmp_path / "refused")) == 2
    _error(capsys)
    assert not list((tmp_path / "refused").rglob("settings.json"))
