"""Trustworthy run folders: a result is never silently wrong (issue: settings fingerprints, skips, logs, locks,
multi-process merges, per-item seeds, NaN) - end to end on a tiny random LLaVA and a 4-image question set."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main
from eval.records import JsonlLog, write_json
from eval.run_folder import RunLock, fingerprint

OBJECTS = ("dog", "cat")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """images/im0..3.jpg and q.jsonl: two questions per image (8), labels yes/no."""
    root = tmp_path_factory.mktemp("bench")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.jpg")
        for j, obj in enumerate(OBJECTS):
            rows.append({"question_id": len(rows) + 1, "image": f"im{i}.jpg", "text": f"Is there a {obj} in the image?",
                         "label": "yes" if j == 0 else "no"})
    _write_rows(root / "q.jsonl", rows)
    return root


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _pope(model, bench, out, *extra, questions=None, images=None):
    return ["eval", "pope", "--model", model, "--images", str(images or bench / "images"), "--questions",
            str(questions or bench / "q.jsonl"), "--device", "cpu", "--batch-size", "4", "--out", str(out), *extra]


# ------------------------------------------------------------------ settings fingerprints
def test_other_settings_or_inputs_are_refused_until_overwrite(tiny_llava_dir, bench, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "2")) == 0
    first = (out / "baseline" / "shard-0.jsonl").read_text()
    capsys.readouterr()

    # other generation settings: refused, naming what differs, nothing touched
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "3")) == 2
    error = capsys.readouterr().err
    assert "max_new_tokens: 2 -> 3" in error and "--overwrite" in error and "Traceback" not in error
    assert (out / "baseline" / "shard-0.jsonl").read_text() == first

    # another question file with the same ids
    other = tmp_path / "other.jsonl"
    _write_rows(other, [{**r, "text": r["text"].replace("dog", "car")} for r in _rows(bench / "q.jsonl")])
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "2", questions=other)) == 2
    assert "other inputs under the same ids" in capsys.readouterr().err

    # a run killed halfway, resumed with other options: refused as well (no mixing)
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    shard = partial / "baseline" / "shard-0.jsonl"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:3]))
    assert main(_pope(tiny_llava_dir, bench, partial, "--max-new-tokens", "3")) == 2
    assert "max_new_tokens: 2 -> 3" in capsys.readouterr().err
    assert len(shard.read_text().splitlines()) == 3

    # the same settings resume (nothing redone); --overwrite starts afresh under the new ones
    assert main(_pope(tiny_llava_dir, bench, partial, "--max-new-tokens", "2")) == 0
    assert len(shard.read_text().splitlines()) == 8
    assert main(_pope(tiny_llava_dir, bench, partial, "--max-new-tokens", "2")) == 0  # all done: nothing generated
    generation = json.loads((partial / "metrics.json").read_text())["results"]["baseline"]["generation"]
    assert generation["max_new_tokens"] == 2 and generation["do_sample"] is False  # still recorded
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "3", "--overwrite")) == 0
    settings = json.loads((out / "baseline" / "settings.json").read_text())
    records = _rows(out / "baseline" / "predictions.jsonl")
    assert settings["settings"]["max_new_tokens"] == 3 and len(records) == 8
    assert {r["run"] for r in records} == {settings["fingerprint"]} == {fingerprint(settings["settings"])}
    assert json.loads((out / "metrics.json").read_text())["config"]["max_new_tokens"] == 3

    # records of an older version (no fingerprint) are not trusted either
    old = tmp_path / "old"
    (old / "baseline").mkdir(parents=True)
    _write_rows(old / "baseline" / "shard-0.jsonl", [{"key": 1, "image": "im0.jpg", "answer": "yes"}])
    assert main(_pope(tiny_llava_dir, bench, old, "--max-new-tokens", "2")) == 2
    assert "older version" in capsys.readouterr().err


def test_method_options_are_part_of_the_settings(tiny_llava_dir, bench, tmp_path, capsys):
    out = tmp_path / "vcd"
    options = {"vcd": {"noise_step": 500}}
    common = ["--methods", "vcd", "--max-new-tokens", "2", "--limit", "2"]
    assert main(_pope(tiny_llava_dir, bench, out, *common, "--method-options", json.dumps(options))) == 0
    capsys.readouterr()
    options["vcd"]["noise_step"] = 400
    assert main(_pope(tiny_llava_dir, bench, out, *common, "--method-options", json.dumps(options))) == 2
    assert "options.noise_step: 500 -> 400" in capsys.readouterr().err


def test_discover_into_a_folder_of_another_method_is_refused(tiny_reg_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    common = ["discover", "--model", tiny_reg_dir, "--images", str(images), "--out", str(out), "--short-side", "32",
              "--k", "3", "--device", "cpu"]
    assert main(common + ["--method", "object-dino"]) == 0
    capsys.readouterr()
    assert main(common + ["--method", "lost"]) == 2
    assert 'method: "object-dino" -> "lost"' in capsys.readouterr().err
    assert main(common + ["--method", "lost", "--overwrite"]) == 0
    assert [r["method"] for r in _rows(out / "predictions.jsonl")] == ["lost"]


# ------------------------------------------------------------------ skips
def test_skips_are_recorded_counted_and_retried(tiny_llava_dir, bench, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(bench / "images", images)
    (images / "im1.jpg").rename(tmp_path / "im1.jpg")
    out = tmp_path / "run"
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "2", images=images)) == 0
    captured = capsys.readouterr()
    assert "scored 6  skipped 2" in captured.out and "2 of 8 items skipped" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())["results"]["baseline"]
    assert metrics["scored"] == 6 and metrics["skipped"] == 2 and metrics["questions"] == 6
    skips = [r for r in _rows(out / "baseline" / "predictions.jsonl") if "skipped" in r]
    assert [r["key"] for r in skips] == [3, 4] and "im1.jpg" in skips[0]["skipped"] and "answer" not in skips[0]
    assert main(["eval", "report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "| scored | skipped |" in (tmp_path / "report" / "report.md").read_text()

    (tmp_path / "im1.jpg").rename(images / "im1.jpg")  # the image is back: the next run answers those two
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "2", images=images)) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"]["baseline"]
    assert metrics["scored"] == 8 and metrics["skipped"] == 0
    assert len((out / "baseline" / "shard-0.jsonl").read_text().splitlines()) == 10  # 8 + 2 skips, nothing redone

    # a wrong --images folder fails clearly and does not poison the run folder
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    capsys.readouterr()
    assert main(_pope(tiny_llava_dir, bench, other, "--max-new-tokens", "2", images=empty)) == 2
    assert "none of the 8 items could be scored" in capsys.readouterr().err
    assert not (other / "metrics.json").exists()
    assert main(_pope(tiny_llava_dir, bench, other, "--max-new-tokens", "2")) == 0
    assert json.loads((other / "metrics.json").read_text())["results"]["baseline"]["scored"] == 8


# ------------------------------------------------------------------ logs
def test_jsonl_log_cuts_a_torn_tail_in_place_and_never_rewrites(tmp_path):
    path = tmp_path / "log.jsonl"
    good = '{"key": 1, "answer": "yes"}\n{"key": 2, "skipped": "missing"}\n'
    path.write_text(good + '{"key": 3, "ans')
    inode, before = path.stat().st_ino, path.stat().st_mtime_ns
    log = JsonlLog(path, key="key")
    assert path.read_text() == good and path.stat().st_ino == inode  # truncated, not rewritten
    assert log.done == {1} and [r["key"] for r in log.current] == [1, 2]  # a skip is not done
    log.append({"key": 2, "answer": "no"})
    assert log.done == {1, 2} and log.latest[2]["answer"] == "no"
    with pytest.raises(ValueError, match="already in"):
        log.append({"key": 2, "answer": "again"})
    time.sleep(0.01)
    before = path.stat().st_mtime_ns
    JsonlLog(path, key="key")  # a clean file is only read
    assert path.stat().st_mtime_ns == before
    path.write_text('{"key": 1}\nnot json\n{"key": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl line 2: not valid JSON"):
        JsonlLog(path, key="key")


# ------------------------------------------------------------------ locks
def test_one_run_per_folder_and_a_dead_holder_is_taken_over(tiny_llava_dir, bench, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from eval.run_folder import RunLock\n"
                               f"with RunLock({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "2")) == 2
        error = capsys.readouterr().err
        assert f"pid {holder.pid}@" in error and str(out / ".lock") in error
        assert not (out / "baseline").exists()  # refused before anything was read or written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text().startswith(f"pid {holder.pid}@")  # the dead holder's file is still there
    assert main(_pope(tiny_llava_dir, bench, out, "--max-new-tokens", "2")) == 0
    assert not (out / ".lock").exists()
    with RunLock(out), pytest.raises(RuntimeError, match="another run"):  # two holders in one process too
        with RunLock(out):
            pass


# ------------------------------------------------------------------ multi-process merge
def test_merge_refuses_missing_or_doubled_records_and_unfinished_processes(tmp_path):
    from eval.runner import _merge_and_score, merged_predictions

    folder = tmp_path / "m"
    folder.mkdir()
    _write_rows(folder / "shard-0.jsonl", [{"key": 1, "answer": "yes"}, {"key": 3, "skipped": "missing image"}])
    _write_rows(folder / "shard-1.jsonl", [{"key": 2, "answer": "no"}, {"key": 3, "answer": "no"}])
    assert [r.get("answer") for r in merged_predictions(folder, [1, 2, 3])] == ["yes", "no", "no"]  # the answer wins
    with pytest.raises(RuntimeError, match=r"1 of 4 items have no record \(e.g. \[4\]\)"):
        merged_predictions(folder, [1, 2, 3, 4])
    with (folder / "shard-1.jsonl").open("a") as handle:
        handle.write(json.dumps({"key": 1, "answer": "no"}) + "\n")
    with pytest.raises(RuntimeError, match="answered more than once"):
        merged_predictions(folder, [1, 2, 3])
    write_json(folder / "finished-0.json", {"run": "abc", "world": 2})
    with pytest.raises(RuntimeError, match=r"process\(es\) \[1\] of 2 did not finish"):
        _merge_and_score(folder, "baseline", "abc", [1, 2, 3], 2, lambda p: {})


def test_launched_processes_that_form_no_group_are_refused(tiny_llava_dir, bench, tmp_path, capsys, monkeypatch):
    from accelerate import PartialState

    PartialState(cpu=True)  # this process is one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(_pope(tiny_llava_dir, bench, tmp_path / "o", "--max-new-tokens", "2")) == 2
    assert "2 processes were launched" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sampled_answers_depend_on_neither_batching_nor_processes_nor_resume(tiny_llava_dir, bench, tmp_path):
    """--do-sample: two processes (batch 2), one process (batch 3) and a resumed run (batch 1) agree exactly."""
    sample = ["--do-sample", "--temperature", "1.5", "--seed", "7", "--max-new-tokens", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(_free_port()), "-m", "eval.cli",
                    *_pope(tiny_llava_dir, bench, two, *sample, "--batch-size", "2")],
                   env=env, check=True, capture_output=True, cwd=Path(__file__).parents[2], timeout=900)
    shards = [_rows(two / "baseline" / f"shard-{r}.jsonl") for r in (0, 1)]
    assert [len(s) for s in shards] == [4, 4] and {json.loads((two / "baseline" / f"finished-{r}.json").read_text())
                                                  ["world"] for r in (0, 1)} == {2}
    one, resumed = tmp_path / "one", tmp_path / "resumed"
    assert main(_pope(tiny_llava_dir, bench, one, *sample, "--batch-size", "3")) == 0
    assert main(_pope(tiny_llava_dir, bench, resumed, *sample, "--batch-size", "1", "--limit", "3")) == 0
    assert main(_pope(tiny_llava_dir, bench, resumed, *sample, "--batch-size", "4")) == 0
    answers = [[r["answer"] for r in _rows(run / "baseline" / "predictions.jsonl")] for run in (two, one, resumed)]
    assert answers[0] == answers[1] == answers[2]
    assert len(set(answers[0])) > 2, "sampling from a random model gives varied answers"


def test_item_sampler_draws_each_row_from_its_own_generator(tiny_llava_dir):
    from transformers import AutoModelForImageTextToText

    from grounding.decoding.sampling import ItemSampler

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows = 4000
    sampler = ItemSampler(model, {"do_sample": True, "temperature": 0.7}, seeds=range(rows))
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.expand(rows, -1).clone())  # (rows, V)
    assert torch.isfinite(out).sum(-1).eq(1).all()  # all mass on one token, which generate()'s warpers keep
    frequency = torch.bincount(out.argmax(-1), minlength=6).double() / rows
    expected = (logits / 0.7).softmax(-1).double()  # the full softmax: no top-k
    assert torch.allclose(frequency, expected, atol=4 * (expected * (1 - expected) / rows).sqrt().max())
    top2 = ItemSampler(model, {"do_sample": True, "top_k": 2}, seeds=range(500))
    drawn = top2(torch.zeros(500, 1, dtype=torch.long), logits.expand(500, -1).clone()).argmax(-1)
    assert set(drawn.tolist()) <= {0, 1}
    # row seed s draws the same tokens alone or beside other rows, step after step
    alone, beside = ItemSampler(model, {"do_sample": True}, [11]), ItemSampler(model, {"do_sample": True}, [5, 11, 9])
    for _ in range(5):
        a = alone(torch.zeros(1, 1, dtype=torch.long), logits[None].clone()).argmax(-1)
        b = beside(torch.zeros(3, 1, dtype=torch.long), logits.expand(3, -1).clone()).argmax(-1)
        assert a.item() == b[1].item()
    with pytest.raises(ValueError, match="sampling calls"):
        ItemSampler(model, {"do_sample": False}, [1])


# ------------------------------------------------------------------ NaN
def test_figures_that_cannot_be_computed_fail_clearly(tiny_llava_dir, bench, tmp_path, capsys):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    images = [{"id": i, "file_name": f"im{i}.jpg"} for i in range(4)]
    (annotations / "instances_val2014.json").write_text(json.dumps({
        "images": images, "categories": [{"id": 1, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 5, 5]}]}))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "chair", "--model", tiny_llava_dir, "--images", str(empty), "--annotations", str(annotations),
                 "--num-images", "4", "--max-new-tokens", "2", "--device", "cpu", "--out", str(tmp_path / "c")]) == 2
    assert "none of the 4 items could be scored" in capsys.readouterr().err
    assert not (tmp_path / "c" / "metrics.json").exists()
    captions = tmp_path / "captions.jsonl"
    captions.write_text("")
    assert main(["eval", "score", "chair", "--captions", str(captions), "--annotations", str(annotations),
                 "--out", str(tmp_path / "s")]) == 2
    assert "no rows (an empty file)" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"results.chair_s is nan"):
        write_json(tmp_path / "m.json", {"results": {"chair_s": float("nan")}})
    assert not (tmp_path / "m.json").exists()
    # a CHAIR figure with no ground-truth objects at all (recall = 0/0) is refused, not written as NaN
    _write_rows(captions, [{"image_id": 1, "caption": "a dog"}])
    assert main(["eval", "score", "chair", "--captions", str(captions), "--annotations", str(annotations),
                 "--out", str(tmp_path / "s")]) == 2
    assert "recall is nan" in capsys.readouterr().err
