"""Loading images robustly: every odd input becomes an 8-bit RGB PIL image or a clear `ImageError`.

Handles grayscale ("L", "1"), palette ("P"), RGBA/LA (composited on white), 16-bit and 32-bit integer or float
images ("I;16", "I", "F": min-max scaled to 8 bit), CMYK, EXIF rotation, truncated or corrupt files and
decompression bombs (PIL's own guard, reported with the file name).

Big files: `load_image(path, max_side=...)` decodes at the size the caller needs, so memory does not grow with
the file's resolution (JPEG: the decoder's DCT scaling via `Image.draft`, the full raster is never built; other
formats: decoded, then `Image.reduce`d by an integer factor before anything else). Such an image remembers the
file's size: `original_size(image)`, and `to_original_pixels` maps boxes on it back to the file's pixels.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "load_image", "to_rgb", "as_pil", "original_size", "to_original_pixels", "image_key",
           "per_distinct_image"]

ORIGINAL_SIZE = "original_size"  # image.info key: the file's (width, height) when decoded smaller


class ImageError(ValueError):
    """An image could not be read or is not usable (the message names the file and why)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of any PIL image mode."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)  # (H, W)
        finite = np.isfinite(array)
        if not finite.any():
            raise ImageError(f"image of mode {image.mode} has no finite pixel values")
        array = np.where(finite, array, np.nanmin(np.where(finite, array, np.nan)))
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_image(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Open `path` as an 8-bit RGB image with EXIF orientation applied; raise `ImageError` naming the file.

    max_side: when the longer side is above it, decode at reduced size and resize to fit it (aspect kept); the
    returned image's ``info["original_size"]`` is then the file's (width, height) after EXIF rotation.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    try:
        with Image.open(path) as handle:
            width, height = handle.size  # as stored, before EXIF rotation
            target = _fit(width, height, max_side) if max_side is not None and max(width, height) > max_side else None
            if target is not None:
                handle.draft("RGB" if handle.mode == "RGB" else None, target)  # JPEG: DCT scaling, >= target
            handle.load()
            image = handle
            if target is not None:
                factor = min(image.width // target[0], image.height // target[1])
                if factor >= 2 and image.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "PA"):
                    image = image.reduce(factor)  # box average; the only full-size raster is the decoded file
            rotated = handle.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            image = ImageOps.exif_transpose(image) or image
            image = to_rgb(image)
            if target is not None:
                size = target[::-1] if rotated else target
                if image.size != size:
                    image = image.resize(size, Image.BICUBIC)
                image.info[ORIGINAL_SIZE] = (height, width) if rotated else (width, height)
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    if min(image.size) < 1:
        raise ImageError(f"image {path} is empty ({image.size[0]}x{image.size[1]})")
    return image


def original_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the file the image was decoded from (its own size unless `load_image` reduced it)."""
    return tuple(image.info.get(ORIGINAL_SIZE, image.size))


def to_original_pixels(boxes: torch.Tensor, image: Image.Image) -> torch.Tensor:
    """(..., 4) [x0, y0, x1, y1] boxes in the pixels of `image` -> pixels of the file it was decoded from."""
    width, height = original_size(image)
    if (width, height) == image.size:
        return boxes
    scale = torch.tensor([width / image.width, height / image.height] * 2, dtype=boxes.dtype, device=boxes.device)
    return boxes * scale


def as_pil(image: Image.Image | np.ndarray | torch.Tensor | str | Path) -> Image.Image:
    """Accept a PIL image, a path, an (H, W[, C]) uint8/float array or a (C, H, W) tensor in [0, 1] or [0, 255]."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ImageError(f"tensor images must be (C, H, W) with C in 1/3/4, got {tuple(image.shape)}")
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3):
            raise ImageError(f"array images must be (H, W) or (H, W, C), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ImageError("image array holds NaN or infinite values")
        if array.dtype != np.uint8:
            array = array.astype(np.float64)
            array = array * 255.0 if array.max(initial=0.0) <= 1.0 else array
            array = np.clip(array, 0, 255).round().astype(np.uint8)
        mode = {2: "L", 3: "RGB"}[array.ndim] if array.ndim == 2 or array.shape[-1] == 3 else "RGBA"
        return to_rgb(Image.fromarray(array, mode=mode))
    raise ImageError(f"unsupported image type {type(image).__name__}")


def image_key(image: Image.Image) -> str:
    """A digest of the image's pixels and size: the same image gets the same key wherever it is batched."""
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


def per_distinct_image(cache: OrderedDict, images: Sequence[Image.Image],
                       compute: Callable[[list[str], list[Image.Image]], Sequence], limit: int) -> list:
    """One value per image from `cache` (keyed by `image_key`, least recently used first): the distinct images not
    cached yet go to ONE `compute(keys, images)` call, which returns their values in order; the cache then keeps
    the `limit` most recently used."""
    keys = [image_key(image) for image in images]
    missing: dict[str, Image.Image] = {}
    for key, image in zip(keys, images):
        if key not in cache:
            missing.setdefault(key, image)
    if missing:
        cache.update(zip(missing, compute(list(missing), list(missing.values()))))
    found = []
    for key in keys:
        cache.move_to_end(key)
        found.append(cache[key])
    while len(cache) > limit:
        cache.popitem(last=False)
    return found
