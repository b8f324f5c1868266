"""Chat encoding shared by every method: one user turn per (image, text) through the processor's chat template."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

__all__ = ["encode_chat"]


def encode_chat(processor, images: Sequence[Image.Image], texts: Sequence[str], device, dtype) -> dict:
    """One user turn per (image, text) through the processor's chat template; left padding; pixels in `dtype`."""
    prompts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}], add_generation_prompt=True)
        for text in texts]
    encoded = processor(images=list(images), text=prompts, return_tensors="pt", padding=True, padding_side="left")
    return {k: (v.to(device=device, dtype=dtype) if k == "pixel_values" else v.to(device)) for k, v in encoded.items()}
