"""Grounded decoding inside transformers' `pipeline("image-text-to-text")`.

`GroundedImageTextToTextPipeline` is the stock `ImageTextToTextPipeline` plus a grounding method
(`grounding.methods`: "baseline", "highlight", "masked-contrast", "vcd", "region-tokens", "region-evidence", their
mask-source twins such as "highlight@random", or a method object). It changes nothing global and hooks in only where
a pipeline subclass is meant to. A method runs through one of three seams: a branch method has `generate_encoded`,
a model-binding method has `bind(model)`, a logits-processor method has `logits_processor(model, images, prompts)`.

* `preprocess`: the stock preprocess encodes the caller's input as usual; for a branch method (highlight,
  masked-contrast, vcd) it also encodes the second branch - the same chat or prompt with each image replaced by
  `guide.branch_image(image)` (and, for highlight, the last user text in the method's two templates).
  For a logits-processor method (region-evidence) it keeps each item's image and prompt beside the stock inputs.
* `_forward`: calls `guide.generate_encoded(model, inputs, branch, **generate_kwargs)` instead of
  `model.generate(**inputs, **generate_kwargs)` (joint 2B batch for greedy, a branch logits processor otherwise).
  A logits-processor method: the stock `model.generate(**inputs, **generate_kwargs)` with
  `logits_processor=[method.logits_processor(model, images, prompts), *the caller's]` (the batch's rows in order),
  which is what the method's own `generate` runs, so the answers are its answers.
* `__call__`: a model-binding method (region-tokens) is attached for the call and detached after it
  (`method.bind(model)`); `pipe.bound()` keeps it attached across calls.
* `postprocess` is the stock one, so outputs have the stock format (`return_full_text`, `return_tensors`, chats).

With method "baseline" - or `grounding=False` on a call - every stage is the stock pipeline's, so the outputs are
exactly the stock pipeline's.

    pipe = grounded_pipeline(model, processor, method="highlight", tower=tower)   # or pipeline(..., pipeline_class=)
    pipe(text=[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": q}]}],
         max_new_tokens=32, return_full_text=False)

    with register_grounded_pipeline():            # task "grounded-image-text-to-text" in transformers' registry
        pipe = pipeline("grounded-image-text-to-text", model=..., method="vcd")   # removed again on exit

Inputs: chats (the prompt is the last text of the last user turn) and `images=` + `text=` prompts that already
hold the image tokens (the stock raw form; both branches use the text as given, so highlight only changes the
image there; a logits-processor method reads that text as its prompt). A logits-processor method takes one image
per input. Batching (`batch_size=`) needs left padding, as generate() does for decoder-only models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from transformers import AutoModelForImageTextToText, ImageTextToTextPipeline, LogitsProcessorList
from transformers.image_utils import load_image as load_pipeline_image
from transformers.image_utils import load_images
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils.chat_template_utils import Chat

from ..images import as_pil
from ..tower.backbone import RegisterViT
from .baseline import Baseline
from .registry import build_method, needs_tower
from ..decoding.rows import stack_rows
from ..decoding.sampling import sampling_settings, with_reference_sampling

__all__ = ["GroundedImageTextToTextPipeline", "grounded_pipeline", "register_grounded_pipeline",
           "PipelineRegistration", "TASK"]

TASK = "grounded-image-text-to-text"
BRANCH_KEY = "grounding_branch"  # preprocess -> _forward: the branch rows (a dict; a list of dicts when batched)
ROWS_KEY = "grounding_rows"  # preprocess -> _forward: {"image", "prompt"} of a logits-processor method's input
IMAGE_KEYS = ("image", "url", "path", "base64")  # where a chat's image block holds its image (transformers' keys)


class GroundedImageTextToTextPipeline(ImageTextToTextPipeline):
    """`ImageTextToTextPipeline` that decodes with a grounding method; see the module docstring.

    method: a registered method name or a built method (`build_method(...)`, an `ObjectGuidance`, ...) made with
    this pipeline's processor. tower: a `RegisterViT`, or a hub name / directory loaded at `tower_short_side`
    (methods that need one). method_options: keyword options of the method (alpha, contrast, adapter, ...).
    """

    def __init__(self, *args, method: str | Any = "baseline", tower: Any = None, tower_short_side: int = 224,
                 method_options: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(method, str):
            if needs_tower(method) and tower is None:
                raise ValueError(f"method {method!r} needs a grounding tower: pass tower=RegisterViT(...) or "
                                 "tower='facebook/dinov2-with-registers-base' (a hub name or a local directory)")
            if isinstance(tower, str):
                tower = RegisterViT.from_pretrained(tower, device=str(self.device),
                                                    preprocess={"short_side": tower_short_side})
            method = build_method(method, tower, self.processor, **(method_options or {}))
        elif method_options:
            raise ValueError("method_options only apply to a method given by name; this method is already built")
        if getattr(method, "processor", self.processor) is not self.processor:
            raise ValueError("the method was built with another processor than this pipeline's; build it with "
                             "pipe.processor (or pass the method by name)")
        self.method = method
        self._guide = method if hasattr(method, "generate_encoded") else None
        self._binds = self._guide is None and hasattr(method, "bind")
        self._processes = self._guide is None and not self._binds and hasattr(method, "logits_processor")
        if self._guide is None and not self._binds and not self._processes and not isinstance(method, Baseline):
            raise TypeError(f"{type(method).__name__} is neither a branch method (generate_encoded), a "
                            "model-binding method (bind(model)) nor a logits-processor method "
                            "(logits_processor(model, images, prompts)); the pipeline cannot run it")

    # ------------------------------------------------------------------ parameters
    def _sanitize_parameters(self, grounding: bool | None = None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if grounding is not None:
            preprocess_params["grounding"] = bool(grounding)
        return preprocess_params, forward_params, postprocess_params

    # ------------------------------------------------------------------ binding methods (region tokens)
    def bound(self) -> contextlib.AbstractContextManager:
        """Keep a model-binding method attached to the model for the `with` block (else: per call)."""
        if not self._binds or getattr(self.method, "bound_to", None) is self.model:
            return contextlib.nullcontext(self)
        return self.method.bind(self.model)

    def __call__(self, *args, **kwargs):
        if not self._binds or kwargs.get("grounding", True) is False:
            return super().__call__(*args, **kwargs)
        with self.bound():
            result = super().__call__(*args, **kwargs)
        if isinstance(result, Iterator):  # datasets and generators run lazily: bind while they are consumed
            return self._bound_iterator(result)
        return result

    def _bound_iterator(self, iterator: Iterator) -> Iterator:
        with self.bound():
            yield from iterator

    # ------------------------------------------------------------------ preprocess: the branch beside the stock inputs
    def preprocess(self, inputs=None, timeout=None, continue_final_message=None, grounding: bool = True,
                   **processing_kwargs):
        def stock(item):
            return super(GroundedImageTextToTextPipeline, self).preprocess(
                item, timeout=timeout, continue_final_message=continue_final_message, **dict(processing_kwargs))

        if not grounding or (self._guide is None and not self._processes):
            return stock(inputs)
        if self._processes:
            images, prompt = self._image_and_prompt(inputs, timeout)
            model_inputs = stock(inputs)
            model_inputs[ROWS_KEY] = {"image": images[0], "prompt": prompt}
            return model_inputs
        if isinstance(inputs, Chat):
            original, branch, branch_images = self._chat_branches(inputs, timeout)
            model_inputs, branch_inputs = stock(Chat(original)), stock(Chat(branch))
            model_inputs["text"] = inputs  # postprocess returns the caller's own chat
        elif isinstance(inputs, dict) and inputs.get("images") is not None:
            images = load_images(inputs["images"], timeout=timeout)
            branch_nested, branch_images = self._map_images(images)
            model_inputs = stock({"images": images, "text": inputs["text"]})
            branch_inputs = stock({"images": branch_nested, "text": inputs["text"]})
        else:
            raise ValueError("grounded decoding needs an image: this input has none (pass images, or a chat with "
                             "an image block); call with grounding=False for text-only inputs")
        if not branch_images:
            raise ValueError("grounded decoding needs an image, but this chat has no image block")
        branch_inputs.pop("text")
        self._guide.noise_branch(branch_inputs, branch_images)
        model_inputs[BRANCH_KEY] = dict(branch_inputs)
        return model_inputs

    def _image_and_prompt(self, inputs, timeout) -> tuple[list, str]:
        """A logits-processor method's view of one input: ([its one image, as PIL], the prompt): a chat's last text
        of its last user turn, or the raw form's text as given."""
        if isinstance(inputs, Chat):
            images = [_image_source(block) for message in inputs.messages
                      if not isinstance(message.get("content"), str) for block in message.get("content") or []]
            images = [load_pipeline_image(im, timeout=timeout) if isinstance(im, str) else im
                      for im in images if im is not None]
            prompt = _last_user_text(inputs.messages)
        elif isinstance(inputs, dict) and inputs.get("images") is not None:
            images, prompt = _leaves(load_images(inputs["images"], timeout=timeout)), inputs["text"]
        else:
            images, prompt = [], ""
        if len(images) != 1:
            raise ValueError(f"{type(self.method).__name__} reads one image per prompt; this input has "
                             f"{len(images)}" + ("" if images else " (call with grounding=False for text-only inputs)"))
        if not isinstance(prompt, str):
            raise ValueError(f"{type(self.method).__name__} needs one text prompt per image, got {prompt!r}")
        return [as_pil(images[0])], prompt

    def _branch_of(self, image) -> Any:
        return self._guide.branch_image(as_pil(image))

    def _map_images(self, images) -> tuple[Any, list]:
        """Nested images -> (the same nesting with branch images, the branch images in encoding order)."""
        flat = []

        def walk(node):
            if isinstance(node, (list, tuple)):
                return [walk(n) for n in node]
            flat.append(self._branch_of(node))
            return flat[-1]

        return walk(images), flat

    def _chat_branches(self, chat: Chat, timeout) -> tuple[list[dict], list[dict], list]:
        """(original messages, branch messages, branch images): the branch's images are decoded here (PIL), the
        original blocks are left to the processor; highlight's templates go on the last text of the last user turn."""
        messages = chat.messages
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last_user = users[-1] if users else None
        original, branch, branch_images = [], [], []
        for index, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str):
                texts = self._texts(content) if index == last_user else (content, content)
                original.append({**message, "content": texts[0]})
                branch.append({**message, "content": texts[1]})
                continue
            content = list(content or [])
            text_positions = [i for i, block in enumerate(content) if block.get("type") == "text"]
            prompt_at = text_positions[-1] if index == last_user and text_positions else None
            original_blocks, branch_blocks = [], []
            for position, block in enumerate(content):
                image = _image_source(block)
                if image is not None:  # the original block stays as given: the processor decodes it as in stock
                    loaded = image if not isinstance(image, str) else load_pipeline_image(image, timeout=timeout)
                    branch_images.append(self._branch_of(loaded))
                    original_blocks.append(block)
                    branch_blocks.append({"type": "image", "image": branch_images[-1]})
                elif position == prompt_at:
                    texts = self._texts(block["text"])
                    original_blocks.append({**block, "text": texts[0]})
                    branch_blocks.append({**block, "text": texts[1]})
                else:
                    original_blocks.append(block)
                    branch_blocks.append(block)
            original.append({**message, "content": original_blocks})
            branch.append({**message, "content": branch_blocks})
        return original, branch, branch_images

    def _texts(self, prompt: str) -> tuple[str, str]:
        original, branch = self._guide.prompt_texts([prompt])
        return original[0], branch[0]

    # ------------------------------------------------------------------ forward: guided generate
    def _forward(self, model_inputs, generate_kwargs=None):
        rows = model_inputs.pop(ROWS_KEY, None)
        if rows is not None:
            return self._forward_processed(model_inputs, rows, generate_kwargs)
        branch = model_inputs.pop(BRANCH_KEY, None)
        if branch is None:
            return super()._forward(model_inputs, generate_kwargs)
        if isinstance(branch, list):  # batch_size > 1: one dict per item, stacked here with left padding
            branch = stack_rows(branch, self._guide.pad_token_id(self.model))
        prompt_text = model_inputs.pop("text")
        inputs = dict(model_inputs)
        for name, rows in (("inputs", inputs), ("branch", branch)):
            _check_left_padding(name, rows)
        generate_kwargs = self._prepare_generate_kwargs(dict(generate_kwargs or {}), return_dict_in_generate=False)
        sequence = self._guide.generate_encoded(self.model, inputs, branch, **generate_kwargs)  # (B, T + S)
        return {"generated_sequence": sequence, "prompt_text": prompt_text, "input_ids": inputs["input_ids"]}


    def _forward_processed(self, model_inputs, rows, generate_kwargs=None):
        """The stock forward with the method's logits processor first in generate()'s list (module doc)."""
        rows = [rows] if isinstance(rows, dict) else rows  # batch_size > 1: one dict per row, in the batch's order
        _check_left_padding("inputs", model_inputs)
        prompt_text = model_inputs.pop("text")
        generate_kwargs = self._prepare_generate_kwargs(dict(generate_kwargs or {}), return_dict_in_generate=False)
        generate_kwargs = with_reference_sampling(self.model, generate_kwargs)  # the method's own sampling defaults
        user_processors = list(generate_kwargs.pop("logits_processor", None) or [])
        if hasattr(self.method, "generation_settings"):
            self.method.generation_settings = sampling_settings(generate_kwargs, self.model)
        processor = self.method.logits_processor(self.model, [row["image"] for row in rows],
                                                 [row["prompt"] for row in rows])
        input_ids = model_inputs["input_ids"]
        sequence = self.model.generate(**model_inputs, logits_processor=LogitsProcessorList([processor,
                                                                                            *user_processors]),
                                       **generate_kwargs)  # (B, T + S)
        return {"generated_sequence": sequence, "prompt_text": prompt_text, "input_ids": input_ids}


def _check_left_padding(name: str, rows: dict) -> None:
    mask = rows.get("attention_mask")
    if mask is not None and mask.shape[0] > 1 and not bool(mask[:, -1].all()):
        raise ValueError(f"the batched {name} are padded on the right; guided decoding (like generate() "
                         "for decoder-only models) needs left padding: set "
                         "pipe.processor.tokenizer.padding_side = 'left'")


def _leaves(node) -> list:
    """The images of a nested list of images, in order."""
    return [leaf for item in node for leaf in _leaves(item)] if isinstance(node, (list, tuple)) else [node]


def _last_user_text(messages: list[dict]) -> str:
    """The last text of the last user turn of a chat ("" when it has none)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [block.get("text", "") for block in content or [] if block.get("type") == "text"]
        return texts[-1] if texts else ""
    return ""


def _image_source(block: dict) -> Any:
    """The image a chat content block holds (transformers' keys, or OpenAI's image_url), else None."""
    if block.get("type") == "image":
        return next((block[key] for key in IMAGE_KEYS if block.get(key) is not None), None)
    if block.get("type") == "image_url":
        url = block.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    return None


def grounded_pipeline(model, processor=None, method: str | Any = "highlight", tower: Any = None,
                      **kwargs) -> GroundedImageTextToTextPipeline:
    """`transformers.pipeline("image-text-to-text", ...)` with `pipeline_class=GroundedImageTextToTextPipeline`;
    keyword arguments go to `pipeline()` (device, dtype, batch_size, method_options, tower_short_side, ...)."""
    from transformers import pipeline

    return pipeline("image-text-to-text", model=model, processor=processor,
                    pipeline_class=GroundedImageTextToTextPipeline, method=method, tower=tower, **kwargs)


@dataclass
class PipelineRegistration:
    """What `register_grounded_pipeline` added to transformers' registry; `remove()` puts the registry back."""

    task: str
    previous: dict | None
    previous_impl: Any
    active: bool = True

    def remove(self) -> None:
        if not self.active:
            return
        if self.previous is None:
            PIPELINE_REGISTRY.supported_tasks.pop(self.task, None)
        else:
            PIPELINE_REGISTRY.supported_tasks[self.task] = self.previous
        if self.previous_impl is not None:
            GroundedImageTextToTextPipeline._registered_impl = self.previous_impl
        elif "_registered_impl" in GroundedImageTextToTextPipeline.__dict__:
            delattr(GroundedImageTextToTextPipeline, "_registered_impl")
        self.active = False

    def __enter__(self) -> PipelineRegistration:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def register_grounded_pipeline(task: str = TASK) -> PipelineRegistration:
    """Register the grounded pipeline as `task` with transformers' `PIPELINE_REGISTRY` (its documented way of
    adding a pipeline), so `pipeline(task, model=..., method=..., tower=...)` builds it. Use as a context manager,
    or call `.remove()`; nothing is registered at import."""
    previous = PIPELINE_REGISTRY.supported_tasks.get(task)
    previous_impl = GroundedImageTextToTextPipeline.__dict__.get("_registered_impl")
    PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=GroundedImageTextToTextPipeline,
                                        pt_model=AutoModelForImageTextToText, type="multimodal")
    return PipelineRegistration(task, previous, previous_impl)
