"""Mask sources: which regions of an image a grounding method treats as its objects (issue 24, section 1).

Every method that reads object maps takes a mask source (the option `mask_source`):

* `object-dino` (default): the image's Object-DINO object map, as it is.
* `random`: the Object-DINO regions of the same image (the connected parts of map > threshold), each moved to a
  random place, seeded per image by its pixels and `seed`: the same number of regions and the same areas, placed at
  random. The control that tells whether a method gains from *where* the objects are.
* `oracle`: the ground-truth instance masks of a COCO-format instances file (COCO instances, or a generated
  world's `annotations/instances.json`), found by the pixels of the image (`OracleMasks`).

Two granularities, one source:

* pixel maps (`MaskSource.region_map`): for methods that draw with the map (highlight's red tint, masked-contrast's
  object removal). random: the regions keep their map values where they land (`random_map`; 0 elsewhere);
  oracle: 1.0 inside the union of the instance masks, 0 outside.
* token-grid cells (`region_cells`, `random_regions`): for methods that count image tokens (region-evidence).

A method that holds an image's Object-DINO map asks `MaskSource.region_map(image, object_map)`; the oracle needs no
map (nor a tower). `check_mask_source` is the one validation of the options, with the same words for every method.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import image_key, load_image
from .regions import connected_components

__all__ = ["MASK_SOURCES", "MaskSource", "OracleMasks", "check_mask_source", "image_key", "placement_seed",
           "random_map", "random_regions", "region_cells", "instance_cells"]

MASK_SOURCES = ("object-dino", "random", "oracle")


def placement_seed(seed: int, key: str) -> int:
    """The random source's seed for one image (`key`: `image_key`): the same image, the same placements."""
    return int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:15], 16)


def check_mask_source(mask_source: str, oracle_instances: str | None, sources: Sequence[str] = MASK_SOURCES) -> None:
    """ValueError when `mask_source` is not one of `sources`, or is `oracle` without an instances file."""
    if mask_source not in sources:
        raise ValueError(f"mask_source must be one of {', '.join(sources)}, got {mask_source!r}")
    if mask_source == "oracle" and not oracle_instances:
        raise ValueError(
            "mask_source 'oracle' needs oracle_instances: a COCO instances file with the images' "
            "ground-truth masks (a world's annotations/instances.json)"
        )


# ------------------------------------------------------------------ token grids (region-evidence)
def region_cells(mask: torch.Tensor | np.ndarray, shape: tuple[int, int], coverage: float) -> torch.Tensor:
    """(H, W) pixel mask over the whole image -> (rows, cols) bool: cells covered at least `coverage`."""
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
    cells = F.adaptive_avg_pool2d(mask, shape)[0, 0]  # fraction of each cell covered
    return cells >= coverage


def instance_cells(masks: torch.Tensor | np.ndarray, shape: tuple[int, int], coverage: float) -> torch.Tensor:
    """(K, H, W) pixel masks of K regions -> (K, rows, cols) bool cells: each region's cells covered at least
    `coverage`, or, for a region smaller than that, its best-covered cell (a small object keeps one cell)."""
    masks = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
    if masks.shape[0] == 0:
        return torch.zeros(0, *shape, dtype=torch.bool)
    cover = F.adaptive_avg_pool2d(masks[:, None], shape)[:, 0]  # (K, rows, cols) covered fraction
    best = cover.flatten(1).amax(1)[:, None, None]  # (K, 1, 1)
    return (cover >= coverage) | ((cover >= best) & (best > 0))


def random_regions(cells: torch.Tensor, seed: int) -> torch.Tensor:
    """The connected regions of `cells` (bool grid), each moved to a random place on the grid (its shape and area
    kept, inside the grid): the same number of regions and the same areas as the given ones, placed at random."""
    labels = connected_components(cells)
    generator = np.random.default_rng(seed)
    rows, cols = cells.shape
    out = torch.zeros_like(cells)
    for label in range(1, int(labels.max()) + 1):
        ys, xs = torch.nonzero(labels == label, as_tuple=True)
        height, width = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        top = int(generator.integers(0, rows - height + 1))
        left = int(generator.integers(0, cols - width + 1))
        out[ys - ys.min() + top, xs - xs.min() + left] = True
    return out


# ------------------------------------------------------------------ pixel maps (highlight, masked-contrast)
def random_map(object_map: torch.Tensor | np.ndarray, threshold: float, seed: int, attempts: int = 200) -> torch.Tensor:
    """(H, W) object map -> (H, W) float map: each region (a connected part of map > threshold, 4-neighbours) moved
    with its values to a random place inside the image, 0 elsewhere.

    Regions are placed largest first, each where it neither overlaps nor touches one placed before (drawn again up
    to `attempts` times); so the regions of the result are the given ones - the same number, the same areas, the
    same values - at random places. Only when a region finds no free place in `attempts` draws does it take its
    last draw and overlap (a map whose regions fill most of the image)."""
    values = torch.as_tensor(np.asarray(object_map) if not isinstance(object_map, torch.Tensor) else object_map)
    values = values.detach().float().cpu()  # (H, W)
    height, width = values.shape
    labels = connected_components(values > threshold)  # (H, W), 0: background
    areas = torch.bincount(labels.flatten())[1:]  # (n,)
    order = sorted(range(len(areas)), key=lambda i: (-int(areas[i]), i))
    generator = np.random.default_rng(seed)
    out = torch.zeros_like(values)
    taken = torch.zeros(height + 2, width + 2, dtype=torch.bool)  # placed pixels and their 4-neighbours, padded by 1
    for index in order:
        ys, xs = torch.nonzero(labels == index + 1, as_tuple=True)
        dy, dx = ys - ys.min(), xs - xs.min()
        tall, wide = int(dy.max()) + 1, int(dx.max()) + 1
        for _ in range(attempts):
            top = int(generator.integers(0, height - tall + 1))
            left = int(generator.integers(0, width - wide + 1))
            if not bool(taken[dy + top + 1, dx + left + 1].any()):
                break
        ty, tx = dy + top, dx + left
        out[ty, tx] = torch.maximum(out[ty, tx], values[ys, xs])
        for oy, ox in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
            taken[ty + 1 + oy, tx + 1 + ox] = True
    return out


class OracleMasks:
    """Ground-truth masks of a COCO instances file, found by the pixels of an image (an image seen by a method
    has no file name): the file's images are read once and indexed by content."""

    def __init__(self, instances: str, images: str | None = None):
        from pycocotools import mask as mask_utils

        self._decode = mask_utils
        data = json.loads(Path(instances).expanduser().read_text())
        folder = Path(images).expanduser() if images else Path(instances).expanduser().parent.parent / "images"
        self.annotations: dict[int, list] = {}
        for ann in data["annotations"]:
            self.annotations.setdefault(ann["image_id"], []).append(ann)
        self.index = {}
        for info in data["images"]:
            path = folder / info["file_name"]
            if path.is_file():
                self.index[image_key(load_image(path))] = info
        if not self.index:
            raise ValueError(f"oracle masks: none of the images of {instances} is in {folder}")

    def mask(self, image: Image.Image) -> np.ndarray:
        """(H, W) bool: the union of the image's instance masks."""
        found = self.instance_masks(image)
        return found.any(0) if len(found) else np.zeros(found.shape[1:], dtype=bool)

    def instance_masks(self, image: Image.Image) -> np.ndarray:
        """(K, H, W) bool: one mask per annotated instance of the image."""
        info = self.index.get(image_key(image))
        if info is None:
            raise ValueError(
                "oracle masks: this image is not one of the annotated images (the oracle mask source "
                "only runs on the images of its instances file, unresized)"
            )
        masks = [np.zeros((info["height"], info["width"]), dtype=bool)]  # the first: a shape for no instances
        for ann in self.annotations.get(info["id"], []):
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):  # polygons
                rles = self._decode.frPyObjects(segmentation, info["height"], info["width"])
                segmentation = self._decode.merge(rles)
            elif isinstance(segmentation.get("counts"), list):
                segmentation = self._decode.frPyObjects(segmentation, info["height"], info["width"])
            masks.append(self._decode.decode(segmentation).astype(bool))
        return np.stack(masks)[1:]


class MaskSource:
    """One method's mask source (module doc): `region_map(image, object_map)` -> the (H, W) map it draws with.

    source: object-dino | random | oracle; threshold: the map threshold that makes Object-DINO's regions (random);
    seed: the random placements' seed (with the image's pixels); oracle_instances / oracle_images: the oracle's COCO
    instances file and its image folder (default: ../images beside the file's folder)."""

    def __init__(self, source: str = "object-dino", threshold: float = 0.5, seed: int = 0,
                 oracle_instances: str | None = None, oracle_images: str | None = None):
        check_mask_source(source, oracle_instances)
        self.source, self.threshold, self.seed = source, threshold, seed
        self.oracle = OracleMasks(oracle_instances, oracle_images) if source == "oracle" else None

    @property
    def needs_object_map(self) -> bool:
        """Whether `region_map` reads the image's Object-DINO map (object-dino, random) or not (oracle)."""
        return self.source != "oracle"

    def region_map(self, image: Image.Image, object_map: torch.Tensor | None = None) -> torch.Tensor:
        """(H, W) float map at the image's size: the object map itself (object-dino, the same tensor), its regions
        moved (random), or the oracle's union mask as 1.0 / 0.0 (oracle; `object_map` unused)."""
        if self.source == "oracle":
            return torch.from_numpy(self.oracle.mask(image)).float()
        if object_map is None:
            raise ValueError(f"mask source {self.source!r} needs the image's Object-DINO map")
        if self.source == "object-dino":
            return object_map
        return random_map(object_map, self.threshold, placement_seed(self.seed, image_key(image)))
