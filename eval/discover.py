"""The discovery loop behind `grounding discover` and `grounding eval corloc`: one image at a time (aspect kept),
one JSONL record per image appended as it is produced, masks and overlays as PNG, resumable, with a progress bar.

Images are decoded at no more than the tower's largest input side, so a huge photo costs no more memory than
a normal one: boxes and `image_size` in the records are in the file's pixels; the mask and overlay pictures of
an image larger than that side are saved at the reduced size.

Given `settings` (what produces the boxes: weights, method, its options, preprocessing), the folder resumes only
records made with the same settings and from the same inputs (`eval.run_folder`); an unreadable image is
recorded as a skip with the reason and tried again by the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from grounding.tower.backbone import RegisterViT
from grounding.descriptors import DenseExtractor
from grounding.objects.discovery import discover
from grounding.images import ImageError, load_image, original_size, to_original_pixels
from grounding.objects.object_dino import ObjectDINO
from grounding.objects.regions import upsample_maps
from grounding.viz import draw_boxes, overlay

from .corloc import iou
from .records import SKIPPED, JsonlLog
from .run_folder import check_records, fingerprint, input_identity, item_digest, record_id, save_settings

__all__ = ["DiscoveryJob", "run_discovery", "open_predictions", "IMAGE_SUFFIXES", "list_images", "mark_degenerate"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return images


@dataclass
class DiscoveryJob:
    key: str  # record key (file name or dataset image id)
    path: Path
    gt_boxes: list[list[float]] | None = None

    def digest(self) -> str:
        return item_digest(self.key, self.path.name, input_identity(self.path), self.gt_boxes)


def _method_options(object_dino: ObjectDINO, dinoseg_head: int, tau: float | None, tower: RegisterViT) -> dict:
    """Options every registered method receives (each takes what it uses): Object-DINO's config, DINO-seg's head
    and the tower (to rotate pre-rotary DINOv3 q/k), and TokenCut's tau (None: the method's default)."""
    return {"object_dino": object_dino, "head": dinoseg_head, "tower": tower, "tau": tau}


def open_predictions(out_dir: str | Path, jobs: Sequence[DiscoveryJob], settings: dict | None = None) -> JsonlLog:
    """`out_dir/predictions.jsonl`; with `settings`, refused (SettingsMismatch) when its records were made with
    other settings or from other inputs (`run_discovery` saves the settings beside it)."""
    out_dir = Path(out_dir)
    records = JsonlLog(out_dir / "predictions.jsonl", key="image")
    if settings is not None:
        check_records(out_dir, records.records, settings, {record_id(job.key): job.digest() for job in jobs
                                                           if input_identity(job.path) != "unreadable"}, key="image")
    return records


def run_discovery(tower: RegisterViT, method: str, jobs: Sequence[DiscoveryJob], out_dir: str | Path,
                  object_dino: ObjectDINO | None = None, dinoseg_head: int = 4, pictures: bool = True,
                  progress: bool = True, tau: float | None = None, settings: dict | None = None,
                  records: JsonlLog | None = None, stride: int | None = None) -> list[dict]:
    """Run `method` on every job not yet in ``out_dir/predictions.jsonl``; returns the jobs' records in job order
    (old and new; an image that could not be read has a `skipped` record with the reason).

    stride: run the tower with overlapping patches at this stride (`grounding.descriptors.DenseExtractor`).

    Each record holds the box, and `degenerate`: the method's graph was complete (every affinity above tau, or
    every key inner product positive for LOST), so the box is arbitrary; overlays say so in red.
    records: the log `open_predictions(out_dir, jobs, settings)` returned (opened here when None).
    """
    out_dir = Path(out_dir)
    object_dino = object_dino or ObjectDINO(k=12)
    records = records if records is not None else open_predictions(out_dir, jobs, settings)
    if settings is not None:  # saved once the tower has loaded: a refused or failed run leaves none behind
        save_settings(out_dir, settings)
    stamp = {"run": fingerprint(settings)} if settings is not None else {}
    todo = [job for job in jobs if job.key not in records.done]
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d images already done", len(jobs) - len(todo), len(jobs))
    options = _method_options(object_dino, dinoseg_head, tau, tower)
    runner = DenseExtractor(tower, stride) if stride else tower
    for job in tqdm(todo, desc=f"discover {method}", unit="img", disable=not progress):
        record: dict = {"image": job.key, "method": method}
        try:
            image = load_image(job.path, max_side=tower.max_input_side)
        except ImageError as error:
            log.warning("skipping %s: %s", job.key, error)
            records.append({**record, SKIPPED: str(error), **stamp, "item": job.digest()})
            continue
        out = runner([image])
        found = discover(method, out, **options)
        box = to_original_pixels(found.boxes[0], image)  # (4,) file pixels
        width, height = original_size(image)
        degenerate = bool(found.degenerate[0])
        record.update(box=[round(float(v), 2) for v in box], degenerate=degenerate, map_size=list(out.grid),
                      image_size=[height, width])
        if pictures:
            _save_pictures(out_dir, job.key, image, found.masks[0], out, found.boxes[0], method, degenerate)
        if job.gt_boxes is not None:
            overlaps = iou(torch.tensor(record["box"]), torch.tensor(job.gt_boxes))
            best = float(overlaps.max()) if len(job.gt_boxes) else 0.0
            record.update(gt_boxes=job.gt_boxes, iou=round(best, 4), correct=best >= 0.5)
        records.append({**record, **stamp, "item": job.digest()})
    current = [records.latest[job.key] for job in jobs if job.key in records.latest]
    degenerate = sum(bool(r.get("degenerate")) for r in current)
    if degenerate:
        log.warning("%s: %d of %d images had a complete graph (arbitrary box, flagged `degenerate`); "
                    "the -adaptive / -centred methods handle such backbones (docs/discovery.md)",
                    method, degenerate, len(current))
    return current


def _save_pictures(out_dir: Path, key: str, image: Image.Image, mask: torch.Tensor, out, box: torch.Tensor,
                   method: str, degenerate: bool) -> None:
    stem = Path(key).stem
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    full = upsample_maps(mask[None].float(), out.patch_scale, out.image_sizes)[0]  # (H, W)
    Image.fromarray(((full.numpy() >= 0.5) * 255).astype(np.uint8)).save(out_dir / "masks" / f"{stem}.png")
    picture = draw_boxes(overlay(image, full, alpha=0.4), [box.tolist()], [method])
    if degenerate:
        picture = mark_degenerate(picture)
    picture.save(out_dir / "overlays" / f"{stem}.png")


def mark_degenerate(picture: Image.Image, text: str = "DEGENERATE: complete graph, arbitrary box") -> Image.Image:
    """A red frame and a caption on an overlay whose box came from a complete (structureless) graph."""
    from PIL import ImageDraw

    pen = ImageDraw.Draw(picture)
    pen.rectangle([0, 0, picture.width - 1, picture.height - 1], outline=(255, 0, 0), width=4)
    pen.rectangle([0, picture.height - 16, min(picture.width, 6 * len(text) + 8), picture.height], fill=(255, 0, 0))
    pen.text((4, picture.height - 14), text, fill=(255, 255, 255))
    return picture
