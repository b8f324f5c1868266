"""The VLM loader: an HF image-text-to-text model and its processor from a hub name, a local directory or a
`grounding fit` LoRA export (merged into its base). Shared by training (`lightning_modules`) and evaluation
(`eval`), so it lives below both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .compat import peft_quietly
from .weights import (PROJECTOR_ATTRIBUTE, WeightsNotFoundError, lora_chain, missing_weights, resolve_weights,
                      saves_processor)

__all__ = ["load_vlm"]


def load_vlm(name: str, dtype: str, device: str):
    """An HF image-text-to-text model and its processor, from a hub name or a local directory.

    A peft LoRA folder (a `grounding fit` export's lora/) loads its base model (the adapter's
    base_model_name_or_path; a stack of exports down to the checkpoint they start from) with each adapter merged
    into the weights, in `dtype`, and the processor the newest adapter was trained with (the export saves it: its
    image size may differ from the base's). The merged model's name_or_path is the adapter folder, so a fit on it
    exports an adapter whose base is that folder (the chain reloads whole)."""
    folder = Path(str(name)).expanduser()
    if not (folder / "adapter_config.json").is_file() and (folder / "lora" / "adapter_config.json").is_file():
        _refuse_region_lora(folder / "lora")  # an export folder: not "pass EXPORT/lora" when that is refused too
    base, adapters = lora_chain(name)
    for adapter in adapters:
        _refuse_region_lora(adapter)
    # a local directory, the cache's snapshot, or the hub id: fails fast (and clearly) when none can be had
    base = resolve_weights(base, "VLM")
    if Path(base).is_dir():
        base = str(Path(base).resolve())  # what a fit records as its base: absolute, so the export loads anywhere
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processors = [a for a in adapters if saves_processor(a)]
    processor_source = str(processors[-1]) if processors else base
    try:
        processor = AutoProcessor.from_pretrained(processor_source)
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, dtype)).to(device).eval()
    except (OSError, HFValidationError) as error:
        raise missing_weights(base, "VLM", f"loading failed ({type(error).__name__}: {error})") from error
    if adapters:
        from peft import PeftModel

        for adapter in adapters:
            with peft_quietly():
                model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.eval()
        model.name_or_path = model.config.name_or_path = str(adapters[-1])
    return model, processor


def _refuse_region_lora(adapter: Path) -> None:
    """A LoRA trained with region tokens (its adapter_config saves the region projector) is not a plain VLM:
    merged without them it answers as a model that was never trained. Refused, with the way to run it."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if PROJECTOR_ATTRIBUTE in (config.get("modules_to_save") or []):
        export, base = adapter.parent, config.get("base_model_name_or_path") or "BASE"
        raise WeightsNotFoundError(
            f"{adapter} is a region-token LoRA (trained with grounded region tokens beside the image tokens; its "
            f"modules_to_save hold {PROJECTOR_ATTRIBUTE}): loaded as a plain VLM it would run without them. Run it "
            f"as the region-tokens method on its base model: --model {base} --methods region-tokens "
            f"--method-options '{{\"region-tokens\": {{\"adapter\": \"{export}\"}}}}' (grounding demo: "
            f"--world-model {base} --world-regions {export}; lmms-eval: pretrained={base},method=region-tokens,"
            f"adapter={export}); a fit on top of a region-token export is not supported")
