"""The hallucination-benchmark runner shared by POPE and CHAIR.

For each method (from `grounding.methods.METHODS`, plus "baseline"): items are ordered by image so a method's
object maps are computed once per image, split across processes by accelerate (`accelerate launch grounding
eval ...`: process r takes items r, r + world, ...), generated in batches (left padding), and appended to
``<out>/<method>/shard-<r>.jsonl`` as they are produced. A killed run restarts where it stopped: every shard
file of any earlier world size is read back first and nothing done is redone or duplicated. When all are done
the main process merges the shards, in item order, into ``predictions.jsonl`` and writes metrics.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from grounding.images import ImageError, load_image
from grounding.methods import build_method, needs_tower
from grounding.prefix_cache import PrefixCache

from .records import JsonlLog, run_metadata, write_json

__all__ = ["Item", "RunConfig", "run_methods", "load_vlm", "merged_predictions"]

log = logging.getLogger(__name__)


@dataclass
class Item:
    key: Any  # question_id (POPE) or image_id (CHAIR)
    image: Path
    prompt: str
    extra: dict = field(default_factory=dict)  # kept in the record (label, question text, ...)


@dataclass
class RunConfig:
    model: str
    methods: list[str]
    out: str
    tower: str = "facebook/dinov2-with-registers-base"
    tower_short_side: int = 224
    batch_size: int = 8
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    device: str | None = None
    max_image_side: int | None = 2048  # photos are decoded at no more than this (None: full size)
    method_options: dict = field(default_factory=dict)  # {method name: {option: value}}
    share_prefixes: bool = True  # rows of one image reuse its prompt prefix's KV cache (same answers; POPE)

    def __post_init__(self):
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.methods:
            raise ValueError("no methods given")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")


def load_vlm(name: str, dtype: str, device: str):
    """An HF image-text-to-text model and its processor, from a hub name or a local directory."""
    from grounding.weights import missing_weights, resolve_weights

    # a local directory, the cache's snapshot, or the hub id: fails fast (and clearly) when none can be had
    name = resolve_weights(name, "VLM")
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name)
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=getattr(torch, dtype)).to(device).eval()
    except (OSError, HFValidationError) as error:
        raise missing_weights(name, "VLM", f"loading failed ({type(error).__name__}: {error})") from error
    return model, processor


def _shard_logs(folder: Path, rank: int) -> tuple[JsonlLog, set]:
    """This rank's log, and every key done by any shard file (of this or an earlier world size)."""
    done = set()
    for path in sorted(folder.glob("shard-*.jsonl")):
        if path.name != f"shard-{rank}.jsonl":
            done |= JsonlLog(path, key="key").done
    own = JsonlLog(folder / f"shard-{rank}.jsonl", key="key")
    return own, done | own.done


def merged_predictions(folder: Path, order: Sequence) -> list[dict]:
    records = {}
    for path in sorted(folder.glob("shard-*.jsonl")):
        for record in JsonlLog(path, key="key").records:
            records.setdefault(json.dumps(record["key"]), record)
    return [records[json.dumps(k)] for k in order if json.dumps(k) in records]


def _generate_all(method, model, todo: list[Item], own: JsonlLog, config: RunConfig, bar) -> None:
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        good, images = [], []
        for item in batch:
            try:
                images.append(load_image(item.image, max_side=config.max_image_side))
                good.append(item)
            except ImageError as error:
                log.warning("skipping %s: %s", item.key, error)
                own.append({"key": item.key, "image": item.image.name, "error": str(error), **item.extra})
        if good:
            torch.manual_seed(config.seed + zlib.crc32(str(good[0].key).encode()))  # same on resume
            answers = method.generate(model, images, [it.prompt for it in good], max_new_tokens=config.max_new_tokens,
                                      do_sample=config.do_sample,
                                      **({"temperature": config.temperature} if config.do_sample else {}))
            for item, answer in zip(good, answers):
                own.append({"key": item.key, "image": item.image.name, "answer": answer, **item.extra})
        bar.update(len(batch))


def run_methods(config: RunConfig, items: Sequence[Item], task: str,
                score: Callable[[list[dict]], dict], extra_config: dict | None = None) -> dict:
    """Generate for every method and item not yet done; return {method: metrics}."""
    from accelerate import PartialState

    state = PartialState()
    device = config.device or str(state.device)
    out = Path(config.out)
    model, processor = load_vlm(config.model, config.dtype, device)
    tower = None
    if any(needs_tower(m) for m in config.methods):
        from grounding.backbone import RegisterViT

        tower = RegisterViT.from_pretrained(config.tower, device=device,
                                            preprocess={"short_side": config.tower_short_side})
    items = sorted(items, key=lambda it: (str(it.image), str(it.key)))
    order = [it.key for it in items]
    mine = items[state.process_index :: state.num_processes]
    results = {}
    for name in config.methods:
        options = {"task": task} if name != "baseline" else {}
        options.update(config.method_options.get(name, {}))
        method = build_method(name, tower, processor, **options)
        if config.share_prefixes and hasattr(method, "prefix_cache") and len({it.image for it in items}) < len(items):
            method.prefix_cache = PrefixCache()  # several items per image: compute each image's prefix once
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        own, done = _shard_logs(folder, state.process_index)
        todo = [it for it in mine if it.key not in done]
        bar = tqdm(total=len(todo), desc=f"{name} [{state.process_index}]", unit="item",
                   disable=not state.is_local_main_process and state.num_processes > 1)
        bound = method.bind(model) if todo and hasattr(method, "bind") else contextlib.nullcontext()
        with bound:
            _generate_all(method, model, todo, own, config, bar)
        bar.close()
        state.wait_for_everyone()
        if state.is_main_process:
            predictions = merged_predictions(folder, order)
            (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
            results[name] = score(predictions)
            # what decoding really ran with (sampling warpers included); None when every item was already done
            results[name]["generation"] = getattr(method, "generation_settings", None)
            write_json(folder / "metrics.json", results[name])
    if state.is_main_process:
        summary = {m: {k: v for k, v in r.items() if k != "per_caption"} for m, r in results.items()}
        write_json(out / "metrics.json", {"task": task, "results": summary,
                                          **run_metadata({**asdict(config), **(extra_config or {})})})
    return results
