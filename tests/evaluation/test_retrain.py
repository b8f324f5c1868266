"""eval.retrain: a fit killed and resumed reports the time of all its runs, not the last one's; the control
recipe (the region-token fit without region tokens) packages its LoRA and merges it into world-llava."""

import json
import os
import time

import numpy as np


def test_a_resumed_fit_counts_its_earlier_runs_up_to_the_checkpoint(tmp_path, monkeypatch):
    import lightning_modules.cli as cli
    from eval.retrain import _fit

    calls = []

    def fake_fit(args):  # stands in for `grounding fit`: the first run writes last.ckpt and is "killed"
        calls.append(args)
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"step")
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", fake_fit)
    try:
        _fit(tmp_path / "c.yaml", tmp_path, [])
    except KeyboardInterrupt:
        pass
    clock = json.loads((tmp_path / "fit_clock.json").read_text())
    assert clock["earlier_seconds"] == 0.0 and not any(a.startswith("--ckpt_path") for a in calls[0])
    last = tmp_path / "checkpoints" / "last.ckpt"
    os.utime(last, (clock["started"] + 100.0, clock["started"] + 100.0))  # the checkpoint came 100 s into run 1
    seconds = _fit(tmp_path / "c.yaml", tmp_path, [])
    assert f"--ckpt_path={last}" in calls[1]
    assert 100.0 <= seconds < 100.0 + 60.0
    assert json.loads((tmp_path / "fit_clock.json").read_text())["started"] <= time.time()


def test_the_control_recipe_is_the_region_fit_without_region_tokens_merged_into_world_llava(
        tmp_path, monkeypatch, tiny_llava_dir, tiny_reg_dir):
    """`--retrain-only world-llava-control` end to end on a tiny world and a tiny LLaVA standing in for world-llava:
    configs/train/world_regions.yaml with num_regions 0, exported as a plain peft LoRA, packaged in bf16 with its
    recipe.json, and the world-llava-control asset = world-llava with that LoRA merged in (its logits are those of
    base + adapter, not the base's)."""
    import shutil

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from eval.retrain import retrain
    from grounding import assets

    cache, data = tmp_path / "cache", tmp_path / "data"
    monkeypatch.setenv("VLM_GROUNDING_CACHE", str(cache))
    monkeypatch.setattr(assets, "shipped_weights", lambda name: data / assets.SHIPPED[name])
    for name, source in ((assets.WORLD_LLAVA, tiny_llava_dir), (assets.VIT, tiny_reg_dir)):
        shutil.copytree(source, cache / name)
        (cache / name / "DONE.json").write_text("{}")
    records = retrain(tmp_path / "work", only="world-llava-control", train_images=4, data_dir=data, overrides=[
        "--trainer.max_steps=3", "--data.batch_size=2", "--model.learning_rate=0.05", "--model.warmup_steps=0",
        "--model.dtype=float32"])

    recipe = records["world-llava-control"]
    assert recipe["config"]["model"]["regions"]["num_regions"] == 0 and recipe["max_steps"] == 3
    assert recipe["config"]["model"]["vlm"] == str(cache / assets.WORLD_LLAVA) and recipe["train_seconds"] > 0
    assert recipe["train_world"] == {"seed": 0, "images": 4, "split": "train"}
    shipped = data / "world_control"
    assert sorted(p.name for p in shipped.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "recipe.json"]
    weights = load_file(shipped / "adapter_model.safetensors")
    assert weights and all("lora_" in k and v.dtype == torch.bfloat16 for k, v in weights.items())

    folder = assets.require(assets.WORLD_CONTROL)
    done = json.loads((folder / "DONE.json").read_text())
    assert done["base"] == str(cache / assets.WORLD_LLAVA) and done["max_steps"] == 3 and done["merge_max_abs"] < 1e-4
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=[np.full((40, 48, 3), 90, np.uint8)], text=["<image> is there a dog ?"],
                       return_tensors="pt")
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    merged = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        plain = base(**inputs).logits
        adapted = PeftModel.from_pretrained(base, shipped).eval()(**inputs).logits
        got = merged(**inputs).logits
    assert float((got - adapted).abs().max()) < 1e-4 and float((got - plain).abs().max()) > 1e-3
