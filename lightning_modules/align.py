"""Stage-1 projector alignment from instance masks: each image token regresses onto the word embedding of the object
under it.

LLaVA aligns a new projector on 558k captioned images before instruction tuning. With a few thousand images and a
CPU budget, caption and yes/no training alone left the embedded world-llava image-blind (its answers did not depend
on the image: docs/benchmarks.md, "Hallucination world"). A COCO-format training set holds something denser than
captions, the instance masks, so this stage gives the projector a direct target per image token:

* grid: the VLM's (size / patch)^2 patch tokens of a square input (the processor resizes without cropping);
* label of a patch: the category covering the largest fraction of its cell (rasterised COCO masks, pycocotools),
  or background when no category covers at least `min_coverage` of it;
* target: the language model's input embedding of " <category name>" (mean over its tokens), " background" for
  background patches;
* loss: squared error, object patches weighted `object_weight` (they are ~1/5 of all patches);
* features: exactly what the VLM feeds its projector (hidden state `vision_feature_layer` of the tower, CLS dropped
  under the "default" selection strategy; they must be one token per patch), computed once with the frozen tower.

The result is the projector's state dict (safetensors) for `RegionTokensModule(projector_init=...)`, which then
trains projector and LoRA on captions and questions as before. Nothing about the answers is given away: the
targets name what is under each patch, never what is absent, and co-occurrence (the planted prior) is learned from
the captions and questions of the second stage.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from grounding.annotations import read_json
from grounding.assets import set_image_size
from grounding.images import load_image
from grounding.vlm import load_vlm

__all__ = ["AlignConfig", "align_projector", "patch_labels", "projector_of"]

log = logging.getLogger(__name__)


@dataclass
class AlignConfig:
    epochs: int = 6
    learning_rate: float = 1e-3
    batch_patches: int = 1024
    image_batch: int = 16
    min_coverage: float = 0.25
    object_weight: float = 4.0
    background_word: str = "background"
    max_images: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_patches < 1 or self.image_batch < 1:
            raise ValueError("epochs, batch_patches and image_batch must be >= 1")
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")


def projector_of(model: torch.nn.Module) -> torch.nn.Module:
    """The VLM's multimodal projector (LLaVA-style models name it `multi_modal_projector`)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "multi_modal_projector":
            return module
    raise ValueError(f"{type(model).__name__} has no multi_modal_projector: not a LLaVA-style VLM")


def patch_labels(masks: list[tuple[int, torch.Tensor]], size: int, grid: int, min_coverage: float) -> torch.Tensor:
    """(grid*grid,) class per patch cell (0 = background) from (class >= 1, (H, W) binary mask) pairs, each mask
    resized to the square (size, size) input as the processor resizes the image."""
    labels = torch.zeros(grid * grid, dtype=torch.long)
    if not masks:
        return labels
    coverage = torch.zeros(max(c for c, _ in masks) + 1, grid, grid)  # (C+1, grid, grid), channel 0 unused
    for cls, mask in masks:
        resized = F.interpolate(mask[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)
        cell = F.adaptive_avg_pool2d(resized, grid)[0, 0]  # (grid, grid) fraction of each cell covered
        coverage[cls] = torch.maximum(coverage[cls], cell)
    best, cls = coverage.max(0)
    return torch.where(best >= min_coverage, cls, 0).flatten()


def _word(model: torch.nn.Module, tokenizer, word: str) -> torch.Tensor:
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    return model.get_input_embeddings().weight[ids].detach().float().mean(0)  # (D,)


def _features(model, processor, files: list[Path], batch: int) -> torch.Tensor:
    """(n, grid^2, C) the tower features the projector receives, for each image."""
    config = model.config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: alignment supports one feature layer")
    tower = model.model.vision_tower
    out = []
    for i in range(0, len(files), batch):
        images = [load_image(f) for f in files[i : i + batch]]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (b, 3, S, S)
        patch = config.vision_config.patch_size
        grid = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
        with torch.no_grad():
            hidden = tower(pixels.to(model.device, model.dtype), output_hidden_states=True).hidden_states[layer]
        selected = hidden[:, 1:] if config.vision_feature_select_strategy == "default" else hidden  # as LLaVA does
        if selected.shape[1] != grid:
            raise ValueError(f"the projector receives {selected.shape[1]} tokens per image, not one per patch "
                             f"({grid}): alignment supports towers whose selected features are the patch grid")
        out.append(selected.float().cpu())  # (b, grid^2, C)
    return torch.cat(out)


def align_projector(vlm: str, image_root: str | Path, instances: str | Path, out: str | Path,
                    image_size: int | None = None, config: AlignConfig | None = None, device: str = "cpu") -> dict:
    """Fit the VLM's projector to the masks of a COCO-format set; write `out` (safetensors) and `out`.json (stats)."""
    from pycocotools.coco import COCO
    from safetensors.torch import save_file

    cfg = config or AlignConfig()
    start = time.perf_counter()
    if not Path(image_root).is_dir():  # bad input fails before the model loads
        raise FileNotFoundError(f"image folder {image_root} does not exist")
    coco = COCO()
    coco.dataset = read_json(instances, "instances file", keys=("images", "annotations", "categories"))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its indexing steps
        coco.createIndex()
    model, processor = load_vlm(vlm, "float32", device)
    if image_size:
        set_image_size(processor, image_size)
    image_processor = processor.image_processor
    size, crop = dict(image_processor.size), getattr(image_processor, "crop_size", None)
    crops = getattr(image_processor, "do_center_crop", False) and dict(crop or {}) != size
    if crops or "height" not in size or size["height"] != size.get("width"):
        raise ValueError(f"alignment needs a square resize without cropping (give image_size); the processor has "
                         f"size={size}, do_center_crop={getattr(image_processor, 'do_center_crop', None)}")
    side = size["height"]
    grid = side // model.config.vision_config.patch_size
    categories = sorted(coco.getCatIds())
    index = {c: i + 1 for i, c in enumerate(categories)}
    image_ids = sorted(coco.getImgIds())[: cfg.max_images]
    if not image_ids:
        raise ValueError(f"{instances} holds no images")
    files, labels = [], []
    for image_id in image_ids:
        info = coco.loadImgs(image_id)[0]
        files.append(Path(image_root) / info["file_name"])
        masks = [(index[a["category_id"]], torch.from_numpy(coco.annToMask(a)))
                 for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        labels.append(patch_labels(masks, side, grid, cfg.min_coverage))
    labels = torch.stack(labels).flatten()  # (n * grid^2,)
    features = _features(model, processor, files, cfg.image_batch).flatten(0, 1)  # (n * grid^2, C)
    tokenizer = processor.tokenizer
    names = [coco.loadCats(c)[0]["name"] for c in categories]
    targets = torch.stack([_word(model, tokenizer, cfg.background_word)] +
                          [_word(model, tokenizer, n) for n in names]).to(device)  # (C+1, D)
    projector = projector_of(model).float().train().requires_grad_(True)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=cfg.learning_rate)
    weights = torch.where(labels > 0, cfg.object_weight, 1.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for part in order.split(cfg.batch_patches):
            out_ = projector(features[part].to(device))  # (b, D)
            loss = ((out_ - targets[labels[part]]).pow(2).sum(-1) * weights[part].to(device)).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"alignment loss is {loss.item()} at epoch {epoch}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(part)
        history.append(round(total / len(labels), 4))
        log.info("align epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, history[-1])
    projector.eval()
    with torch.no_grad():
        nearest = torch.cat([(F.normalize(projector(features[p].to(device)), dim=-1) @ F.normalize(targets, dim=-1).T)
                             .argmax(-1).cpu() for p in torch.arange(len(labels)).split(8192)])
    objects = labels > 0
    stats = {"images": len(image_ids), "grid": grid, "image_size": side, "loss_per_epoch": history,
             "patch_accuracy": round(float((nearest == labels).float().mean()), 4),
             "object_patch_accuracy": (round(float((nearest == labels)[objects].float().mean()), 4)
                                       if objects.any() else None),
             "object_patch_fraction": round(float(objects.float().mean()), 4), "config": asdict(cfg),
             "vlm": str(vlm), "seconds": round(time.perf_counter() - start, 1)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}, str(partial))
    partial.replace(out)
    out.with_suffix(".json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
