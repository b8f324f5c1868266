"""Region tokens on a tiny random LLaVA: exactness when off, token placement, generate(), save/load, detach."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.region_tokens.injection import image_feature_owner
from grounding.region_tokens import RegionConfig, RegionGrounding
from tiny_vlm import make_tiny_llava

OD = {"k": 2, "restarts": 2}


def prompt(processor, question="is there a dog ?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def images():
    rng = np.random.default_rng(0)
    textured = Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8))
    flat = Image.new("RGB", (50, 50), (120, 120, 120))
    return [textured, flat]


def encode(processor, imgs):
    return processor(images=imgs, text=[prompt(processor)] * len(imgs), return_tensors="pt", padding=True,
                     padding_side="left")


def test_k_zero_and_detach_give_the_stock_model_exactly(tower):
    model, processor = make_tiny_llava()
    imgs = images()
    with torch.no_grad():
        stock = model(**encode(processor, imgs)).logits
    zero = RegionGrounding(RegionConfig(num_regions=0, object_dino=OD), tower=tower).attach(model, processor)
    with torch.no_grad():
        assert torch.equal(model(**encode(processor, imgs)).logits, stock)
    zero.detach()
    handle = RegionGrounding(RegionConfig(num_regions=3, object_dino=OD, projector_hidden=16), tower=tower).attach(
        model, processor)
    with torch.no_grad():
        assert model(**encode(processor, imgs)).logits.shape[1] == stock.shape[1] + 3
    handle.detach()
    handle.detach()  # idempotent
    assert "get_image_features" not in image_feature_owner(model).__dict__
    assert processor.num_additional_image_tokens == 1 and not hasattr(model, "region_projector")
    with torch.no_grad():
        assert torch.equal(model(**encode(processor, imgs)).logits, stock)


def test_region_tokens_follow_the_image_tokens(tower):
    model, processor = make_tiny_llava()
    k = 3
    grounding = RegionGrounding(RegionConfig(num_regions=k, object_dino=OD, projector_hidden=16), tower=tower)
    handle = grounding.attach(model, processor)
    imgs = images()
    inputs = encode(processor, imgs)
    captured = {}
    language_model = model.model.language_model
    hook = language_model.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    original = model.model.get_image_features
    with torch.no_grad():
        vision_only = original.__wrapped__(pixel_values=inputs["pixel_values"],
                                           vision_feature_layer=-1, vision_feature_select_strategy="default")
        model(**inputs)
    hook.remove()
    embeds = captured["inputs_embeds"]  # (B, T, D)
    image_token = model.config.image_token_id
    from grounding.region_tokens import extract_regions
    from grounding.region_tokens.injection import pixels_to_rgb

    regions = extract_regions(tower, grounding.object_dino, pixels_to_rgb(
        inputs["pixel_values"], processor.image_processor.image_mean, processor.image_processor.image_std), grounding.config)
    counts = regions.valid.sum(1).tolist()
    assert counts[0] != counts[1] and min(counts) < k  # different numbers of regions; some slots empty
    with torch.no_grad():
        expected_tokens = model.region_projector(regions.features, regions.boxes, regions.valid)  # (B, K, D)
    for row in range(2):
        positions = (inputs["input_ids"][row] == image_token).nonzero().squeeze(1)
        n = vision_only.pooler_output[row].shape[0]
        assert len(positions) == n + k and torch.equal(positions, torch.arange(positions[0], positions[0] + n + k))
        torch.testing.assert_close(embeds[row, positions[:n]], vision_only.pooler_output[row])
        torch.testing.assert_close(embeds[row, positions[n:]], expected_tokens[row])
    empty_row = int(torch.tensor(counts).argmin())
    positions = (inputs["input_ids"][empty_row] == image_token).nonzero().squeeze(1)
    n = vision_only.pooler_output[empty_row].shape[0]
    empty = ~regions.valid[empty_row]
    torch.testing.assert_close(embeds[empty_row, positions[n:]][empty],
                               model.region_projector.null.expand(int(empty.sum()), -1))
    handle.detach()


def test_repeated_images_of_a_batch_are_analysed_once_with_the_same_tokens(tower, monkeypatch):
    from grounding.region_tokens import injection

    model, processor = make_tiny_llava()
    grounding = RegionGrounding(RegionConfig(num_regions=3, object_dino=OD, projector_hidden=16), tower=tower)
    handle = grounding.attach(model, processor)
    textured, flat = images()
    seen = []
    real = injection.extract_regions

    def counted(t, od, rgb, cfg):
        seen.append(len(rgb))
        return real(t, od, rgb, cfg)

    monkeypatch.setattr(injection, "extract_regions", counted)
    captured = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: captured.append(kw["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**encode(processor, [textured, flat]))
        model(**encode(processor, [textured, flat, textured, textured]))
    hook.remove()
    handle.detach()
    assert seen == [2, 2]  # the 4-row batch analysed its 2 distinct images
    distinct, repeated = captured
    for row, source in enumerate([0, 1, 0, 0]):
        torch.testing.assert_close(repeated[row], distinct[source])


def test_generate_greedy_and_sampling_and_save_load(tower, tmp_path):
    model, processor = make_tiny_llava()
    grounding = RegionGrounding(RegionConfig(num_regions=2, object_dino=OD, projector_hidden=16), tower=tower)
    handle = grounding.attach(model, processor)
    inputs = encode(processor, images())
    greedy = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=5, do_sample=True, temperature=0.9)
    assert greedy.shape == sampled.shape == (2, inputs["input_ids"].shape[1] + 5)
    with torch.no_grad():
        before = model(**inputs).logits
    grounding.save_pretrained(tmp_path)
    handle.detach()
    loaded = RegionGrounding.from_pretrained(tmp_path, tower=tower)
    assert loaded.config.num_regions == 2 and (tmp_path / "region_projector.safetensors").exists()
    with loaded.attach(model, processor):
        with torch.no_grad():
            torch.testing.assert_close(model(**encode(processor, images())).logits, before)
    with pytest.raises(FileNotFoundError, match="region_grounding.json"):
        RegionGrounding.from_pretrained(tmp_path / "nothing")


def test_vlm_feature_source_and_double_attach(tower):
    model, processor = make_tiny_llava()
    grounding = RegionGrounding(RegionConfig(num_regions=2, feature_source="vlm", object_dino=OD, projector_hidden=16),
                                tower=tower)
    handle = grounding.attach(model, processor)
    with torch.no_grad():
        assert torch.isfinite(model(**encode(processor, images())).logits).all()
    with pytest.raises(RuntimeError, match="already attached"):
        grounding.attach(model, processor)
    handle.detach()


def test_region_tokens_method_binds_adapter_and_lora_then_restores_the_model(tower, tiny_reg_dir, tmp_path):
    """The eval method "region-tokens": a saved adapter (+ its LoRA) changes the answers while bound, and the
    model is exactly the stock model after."""
    from peft import LoraConfig, get_peft_model

    from grounding.methods import build_method

    model, processor = make_tiny_llava()
    imgs = images()
    with torch.no_grad():
        stock = model(**encode(processor, imgs)).logits
    grounding = RegionGrounding(RegionConfig(num_regions=2, tower=tiny_reg_dir, tower_short_side=32, object_dino=OD,
                                             projector_hidden=16), tower=tower)
    handle = grounding.attach(model, processor)
    grounding.save_pretrained(tmp_path / "adapter")
    handle.detach()
    scratch, _ = make_tiny_llava()
    lora = get_peft_model(scratch, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                              init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter" / "lora")

    method = build_method("region-tokens", None, processor, adapter=str(tmp_path / "adapter"), task="question")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with method.bind(model):
            with torch.no_grad():
                bound = model(**encode(processor, imgs)).logits
            answers = method.generate(model, imgs, ["is there a dog ?"] * 2, max_new_tokens=3, do_sample=False)
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]  # quiet: peft too
    assert bound.shape[1] == stock.shape[1] + 2 and len(answers) == 2
    assert processor.num_additional_image_tokens == 1 and not hasattr(model, "region_projector")
    assert not any("lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(**encode(processor, imgs)).logits, stock)
    with pytest.raises(ValueError, match="adapter folder"):
        build_method("region-tokens", None, processor)

    # the processor `grounding fit` saves beside the LoRA names the trained image size: the method runs at that size,
    # on its own copy (the runner's processor, shared with the other methods, is left as it is)
    import copy

    from grounding.assets import set_image_size

    processor.save_pretrained(tmp_path / "adapter" / "lora")
    same = build_method("region-tokens", None, processor, adapter=str(tmp_path / "adapter"), task="question")
    assert same.processor is processor
    resized = copy.deepcopy(processor)
    set_image_size(resized, 64)
    method = build_method("region-tokens", None, resized, adapter=str(tmp_path / "adapter"), task="question")
    assert method.processor is not resized and method.processor.image_processor.size == processor.image_processor.size
    assert resized.image_processor.size == {"height": 64, "width": 64}


def test_instance_regions_are_the_object_instances(tower, tmp_path):
    """RegionConfig(regions="instances"): the regions are ObjectDINO.instances' valid masks in order, each feature the
    mean patch token under its mask, each box its patch box over the grid; the region-tokens method takes the option."""
    from grounding.objects.object_dino import ObjectDINO, ObjectDINOConfig
    from grounding.region_tokens import extract_regions

    k = 3
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)) for _ in range(2)]  # one grid size
    config = RegionConfig(num_regions=k, object_dino=OD, projector_hidden=16, regions="instances")
    grounding = RegionGrounding(config, tower=tower)
    regions = extract_regions(tower, grounding.object_dino, imgs, config)
    for row, image in enumerate(imgs):
        out = tower([image])
        found = ObjectDINO(ObjectDINOConfig(**OD)).instances(out, max_objects=k)
        keep = found.valid[0]
        n = int(keep.sum())
        assert torch.equal(regions.valid[row], torch.arange(k) < n)
        assert torch.equal(regions.masks[row, :n], found.masks[0][keep])
        tokens = out.patch_tokens().float()[0]  # (N, C)
        h, w = out.grid
        for slot in range(n):
            mask = found.masks[0][keep][slot].flatten()
            torch.testing.assert_close(regions.features[row, slot], tokens[mask].mean(0))
            x0, y0, x1, y1 = found.patch_boxes[0][keep][slot].tolist()
            torch.testing.assert_close(regions.boxes[row, slot],
                                       torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h, float(mask.sum()) / (h * w)]))
    with pytest.raises(ValueError, match="regions must be 'map' or 'instances'"):
        RegionConfig(regions="boxes")
    from grounding.methods import check_method_options

    with pytest.raises(ValueError, match="regions must be 'map' or 'instances'"):
        check_method_options("region-tokens", {"adapter": str(tmp_path), "regions": "boxes"})
    check_method_options("region-tokens", {"adapter": str(tmp_path), "regions": "instances"})


@pytest.mark.parametrize("regions", ["map", "instances"])
def test_pil_images_of_different_grids_share_one_batch(tower, regions):
    """A list of PIL images whose tower grids differ (a landscape and a portrait photo): each row equals the image
    extracted alone, its masks in the top-left corner of the batch's largest grid, False elsewhere."""
    from grounding.region_tokens import extract_regions

    rng = np.random.default_rng(2)
    imgs = [Image.fromarray((rng.random(shape) * 255).astype(np.uint8)) for shape in ((40, 60, 3), (60, 40, 3))]
    config = RegionConfig(num_regions=3, object_dino=OD, projector_hidden=16, regions=regions)
    grounding = RegionGrounding(config, tower=tower)
    both = extract_regions(tower, grounding.object_dino, imgs, config)
    alone = [extract_regions(tower, grounding.object_dino, [image], config) for image in imgs]
    grids = [a.masks.shape[-2:] for a in alone]
    assert grids[0] != grids[1]
    rows, cols = max(g[0] for g in grids), max(g[1] for g in grids)
    assert both.masks.shape == (2, 3, rows, cols)
    for row, (single, (h, w)) in enumerate(zip(alone, grids)):
        torch.testing.assert_close(both.features[row], single.features[0])
        torch.testing.assert_close(both.boxes[row], single.boxes[0])
        assert torch.equal(both.valid[row], single.valid[0])
        assert torch.equal(both.masks[row, :, :h, :w], single.masks[0])
        assert not both.masks[row, :, h:].any() and not both.masks[row, :, :, w:].any()
