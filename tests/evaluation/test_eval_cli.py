"""`grounding eval pope|chair|score|report|build-pope` end to end on a tiny random LLaVA and a 4-image COCO fixture."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from eval.cli import build_parser, main

OPTIONS = json.dumps({m: {"object_dino": {"k": 2, "restarts": 2}} for m in ("highlight", "masked-contrast", "vcd")})
ALL_METHODS = "baseline,highlight,masked-contrast,vcd"


@pytest.fixture(scope="module")
def vlm_dir(tiny_llava_dir):
    return tiny_llava_dir


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "val2014").mkdir()
    (root / "annotations").mkdir()
    names = ["person", "dog", "cat", "car", "chair", "cup", "bicycle", "pizza", "dining table"]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    objects = {1: ["person", "dog", "car", "chair"], 2: ["cat", "cup", "dining table"], 3: ["person", "bicycle", "car"],
               4: ["pizza", "dining table", "cup", "person"]}
    rng = np.random.default_rng(0)
    images, annotations, captions = [], [], []
    for image_id, objs in objects.items():
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / "val2014" / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for obj in objs:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": names.index(obj) + 1,
                                "bbox": [1, 1, 10, 10], "iscrowd": 0})
        captions.append({"image_id": image_id, "id": image_id, "caption": f"A photo with a {objs[0]}."})
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return root


@pytest.fixture(scope="module")
def questions(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "adversarial.jsonl"
    assert main(["eval", "build-pope", "--instances", str(coco / "annotations" / "instances_val2014.json"),
                 "--split", "adversarial", "--num-images", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and [r["label"] for r in rows[:6]] == ["yes", "no"] * 3
    return out


def test_pope_and_chair_runs_for_every_method_then_report(vlm_dir, tiny_reg_dir, coco, questions, tmp_path, capsys):
    common = ["--model", vlm_dir, "--images", str(coco / "val2014"), "--methods", ALL_METHODS, "--tower", tiny_reg_dir,
              "--tower-short-side", "32", "--batch-size", "4", "--device", "cpu", "--method-options", OPTIONS]
    pope_out, chair_out = tmp_path / "pope", tmp_path / "chair"
    assert main(["eval", "pope", "--questions", str(questions), "--max-new-tokens", "3", "--out", str(pope_out),
                 *common]) == 0
    assert main(["eval", "chair", "--annotations", str(coco / "annotations"), "--num-images", "4",
                 "--max-new-tokens", "6", "--out", str(chair_out), *common]) == 0
    pope = json.loads((pope_out / "metrics.json").read_text())
    assert set(pope["results"]) == set(ALL_METHODS.split(","))
    for metrics in pope["results"].values():
        assert metrics["questions"] == 24 and 0 <= metrics["yes_ratio"] <= 100
    assert pope["versions"]["transformers"] and pope["config"]["methods"] == ALL_METHODS.split(",")
    for method in ALL_METHODS.split(","):
        records = [json.loads(l) for l in (pope_out / method / "predictions.jsonl").read_text().splitlines()]
        assert sorted(r["key"] for r in records) == list(range(1, 25))
    chair = json.loads((chair_out / "metrics.json").read_text())
    assert all(m["captions"] == 4 for m in chair["results"].values())
    per_caption = json.loads((chair_out / "highlight" / "metrics.json").read_text())["per_caption"]
    assert {"hallucinated", "correct", "ground_truth"} <= set(per_caption[0])
    assert len(json.loads((chair_out / "image_ids.json").read_text())["images"]) == 4
    assert main(["eval", "report", str(pope_out), str(chair_out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| pope | highlight |" in report and "| chair | baseline |" in report
    assert (tmp_path / "report" / "pope.png").exists() and (tmp_path / "report" / "chair.png").exists()


def test_score_files_made_elsewhere(questions, coco, tmp_path):
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    with_ids = tmp_path / "answers.jsonl"
    with_ids.write_text("".join(json.dumps({"question_id": r["question_id"], "text": "Yes, there is."}) + "\n"
                                for r in rows))
    assert main(["eval", "score", "pope", "--questions", str(questions), "--answers", str(with_ids),
                 "--out", str(tmp_path / "s1")]) == 0
    metrics = json.loads((tmp_path / "s1" / "metrics.json").read_text())["results"]["scored"]
    assert metrics["yes_ratio"] == 100.0 and metrics["accuracy"] == 50.0
    in_order = tmp_path / "official.jsonl"  # the official POPE answer files carry no ids
    in_order.write_text("".join(json.dumps({"question": r["text"], "answer": "No"}) + "\n" for r in rows))
    assert main(["eval", "score", "pope", "--questions", str(questions), "--answers", str(in_order),
                 "--out", str(tmp_path / "s2")]) == 0
    captions = tmp_path / "caps.jsonl"
    captions.write_text(json.dumps({"image_id": 1, "caption": "A man with a dog and a cat."}) + "\n")
    assert main(["eval", "score", "chair", "--captions", str(captions), "--annotations", str(coco / "annotations"),
                 "--out", str(tmp_path / "s3")]) == 0
    chair = json.loads((tmp_path / "s3" / "metrics.json").read_text())["results"]["scored"]
    assert chair["chair_s"] == 100.0 and chair["chair_i"] == pytest.approx(100 / 3)
    per_item = [json.loads(l) for l in (tmp_path / "s3" / "per_item.jsonl").read_text().splitlines()]
    assert per_item[0]["hallucinated"] == [["cat", "cat"]]


def _pope_command(vlm_dir, coco, questions, out):
    return [sys.executable, "-m", "eval.cli", "eval", "pope", "--model", vlm_dir, "--images", str(coco / "val2014"),
            "--questions", str(questions), "--methods", "baseline", "--batch-size", "1", "--max-new-tokens", "6",
            "--device", "cpu", "--out", str(out)]


def test_killed_run_resumes_without_losing_or_repeating(vlm_dir, coco, questions, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_pope_command(vlm_dir, coco, questions, whole), env=env, check=True, capture_output=True)
    process = subprocess.Popen(_pope_command(vlm_dir, coco, questions, killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    shard = killed / "baseline" / "shard-0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not shard.exists() or len(shard.read_text().splitlines()) < 5):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(shard.read_text().splitlines())
    assert 5 <= done_before < 24, "the run must be killed halfway"
    assert not (killed / "metrics.json").exists()
    subprocess.run(_pope_command(vlm_dir, coco, questions, killed), env=env, check=True, capture_output=True)
    final = [json.loads(l) for l in (killed / "baseline" / "predictions.jsonl").read_text().splitlines()]
    reference = [json.loads(l) for l in (whole / "baseline" / "predictions.jsonl").read_text().splitlines()]
    assert [r["key"] for r in final] == [r["key"] for r in reference] and len({r["key"] for r in final}) == 24
    assert final == reference
    assert (json.loads((killed / "metrics.json").read_text())["results"] ==
            json.loads((whole / "metrics.json").read_text())["results"])


def test_every_eval_yaml_validates(tmp_path):
    parser = build_parser()
    configs = sorted(Path(__file__).parents[2].glob("configs/eval/*.yaml"))
    assert configs
    for path in configs:
        kind = "pope" if "pope" in path.name else "chair"
        args = parser.parse_args(["eval", kind, "--config", str(path), "--images", str(tmp_path),
                                  "--out", str(tmp_path)])
        from eval.hallucination_cli import resolve_config, run_config_from_args

        args = resolve_config(args.parser_obj, args, {"--images", "--out"})
        config = run_config_from_args(args)
        from grounding.methods import METHODS

        assert set(config.methods) <= set(METHODS), path
        assert set(config.method_options) <= set(config.methods), path
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"modle": "x"}))
    assert main(["eval", "pope", "--config", str(bad), "--out", str(tmp_path)]) == 2


def test_missing_vlm_gives_clear_error(tmp_path, coco, questions, capsys):
    code = main(["eval", "pope", "--model", str(tmp_path / "no_model"), "--images", str(coco / "val2014"),
                 "--questions", str(questions), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2 and "cannot load VLM" in capsys.readouterr().err


def test_pope_runs_the_mask_source_twins(vlm_dir, tiny_reg_dir, coco, questions, tmp_path, capsys):
    """`--methods highlight@random,...`: the twins run through the CLI like any method; @oracle reads the images of
    --images unless told otherwise, and without oracle_instances it is refused before any model loads."""
    from pycocotools import mask as mask_utils

    common = ["--images", str(coco / "val2014"), "--questions", str(questions), "--tower", tiny_reg_dir,
              "--tower-short-side", "32", "--batch-size", "4", "--device", "cpu", "--max-new-tokens", "3"]
    code = main(["eval", "pope", "--model", str(tmp_path / "no_model"), "--methods", "baseline,highlight@oracle",
                 "--out", str(tmp_path / "refused"), *common])
    error = capsys.readouterr().err
    assert code == 2 and "highlight@oracle reads ground-truth masks" in error and "oracle_instances" in error
    assert "cannot load VLM" not in error  # refused before the model

    instances = json.loads((coco / "annotations" / "instances_val2014.json").read_text())
    for ann in instances["annotations"]:  # the fixture's boxes as masks
        info = next(im for im in instances["images"] if im["id"] == ann["image_id"])
        truth = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        x, y, w, h = ann["bbox"]
        truth[y : y + h, x : x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(truth))
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    twins = ["highlight@random", "masked-contrast@oracle", "region-evidence@random"]
    options = {name: {"object_dino": {"k": 2, "restarts": 2}} for name in twins}
    options["masked-contrast@oracle"] = {"oracle_instances": str(tmp_path / "instances.json")}
    out = tmp_path / "pope"
    assert main(["eval", "pope", "--model", vlm_dir, "--methods", ",".join(twins), "--out", str(out),
                 "--method-options", json.dumps(options), *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == set(twins) and all(m["questions"] == 24 for m in metrics["results"].values())
    settings = {name: json.loads((out / name / "settings.json").read_text())["settings"]["options"] for name in twins}
    assert settings["highlight@random"]["mask_source"] == "random"
    assert settings["region-evidence@random"]["mask_source"] == "random"
    assert settings["masked-contrast@oracle"]["mask_source"] == "oracle"
    from eval.hallucination_cli import _oracle_options

    given = _oracle_options(",".join(twins), options, str(coco / "val2014"), None)
    assert given["masked-contrast@oracle"]["oracle_images"] == str(coco / "val2014")  # --images by default
    assert given["highlight@random"] == options["highlight@random"]  # the others as given
    chair_default = _oracle_options(["highlight@oracle"], {}, "imgs", str(coco / "annotations"))  # chair's folder
    assert chair_default["highlight@oracle"]["oracle_instances"] == str(coco / "annotations" / "instances_val2014.json")
