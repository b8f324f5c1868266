"""Region evidence: what the VLM's own image tokens say is inside the object regions, as a logits processor.

The planted prior of the hallucination world (docs/world.md) is contextual: "fork in the image => knife". Every
decoding-time method that runs the image through the language model again (highlight, masked-contrast, VCD)
reads its evidence through the same context that carries that prior. This method reads it before any context:

1. **Reading** (`image_token_reading`): the image tokens exactly as the language model receives them (the
   projector's output, `model.get_image_features`), each compared by cosine with the input embedding of every
   object word of a vocabulary (the 80 COCO categories of the CHAIR table, each as the mean embedding of the
   tokens of " <name>", and " background"). Each image token votes for its nearest word: a logit lens at layer 0,
   one batched vision + projector forward for all the distinct images of a batch, cached per image so an image's
   questions share it. No prompt is read and no token of the question or the caption is seen.
2. **Regions** (grounding/objects/mask_source.py): which image tokens count, from a mask source: `object-dino`
   (the default: Object-DINO's object instances, `ObjectDINO.instances`, up to `max_objects`; with
   `regions="map"` the object map > `map_threshold`), `random` (the same image's Object-DINO regions, each moved
   to a random place on the token grid, seeded per image: the same number of regions and the same areas, placed at
   random), `oracle` (the ground-truth instance masks of a COCO-format annotation file: COCO instances or a
   generated world) or `none` (every image token). A region covers the token cells it covers at least
   `coverage` (`instance_cells`; a region smaller than that keeps its best-covered cell).
3. **Support** of a category: the number of image tokens inside the regions that vote for it.
4. **Decoding** (`EvidenceLogitsProcessor`): a fixed (B, V) penalty subtracted from the logits at every step.
   Questions ("Is there a knife in the image?"): the object asked about is found in the prompt (CHAIR synonyms);
   when fewer than `min_support` region tokens vote for it, "Yes" loses `strength` (8, chosen on the val
   world: no larger value changed a val answer, so an object no region supports is not affirmed). Captions: the
   first token of every word of every category with no support loses `caption_strength` (2, chosen on val: the
   largest that keeps the object recall within 3 points of plain greedy). With strength 0 the processor returns
   the scores unchanged (plain greedy, exactly).

It runs through `generate()`'s logits-processor seam on any HF image-text-to-text model whose
`get_image_features` returns one token per cell of a grid that covers the whole image (LLaVA-1.5-style square
resize; Qwen2-VL's merged patches with `image_grid_thw`). Measured in docs/benchmarks.md ("Region evidence").
"""

from __future__ import annotations

import re
from importlib import resources
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from ..decoding.chat import encode_chat
from ..decoding.prefix_cache import PrefixCache, generate_new_tokens
from ..decoding.sampling import sampling_settings, with_reference_sampling
from ..images import as_pil, per_distinct_image
from ..objects.instance_registry import instance_pixel_masks
from ..objects.mask_source import MASK_SOURCES as OBJECT_MASK_SOURCES
from ..objects.mask_source import (OracleMasks, check_mask_source, instance_cells, placement_seed,
                                   random_regions, region_cells)
from ..objects.object_dino import ObjectDINO, ObjectDINOConfig
from ..tower.backbone import per_input_size
from .registry import fixed_options, register_method

__all__ = [
    "EvidenceConfig",
    "RegionEvidence",
    "EvidenceLogitsProcessor",
    "ObjectVocabulary",
    "image_token_reading",
    "region_cells",
    "random_regions",
    "instance_cells",
    "MASK_SOURCES",
]

MASK_SOURCES = (*OBJECT_MASK_SOURCES, "none")  # object-dino, random, oracle (grounding/objects/mask_source.py), none
_SYNONYMS = Path(str(resources.files("grounding") / "data" / "chair" / "synonyms.txt"))  # the CHAIR table


@dataclass
class EvidenceConfig:
    task: Literal["question", "caption"] = "question"
    mask_source: Literal["object-dino", "random", "oracle", "none"] = "object-dino"
    # instances: the regions are Object-DINO's object instances (`ObjectDINO.instances`, up to max_objects);
    # map: the connected regions of its object map > map_threshold (docs/benchmarks.md compares them on val)
    regions: Literal["instances", "map"] = "instances"
    max_objects: int = 8
    # logit taken from "Yes" / an unsupported object's words (0: plain greedy); 8, chosen on the val world (no
    # larger value changed a val answer): an object no region supports is not affirmed
    strength: float = 8.0
    # captions: the logit taken from the words of an object no region supports (None: `strength`); 2, chosen on
    # val: the largest that keeps the caption object recall within 3 points of plain greedy
    caption_strength: float | None = 2.0
    min_support: int = 1  # region tokens that must vote for an object for it to count as seen
    coverage: float = 0.3  # a token cell is inside the regions when at least this fraction of it is covered
    map_threshold: float = 0.5  # Object-DINO map threshold of the regions
    seed: int = 0  # random mask source: placements drawn from (seed, image)
    oracle_instances: str | None = None  # oracle: a COCO instances file (a world's annotations/instances.json)
    oracle_images: str | None = None  # oracle: its image folder (default: ../images beside annotations/)
    cache_size: int = 512  # images whose reading and regions are kept
    # instance discovery clusters all heads into 12 groups (maps: 5); `object_dino` overrides
    object_dino: ObjectDINOConfig | None = None

    def __post_init__(self):
        if self.object_dino is None:
            self.object_dino = ObjectDINOConfig(k=12 if self.regions == "instances" else 5)
        if isinstance(self.object_dino, dict):
            self.object_dino = ObjectDINOConfig(**self.object_dino)
        if self.regions not in ("instances", "map"):
            raise ValueError(f"regions must be 'instances' or 'map', got {self.regions!r}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        check_mask_source(self.mask_source, self.oracle_instances, MASK_SOURCES)
        if self.task not in ("question", "caption"):
            raise ValueError(f"task must be 'question' or 'caption', got {self.task!r}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if self.caption_strength is not None and self.caption_strength < 0:
            raise ValueError(f"caption_strength must be >= 0, got {self.caption_strength}")
        if self.min_support < 1:
            raise ValueError(f"min_support must be >= 1, got {self.min_support}")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")


# ------------------------------------------------------------------ the vocabulary of object words
class ObjectVocabulary:
    """The 80 COCO categories with the CHAIR table's synonyms: the words a category is named by."""

    def __init__(self, table: Path = _SYNONYMS):
        lines = [[w.strip() for w in line.split(", ")] for line in table.read_text().splitlines() if line.strip()]
        self.categories = [line[0] for line in lines]
        self.words = {line[0]: sorted({w for w in line if w}) for line in lines}
        by_length = sorted(((w, line[0]) for line in lines for w in line if w), key=lambda p: -len(p[0]))
        self._patterns = [(re.compile(rf"\b{re.escape(w)}(s|es)?\b", re.IGNORECASE), c) for w, c in by_length]

    def asked(self, prompt: str) -> str | None:
        """The category a question names (the longest synonym found; "dining table" before "table"), or None."""
        for pattern, category in self._patterns:
            if pattern.search(prompt):
                return category
        return None

    def embeddings(self, model, tokenizer) -> torch.Tensor:
        """(1 + C, D) unit vectors: " background", then each category's " <name>" (mean over its tokens)."""
        table = model.get_input_embeddings().weight
        rows = []
        for word in ["background", *self.categories]:
            ids = tokenizer.encode(" " + word, add_special_tokens=False)
            rows.append(table[ids].detach().float().mean(0))
        return F.normalize(torch.stack(rows), dim=-1)

    def first_tokens(self, tokenizer) -> dict[str, list[int]]:
        """Per category, the first token of each of its words as a caption would spell them (" knife", " knives",
        "Knife", ...)."""
        out = {}
        for category, words in self.words.items():
            ids = set()
            for word in words:
                for form in {word, word + "s", word + "es", word.capitalize()}:
                    for text in (" " + form, form):
                        tokens = tokenizer.encode(text, add_special_tokens=False)
                        if tokens:
                            ids.add(tokens[0])
            out[category] = sorted(ids)
        return out


def yes_tokens(tokenizer) -> list[int]:
    ids = set()
    for text in ("Yes", " Yes", "yes", " yes", "YES"):
        tokens = tokenizer.encode(text, add_special_tokens=False)
        if tokens:
            ids.add(tokens[0])
    return sorted(ids)


# ------------------------------------------------------------------ 1. reading the image tokens
def _image_features(model, encoded: dict) -> list[torch.Tensor]:
    """Per image, (tokens, D) of what the language model receives for it, and its (rows, cols) token grid."""
    kwargs = {k: v for k, v in encoded.items() if k in ("pixel_values", "image_grid_thw", "image_sizes")}
    out = model.get_image_features(**kwargs)
    if not isinstance(out, (torch.Tensor, list, tuple)):
        out = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state
    grid = encoded.get("image_grid_thw")
    if isinstance(out, torch.Tensor):
        if grid is not None and out.ndim == 2:  # Qwen2-VL: all images' merged tokens in one (sum, D)
            merge = getattr(getattr(model.config, "vision_config", None), "spatial_merge_size", 2)
            counts = (grid.prod(-1) // merge**2).tolist()
            out = list(out.split(counts))
        else:
            out = list(out.unbind(0))  # (B, tokens, D)
    features = []
    for index, tokens in enumerate(out):
        tokens = tokens.reshape(-1, tokens.shape[-1])
        if grid is not None:
            merge = getattr(getattr(model.config, "vision_config", None), "spatial_merge_size", 2)
            t, h, w = grid[index].tolist()
            shape = (h // merge, w // merge)
            if t != 1 or shape[0] * shape[1] != tokens.shape[0]:
                raise ValueError(f"image {index}: {tokens.shape[0]} image tokens do not fill its {shape} grid")
        else:
            side = int(round(tokens.shape[0] ** 0.5))
            if side * side != tokens.shape[0]:
                raise ValueError(
                    f"image {index} has {tokens.shape[0]} image tokens, not a square grid: region "
                    "evidence needs one token per cell of a grid over the whole image"
                )
            shape = (side, side)
        features.append((tokens, shape))
    return features


@torch.no_grad()
def image_token_reading(
    model, processor, images: Sequence[Image.Image], words: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, ((rows, cols) word index voted by each image token, (rows, cols, 1 + C) cosines) from ONE
    batched vision + projector forward. `words`: (1 + C, D) unit vectors (`ObjectVocabulary.embeddings`)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    encoded = processor.image_processor(list(images), return_tensors="pt")
    encoded = {
        k: (v.to(device=device, dtype=dtype) if k == "pixel_values" else v.to(device)) for k, v in encoded.items()
    }
    out = []
    for tokens, shape in _image_features(model, encoded):
        cosines = F.normalize(tokens.float(), dim=-1) @ words.to(tokens.device).T  # (tokens, 1 + C)
        out.append((cosines.argmax(-1).view(shape).cpu(), cosines.view(*shape, -1).cpu()))
    return out


# ------------------------------------------------------------------ 2. regions on the token grid
# ------------------------------------------------------------------ 3-4. support and the logits processor
class EvidenceLogitsProcessor(LogitsProcessor):
    """scores - penalty, with a fixed (B, V) penalty (0 where the evidence says nothing)."""

    def __init__(self, penalty: torch.Tensor):
        self.penalty = penalty

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != self.penalty.shape[0]:
            raise ValueError(
                f"region evidence holds {self.penalty.shape[0]} rows, generate() gives {scores.shape[0]}: "
                "beam search and num_return_sequences > 1 are not supported"
            )
        width = min(scores.shape[-1], self.penalty.shape[-1])
        if not bool(self.penalty.any()):
            return scores
        penalty = torch.zeros_like(scores)
        penalty[:, :width] = self.penalty[:, :width].to(scores)
        return scores - penalty


class RegionEvidence:
    """The "region-evidence" method (module doc). `generate(model, images, prompts, **generate_kwargs)`."""

    def __init__(self, tower=None, processor=None, config: EvidenceConfig | None = None, **overrides):
        self.config = config if config is not None else EvidenceConfig(**overrides)
        if self.config.mask_source in ("object-dino", "random") and tower is None:
            raise ValueError(f"mask_source {self.config.mask_source!r} needs a grounding tower (Object-DINO maps)")
        self.tower = tower
        self.processor = processor
        self.object_dino = ObjectDINO(self.config.object_dino)
        self.vocabulary = ObjectVocabulary()
        self.oracle = (
            OracleMasks(self.config.oracle_instances, self.config.oracle_images)
            if self.config.mask_source == "oracle"
            else None
        )
        self.generation_settings: dict | None = None
        self.prefix_cache: PrefixCache | None = None
        self._evidence: OrderedDict[str, torch.Tensor] = OrderedDict()  # image key -> (1 + C,) support counts
        self._words: dict[int, tuple] = {}
        self.reading_calls = 0  # batched vision + projector forwards (tests: once per image, whatever the questions)

    def _word_table(self, model) -> tuple[torch.Tensor, dict[str, list[int]], list[int]]:
        key = id(model)
        if key not in self._words:
            tokenizer = self.processor.tokenizer
            self._words = {
                key: (
                    self.vocabulary.embeddings(model, tokenizer),
                    self.vocabulary.first_tokens(tokenizer),
                    yes_tokens(tokenizer),
                )
            }
        return self._words[key]

    def masks(self, images: Sequence[Image.Image]) -> list[np.ndarray | None]:
        """(K, H, W) bool region masks per image from the mask source (None: every image token counts). The
        Object-DINO instances (or maps) of a batch come from one tower call per tower input size."""
        cfg = self.config
        if cfg.mask_source == "none":
            return [None] * len(images)
        if cfg.mask_source == "oracle":
            return [self.oracle.instance_masks(image) if cfg.regions == "instances" else self.oracle.mask(image)[None]
                    for image in images]
        def compute(found) -> list[np.ndarray]:
            if cfg.regions == "instances":
                objects = self.object_dino.instances(found, max_objects=cfg.max_objects, tower=self.tower)
                return [instance_pixel_masks(objects, found, b).cpu().numpy() for b in range(len(found.image_sizes))]
            return [(full > cfg.map_threshold).cpu().numpy()[None]
                    for full in self.object_dino.object_maps(found, upsample=True)]

        return per_input_size(self.tower, list(images), compute)

    def support(self, model, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Per image, (1 + C,) the number of region tokens voting for background and each category. The distinct
        images not cached yet are read in one batched forward."""
        words, _, _ = self._word_table(model)
        def compute(keys: list[str], missing: list[Image.Image]) -> list[torch.Tensor]:
            readings = image_token_reading(model, self.processor, missing, words)
            self.reading_calls += 1
            return [self._count(votes, mask, key, words.shape[0])
                    for key, (votes, _), mask in zip(keys, readings, self.masks(missing))]

        return per_distinct_image(self._evidence, images, compute, self.config.cache_size)

    def _count(self, votes: torch.Tensor, masks: np.ndarray | None, key: str, size: int) -> torch.Tensor:
        cfg = self.config
        if masks is None:
            inside = torch.ones_like(votes, dtype=torch.bool)
        else:
            if cfg.regions == "instances":
                cells = instance_cells(masks, tuple(votes.shape), cfg.coverage)  # (K, rows, cols)
            else:
                cells = region_cells(masks[0], tuple(votes.shape), cfg.coverage)[None]
            if cfg.mask_source == "random":  # each region moved: seeded by the image and the region's rank
                seed = placement_seed(cfg.seed, key)
                cells = torch.stack([random_regions(c, seed + i) for i, c in enumerate(cells)]) if len(cells) else cells
            inside = cells.any(0) if len(cells) else torch.zeros_like(votes, dtype=torch.bool)
        return torch.bincount(votes[inside].flatten(), minlength=size)

    def penalties(self, model, images: Sequence[Image.Image], prompts: Sequence[str], vocab_size: int) -> torch.Tensor:
        """(B, V) logit penalties for the rows (module doc, step 4)."""
        cfg = self.config
        _, first_tokens, yes = self._word_table(model)
        penalty = torch.zeros(len(images), vocab_size)
        strength = cfg.strength if cfg.task == "question" or cfg.caption_strength is None else cfg.caption_strength
        if strength == 0:
            return penalty
        counts = self.support(model, images)
        index = {c: i + 1 for i, c in enumerate(self.vocabulary.categories)}
        for row, (count, prompt) in enumerate(zip(counts, prompts)):
            seen = lambda category: int(count[index[category]]) >= cfg.min_support  # noqa: E731
            if cfg.task == "question":
                asked = self.vocabulary.asked(prompt)
                if asked is not None and not seen(asked):
                    penalty[row, [t for t in yes if t < vocab_size]] = strength
            else:
                for category in self.vocabulary.categories:
                    if not seen(category):
                        penalty[row, [t for t in first_tokens[category] if t < vocab_size]] = strength
        return penalty

    def logits_processor(self, model, images: Sequence, prompts: Sequence[str]) -> EvidenceLogitsProcessor:
        pils = [as_pil(image) for image in images]
        vocab_size = model.get_output_embeddings().weight.shape[0]
        return EvidenceLogitsProcessor(self.penalties(model, pils, prompts, vocab_size).to(model.device))

    @torch.no_grad()
    def generate(self, model, images: Sequence, prompts: Sequence[str], **generate_kwargs) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images vs {len(prompts)} prompts")
        generate_kwargs = dict(generate_kwargs)
        user = list(generate_kwargs.pop("logits_processor", None) or [])
        generate_kwargs = with_reference_sampling(model, generate_kwargs)
        self.generation_settings = sampling_settings(generate_kwargs, model)
        pils = [as_pil(image) for image in images]
        processors = LogitsProcessorList([self.logits_processor(model, pils, prompts), *user])
        inputs = encode_chat(self.processor, pils, prompts, model.device, model.dtype)
        new_tokens = generate_new_tokens(
            model, inputs, self.prefix_cache, logits_processor=processors, **generate_kwargs
        )
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


# ------------------------------------------------------------------ registration
@register_method("region-evidence", needs_tower=True, options=EvidenceConfig)
def _region_evidence(tower, processor, **options):
    return RegionEvidence(tower, processor, **options)


def _twin(source: str):
    def build(tower, processor, **options):
        if options.setdefault("mask_source", source) != source:
            raise ValueError(f"region-evidence@{source} runs mask_source {source!r}, not {options['mask_source']!r}")
        return RegionEvidence(tower, processor, **options)

    return build


for _source in ("random", "oracle", "none"):  # the ablation twins: `region-evidence@random`, ...
    _name = f"region-evidence@{_source}"
    register_method(_name, needs_tower=_source == "random", options=fixed_options(EvidenceConfig, _name,
                                                                                    mask_source=_source))(
        _twin(_source)
    )
