"""Training-free grounded decoding for Hugging Face image-text-to-text models, through `generate()`'s own seam:
the orchestrator, `ObjectGuidance` (branch images, prompts, which processor runs the branch). The processors are
in `logits_process.py`, the mixing functions in `mixing.py`, chat encoding in `chat.py`, VCD noise in `noise.py`.

A `BranchLogitsProcessor` owns a second branch - its own input_ids, image inputs (first pass only), attention
mask and KV cache - like transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor`: it prefills once,
then feeds one token per step, and mixes the branch's next-token logits into generate()'s. User logits
processors run before generate()'s sampling warpers, so the mix is on raw logits for greedy and sampling alike.

Modes (`GuidanceConfig.mode`):
* "highlight" (Object-DINO; docs/method.md, section 3): branch = the image with its objects highlighted (red
  tint for questions, jet overlay for captions) and a prompt that refers to the highlighted region;
  z = alpha * z_orig + (1 - alpha) * z_high.
* "masked-contrast" (object-masked VCD): branch = the image with its objects removed (mean fill or blur);
  z = (1 + a) z(v) - a z(v'), restricted to tokens with p(v) >= beta * max p(v) (VCD's plausibility cut).
* "vcd": the same contrast with v' = diffusion-noised pixels (the usual rival).

Two ways to run the second branch (`GuidanceConfig.branches`):
* "separate": a `BranchLogitsProcessor` with its own cache; one extra forward per step. Works for greedy and
  sampling, any batch.
* "joint" (greedy only): the B original rows and the B branch rows go through generate() as ONE batch of 2B;
  a `PairedMixLogitsProcessor` writes the same mixed logits into row i and row i + B, so both take the same
  greedy token and stay in step. At small batch decoding is bound by reading the weights, so one 2B forward
  costs far less than two B forwards. Sampling draws rows independently, so it cannot use this.
* "auto" (default): joint for greedy, separate for sampling. Greedy or not is read from the config generate()
  will really run with (the model's generation_config, a passed `generation_config`, then the kwargs), and the
  joint path checks after generate() that every row i and its branch row i + B took the same tokens.
`benchmarks/bench_guidance.py` measures both.

Sampling uses the full softmax (top_k = 0, top_p = 1.0 unless the caller sets them; see `grounding.decoding.sampling`),
as the Object-DINO release and VCD do; `ObjectGuidance.generation_settings` records what the last call used.

Models with multimodal rotary positions (Qwen2-VL, Qwen2.5-VL): the separate branch builds its (4, B, T)
position ids with the model's own `get_rope_index`, as generate() does, and never touches the model's cached
`rope_deltas` (generate()'s own rows keep theirs). Other `get_rope_index` models are refused on that path.

Prefix sharing (`ObjectGuidance.prefix_cache`, a `grounding.decoding.prefix_cache.PrefixCache`): the rows that show the
same image (original or branch image) continue from one KV cache of its prompt prefix, on both paths; the answers
are the same as without it.

VCD noise is drawn per image, from a seed derived from the image's pixels and `GuidanceConfig.seed`, so an
image's noised branch does not depend on what it is batched with.

Mask sources (`GuidanceConfig.mask_source`, highlight and masked-contrast; grounding/objects/mask_source.py): the map
the branch image is drawn with is the Object-DINO object map (`object-dino`, the default: `region_maps` returns
`object_maps` itself), its regions moved to random places with the same number and areas, seeded per image by its
pixels and `seed` (`random`), or the ground-truth instance masks of `oracle_instances` (`oracle`, 1 inside, 0
outside; no tower needed). Registered as the twins `highlight@random`, `highlight@oracle`, `masked-contrast@random`,
`masked-contrast@oracle` (grounding/methods/guided.py). `GuidanceConfig.regions="instances"` draws with Object-DINO's
object instances instead of its map (1.0 inside their union, `ObjectGuidance.instance_maps`; for the random source
that union's regions are the ones moved).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from transformers import LogitsProcessorList

from ..compat import merged_generation_config
from .chat import encode_chat
from .highlight import jet_overlay, red_tint, remove_objects
from .logits_process import BranchLogitsProcessor, PairedMixLogitsProcessor, check_paired_rows
from .mixing import contrastive_mix, highlight_mix
from .noise import noise_images
from ..images import as_pil, image_key, per_distinct_image
from ..objects.instance_registry import instance_pixel_masks
from ..objects.mask_source import MaskSource, check_mask_source
from ..objects.object_dino import ObjectDINO, ObjectDINOConfig
from ..tower.backbone import per_input_size
from .rows import stack_rows
from .prefix_cache import PrefixCache, generate_new_tokens
from .sampling import sampling_settings, with_reference_sampling

__all__ = ["GuidanceConfig", "ObjectGuidance"]

QUESTION_TEMPLATES = ("Answer this question based on the image: {prompt}",
                      "Answer this question by looking at the highlighted region: {prompt}")
CAPTION_TEMPLATES = ("Please describe this image in detail.", "Please describe the highlighted regions in this image.")


@dataclass
class GuidanceConfig:
    mode: Literal["highlight", "masked-contrast", "vcd"] = "highlight"
    alpha: float = 0.4  # highlight: weight of the original branch (1 = guidance off)
    contrast: float = 1.0  # contrast modes: a in (1 + a) z(v) - a z(v') (0 = guidance off)
    beta: float = 0.1  # plausibility cut of the contrast modes
    task: Literal["question", "caption"] = "question"
    map_threshold: float = 0.5  # highlight / removal threshold on the upsampled object map
    mask_source: Literal["object-dino", "random", "oracle"] = "object-dino"  # the map the branch is drawn with
    # map: Object-DINO's object map as it is; instances: 1.0 inside the union of its object instances
    # (`ObjectDINO.instances`, up to max_objects), 0.0 outside (docs/benchmarks.md compares them on val)
    regions: Literal["map", "instances"] = "map"
    max_objects: int = 8
    oracle_instances: str | None = None  # oracle: a COCO instances file (a world's annotations/instances.json)
    oracle_images: str | None = None  # oracle: its image folder (default: ../images beside annotations/)
    fill: Literal["mean", "blur"] = "mean"
    noise_step: int = 500
    seed: int = 0  # vcd: the noise; random mask source: the placements (each with the image's pixels)
    cache_size: int = 256  # object maps kept per guide (the tower runs once per image)
    branches: Literal["auto", "separate", "joint"] = "auto"
    object_dino: ObjectDINOConfig = field(default_factory=ObjectDINOConfig)

    def __post_init__(self):
        if isinstance(self.object_dino, dict):
            self.object_dino = ObjectDINOConfig(**self.object_dino)
        if self.mode not in ("highlight", "masked-contrast", "vcd"):
            raise ValueError(f"unknown guidance mode {self.mode!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.branches not in ("auto", "separate", "joint"):
            raise ValueError(f"branches must be auto, separate or joint, got {self.branches!r}")
        check_mask_source(self.mask_source, self.oracle_instances)
        if self.regions not in ("map", "instances"):
            raise ValueError(f"regions must be 'map' or 'instances', got {self.regions!r}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if self.mode == "vcd" and self.regions != "map":
            raise ValueError(f"mode 'vcd' noises the whole image and reads no object regions: regions "
                             f"{self.regions!r} applies to highlight and masked-contrast only")
        if self.mode == "vcd" and self.mask_source != "object-dino":
            raise ValueError(f"mode 'vcd' noises the whole image and reads no object map: mask_source "
                             f"{self.mask_source!r} applies to highlight and masked-contrast only")


class ObjectGuidance:
    """Object-DINO grounded decoding for any HF image-text-to-text model whose processor takes images + text."""

    def __init__(self, tower=None, processor=None, config: GuidanceConfig | None = None, **overrides):
        self.config = config if config is not None else GuidanceConfig(**overrides)
        cfg = self.config
        if cfg.mode != "vcd" and cfg.mask_source != "oracle" and tower is None:
            raise ValueError(f"mode {cfg.mode!r} needs a grounding tower (mask_source {cfg.mask_source!r} reads "
                             "Object-DINO maps)")
        self.tower = tower
        self.processor = processor
        self.object_dino = ObjectDINO(cfg.object_dino)
        self.mask_source = MaskSource(cfg.mask_source, cfg.map_threshold, cfg.seed, cfg.oracle_instances,
                                      cfg.oracle_images)
        self._maps: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._regions: OrderedDict[str, torch.Tensor] = OrderedDict()  # random / oracle maps, per image
        self._pending: dict[int, tuple[dict, weakref.ref]] = {}  # id(input_ids) -> (branch inputs, model)
        self.tower_calls = 0
        self.generation_settings: dict | None = None  # decoding settings of the last generate() call
        self.prefix_cache: PrefixCache | None = None  # set to share image prefixes across rows (same answers)

    # ------------------------------------------------------------------ inputs
    def object_map(self, image: Image.Image) -> torch.Tensor:
        """(H, W) object map at the image's size, computed once per distinct image."""
        return self.object_maps([image])[0]

    def object_maps(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """(H, W) object map of each image at its size. The distinct images not cached yet go through the tower
        together: one call per tower input size (one call for the whole batch when the tower resizes to a fixed
        `preprocess.size`, or when the images share a size)."""
        return per_distinct_image(self._maps, images, self._compute_maps, self.config.cache_size)

    def _compute_maps(self, keys: list[str], images: list[Image.Image]) -> list[torch.Tensor]:
        return self._per_tower_size(images, lambda found: self.object_dino.object_maps(found, upsample=True))

    def instance_maps(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """(H, W) float map of each image: 1.0 inside the union of its Object-DINO instances (up to
        `max_objects`), 0.0 outside; the distinct images of a batch in one tower call per tower input size."""
        def union(found) -> list[torch.Tensor]:
            objects = self.object_dino.instances(found, max_objects=self.config.max_objects, tower=self.tower)
            return [instance_pixel_masks(objects, found, b).any(0).float() if bool(objects.valid[b].any())
                    else torch.zeros(found.image_sizes[b]) for b in range(len(found.image_sizes))]

        return self._per_tower_size(list(images), union)

    def _per_tower_size(self, images: list[Image.Image], compute: Callable) -> list[torch.Tensor]:
        """`compute(tower_output)` -> one (H, W) map per image, on the CPU; one tower call per tower input size."""
        def counted(found) -> list[torch.Tensor]:
            self.tower_calls += 1
            return [full.cpu() for full in compute(found)]

        return per_input_size(self.tower, images, counted)

    def region_maps(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """(H, W) map of each image that its branch is drawn with, from the mask source: `object_maps(images)`
        itself (object-dino), the Object-DINO regions moved at random (random) or the ground-truth masks (oracle,
        no tower call). With `regions="instances"` the Object-DINO map is replaced by the union of the image's
        instances (`instance_maps`) for the object-dino and random sources. Kept per distinct image, as the object
        maps are."""
        instances = self.config.regions == "instances"
        if self.mask_source.source == "object-dino" and not instances:
            return self.object_maps(images)
        def compute(keys: list[str], missing: list[Image.Image]) -> list[torch.Tensor]:
            if not self.mask_source.needs_object_map:
                maps = [None] * len(missing)
            else:
                maps = self.instance_maps(missing) if instances else self.object_maps(missing)
            return [self.mask_source.region_map(image, m) for image, m in zip(missing, maps)]

        return per_distinct_image(self._regions, images, compute, self.config.cache_size)

    def prompt_texts(self, prompts: Sequence[str]) -> tuple[list[str], list[str]]:
        """(original-branch texts, branch texts) for user prompts: highlight wraps them in its two templates
        (questions) or replaces them (captions); the contrast modes use the prompts as they are."""
        if self.config.mode != "highlight":
            return list(prompts), list(prompts)
        original, guided = CAPTION_TEMPLATES if self.config.task == "caption" else QUESTION_TEMPLATES
        return [original.format(prompt=p) for p in prompts], [guided.format(prompt=p) for p in prompts]

    def branch_image(self, image: Image.Image, object_map: torch.Tensor | None = None) -> Image.Image:
        """The second branch's image: highlighted (highlight), objects removed (masked-contrast), or the image
        itself (vcd: its pixels are noised after encoding, `noise_branch`). `object_map`: the image's map from the
        mask source when the caller has it already (one tower call for a batch, `region_maps`)."""
        cfg = self.config
        if cfg.mode == "vcd":
            return image
        object_map = self.region_maps([image])[0] if object_map is None else object_map
        if cfg.mode == "highlight":
            if cfg.task == "caption":
                return jet_overlay(image, object_map)
            return red_tint(image, object_map, cfg.map_threshold)
        return remove_objects(image, object_map, cfg.map_threshold, cfg.fill)

    def _both(self, images: Sequence, prompts: Sequence[str]) -> tuple[list, list[str], list, list[str]]:
        """Originals and branches; the object maps of the whole batch come from one tower call per input size,
        and an image that occurs several times (POPE: several questions per image) is drawn once."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images vs {len(prompts)} prompts")
        pils = [as_pil(image) for image in images]
        original_texts, branch_texts = self.prompt_texts(prompts)
        maps = self.region_maps(pils) if self.config.mode != "vcd" else [None] * len(pils)
        drawn: dict[str, Image.Image] = {}
        branches = []
        for image, object_map in zip(pils, maps):
            key = image_key(image)
            if key not in drawn:
                drawn[key] = self.branch_image(image, object_map)
            branches.append(drawn[key])
        return pils, original_texts, branches, branch_texts

    def noise_branch(self, encoded: dict, images: Sequence[Image.Image], first: int = 0) -> None:
        """VCD: noise the pixels of images first, first + 1, ... of `encoded` in place, each from its own seed
        (other modes: nothing). `images` are the branch images, in the order their pixels lie in `encoded`."""
        if self.config.mode != "vcd":
            return
        noise_images(encoded, images, first, self.config.seed, self.config.noise_step)

    def _encode_pair(self, model, images: Sequence, prompts: Sequence[str]) -> tuple[dict, dict]:
        pils, original_texts, branch_images, branch_texts = self._both(images, prompts)
        inputs = encode_chat(self.processor, pils, original_texts, model.device, model.dtype)
        branch = encode_chat(self.processor, branch_images, branch_texts, model.device, model.dtype)
        self.noise_branch(branch, branch_images)
        return inputs, branch

    def prepare(self, model, images: Sequence, prompts: Sequence[str]) -> dict:
        """Main-branch inputs for `model.generate(**inputs, logits_processor=guide.logits_processors(inputs))`."""
        inputs, branch = self._encode_pair(model, images, prompts)
        self._pending[id(inputs["input_ids"])] = (branch, weakref.ref(model))
        return inputs

    def mix(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.config.mode == "highlight":
            return highlight_mix(self.config.alpha)
        return contrastive_mix(self.config.contrast, self.config.beta)

    def logits_processors(self, inputs: dict) -> LogitsProcessorList:
        """Single-use processors for the inputs `prepare()` returned (the branch was built there)."""
        key = id(inputs["input_ids"])
        if key not in self._pending:
            raise KeyError("these inputs were not made by this guide's prepare(): "
                           "call guide.prepare(model, images, prompts)")
        branch, model_ref = self._pending.pop(key)
        return LogitsProcessorList([BranchLogitsProcessor(model_ref(), branch, self.mix())])

    # ------------------------------------------------------------------ one call
    def _decoding(self, model, generate_kwargs: dict) -> tuple[list, dict, bool]:
        """(user logits processors, generate kwargs with the reference sampling defaults, joint?) for one call."""
        generate_kwargs = dict(generate_kwargs)
        user_processors = list(generate_kwargs.pop("logits_processor", None) or [])
        generate_kwargs = with_reference_sampling(model, generate_kwargs)
        config = merged_generation_config(model, generate_kwargs)
        if (config.num_beams or 1) > 1 or (config.num_return_sequences or 1) > 1:
            raise ValueError(f"guided decoding runs one sequence per prompt: num_beams={config.num_beams} and "
                             f"num_return_sequences={config.num_return_sequences} (beam search) are not supported")
        sampling = bool(config.do_sample)
        if self.config.branches == "joint" and sampling:
            raise ValueError("joint branches need greedy decoding, but this call samples (do_sample=True from the "
                             "kwargs, a passed generation_config or model.generation_config); use "
                             "branches='separate' (or 'auto') to sample")
        joint = self.config.branches == "joint" or (self.config.branches == "auto" and not sampling)
        self.generation_settings = {**sampling_settings(generate_kwargs, model),
                                    "branches": "joint" if joint else "separate"}
        return user_processors, generate_kwargs, joint

    @torch.no_grad()
    def generate(self, model, images: Sequence, prompts: Sequence[str], **generate_kwargs) -> list[str]:
        """Guided answers, batched (left padding); extra kwargs go to `model.generate` (a `logits_processor` list
        runs after the guidance mix). Sampling uses the full softmax unless top_k / top_p are given."""
        user_processors, generate_kwargs, joint = self._decoding(model, generate_kwargs)
        if joint:
            return self._generate_joint(model, images, prompts, user_processors, **generate_kwargs)
        inputs, branch = self._encode_pair(model, images, prompts)
        cache = self.prefix_cache
        if cache is not None and cache.unsupported(model, inputs) is None and cache.unsupported(model, branch) is None:
            inputs = cache.prepare(model, inputs).generate_inputs()
            branch = cache.prepare(model, branch).generate_inputs()
        processor = BranchLogitsProcessor(model, branch, self.mix())
        try:
            output = model.generate(**inputs, logits_processor=LogitsProcessorList([processor, *user_processors]),
                                    **generate_kwargs)
        finally:
            processor.release()
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    @torch.no_grad()
    def generate_encoded(self, model, inputs: dict, branch: dict, **generate_kwargs) -> torch.Tensor:
        """Guided decoding of rows encoded elsewhere (a transformers pipeline's preprocess): `inputs` are the
        original rows (B, T) with their image inputs, `branch` the branch rows built from `branch_image` /
        `prompt_texts` (pixels already noised by `noise_branch` for vcd), both left-padded. Returns what
        `model.generate(**inputs)` returns, (B, T + S): the prompt rows as given, then the guided tokens.
        Branches joint or separate as in `generate`."""
        user_processors, generate_kwargs, joint = self._decoding(model, generate_kwargs)
        batch = inputs["input_ids"].shape[0]
        if branch["input_ids"].shape[0] != batch:
            raise ValueError(f"{batch} original rows but {branch['input_ids'].shape[0]} branch rows")
        if not joint:
            processors = LogitsProcessorList([BranchLogitsProcessor(model, branch, self.mix())])
            try:
                return model.generate(**inputs, logits_processor=LogitsProcessorList([*processors, *user_processors]),
                                      **generate_kwargs)
            finally:
                for processor in processors:
                    processor.release()
        pair = stack_rows([inputs, branch], self.pad_token_id(model))  # (2B, T'), original rows first
        output = model.generate(**pair, logits_processor=LogitsProcessorList([PairedMixLogitsProcessor(self.mix()),
                                                                              *user_processors]), **generate_kwargs)
        new_tokens = output[:, pair["input_ids"].shape[1]:]  # (2B, S)
        check_paired_rows(new_tokens, batch)
        return torch.cat([inputs["input_ids"], new_tokens[:batch]], dim=1)  # (B, T + S)

    def pad_token_id(self, model) -> int:
        """The id rows are padded with: the processor's tokenizer's, else the model's generation_config's."""
        tokenizer = getattr(self.processor, "tokenizer", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = model.generation_config.pad_token_id
        if pad is None:
            raise ValueError("joint branches pad rows, but neither the processor's tokenizer nor the model's "
                             "generation_config has a pad_token_id; set one, or use branches='separate'")
        return int(pad)

    def joint_inputs(self, model, images: Sequence, prompts: Sequence[str]) -> dict:
        """One 2B batch: rows 0..B-1 the original inputs, rows B..2B-1 their branches."""
        pils, original_texts, branch_images, branch_texts = self._both(images, prompts)
        inputs = encode_chat(self.processor, pils + branch_images, original_texts + branch_texts, model.device,
                             model.dtype)
        self.noise_branch(inputs, branch_images, first=len(pils))
        return inputs

    def _generate_joint(self, model, images: Sequence, prompts: Sequence[str], user_processors: Sequence = (),
                        **generate_kwargs) -> list[str]:
        batch = len(images)
        inputs = self.joint_inputs(model, images, prompts)
        processors = LogitsProcessorList([PairedMixLogitsProcessor(self.mix()), *user_processors])
        new_tokens = generate_new_tokens(model, inputs, self.prefix_cache, logits_processor=processors,
                                         **generate_kwargs)  # (2B, S)
        check_paired_rows(new_tokens, batch)
        return self.processor.batch_decode(new_tokens[:batch], skip_special_tokens=True)
