"""lmms-eval model plugin: a Hugging Face image-text-to-text model (LLaVA, LLaVA-NeXT, ...) with a grounding method.

Registered through lmms-eval's entry-point group `lmms_eval.models` (pyproject.toml:
`grounded_vlm = "eval.lmms_model:manifest"`), so no lmms-eval file is edited. Install the extra
(`pip install "vlm-grounding[lmms]"`), then:

    lmms-eval --model grounded_vlm --tasks pope --batch_size 8 --output_path runs/lmms --log_samples \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=highlight,tower=facebook/dinov2-with-registers-base

model_args (comma-separated key=value, lmms-eval's syntax):
    pretrained       VLM hub name or local directory (loaded as `grounding eval pope` loads it)
    method           baseline | highlight | masked-contrast | vcd | region-tokens | region-evidence, or a mask-source
                     twin: highlight@random, masked-contrast@oracle, region-evidence@random, ... (default baseline)
    tower            grounding tower for the methods that read Object-DINO maps (highlight, masked-contrast,
                     region-evidence and their @random twins; default facebook/dinov2-with-registers-base)
    tower_short_side tower input short side (default 224)
    dtype, device    float32 / bfloat16 / float16; default device: accelerate's for this process
    batch_size       questions per generate() call
    seed             sampling seed, per batch as in `grounding eval pope`
    method_options   JSON of the method's options, e.g. '{"alpha":0.4,"object_dino":{"k":5}}'
    anything else    one method option each: alpha=0.4, contrast=1.0, adapter=DIR (region-tokens), task=caption,
                     strength=4 (region-evidence), mask_source=random, oracle_instances=FILE (the @oracle twins: a
                     COCO instances file whose images are the task's images, unresized)

The method's options are checked (`check_method_options`) before any model loads.

Each request is one image and one prompt, answered by `method.generate(model, images, prompts, ...)` - the call
`grounding eval pope` makes - so the answers equal that runner's for the same items, method and batches.
Generation follows the task's generation_kwargs: greedy unless temperature > 0 (as lmms-eval's llava_hf),
max_new_tokens (default 1024); `until` is not applied (as llava_hf: generation stops at the end-of-sequence token,
so the answers are the runner's).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

__all__ = ["GroundedVLM", "manifest", "MODEL_ID"]

MODEL_ID = "grounded_vlm"


def manifest() -> ModelManifest:
    """Entry-point payload for lmms-eval's model registry (group `lmms_eval.models`)."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.GroundedVLM")


def _method_options(method_options, extra: dict) -> dict:
    options = {}
    if method_options:
        text = str(method_options).strip().strip("'\"")
        path = Path(text).expanduser()
        options = json.loads(path.read_text() if not text.startswith("{") and path.is_file() else text)
        if not isinstance(options, dict):
            raise ValueError(f"method_options must be a JSON object, got {method_options!r}")
    return {**options, **extra}


class GroundedVLM(lmms):
    """lmms-eval "simple" model: one image + one text prompt per request, answered with a grounding method."""

    is_simple = True

    def __init__(self, pretrained: str, method: str = "baseline", tower: str = "facebook/dinov2-with-registers-base",
                 tower_short_side: int = 224, dtype: str = "float32", device: str | None = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, seed: int = 0,
                 method_options: str | None = None, **options) -> None:
        super().__init__()
        from accelerate import PartialState

        from grounding.methods import METHODS, build_method, check_method_options, needs_tower

        from grounding.vlm import load_vlm

        if method not in METHODS:
            raise ValueError(f"grounded_vlm: unknown method={method!r}; choose from {sorted(METHODS)}")
        options = _method_options(method_options, options)
        if method != "baseline":
            options.setdefault("task", "question")  # as the runner: the highlight templates for questions
        check_method_options(method, options)  # a misspelled option, an oracle without its instances: before loading
        state = PartialState()
        self._rank, self._world_size = state.process_index, state.num_processes
        self._device = torch.device(device if device and state.num_processes == 1 else state.device)
        self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 1  # "auto" -> 1
        self.seed = int(seed)
        self.model, self.processor = load_vlm(str(pretrained), dtype, str(self._device))
        self.tower = None
        if needs_tower(method):
            from grounding.tower.backbone import RegisterViT

            self.tower = RegisterViT.from_pretrained(str(tower), device=str(self._device),
                                                     preprocess={"short_side": int(tower_short_side)})
        self.method_name = method
        self.method = build_method(method, self.tower, self.processor, **options)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("grounded_vlm answers generate_until tasks (POPE, MME, GQA, ...); grounding "
                                  "changes decoding, so loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("grounded_vlm answers single-turn generate_until tasks")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one generate() setting per batch
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="grounded_vlm")
        # a model-binding method (region tokens + LoRA) is attached once for all requests, as the runner does
        bound = self.method.bind(self.model) if hasattr(self.method, "bind") else contextlib.nullcontext()
        with bound:
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start : start + self.batch_size]
                    for index, answer in zip(batch, self._answer([requests[i] for i in batch])):
                        answers[index] = answer
                    bar.update(len(batch))
        bar.close()
        return answers

    def _answer(self, requests: list[Instance]) -> list[str]:
        images, prompts = [], []
        for request in requests:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
            if len(visuals) != 1:
                raise ValueError(f"grounded_vlm answers one image per question; task {task!r} doc {doc_id} has "
                                 f"{len(visuals)} visuals")
            images.append(visuals[0])
            image_token = getattr(self.processor, "image_token", None)
            prompts.append(context.replace(image_token, "").strip() if image_token else context)  # the method adds it
        kwargs = dict(requests[0].args[1])
        temperature = float(kwargs.get("temperature") or 0)
        generate_kwargs = {"max_new_tokens": int(kwargs.get("max_new_tokens") or 1024), "do_sample": temperature > 0}
        if temperature > 0:
            generate_kwargs["temperature"] = temperature
            if kwargs.get("top_p") is not None:
                generate_kwargs["top_p"] = float(kwargs["top_p"])
        if int(kwargs.get("num_beams") or 1) > 1:
            generate_kwargs["num_beams"] = int(kwargs["num_beams"])
        torch.manual_seed(self.seed + zlib.crc32(str(requests[0].args[3]).encode()))
        return self.method.generate(self.model, images, prompts, **generate_kwargs)
