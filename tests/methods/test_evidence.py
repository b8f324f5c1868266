"""Region evidence (grounding/evidence.py): its building blocks on tiny models, exactly."""

import json

import numpy as np
import pytest
import torch

from grounding.methods.evidence import (
    EvidenceConfig,
    EvidenceLogitsProcessor,
    ObjectVocabulary,
    OracleMasks,
    RegionEvidence,
    image_token_reading,
    instance_cells,
    random_regions,
    region_cells,
)
from grounding.methods import Baseline, build_method, check_method_options, needs_tower
from tiny_vlm import make_tiny_llava, photos

OD = {"k": 2, "restarts": 2}
QUESTIONS = ["is there a dog in the image ?", "is there a red bus ?", "is there a cat ?"]


@pytest.fixture(scope="module")
def tower(tiny_reg_dir):
    from grounding import RegisterViT

    return RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"size": (32, 32)})


def test_batched_reading_equals_one_image_at_a_time():
    model, processor = make_tiny_llava()
    images = photos(3)
    words = ObjectVocabulary().embeddings(model, processor.tokenizer)
    together = image_token_reading(model, processor, images, words)
    for image, (votes, cosines) in zip(images, together):
        alone_votes, alone_cosines = image_token_reading(model, processor, [image], words)[0]
        assert votes.shape == (4, 4) and cosines.shape == (4, 4, 81)
        assert torch.equal(votes, alone_votes)
        torch.testing.assert_close(cosines, alone_cosines, rtol=1e-5, atol=1e-6)


def test_batched_reading_qwen2_vl_equals_one_image_at_a_time():
    from tiny_qwen2_vl import make_tiny_qwen2_vl

    model, processor = make_tiny_qwen2_vl()
    images = photos(3)
    words = ObjectVocabulary().embeddings(model, processor.tokenizer)
    together = image_token_reading(model, processor, images, words)
    for image, (votes, cosines) in zip(images, together):
        alone_votes, alone_cosines = image_token_reading(model, processor, [image], words)[0]
        assert torch.equal(votes, alone_votes)
        torch.testing.assert_close(cosines, alone_cosines, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["question", "caption"])
def test_zero_strength_is_plain_greedy(tower, task):
    model, processor = make_tiny_llava()
    images = photos(3)
    plain = Baseline(processor=processor).generate(model, images, QUESTIONS, max_new_tokens=6, do_sample=False)
    method = RegionEvidence(tower, processor, task=task, strength=0.0, caption_strength=0.0, object_dino=OD)
    assert method.generate(model, images, QUESTIONS, max_new_tokens=6, do_sample=False) == plain
    processor_ = EvidenceLogitsProcessor(torch.zeros(2, 10))
    scores = torch.randn(2, 10)
    assert processor_(None, scores) is scores


def test_penalty_lowers_yes_only_for_unsupported_objects(tower):
    model, processor = make_tiny_llava()
    method = RegionEvidence(tower, processor, strength=3.0, object_dino=OD)
    images = photos(3)
    categories = method.vocabulary.categories
    counts = torch.zeros(1 + len(categories), dtype=torch.long)
    counts[1 + categories.index("dog")] = 2  # the regions show a dog, nothing else
    method.support = lambda model_, images_: [counts] * len(images_)
    vocab = model.get_output_embeddings().weight.shape[0]
    penalty = method.penalties(model, images, QUESTIONS, vocab)
    yes = processor.tokenizer.convert_tokens_to_ids("yes")
    assert penalty[0].abs().sum() == 0  # dog: seen
    assert penalty[1, yes] == 3.0 and penalty[2, yes] == 3.0  # bus, cat: no region votes for them
    assert (penalty[1] != 0).sum() == 1
    captions = RegionEvidence(tower, processor, task="caption", strength=3.0, caption_strength=None, object_dino=OD)
    captions.support = method.support
    penalty = captions.penalties(model, images[:1], ["please describe"], vocab)
    tokenizer = processor.tokenizer
    assert penalty[0, tokenizer.convert_tokens_to_ids("dog")] == 0
    assert (
        penalty[0, tokenizer.convert_tokens_to_ids("cat")] == 3.0
        and penalty[0, tokenizer.convert_tokens_to_ids("bus")] == 3.0
    )
    softer = RegionEvidence(tower, processor, task="caption", strength=3.0, caption_strength=1.5, object_dino=OD)
    softer.support = method.support
    penalty = softer.penalties(model, images[:1], ["please describe"], vocab)
    assert penalty[0, tokenizer.convert_tokens_to_ids("cat")] == 1.5 and penalty[0, tokenizer.convert_tokens_to_ids("dog")] == 0
    questions = RegionEvidence(tower, processor, strength=3.0, caption_strength=1.5, object_dino=OD)
    questions.support = method.support
    assert questions.penalties(model, images, QUESTIONS, vocab)[1, yes] == 3.0  # questions keep `strength`
    with pytest.raises(ValueError, match="caption_strength"):
        EvidenceConfig(caption_strength=-1.0)


def test_reading_runs_once_per_image_for_all_its_questions(tower):
    model, processor = make_tiny_llava()
    method = RegionEvidence(tower, processor, strength=1.0, object_dino=OD)
    images = photos(2)
    method.generate(
        model, [images[0]] * 3 + [images[1]], QUESTIONS + ["is there a cup ?"], max_new_tokens=2, do_sample=False
    )
    method.generate(model, [images[1], images[0]], QUESTIONS[:2], max_new_tokens=2, do_sample=False)
    assert method.reading_calls == 1 and len(method._evidence) == 2


def test_random_regions_keep_count_and_areas():
    cells = torch.zeros(8, 8, dtype=torch.bool)
    cells[0:2, 0:3] = True  # 6 cells
    cells[5:8, 6] = True  # 3 cells
    cells[4, 2] = True  # 1 cell
    moved = random_regions(cells, seed=7)
    assert torch.equal(moved, random_regions(cells, seed=7))  # seeded
    assert not torch.equal(moved, random_regions(cells, seed=8)) or not torch.equal(moved, cells)
    from grounding.objects.regions import connected_components

    def areas(grid):
        labels = connected_components(grid)
        return sorted(int((labels == i).sum()) for i in range(1, int(labels.max()) + 1))

    # moved regions may touch or overlap: the total never exceeds the original and the count of placements is kept
    assert int(moved.sum()) <= int(cells.sum())
    sizes = areas(cells)
    assert sizes == [1, 3, 6]
    no_touch = torch.zeros(12, 12, dtype=torch.bool)
    no_touch[0, 0] = True
    assert int(random_regions(no_touch, 3).sum()) == 1


def test_region_cells_is_the_covered_fraction():
    mask = np.zeros((40, 40), dtype=bool)
    mask[:10, :20] = True  # the top-left cell (10x10 of a 4x4 grid) fully, its right neighbour fully
    cells = region_cells(mask, (4, 4), 0.3)
    assert cells[0, 0] and cells[0, 1] and not cells[1, 0] and int(cells.sum()) == 2


def test_instance_cells_keep_a_small_region_in_its_best_cell():
    masks = np.zeros((3, 40, 40), dtype=bool)
    masks[0, :10, :20] = True  # two full cells of a 4x4 grid
    masks[1, 12:14, 33:36] = True  # 6 pixels: under the coverage of any cell; its best cell is (1, 3)
    cells = instance_cells(masks, (4, 4), 0.3)  # (K, rows, cols); the third region is empty
    assert cells.shape == (3, 4, 4)
    assert torch.equal(cells[0], region_cells(masks[0], (4, 4), 0.3))
    assert int(cells[1].sum()) == 1 and bool(cells[1, 1, 3]) and not cells[2].any()
    assert instance_cells(np.zeros((0, 40, 40), dtype=bool), (4, 4), 0.3).shape == (0, 4, 4)


def test_instance_support_counts_the_votes_inside_the_object_dino_instances(tower):
    from grounding.objects.instance_registry import instance_pixel_masks
    from grounding.objects.object_dino import ObjectDINO, ObjectDINOConfig

    model, processor = make_tiny_llava()
    images = photos(2)
    method = RegionEvidence(tower, processor, object_dino=OD, max_objects=3)
    counts = method.support(model, images)
    words = ObjectVocabulary().embeddings(model, processor.tokenizer)
    reference = ObjectDINO(ObjectDINOConfig(**OD))
    for image, count, (votes, _) in zip(images, counts, image_token_reading(model, processor, images, words)):
        out = tower([image])
        found = reference.instances(out, max_objects=3, tower=tower)
        masks = instance_pixel_masks(found, out, 0).numpy()  # (K, H, W)
        assert 1 <= len(masks) <= 3
        inside = instance_cells(masks, tuple(votes.shape), 0.3).any(0)
        assert torch.equal(count, torch.bincount(votes[inside], minlength=81))
    twin = RegionEvidence(tower, processor, object_dino=OD, max_objects=3, mask_source="random")
    for count, moved in zip(counts, twin.support(model, images)):  # fewer or as many tokens, placed elsewhere
        assert int(moved.sum()) <= int(count.sum())
    as_map = RegionEvidence(tower, processor, object_dino=OD, regions="map").support(model, images)
    assert all(c.shape == (81,) for c in as_map)


def test_oracle_masks_found_by_pixels(tmp_path):
    from pycocotools import mask as mask_utils

    image = photos(1)[0]
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    image.save(tmp_path / "images" / "a.png")
    truth = np.zeros((image.height, image.width), dtype=np.uint8)
    truth[5:15, 10:30] = 1
    rle = mask_utils.encode(np.asfortranarray(truth))
    rle["counts"] = rle["counts"].decode()
    instances = {
        "images": [{"id": 1, "file_name": "a.png", "height": image.height, "width": image.width}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "dog"}],
    }
    path = tmp_path / "annotations" / "instances.json"
    path.write_text(json.dumps(instances))
    oracle = OracleMasks(str(path))
    assert np.array_equal(oracle.mask(image), truth.astype(bool))
    assert oracle.instance_masks(image).shape == (1, image.height, image.width)
    with pytest.raises(ValueError, match="not one of the annotated images"):
        oracle.mask(photos(2, seed=5)[1])


def test_vocabulary_finds_the_object_asked():
    vocabulary = ObjectVocabulary()
    assert vocabulary.asked("Is there a knife in the image?") == "knife"
    assert vocabulary.asked("Is there a dining table in the image?") == "dining table"
    assert vocabulary.asked("Is there a stop sign in the image?") == "stop sign"
    assert vocabulary.asked("Is there a wine glass in the image?") == "wine glass"
    assert vocabulary.asked("What colour is the sky?") is None


def test_registry_twins_and_options():
    assert needs_tower("region-evidence") and needs_tower("region-evidence@random")
    assert not needs_tower("region-evidence@oracle") and not needs_tower("region-evidence@none")
    check_method_options("region-evidence", {"mask_source": "random", "strength": 2.0})
    with pytest.raises(ValueError, match="mask_source"):
        check_method_options("region-evidence", {"mask_source": "somewhere"})
    with pytest.raises(ValueError, match="oracle_instances"):
        EvidenceConfig(mask_source="oracle")
    model, processor = make_tiny_llava()
    method = build_method("region-evidence@none", None, processor)
    assert method.config.mask_source == "none"
    with pytest.raises(ValueError, match="runs mask_source"):
        build_method("region-evidence@none", None, processor, mask_source="random")
