"""Mask sources (grounding/objects/mask_source.py): random placements keep the regions, seeded per image; the oracle
reads the instance masks; object-dino is the map itself."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.objects.mask_source import (MaskSource, check_mask_source, image_key, placement_seed, random_map)
from grounding.objects.regions import connected_components


def regions(values: torch.Tensor, threshold: float = 0.5) -> list[tuple[int, list[float]]]:
    """(area, sorted values) of each connected region of values > threshold, sorted."""
    labels = connected_components(values > threshold)
    return sorted((int((labels == i).sum()), sorted(values[labels == i].tolist()))
                  for i in range(1, int(labels.max()) + 1))


def blobs() -> torch.Tensor:
    values = torch.full((60, 80), 0.2)  # background below the threshold
    values[5:15, 5:25] = torch.linspace(0.6, 0.9, 20)  # a 10 x 20 graded box
    values[30:38, 50:54] = 0.8  # an 8 x 4 box
    values[50, 10] = 0.95  # one pixel
    values[40:44, 20] = 0.7  # a 4-pixel bar
    return values


def test_random_map_keeps_the_regions_moves_them_and_is_seeded():
    values = blobs()
    moved = random_map(values, 0.5, seed=3)
    assert regions(moved) == regions(values)  # same number, same areas, same values
    assert not torch.equal(moved > 0.5, values > 0.5)  # placed elsewhere
    assert float(moved[moved <= 0.5].abs().sum()) == 0.0  # nothing but the regions
    assert torch.equal(moved, random_map(values, 0.5, seed=3))
    assert not torch.equal(moved, random_map(values, 0.5, seed=4))
    for seed in range(20):  # placed apart every time on this map
        assert regions(random_map(values, 0.5, seed)) == regions(values)


def test_random_map_edge_cases():
    full = torch.full((6, 7), 0.9)  # one region filling the image: it can only stay
    assert torch.equal(random_map(full, 0.5, 0), full)
    empty = torch.zeros(6, 7)
    assert torch.equal(random_map(empty, 0.5, 0), empty)
    crowded = torch.zeros(4, 4)  # two regions that cannot be apart: the second overlaps, no endless loop
    crowded[:, :2], crowded[:, 3] = 0.9, 0.8
    assert random_map(crowded, 0.5, 1, attempts=5).shape == (4, 4)


def test_mask_source_region_maps(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))
    values = blobs()
    assert MaskSource("object-dino").region_map(image, values) is values
    random = MaskSource("random", threshold=0.5, seed=7).region_map(image, values)
    assert torch.equal(random, random_map(values, 0.5, placement_seed(7, image_key(image))))
    assert torch.equal(random, MaskSource("random", seed=7).region_map(image.copy(), values))  # by the pixels
    assert not torch.equal(random, MaskSource("random", seed=8).region_map(image, values))
    with pytest.raises(ValueError, match="needs the image's Object-DINO map"):
        MaskSource("random").region_map(image)

    from pycocotools import mask as mask_utils

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    image.save(tmp_path / "images" / "a.png")
    truth = np.zeros((60, 80), dtype=np.uint8)
    truth[10:20, 30:50] = 1
    rle = mask_utils.encode(np.asfortranarray(truth))
    rle["counts"] = rle["counts"].decode()
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 60, "width": 80}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[0, 40, 10, 40, 10, 50, 0, 50]]}],  # a polygon too
        "categories": [{"id": 1, "name": "dog"}]}))
    oracle = MaskSource("oracle", oracle_instances=str(tmp_path / "annotations" / "instances.json"))
    assert not oracle.needs_object_map
    mask = oracle.region_map(image)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask[10:20, 30:50], torch.ones(10, 20)) and mask[45, 5] == 1.0 and mask[0, 0] == 0.0


def test_check_mask_source_errors():
    check_mask_source("random", None)
    with pytest.raises(ValueError, match="mask_source must be one of object-dino, random, oracle, got 'none'"):
        check_mask_source("none", None)
    with pytest.raises(ValueError, match="needs oracle_instances"):
        check_mask_source("oracle", None)
    with pytest.raises(ValueError, match="needs oracle_instances"):
        MaskSource("oracle")
