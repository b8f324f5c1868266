"""The trained grounding method for the eval runner: a saved region-token adapter attached to the model.

Registered as "region-tokens" (`grounding.methods`). Options: `adapter` = a `RegionGrounding.save_pretrained`
folder (what `grounding fit` exports); its `lora/` subfolder, when present, is the LoRA trained with it and is
loaded onto the model as well. `regions` = "map" or "instances" runs the adapter on the connected regions of the
Object-DINO map or on Object-DINO's object instances (default: what the adapter was trained with, its config's
`regions`). `bind(model)` attaches both for a whole run and undoes both on exit, so the model is the stock model
again for the next method.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .baseline import Baseline
from .registry import register_method
from ..compat import peft_quietly
from ..region_tokens.modeling import RegionGrounding
from ..weights import saves_processor

__all__ = ["RegionTokens"]


def _check_options(adapter: str | None = None, task: str | None = None, regions: str | None = None, **unknown) -> None:
    if unknown:
        raise ValueError(f"region-tokens: unknown option(s) {', '.join(map(repr, sorted(unknown)))}; it takes adapter "
                         "and regions")
    if regions not in (None, "map", "instances"):
        raise ValueError(f"region-tokens: regions must be 'map' or 'instances', got {regions!r}")
    if adapter is None:
        raise ValueError(_NEEDS_ADAPTER)
    if not isinstance(adapter, str) or not Path(adapter).expanduser().is_dir():
        raise ValueError(f"region-tokens: adapter folder {adapter!r} does not exist (a `grounding fit` export)")


_NEEDS_ADAPTER = ("region-tokens needs the adapter folder: --method-options "
                  "'{\"region-tokens\": {\"adapter\": \"DIR\"}}' (a `grounding fit` export)")


@register_method("region-tokens", options=_check_options)
class RegionTokens:
    """Plain decoding with K grounded region tokens after the image tokens (and the adapter's LoRA)."""

    def __init__(self, tower=None, processor=None, adapter: str | None = None, regions: str | None = None, **_):
        if adapter is None:
            raise ValueError(_NEEDS_ADAPTER)
        self.adapter = Path(adapter).expanduser()
        if not self.adapter.is_dir():
            raise FileNotFoundError(f"region-token adapter folder {self.adapter} does not exist")
        self.grounding = RegionGrounding.from_pretrained(self.adapter)  # its own tower, at its trained size
        if regions is not None:  # checked by RegionConfig
            self.grounding.config = dataclasses.replace(self.grounding.config, regions=regions)
        if processor is not None:  # its own copy at the trained image size (the runner's stays as it is)
            processor = _at_trained_size(self.adapter / "lora", processor)
        self.processor = processor
        self.baseline = Baseline(processor=processor)
        self.bound_to = None

    @property
    def generation_settings(self) -> dict | None:
        return self.baseline.generation_settings

    @contextlib.contextmanager
    def bind(self, model) -> Iterator[RegionTokens]:
        """Attach the region tokens (and LoRA) to `model` for the duration; detach everything after."""
        handle = self.grounding.attach(model, self.processor)
        lora = None
        try:
            if (self.adapter / "lora").is_dir():
                from peft import PeftModel

                with peft_quietly():
                    lora = PeftModel.from_pretrained(model, self.adapter / "lora").eval()  # injects in place
            self.bound_to = model
            yield self
        finally:
            self.bound_to = None
            if lora is not None:
                with peft_quietly():
                    lora.unload()  # removes the LoRA layers from `model`
            handle.detach()

    @torch.no_grad()
    def generate(self, model, images: Sequence, prompts: Sequence[str], **generate_kwargs) -> list[str]:
        if self.bound_to is model:
            return self.baseline.generate(model, images, prompts, **generate_kwargs)
        with self.bind(model):
            return self.baseline.generate(model, images, prompts, **generate_kwargs)


def _image_sizes(processor) -> dict:
    image = processor.image_processor
    return {name: dict(getattr(image, name)) for name in ("size", "crop_size") if getattr(image, name, None)}


def _at_trained_size(lora: Path, processor):
    """The adapter's LoRA (and projector) saw images at the size of the processor `grounding fit` saved beside it
    (`--model.image_size` may differ from the base's): the method runs at that size, on a copy of `processor`, so
    the export runs on its base model (the only model it can run on: load_vlm refuses a region-token lora/)."""
    if not saves_processor(lora):
        return processor  # an export from before processors were saved, or a hand-made adapter: nothing to compare
    import copy
    import logging

    from transformers import AutoProcessor

    trained, given = _image_sizes(AutoProcessor.from_pretrained(lora)), _image_sizes(processor)
    if trained == given:
        return processor
    logging.getLogger(__name__).warning("region-tokens: %s was trained at image size %s (the model's processor: %s); "
                                        "running it at its trained size", lora.parent, trained, given)
    own = copy.deepcopy(processor)
    for name in ("size", "crop_size"):
        if name in trained or getattr(own.image_processor, name, None) is not None:
            setattr(own.image_processor, name, trained.get(name))
    return own
