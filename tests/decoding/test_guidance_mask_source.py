"""highlight and masked-contrast with a mask source (GuidanceConfig.mask_source) and their registered twins:
object-dino is exactly the Object-DINO path, random keeps the regions' number and areas, oracle draws with the
ground-truth masks and needs no tower."""

import json

import numpy as np
import pytest
import torch

from grounding.decoding.chat import encode_chat
from grounding.decoding.guidance import GuidanceConfig, ObjectGuidance
from grounding.decoding.highlight import jet_overlay, red_tint, remove_objects
from grounding.methods import build_method, check_method_options, needs_tower
from grounding.objects.object_dino import ObjectDINO, ObjectDINOConfig
from grounding.objects.regions import connected_components
from tiny_vlm import make_tiny_llava, photos

QUESTIONS = ["is there a dog in the image ?", "is there a red bus ?", "is there a cat ?"]
OD = {"k": 2, "restarts": 2}  # the tiny tower has 2 layers x 2 heads
MODES = ("highlight", "masked-contrast")


def areas(values: torch.Tensor, threshold: float = 0.5) -> list[int]:
    labels = connected_components(values > threshold)
    return sorted(int((labels == i).sum()) for i in range(1, int(labels.max()) + 1))


def oracle_world(root, images) -> str:
    """A COCO instances file over `images` (saved under root/images), one rectangle instance per image."""
    from pycocotools import mask as mask_utils

    (root / "images").mkdir()
    (root / "annotations").mkdir()
    records, annotations = [], []
    for index, image in enumerate(images, start=1):
        image.save(root / "images" / f"{index}.png")
        truth = np.zeros((image.height, image.width), dtype=np.uint8)
        truth[2 + index : 12 + index, 4:20] = 1
        rle = mask_utils.encode(np.asfortranarray(truth))
        rle["counts"] = rle["counts"].decode()
        records.append({"id": index, "file_name": f"{index}.png", "height": image.height, "width": image.width})
        annotations.append({"id": index, "image_id": index, "category_id": 1, "segmentation": rle, "iscrowd": 0})
    path = root / "annotations" / "instances.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations,
                                "categories": [{"id": 1, "name": "dog"}]}))
    return str(path)


@pytest.mark.parametrize("task", ["question", "caption"])
@pytest.mark.parametrize("mode", MODES)
def test_object_dino_source_is_exactly_the_object_map_path(mode, task, tower):
    """Default and explicit object-dino answers equal decoding with branch images drawn straight from Object-DINO
    maps (the code path before mask sources existed)."""
    model, processor = make_tiny_llava()
    images = photos(3)  # three sizes: three tower calls of one image each, as the guide makes them
    maps = [ObjectDINO(ObjectDINOConfig(**OD)).object_maps(tower([image]), upsample=True)[0].cpu() for image in images]
    if mode == "masked-contrast":
        branch_images = [remove_objects(image, m, 0.5, "mean") for image, m in zip(images, maps)]
    else:
        branch_images = [(jet_overlay(image, m) if task == "caption" else red_tint(image, m, 0.5))
                         for image, m in zip(images, maps)]
    default = ObjectGuidance(tower, processor, mode=mode, task=task, object_dino=OD)
    explicit = build_method(mode, tower, processor, task=task, mask_source="object-dino", object_dino=OD)
    for guide in (default, explicit):
        for image, branch in zip(images, branch_images):
            assert np.array_equal(np.asarray(guide.branch_image(image)), np.asarray(branch))
    original_texts, branch_texts = default.prompt_texts(QUESTIONS)
    inputs = encode_chat(processor, images, original_texts, model.device, model.dtype)
    branch = encode_chat(processor, branch_images, branch_texts, model.device, model.dtype)
    sequence = default.generate_encoded(model, inputs, branch, max_new_tokens=6)
    expected = processor.batch_decode(sequence[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert default.generate(model, images, QUESTIONS, max_new_tokens=6) == expected
    assert explicit.generate(model, images, QUESTIONS, max_new_tokens=6) == expected


@pytest.mark.parametrize("mode", MODES)
def test_random_source_keeps_number_and_areas_of_the_regions(mode, tower):
    model, processor = make_tiny_llava()
    images = photos(3)
    plain = ObjectGuidance(tower, processor, mode=mode, object_dino=OD)
    twin = build_method(f"{mode}@random", tower, processor, object_dino=OD, seed=5)
    assert twin.config.mask_source == "random" and twin.config.mode == mode
    moved_somewhere = False
    for image, object_map, region_map in zip(images, plain.object_maps(images), twin.region_maps(images)):
        assert region_map.shape == object_map.shape
        assert areas(region_map) == areas(object_map) and len(areas(object_map)) >= 1
        assert sorted(region_map[region_map > 0.5].tolist()) == sorted(object_map[object_map > 0.5].tolist())
        moved_somewhere |= not torch.equal(region_map > 0.5, object_map > 0.5)
        assert np.array_equal(np.asarray(twin.branch_image(image)),  # drawn with the moved map
                              np.asarray(ObjectGuidance(tower, processor, mode=mode, object_dino=OD)
                                         .branch_image(image, region_map)))
    assert moved_somewhere
    calls = twin.tower_calls
    assert all(torch.equal(a, b) for a, b in zip(twin.region_maps(images[::-1])[::-1], twin.region_maps(images)))
    assert twin.tower_calls == calls  # cached per image, whatever the batch order
    reseeded = build_method(f"{mode}@random", tower, processor, object_dino=OD, seed=6)
    assert any(not torch.equal(a, b) for a, b in zip(twin.region_maps(images), reseeded.region_maps(images)))
    same = ObjectGuidance(tower, processor, mode=mode, mask_source="random", seed=5, object_dino=OD)
    assert (twin.generate(model, images, QUESTIONS, max_new_tokens=5)
            == same.generate(model, images, QUESTIONS, max_new_tokens=5))


@pytest.mark.parametrize("mode", MODES)
def test_oracle_source_draws_the_ground_truth_without_a_tower(mode, tmp_path):
    model, processor = make_tiny_llava()
    images = photos(2)
    instances = oracle_world(tmp_path, images)
    assert not needs_tower(f"{mode}@oracle") and needs_tower(f"{mode}@random") and needs_tower(mode)
    twin = build_method(f"{mode}@oracle", None, processor, oracle_instances=instances)
    for index, (image, region_map) in enumerate(zip(images, twin.region_maps(images)), start=1):
        truth = torch.zeros(image.height, image.width)
        truth[2 + index : 12 + index, 4:20] = 1.0
        assert torch.equal(region_map, truth)
        drawn = (red_tint(image, truth, 0.5) if mode == "highlight" else remove_objects(image, truth, 0.5, "mean"))
        assert np.array_equal(np.asarray(twin.branch_image(image)), np.asarray(drawn))
    assert twin.tower_calls == 0
    assert len(twin.generate(model, images, QUESTIONS[:2], max_new_tokens=4)) == 2


def test_options_and_twins_refused_with_clear_errors(tmp_path):
    _, processor = make_tiny_llava()
    for mode in MODES:
        check_method_options(mode, {"mask_source": "random", "seed": 3})
        check_method_options(f"{mode}@random", {"seed": 3, "alpha": 0.5})
        with pytest.raises(ValueError, match=f"{mode}@oracle: mask_source 'oracle' needs oracle_instances"):
            check_method_options(f"{mode}@oracle", {})
        with pytest.raises(ValueError, match=rf"{mode}@random.mask_source must be one of 'random'"):
            check_method_options(f"{mode}@random", {"mask_source": "oracle", "oracle_instances": "x.json"})
        with pytest.raises(ValueError, match="mask_source must be one of 'object-dino', 'random', 'oracle'"):
            check_method_options(mode, {"mask_source": "none"})
        with pytest.raises(ValueError, match=f"{mode}@random runs mask_source 'random', not 'object-dino'"):
            build_method(f"{mode}@random", None, processor, mask_source="object-dino")
        with pytest.raises(ValueError, match="needs a grounding tower"):
            build_method(f"{mode}@random", None, processor)
    with pytest.raises(ValueError, match="vcd: mode 'vcd' noises the whole image"):
        check_method_options("vcd", {"mask_source": "random"})
    with pytest.raises(ValueError, match="needs oracle_instances"):
        GuidanceConfig(mode="highlight", mask_source="oracle")
    with pytest.raises(ValueError, match="unknown option"):
        check_method_options("highlight", {"mode": "vcd"})


@pytest.mark.parametrize("mode", MODES)
def test_instance_regions_draw_with_the_union_of_the_object_instances(mode, tower):
    """regions="instances": the branch is drawn with 1.0 inside the union of ObjectDINO.instances' pixel masks."""
    from grounding.objects.instance_registry import instance_pixel_masks

    _, processor = make_tiny_llava()
    images = photos(2)
    guide = build_method(mode, tower, processor, regions="instances", max_objects=3, object_dino=OD)
    for image, drawn in zip(images, guide.region_maps(images)):
        out = tower([image])
        found = ObjectDINO(ObjectDINOConfig(**OD)).instances(out, max_objects=3)
        assert bool(found.valid[0].any())
        union = instance_pixel_masks(found, out, 0).any(0)
        assert drawn.shape == (image.height, image.width)
        assert torch.equal(drawn, union.float())
        expected = remove_objects(image, union.float(), 0.5, "mean") if mode == "masked-contrast" else \
            red_tint(image, union.float(), 0.5)
        assert np.array_equal(np.asarray(guide.branch_image(image)), np.asarray(expected))
    calls = guide.tower_calls
    guide.region_maps(images)  # kept per image
    assert guide.tower_calls == calls
    moved = build_method(f"{mode}@random", tower, processor, regions="instances", max_objects=3, object_dino=OD)
    for image, drawn, plain in zip(images, moved.region_maps(images), guide.region_maps(images)):
        assert areas(drawn) == areas(plain)  # the union's regions, moved


def test_regions_option_is_checked():
    with pytest.raises(ValueError, match="regions must be 'map' or 'instances'"):
        GuidanceConfig(mode="highlight", regions="boxes")
    with pytest.raises(ValueError, match="max_objects must be >= 1"):
        GuidanceConfig(mode="highlight", regions="instances", max_objects=0)
    with pytest.raises(ValueError, match="mode 'vcd' .* regions"):
        GuidanceConfig(mode="vcd", regions="instances")
