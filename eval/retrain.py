"""`grounding demo --retrain`: rebuild the shipped world-llava and region-token weights from scratch.

1. world-llava: generate the world's train split (`TRAIN_WORLD`), align the projector to its instance masks
   (`lightning_modules.align`, stage 1), run `grounding fit` with
   configs/train/world_llava.yaml (projector + LoRA on the LLaVA-shaped DINOv2-S/14 + SmolLM2-135M), store the
   exported peft adapter in bf16 under grounding/data/world_llava with a recipe.json (image size, steps, time),
   and rebuild the `world-llava` asset from it.
2. world-llava-regions: `grounding fit` with configs/train/world_regions.yaml (region tokens + LoRA on top of
   world-llava, same train world), stored under grounding/data/world_regions, and its asset rebuilt.
3. world-llava-control: the same fit (same config, train world, steps and seeds) with
   `--model.regions.num_regions=0`: the same LoRA steps without region tokens, the control that tells what the region
   tokens add beyond the extra fine-tuning. Stored under grounding/data/world_control; its asset merges it into
   world-llava.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

__all__ = ["retrain", "TRAIN_WORLD", "package_adapter", "RECIPES"]

TRAIN_WORLD = {"seed": 0, "images": 2000, "split": "train"}  # 2 CPU cores: configs/train/world_llava.yaml
TRAIN_WORLD_GPU = {"seed": 0, "images": 4000, "split": "train"}  # one GPU: configs/train/world_llava_gpu.yaml
SHIPPED_TOWER = "~/.cache/vlm-grounding/dinov2-s14-imgfocus"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
RECIPES = ("world-llava", "world-llava-regions", "world-llava-control")  # `--retrain-only` choices, in build order


def _config(name: str) -> Path:
    path = CONFIGS / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: --retrain runs from a source checkout (git clone), where "
                                "configs/train/ holds the training recipes")
    return path


def _fit(config: Path, work: Path, overrides: list[str]) -> float:
    """One `grounding fit`; a run killed part way resumes from its last checkpoint (Lightning restores the step).

    Returns the fit's seconds. A resumed fit adds its earlier runs' time up to the checkpoint it resumes from
    (work/fit_clock.json notes when each run started); work done after that checkpoint was lost and is redone."""
    from lightning_modules.cli import main as fit_main

    last = work / "checkpoints" / "last.ckpt"
    clock = work / "fit_clock.json"
    earlier = 0.0
    if last.is_file() and clock.is_file():
        before = json.loads(clock.read_text())
        earlier = before["earlier_seconds"] + max(0.0, last.stat().st_mtime - before["started"])
    work.mkdir(parents=True, exist_ok=True)
    clock.write_text(json.dumps({"earlier_seconds": earlier, "started": time.time()}) + "\n")
    resume = [f"--ckpt_path={last}"] if last.is_file() else []
    start = time.perf_counter()
    fit_main(["--config", str(config), f"--trainer.default_root_dir={work}",
              f"--trainer.logger.init_args.save_dir={work}",
              f"--trainer.callbacks.init_args.dirpath={work / 'checkpoints'}",
              f"--model.export_dir={work / 'adapter'}", *overrides, *resume])
    return earlier + time.perf_counter() - start


def package_adapter(lora_dir: Path, target: Path) -> None:
    """peft adapter folder -> `target` with its weights in bf16 (a few MB to ship)."""
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(lora_dir / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, target / "adapter_model.safetensors",
              metadata={"format": "pt"})
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None  # assembled onto the local base by `grounding assets build`
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def retrain(work: str | Path, only: str | None = None, train_images: int | None = None,
            overrides: list[str] | None = None, gpu: bool = False, data_dir: str | Path | None = None,
            dtype: str | None = None) -> dict:
    """Every recipe of `RECIPES` in order (or `only` one); `train_images` / `overrides` shrink them for smoke tests.

    gpu=True trains with the one-GPU recipes (configs/train/world_*_gpu.yaml, `TRAIN_WORLD_GPU`); otherwise the
    2-CPU recipes (`TRAIN_WORLD`), which made the shipped weights. The base models come from this machine's asset
    cache ($VLM_GROUNDING_CACHE). The packaged weights go to `data_dir` (default: this checkout's grounding/data, where
    the assets are built from). `dtype` replaces the configs' frozen-VLM dtype (bfloat16): float32 on a CPU without
    bf16 matmul units, where a bf16 step runs about 50x slower (the recipe.json records the dtype used).
    """
    from grounding import assets
    from grounding.world import build_world
    from lightning_modules.align import align_projector

    if only is not None and only not in RECIPES:
        raise ValueError(f"unknown recipe {only!r}; choose from {', '.join(RECIPES)}")
    work = Path(work)
    data = Path(data_dir) if data_dir else Path(__file__).resolve().parents[1] / "grounding" / "data"
    train_world = dict(TRAIN_WORLD_GPU if gpu else TRAIN_WORLD)
    if train_images:
        train_world["images"] = train_images
    world = work / f"world-train-{train_world['images']}"
    if not (world / "world.json").is_file():
        build_world(world, train_world["seed"], train_world["images"], train_world["split"], overwrite=True)
    if dtype not in (None, "bfloat16", "float32"):
        raise ValueError(f"dtype must be bfloat16 or float32, got {dtype!r}")
    device_args = ["--trainer.accelerator=gpu" if gpu else "--trainer.accelerator=cpu",
                   *([f"--model.dtype={dtype}"] if dtype else [])]
    data_args = [*device_args, *(overrides or []), f"--data.image_root={world / 'images'}",
                 f"--data.instances={world / 'annotations' / 'instances.json'}",
                 f"--data.captions={world / 'annotations' / 'captions.json'}"]
    records = {}
    if only in (None, "world-llava"):
        config = _config("world_llava_gpu.yaml" if gpu else "world_llava.yaml")
        start = time.perf_counter()
        base = assets.build(assets.LLAVA)
        aligned = work / "world_llava" / "projector_init.safetensors"
        if not aligned.is_file():  # stage 1: the projector fitted to the train split's masks
            image_size = yaml.safe_load(config.read_text())["model"].get("image_size")
            align_projector(str(base), world / "images", world / "annotations" / "instances.json", aligned,
                            image_size, device="cuda" if gpu else "cpu")
        alignment = json.loads(aligned.with_suffix(".json").read_text())
        # an alignment reused from an earlier run (same work folder) counts with the time it took then
        align_seconds = max(time.perf_counter() - start, float(alignment.get("seconds", 0.0)))
        seconds = align_seconds + _fit(config, work / "world_llava", data_args + [
            f"--model.vlm={base}", f"--model.projector_init={aligned}"])
        target = data / "world_llava"
        shutil.rmtree(target, ignore_errors=True)
        package_adapter(work / "world_llava" / "adapter" / "lora", target)
        records["world-llava"] = _recipe(target, work / "world_llava", seconds, train_world, alignment=alignment)
        assets.build(assets.WORLD_LLAVA, force=True)
    regions_config = "world_regions_gpu.yaml" if gpu else "world_regions.yaml"

    def on_world_llava() -> list[str]:  # the region-token fit and its control start from the same world-llava
        return [f"--model.vlm={assets.require(assets.WORLD_LLAVA)}",
                f"--model.regions.tower={assets.build(assets.VIT)}"]

    if only in (None, "world-llava-regions"):
        seconds = _fit(_config(regions_config), work / "world_regions", data_args + on_world_llava())
        target = data / "world_regions"
        shutil.rmtree(target, ignore_errors=True)
        exported = work / "world_regions" / "adapter"
        package_adapter(exported / "lora", target / "lora")
        shutil.copy(exported / "region_projector.safetensors", target / "region_projector.safetensors")
        config = json.loads((exported / "region_grounding.json").read_text())
        # not this machine's path: `grounding assets build` points it at the local cache
        config["tower"] = SHIPPED_TOWER
        (target / "region_grounding.json").write_text(json.dumps(config, indent=2) + "\n")
        records["world-llava-regions"] = _recipe(target, work / "world_regions", seconds, train_world)
        assets.build(assets.WORLD_REGIONS, force=True)
    if only in (None, "world-llava-control"):
        # the same fit as world-llava-regions (config, train world, steps, seeds), without region tokens: its export
        # is a plain peft LoRA (lora/), merged into world-llava by the asset
        seconds = _fit(_config(regions_config), work / "world_control",
                       data_args + on_world_llava() + ["--model.regions.num_regions=0"])
        target = data / "world_control"
        shutil.rmtree(target, ignore_errors=True)
        package_adapter(work / "world_control" / "adapter" / "lora", target)
        records["world-llava-control"] = _recipe(target, work / "world_control", seconds, train_world)
        assets.build(assets.WORLD_CONTROL, force=True)
    return records


def _recipe(target: Path, run: Path, seconds: float, train_world: dict, alignment: dict | None = None) -> dict:
    """recipe.json beside the shipped weights: how they were made (config, world, time, final loss)."""
    config = yaml.safe_load(next(run.glob("**/config.yaml")).read_text())
    losses = []
    for metrics in run.glob("**/metrics.csv"):
        losses += [float(r["train/loss"]) for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
    on_gpu = torch.cuda.is_available() and config["trainer"].get("accelerator") != "cpu"
    recipe = {"image_size": config["model"].get("image_size"), "train_world": train_world,
              "max_steps": config["trainer"]["max_steps"], "batch_size": config["data"]["batch_size"],
              "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name() if on_gpu else "cpu",
              "final_loss_mean_last_5_logs": round(sum(losses[-5:]) / max(1, len(losses[-5:])), 4) if losses else None,
              "config": config}
    if alignment is not None:  # stage 1 (lightning_modules.align): its statistics; its time is in train_seconds
        recipe["alignment"] = {k: v for k, v in alignment.items() if k != "vlm"}
    (target / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True, default=str) + "\n")
    return recipe
