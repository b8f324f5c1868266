"""`grounding discover` and `grounding eval corloc` end to end on generated VOC / COCO fixtures."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cli import main
from eval.corloc import corloc, iou, load_dataset


def _photo(path, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def voc_root(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    ids = ["000001", "000002", "000003"]
    for i, image_id in enumerate(ids):
        _photo(base / "JPEGImages" / f"{image_id}.jpg", seed=i)
        (base / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>64</xmax>"
            "<ymax>48</ymax></bndbox></object></annotation>")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return tmp_path


def test_iou_reference():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert iou(a, b).tolist() == pytest.approx([25 / 175, 0.0, 1.0])
    assert corloc([{"correct": True}, {"correct": False}]) == 50.0


def test_voc_and_coco20k_layouts(voc_root, tmp_path):
    items = load_dataset("voc07", voc_root)
    assert len(items) == 3 and items[0].boxes == [[0.0, 0.0, 64.0, 48.0]]
    coco = tmp_path / "coco"
    (coco / "train2014").mkdir(parents=True)
    (coco / "annotations").mkdir()
    _photo(coco / "train2014" / "COCO_train2014_000000000009.jpg")
    _photo(coco / "train2014" / "COCO_train2014_000000000010.jpg")
    (coco / "annotations" / "instances_train2014.json").write_text(json.dumps({
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"},
                   {"id": 10, "file_name": "COCO_train2014_000000000010.jpg"}],
        "annotations": [{"image_id": 9, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                        {"image_id": 9, "bbox": [0, 0, 64, 48], "iscrowd": 1},
                        {"image_id": 10, "bbox": [3, 3, 5, 5], "iscrowd": 0}]}))
    (coco / "ids.txt").write_text("9\n")
    items = load_dataset("coco20k", coco, coco / "ids.txt")
    assert [i.image_id for i in items] == ["9"] and items[0].boxes == [[1, 2, 11, 22]]
    with pytest.raises(ValueError, match="image-list"):
        load_dataset("coco20k", coco)


def test_corloc_cli_runs_every_method_and_resumes(voc_root, tiny_reg_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "corloc", "--dataset", "voc07", "--root", str(voc_root), "--model", tiny_reg_dir,
            "--method", "lost,tokencut,dinoseg,object-dino", "--dinoseg-head", "0", "--k", "3",
            "--short-side", "32", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("lost", "tokencut", "dinoseg", "object-dino"):
        result = metrics["results"][method]
        assert result["images"] == 3 and 0 <= result["corloc"] <= 100
    assert metrics["versions"]["torch"] == torch.__version__.split("+")[0] or metrics["versions"]["torch"]
    first = (out / "lost" / "predictions.jsonl").read_text()
    assert main(args) == 0  # resume: nothing redone, nothing duplicated
    assert (out / "lost" / "predictions.jsonl").read_text() == first
    assert "CorLoc" in capsys.readouterr().out


def test_discover_cli_skips_bad_images_and_resumes(tiny_reg_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _photo(images / "a.jpg")
    _photo(images / "b.png", size=(30, 70), seed=1)
    (images / "c.jpg").write_bytes(b"corrupt")
    out = tmp_path / "out"
    args = ["discover", "--model", tiny_reg_dir, "--images", str(images), "--out", str(out), "--method",
            "object-dino", "--k", "3", "--short-side", "32", "--device", "cpu"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == ["a.jpg", "b.png", "c.jpg"]
    assert "skipped" in records[2] and "c.jpg" in records[2]["skipped"] and "box" not in records[2]
    b = records[1]
    x0, y0, x1, y1 = b["box"]
    assert b["image_size"] == [70, 30] and 0 <= x0 < x1 <= 30 and 0 <= y0 < y1 <= 70
    assert (out / "overlays" / "a.png").exists() and (out / "masks" / "b.png").exists()
    assert json.loads((out / "run.json").read_text())["skipped"] == 1
    size = (out / "predictions.jsonl").stat().st_size
    with (out / "predictions.jsonl").open("a") as handle:
        handle.write('{"image": "torn')  # a kill mid-write
    assert main(args) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and (out / "predictions.jsonl").stat().st_size > size  # torn tail cut, skip retried
    assert [json.loads(line)["image"] for line in lines] == ["a.jpg", "b.png", "c.jpg", "c.jpg"]
    _photo(images / "c.jpg", seed=2)  # the image is restored: the next run reads it
    assert main(args) == 0
    newest = {r["image"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert "box" in newest["c.jpg"] and json.loads((out / "run.json").read_text())["skipped"] == 0


def test_cli_reports_missing_folder(tmp_path, tiny_reg_dir, capsys):
    assert main(["discover", "--model", tiny_reg_dir, "--images", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_world_layout_pad_default_tau_and_degenerate_flag(tiny_reg_dir, tmp_path):
    """`eval corloc` reads ROOT/images + ROOT/annotations/instances.json, runs the reference protocol (full
    resolution, zero padding) by default, passes --tau, and records the complete-graph flag per image."""
    from eval.cli import DISCOVERY_DEFAULT
    from grounding.objects.discovery import DEFAULT_METHOD

    assert DISCOVERY_DEFAULT == DEFAULT_METHOD
    root = tmp_path / "world"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    _photo(root / "images" / "val_000000.png", size=(60, 44))
    (root / "annotations" / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "val_000000.png", "width": 60, "height": 44}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 60, 44], "iscrowd": 0, "category_id": 1}]}))
    out = tmp_path / "run"
    common = ["eval", "corloc", "--dataset", "coco", "--root", str(root), "--model", tiny_reg_dir, "--device", "cpu"]
    methods = ["--method", "tokencut,tokencut-adaptive"]
    assert main(common + methods + ["--tau", "-2", "--out", str(out), "--pictures"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["resize_mode"] == "pad" and metrics["config"]["tau"] == -2.0
    for method in ("tokencut", "tokencut-adaptive"):
        record = json.loads((out / method / "predictions.jsonl").read_text())
        assert record["map_size"] == [6, 8]  # 44 x 60 padded to 48 x 64: full resolution, patch 8
        assert record["degenerate"] is (method == "tokencut")  # tau = -2: every cosine is above it
        assert metrics["results"][method]["degenerate"] == int(method == "tokencut")
        assert (out / method / "overlays" / "1.png").exists()  # named by the image id
    resized = tmp_path / "resized"
    assert main(common + ["--method", "tokencut", "--out", str(resized), "--resize-mode", "resize",
                          "--short-side", "16"]) == 0
    assert json.loads((resized / "tokencut" / "predictions.jsonl").read_text())["map_size"] == [2, 3]


def test_unknown_method_and_missing_annotations_are_reported(tiny_reg_dir, tmp_path, capsys):
    assert main(["eval", "corloc", "--dataset", "coco", "--root", str(tmp_path), "--model", tiny_reg_dir,
                 "--method", "lost,nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["eval", "corloc", "--dataset", "coco", "--root", str(tmp_path), "--model", tiny_reg_dir,
                 "--out", str(tmp_path / "o")]) == 2
    assert "annotations/instances.json" in capsys.readouterr().err
