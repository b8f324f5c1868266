"""`grounding eval discovery`: AR@N matching, bootstrap intervals, and the command on a tiny generated world."""

import json

import numpy as np
import pytest
from PIL import Image

from eval.cli import main
from eval.discovery_eval import (bootstrap_interval, box_iou_matrix, load_instance_dataset, mask_iou_matrix, recalled,
                                 summarise)


def test_recall_is_one_to_one_and_in_order():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 0, 30, 10]], dtype=float)
    iou = box_iou_matrix(preds, gt)
    assert iou.shape == (3, 2) and iou[0, 0] == 1.0 and iou[0, 1] == 0.0
    assert recalled(iou, 1) == 1
    assert recalled(iou, 2) == 1  # the second prediction duplicates the first: no second match
    assert recalled(iou, 3) == 2
    assert recalled(np.zeros((0, 2)), 5) == 0
    a = np.zeros((2, 4, 4), dtype=bool)
    a[0, :2] = True
    a[1] = True
    b = np.zeros((1, 4, 4), dtype=bool)
    b[0, :2] = True
    assert mask_iou_matrix(a, b)[:, 0].tolist() == [1.0, 0.5]


def test_summary_ratios_and_intervals():
    records = [{"objects": 2, "single": {"m": {"correct": True, "degenerate": False}},
                "instances": {"i": {"found": 3, "correct": True, "degenerate": False,
                                    "box_recalled": {1: 1, 5: 2, 10: 2}}}},
               {"objects": 4, "single": {"m": {"correct": False, "degenerate": True}},
                "instances": {"i": {"found": 1, "correct": False, "degenerate": False,
                                    "box_recalled": {1: 0, 5: 1, 10: 1}}}}]
    summary = summarise(records, ["m"], ["i"], draws=200)
    assert summary["single"]["m"]["corloc"]["value"] == 50.0 and summary["single"]["m"]["degenerate"] == 1
    assert summary["instances"]["i"]["box_ar@1"]["value"] == pytest.approx(100 / 6, abs=0.01)
    assert summary["instances"]["i"]["box_ar@10"]["value"] == 50.0
    low, high = summary["instances"]["i"]["box_ar@10"]["ci95"]
    assert 25.0 <= low <= 50.0 <= high <= 100.0
    assert bootstrap_interval(lambda idx: 1.0, 10, 50) == (1.0, 1.0)


def test_eval_discovery_on_a_tiny_world(tiny_reg_dir, tmp_path):
    from grounding.world import WorldConfig, build_world

    world = tmp_path / "world"
    build_world(world, seed=3, num_images=3, split="val", config=WorldConfig(short_side=[64, 80]))
    items = load_instance_dataset(world)
    assert len(items) == 3 and all(item.masks is not None and len(item.masks) == len(item.boxes) for item in items)
    out = tmp_path / "run"
    assert main(["eval", "discovery", "--root", str(world), "--model", tiny_reg_dir, "--device", "cpu",
                 "--short-side", "32", "--k", "2", "--method", "tokencut-adaptive,object-dino-map",
                 "--instances", "maskcut-adaptive,object-dino", "--max-objects", "4", "--bootstrap", "50",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 3
    for method in ("maskcut-adaptive", "object-dino"):
        result = metrics["instances"][method]
        for key in ("box_ar@1", "box_ar@5", "box_ar@10", "mask_ar@1", "mask_ar@10", "union_iou", "corloc"):
            assert 0.0 <= result[key]["value"] <= 100.0
            assert result[key]["ci95"][0] <= result[key]["value"] <= result[key]["ci95"][1]
        assert result["box_ar@1"]["value"] <= result["box_ar@5"]["value"] <= result["box_ar@10"]["value"]
    assert set(metrics["single"]) == {"tokencut-adaptive", "object-dino-map"}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["instances"]["object-dino"]["boxes"]) <= 4 for r in records)
    assert main(["eval", "discovery", "--root", str(world), "--model", tiny_reg_dir, "--device", "cpu",
                 "--instances", "nope", "--out", str(tmp_path / "bad")]) == 2


def test_discover_instances_writes_records_and_pictures(tiny_reg_dir, tmp_path):
    from PIL import Image

    from grounding.world import WorldConfig, build_world

    world = tmp_path / "world"
    build_world(world, seed=4, num_images=2, split="val", config=WorldConfig(short_side=[64, 80]))
    out = tmp_path / "found"
    assert main(["discover", "--images", str(world / "images"), "--model", tiny_reg_dir, "--device", "cpu",
                 "--short-side", "32", "--k", "2", "--instances", "3", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert 1 <= len(row["instances"]) <= 3 and row["method"] == "object-dino-map-cut"
        picture = Image.open(out / "instances" / (row["image"].rsplit(".", 1)[0] + ".png"))
        width, height = Image.open(world / "images" / row["image"]).size
        assert picture.size == (width, height)
        for found in row["instances"]:
            x0, y0, x1, y1 = found["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert main(["discover", "--images", str(world / "images"), "--model", tiny_reg_dir, "--device", "cpu",
                 "--instances", "2", "--instance-method", "nope", "--out", str(tmp_path / "bad")]) == 2


def test_paired_difference():
    from eval.discovery_eval import paired_difference

    records = [{"objects": 2, "single": {"a": {"correct": True}, "b": {"correct": False}},
                "instances": {"x": {"box_recalled": {"10": 2}}, "y": {"box_recalled": {"10": 1}}}},
               {"objects": 2, "single": {"a": {"correct": True}, "b": {"correct": True}},
                "instances": {"x": {"box_recalled": {"10": 1}}, "y": {"box_recalled": {"10": 1}}}}]
    corloc = paired_difference(records, ("single", "a"), ("single", "b"), draws=100)
    assert corloc["value"] == 50.0 and 0.0 <= corloc["ci95"][0] <= 50.0 <= corloc["ci95"][1] <= 100.0
    assert paired_difference(records, ("instances", "x"), ("instances", "y"), "box_ar@10", draws=50)["value"] == 25.0


def test_cached_object_dino_cache_is_per_object_and_shared_with_its_siblings(tower, monkeypatch):
    from dataclasses import replace

    from grounding.objects.object_dino import ObjectDINO

    from eval.discovery_eval import CachedObjectDINO

    calls = []
    real = ObjectDINO.analyse
    monkeypatch.setattr(ObjectDINO, "analyse", lambda self, out: calls.append(self.config.k) or real(self, out))
    image = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    out = tower([image])
    first, other = CachedObjectDINO(k=3, restarts=1), CachedObjectDINO(k=3, restarts=1)
    sibling = first.with_config(replace(first.config, k=2))
    assert first.analyse(out) is first.analyse(out) and calls == [3]
    other.analyse(out)  # another object: its own cache
    sibling.analyse(out)
    sibling.analyse(out)
    first.analyse(out)
    assert calls == [3, 3, 2]
    out2 = tower([image])  # a new tower output replaces the cached one
    first.analyse(out2)
    assert calls == [3, 3, 2, 3]
