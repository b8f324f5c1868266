"""The world measurement of `grounding demo` on a tiny world and tiny models: every method and the control row, every
metric, no NaN, intervals around the values, and a rerun that reuses the answers."""

import json
import math

import numpy as np
import pytest

from eval.run_folder import weights_identity
from eval.world_demo import (CONTROL, DISCOVERY_METHODS, FOREGROUND, POPE_SPLITS, WORLD_METHODS, WorldDemoConfig,
                             bar_charts, bootstrap_interval, run_world_demo, table_lines)
from grounding.region_tokens import RegionConfig, RegionGrounding
from tiny_vlm import make_tiny_llava

OD = {"k": 2, "restarts": 2}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_reg_dir):
    root = tmp_path_factory.mktemp("world_demo_models")
    model, processor = make_tiny_llava()
    model.save_pretrained(root / "vlm")
    processor.save_pretrained(root / "vlm")
    grounding = RegionGrounding(RegionConfig(num_regions=2, tower=tiny_reg_dir, tower_short_side=32, object_dino=OD,
                                             projector_hidden=16))
    handle = grounding.attach(model, processor)
    grounding.save_pretrained(root / "regions")
    handle.detach()
    control, control_processor = make_tiny_llava(seed=1)  # stands in for world-llava-control: other weights
    control.save_pretrained(root / "control")
    control_processor.save_pretrained(root / "control")
    return root


def test_world_demo_reports_every_method_and_metric(tiny_models, tiny_reg_dir, tmp_path):
    options = {m: {"object_dino": OD} for m in ("region-evidence", "region-evidence@random")}
    cfg = WorldDemoConfig(seed=3, images=8, caption_images=3, caption_tokens=4, bootstrap=50,
                          model=str(tiny_models / "vlm"), tower=tiny_reg_dir, regions=str(tiny_models / "regions"),
                          control=str(tiny_models / "control"), method_options=options, map_k=2, discovery_k=2,
                          dinoseg_head=0)
    assert WORLD_METHODS.index(CONTROL) == WORLD_METHODS.index("region-tokens") + 1
    result = run_world_demo(tmp_path / "out", cfg)
    saved = json.loads((tmp_path / "out" / "world_metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert set(saved["pope"]) == set(WORLD_METHODS) and set(saved["chair"]) == set(WORLD_METHODS)
    assert saved["world"]["model"] == str(tiny_models / "vlm")  # the table names the model it measured
    # the control row: the baseline on the control model, in its own run folder, with its own answers
    label = saved["world"]["labels"][CONTROL]
    assert saved["world"]["control"] == str(tiny_models / "control") and str(tiny_models / "control") in label
    for task in ("pope", "chair"):
        folder = tmp_path / "out" / task / "runs" / CONTROL / "baseline"
        settings = json.loads((folder / "settings.json").read_text())["settings"]
        assert settings["method"] == "baseline" and settings["model"] == weights_identity(str(tiny_models / "control"))
        assert (tmp_path / "out" / task / "runs" / CONTROL / "baseline" / "predictions.jsonl").is_file()
    control_records, baseline_records = ([json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
                                         for folder in (tmp_path / "out" / "pope" / "runs" / CONTROL / "baseline",
                                                        tmp_path / "out" / "pope" / "runs" / "baseline"))
    assert [r["key"] for r in control_records] == [r["key"] for r in baseline_records]  # the same questions
    assert {r["run"] for r in control_records}.isdisjoint(r["run"] for r in baseline_records)  # another model's
    for method in WORLD_METHODS:
        for split in POPE_SPLITS:
            row = saved["pope"][method][split]
            for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                value, (low, high) = row[metric]["value"], row[metric]["ci95"]
                assert math.isfinite(value) and low <= value + 1e-6 and value <= high + 1e-6, (method, split, metric)
            assert row["questions"] == 6 * row["images"] and row["images"] >= 1
        trap = saved["pope"][method]["partner_trap"]
        assert trap["trap_questions"] + trap["other_questions"] > 0
        for name in ("trap", "other"):
            n, yes, pct = trap[f"{name}_questions"], trap[f"{name}_yes"], trap[f"{name}_yes_pct"]
            assert 0 <= yes <= n and (pct is None if n == 0 else pct == round(100 * yes / n, 1))
        for metric in ("chair_s", "chair_i", "recall"):
            assert math.isfinite(saved["chair"][method][metric]["value"])
        assert saved["chair"][method]["captions"] == 3
    assert set(saved["discovery"]) == set(DISCOVERY_METHODS) | {FOREGROUND}
    assert len(list((tmp_path / "out" / "instances").glob("*.png"))) == 8  # the default instances, per image
    for row in saved["discovery"].values():
        assert 0 <= row["corloc"]["value"] <= 100 and 0 <= row["mask_iou"]["value"] <= 100
    text = "\n".join(table_lines(result))
    assert all(f"| {m} |" in text for m in WORLD_METHODS if m != CONTROL) and "nan" not in text.lower()
    assert f"| {label} |" in text
    charts = bar_charts(result, tmp_path)
    assert len(charts) == 9 and all((tmp_path / c).is_file() for c in charts)
    # the adversarial split asks about partners of the planted pairs where they are absent
    adversarial = [json.loads(line) for line in (tmp_path / "out" / "pope" / "adversarial.jsonl").read_text().splitlines()]
    assert {q["label"] for q in adversarial} == {"yes", "no"}

    # answers are reused only by a rerun with the same models and settings; other settings start afresh
    sentinel = tmp_path / "out" / "pope" / "runs" / "baseline" / "sentinel"
    sentinel.write_text("")
    again = run_world_demo(tmp_path / "out", cfg)
    assert sentinel.exists() and again["pope"] == result["pope"]
    cfg.caption_tokens, cfg.methods, cfg.method_options = 3, ("baseline", CONTROL), {}  # the control beside the baseline
    smaller = run_world_demo(tmp_path / "out", cfg)
    assert not sentinel.exists() and list(smaller["pope"]) == ["baseline", CONTROL]
    # a retrained control (same settings, other weights) is answered afresh: its weights are in the run stamp
    sentinel.write_text("")
    control_answers = (tmp_path / "out" / "pope" / "runs" / CONTROL / "baseline" / "predictions.jsonl").read_text()
    make_tiny_llava(seed=2)[0].save_pretrained(tiny_models / "control")
    run_world_demo(tmp_path / "out", cfg)
    assert not sentinel.exists()
    assert (tmp_path / "out" / "pope" / "runs" / CONTROL / "baseline" / "predictions.jsonl").read_text() != \
        control_answers


def test_bootstrap_interval_covers_the_mean_and_refuses_nothing_finite():
    values = np.random.default_rng(0).normal(10, 2, 200)
    low, high = bootstrap_interval(lambda s: values[s].mean(), len(values), 500)
    assert low < values.mean() < high and high - low < 1.5
    assert all(math.isnan(v) for v in bootstrap_interval(lambda s: float("nan"), 5, 10))


def test_world_demo_checks_settings_on_a_val_world_not_the_test_split(tmp_path):
    from eval.world_demo import _world

    with pytest.raises(ValueError, match="split"):
        WorldDemoConfig(split="train")
    folder, instances = _world(tmp_path, WorldDemoConfig(seed=2, images=2, split="val"))
    assert json.loads((folder / "world.json").read_text())["split"] == "val" and len(instances["images"]) == 2
    assert json.loads((folder / "demo_world.json").read_text())["split"] == "val"


def test_region_tokens_run_only_on_the_model_their_adapter_was_trained_on(tmp_path, capsys):
    """The shipped region adapter was trained on world-llava: `--world-model` leaves it out, never runs it silently
    on another model."""
    from eval.cli import _world_methods, build_parser, main

    with pytest.raises(ValueError, match="trained on world-llava.*--world-regions"):
        WorldDemoConfig(model="some/other-vlm")
    own = tmp_path / "own-adapter"
    own.mkdir()
    with pytest.raises(ValueError, match="not a control of some/other-vlm.*--world-control"):
        WorldDemoConfig(model="some/other-vlm", regions=str(own))
    WorldDemoConfig(model="some/other-vlm", regions=str(own), control="some/other-vlm-tuned")
    with pytest.raises(ValueError, match="control is not among the methods"):
        WorldDemoConfig(control="some/other-vlm-tuned", methods=("baseline",))
    with pytest.raises(ValueError, match="region-tokens is not among the methods"):
        WorldDemoConfig(model="some/other-vlm", regions=str(own), methods=("baseline", CONTROL), control="c")
    with pytest.raises(ValueError, match="no such region adapter folder"):  # refused before any work, not at the end
        WorldDemoConfig(model="some/other-vlm", regions=str(tmp_path / "missing"))
    assert main(["demo", "--out", str(tmp_path / "out"), "--world-images", "0", "--world-regions", str(own)]) == 2
    assert "not with --world-images 0" in capsys.readouterr().err and not (tmp_path / "out").exists()
    parse = lambda *a: build_parser().parse_args(["demo", *a])  # noqa: E731
    assert _world_methods(parse()) == WORLD_METHODS
    assert _world_methods(parse("--world-model", "m")) == tuple(m for m in WORLD_METHODS
                                                                if m not in ("region-tokens", CONTROL))
    assert _world_methods(parse("--world-model", "m", "--methods", "baseline, vcd")) == ("baseline", "vcd")
    assert _world_methods(parse("--world-model", "m", "--world-regions", "r")) == tuple(m for m in WORLD_METHODS
                                                                                       if m != CONTROL)
    assert _world_methods(parse("--world-model", "m", "--world-regions", "r", "--world-control", "c")) == WORLD_METHODS
    assert _world_methods(parse("--methods", "baseline,region-tokens,control")) == ("baseline", "region-tokens",
                                                                                   CONTROL)


def test_partner_trap_counts_yes_to_absent_partners_apart_from_other_absent_objects():
    from eval.world_demo import partner_trap

    rows = [{"key": "a|knife", "image": "a", "object": "knife", "label": "no"},  # fork present: the trap
            {"key": "a|bus", "image": "a", "object": "bus", "label": "no"},
            {"key": "a|fork", "image": "a", "object": "fork", "label": "yes"},  # positives are not counted
            {"key": "b|knife", "image": "b", "object": "knife", "label": "no"}]  # no fork in b: not a trap
    splits = {"random": rows, "adversarial": rows[:1]}  # the same question in two splits counts once
    answers = {"a|knife": "Yes, there is.", "a|bus": "No", "a|fork": "Yes", "b|knife": "yes"}
    trap = partner_trap(splits, answers, {"a": {"fork"}, "b": {"bus"}}, [["fork", "knife"]])
    assert trap == {"trap_questions": 1, "trap_yes": 1, "trap_yes_pct": 100.0,
                    "other_questions": 2, "other_yes": 1, "other_yes_pct": 50.0}
    empty = partner_trap({"random": rows[1:2]}, answers, {"a": {"fork"}}, [["fork", "knife"]])
    assert empty["trap_questions"] == 0 and empty["trap_yes_pct"] is None


def test_run_stamp_keeps_answers_when_rows_are_added(tmp_path):
    from eval.world_demo import run_stamp

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    one = run_stamp(WorldDemoConfig(methods=("baseline",)), str(model), str(model), None)
    more = run_stamp(WorldDemoConfig(methods=("baseline", "vcd"), bootstrap=50), str(model), str(model), None)
    assert one == more
    assert run_stamp(WorldDemoConfig(methods=("baseline",), seed=3), str(model), str(model), None) != one
    assert run_stamp(WorldDemoConfig(methods=("baseline",), caption_images=9), str(model), str(model), None) != one
