"""Stage-1 projector alignment (lightning_modules/align.py) on a tiny random LLaVA and a tiny generated world."""

from __future__ import annotations

import json
import math

import pytest
import torch


def test_patch_labels_pick_the_most_covering_class_above_the_threshold():
    from lightning_modules.align import patch_labels

    a = torch.zeros(8, 8)
    a[:4, :4] = 1  # the top-left cell of a 2x2 grid, fully
    b = torch.zeros(8, 8)
    b[:4, :2] = 1  # half of the top-left cell
    b[4:, 4:5] = 1  # a quarter of the bottom-right cell
    labels = patch_labels([(1, a), (2, b)], size=8, grid=2, min_coverage=0.3)
    assert labels.tolist() == [1, 0, 0, 0]  # class 2's quarter cell is below 0.3: background
    assert patch_labels([(1, a), (2, b)], size=8, grid=2, min_coverage=0.2).tolist() == [1, 0, 0, 2]
    assert patch_labels([], size=8, grid=2, min_coverage=0.3).tolist() == [0, 0, 0, 0]
    # masks are resized like the image: a mask of another shape covers the same fraction of the square input
    wide = torch.zeros(8, 16)
    wide[:, :8] = 1
    assert patch_labels([(3, wide)], size=8, grid=2, min_coverage=0.5).tolist() == [3, 0, 3, 0]


def test_align_projector_fits_the_masks_and_starts_the_fit(tmp_path, tiny_llava_dir):
    from safetensors.torch import load_file, save_file

    from grounding.region_tokens import RegionConfig
    from grounding.world import WorldConfig, build_world
    from lightning_modules.align import AlignConfig, align_projector, projector_of
    from lightning_modules.module import RegionTokensModule

    world = tmp_path / "world"
    build_world(world, seed=3, num_images=6, split="train", config=WorldConfig(short_side=[80, 112]))
    out = tmp_path / "align" / "projector.safetensors"
    stats = align_projector(tiny_llava_dir, world / "images", world / "annotations" / "instances.json", out,
                            image_size=32, config=AlignConfig(epochs=8, batch_patches=16))
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text()) == stats
    assert stats["images"] == 6 and stats["grid"] == 4 and 0 < stats["object_patch_fraction"] < 1
    losses = stats["loss_per_epoch"]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert 0.0 <= stats["patch_accuracy"] <= 1.0

    aligned = load_file(str(out))
    module = RegionTokensModule(vlm=tiny_llava_dir, regions=RegionConfig(num_regions=0), lora_r=4,
                                train_projector=True, image_size=32, projector_init=str(out))
    module.configure_model()
    wrapped = projector_of(module.model.base_model.model)  # peft's modules_to_save wrapper
    trained = {k.split("modules_to_save.default.")[-1]: v for k, v in wrapped.state_dict().items()
               if "modules_to_save" in k}
    assert set(trained) == set(aligned)
    for name, value in aligned.items():
        torch.testing.assert_close(trained[name], value)

    save_file({"linear_1.weight": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    broken = RegionTokensModule(vlm=tiny_llava_dir, regions=RegionConfig(num_regions=0), lora_r=4,
                                train_projector=True, projector_init=str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="projector"):
        broken.configure_model()


def test_align_refuses_a_cropping_processor(tmp_path, tiny_llava_dir):
    from grounding.world import WorldConfig, build_world
    from lightning_modules.align import align_projector

    world = tmp_path / "world"
    build_world(world, seed=3, num_images=2, split="train", config=WorldConfig(short_side=[80, 112]))
    with pytest.raises(ValueError, match="square resize"):  # the tiny processor resizes its shortest edge, then crops
        align_projector(tiny_llava_dir, world / "images", world / "annotations" / "instances.json",
                        tmp_path / "p.safetensors")
