"""The hallucination-benchmark runner shared by POPE and CHAIR.

For each method (from `grounding.methods.METHODS`, plus "baseline"): items are ordered by image so a method's
object maps are computed once per image, split across processes by accelerate (`accelerate launch grounding
eval ...`: process r takes items r, r + world, ...), generated in batches (left padding), and appended to
``<out>/<method>/shard-<r>.jsonl`` as they are produced. A killed run restarts where it stopped: every shard
file of any earlier world size is read back first and nothing done is redone or duplicated.

Trust (`eval.run_folder`): each method folder's `settings.json` records what produces its answers (model and
tower weights, method options, generation settings) and every record carries that fingerprint and a digest of
its question and image bytes; a rerun with other settings or other inputs under the same ids is refused before
any model loads (`overwrite=True` writes the new records aside and swaps them in once every method succeeded;
`eval.atomic`). One run per `out` at a time (a lock file per process rank). Items whose image cannot be read
are recorded as skips with the reason, retried by the next run, and counted (`scored`, `skipped`) in
metrics.json. When sampling, each item draws from its own generator
(`grounding.decoding.sampling.ItemSampler`, seeded by the run's seed and the item's id), so answers do not depend on
the batch size, the process count or where a run resumed. Every process marks a method finished; the main
process merges only when all have, checks that every item has exactly one record, and writes
``predictions.jsonl`` and strict-JSON metrics (a NaN figure is an error).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from grounding.images import ImageError, load_image
from grounding.methods import build_method, check_method_options, needs_tower
from grounding.decoding.sampling import ItemSampler, item_seed
from grounding.decoding.prefix_cache import PrefixCache
from grounding.vlm import load_vlm

from .records import SKIPPED, JsonlLog, is_skip, run_metadata, write_json, write_jsonl
from .atomic import promote, recover, remove_stale_temporaries, staging_folder
from .run_folder import (LOCK_NAME, RunLock, check_records, clear_folder, effective_options, fingerprint,
                         input_identity, item_digest, record_id, save_settings, weights_identity)

__all__ = ["Item", "RunConfig", "run_methods", "merged_predictions", "method_settings"]

log = logging.getLogger(__name__)


@dataclass
class Item:
    key: Any  # question_id (POPE) or image_id (CHAIR)
    image: Path
    prompt: str
    extra: dict = field(default_factory=dict)  # kept in the record (label, question text, ...)

    def digest(self) -> str:
        """What the record of this item was made from: its id, the image's file name and bytes, the prompt and the
        label (not the images folder: runs may move it)."""
        return item_digest(record_id(self.key), Path(self.image).name, input_identity(self.image), self.prompt,
                           self.extra)


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
    overwrite: bool = False  # replace the methods' earlier records (once this run succeeded) instead of refusing
    share_prefixes: bool = True  # rows of one image reuse its prompt prefix's KV cache (same answers; POPE)

    def __post_init__(self):
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.methods:
            raise ValueError("no methods given")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} name one twice")
        for name, value in (("batch_size", self.batch_size), ("max_new_tokens", self.max_new_tokens),
                            ("tower_short_side", self.tower_short_side), ("max_image_side", self.max_image_side or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.method_options, dict):
            raise ValueError(f"method options must be an object {{method: {{option: value}}}}, got "
                             f"{self.method_options!r}")
        for name in self.methods:  # unknown methods, misspelled options: refused before any model loads
            check_method_options(name, self.method_options.get(name, {}))
        stray = sorted(set(self.method_options) - set(self.methods))
        if stray:
            raise ValueError(f"method options for {', '.join(map(repr, stray))}, which "
                             f"{'is' if len(stray) == 1 else 'are'} not among the methods run "
                             f"({', '.join(self.methods)}): a misspelled method name?")


def method_settings(config: RunConfig, name: str, task: str) -> dict:
    """Everything that decides a method's answers (batch size and device do not: see the module doc)."""
    options = {"task": task} if name != "baseline" else {}
    options = effective_options(name, {**options, **config.method_options.get(name, {})})  # defaults: no change
    identified = {k: weights_identity(v) if isinstance(v, str) and Path(v).expanduser().is_dir() else v
                  for k, v in options.items()}
    return {"task": task, "method": name, "options": identified, "model": weights_identity(config.model),
            "tower": ({"weights": weights_identity(config.tower), "short_side": config.tower_short_side}
                      if needs_tower(name) else None),
            "dtype": config.dtype, "max_image_side": config.max_image_side, "max_new_tokens": config.max_new_tokens,
            "do_sample": config.do_sample, "sampling": "per-item seeds" if config.do_sample else "greedy",
            "temperature": config.temperature if config.do_sample else None,
            "seed": config.seed if config.do_sample else None}


def _read_shards(folder: Path, rank: int) -> tuple[JsonlLog, list[dict]]:
    """This rank's log (a torn tail cut off), and the records of every shard file (of any world size). Other
    ranks' shards are only read, never cut: their writers may be running."""
    own = JsonlLog(folder / f"shard-{rank}.jsonl", key="key")
    records = list(own.records)
    for path in sorted(folder.glob("shard-*.jsonl")):
        if path != own.path:
            records += _read_only(path)
    return own, records


def _read_only(path: Path) -> list[dict]:
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not valid JSON ({error.msg}); the run folder is damaged: "
                                 "delete that line or start afresh with --overwrite") from None
    return records


def _finished_marker(folder: Path, rank: int) -> Path:
    return folder / f"finished-{rank}.json"


def merged_predictions(folder: Path, order: Sequence) -> list[dict]:
    """One record per key of `order` from every shard: the answer, or (none) the newest skip. Refuses a key
    answered twice or missing altogether (a process that did not finish), naming the keys."""
    answered: dict[str, list[dict]] = {}
    skipped: dict[str, dict] = {}
    for path in sorted(folder.glob("shard-*.jsonl")):
        for record in _read_only(path):
            key = record_id(record["key"])
            if is_skip(record):
                skipped[key] = record
            else:
                answered.setdefault(key, []).append(record)
    twice = [k for k in order if len(answered.get(record_id(k), [])) > 1]
    if twice:
        raise RuntimeError(f"{folder}: {len(twice)} items were answered more than once (e.g. {twice[:3]}): two runs "
                           "wrote to this folder; rerun with --overwrite")
    missing = [k for k in order if record_id(k) not in answered and record_id(k) not in skipped]
    if missing:
        raise RuntimeError(f"{folder}: {len(missing)} of {len(order)} items have no record (e.g. {missing[:3]}): a "
                           "process did not finish; rerun the same command to complete them")
    return [answered[record_id(k)][0] if record_id(k) in answered else skipped[record_id(k)] for k in order]


def _generate_all(method, model, todo: list[Item], own: JsonlLog, config: RunConfig, bar, stamp: str) -> None:
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        good, images = [], []
        for item in batch:
            try:
                images.append(load_image(item.image, max_side=config.max_image_side))
                good.append(item)
            except ImageError as error:
                log.warning("skipping %s: %s", item.key, error)
                own.append({"key": item.key, "image": item.image.name, SKIPPED: str(error), **item.extra,
                            "run": stamp, "item": item.digest()})
        if good:
            kwargs = {"max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample,
                      **({"temperature": config.temperature} if config.do_sample else {})}
            if config.do_sample:  # each item from its own generator: independent of batching and resume
                seeds = [item_seed(config.seed, item.key) for item in good]
                kwargs["logits_processor"] = [ItemSampler(model, kwargs, seeds)]
            answers = method.generate(model, images, [it.prompt for it in good], **kwargs)
            for item, answer in zip(good, answers):
                own.append({"key": item.key, "image": item.image.name, "answer": answer, **item.extra,
                            "run": stamp, "item": item.digest()})
        bar.update(len(batch))


def _check_keys(items: Sequence[Item]) -> None:
    seen, twice = set(), []
    for item in items:
        key = record_id(item.key)
        if key in seen:
            twice.append(item.key)
        seen.add(key)
    if twice:
        raise ValueError(f"{len(twice)} items share an id with another (e.g. {twice[:3]}): ids must be unique")


def run_methods(config: RunConfig, items: Sequence[Item], task: str,
                score: Callable[[list[dict]], dict], extra_config: dict | None = None) -> dict:
    """Generate for every method and item not yet done; return {method: metrics} (on the main process)."""
    state = _process_state(config)
    out = Path(config.out)
    lock = LOCK_NAME if state.process_index == 0 else f"{LOCK_NAME}.{state.process_index}"
    with RunLock(out, lock):
        try:
            return _run_locked(config, items, task, score, extra_config, state)
        except BaseException:  # --overwrite: a failed or interrupted run drops its staging; the old answers stay
            if config.overwrite and state.is_main_process:
                import shutil

                for name in config.methods:
                    shutil.rmtree(staging_folder(out / name), ignore_errors=True)
            raise


def _process_state(config: RunConfig):
    """accelerate's view of the processes; CPU processes form a (gloo) group only when asked for the CPU, and
    processes launched together that did not form one would each do all the work: refused."""
    import os

    from accelerate import PartialState

    cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
           or str(config.device or "").startswith("cpu") or not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched != state.num_processes:
        raise RuntimeError(f"{launched} processes were launched (WORLD_SIZE) but accelerate sees "
                           f"{state.num_processes}: they would each do all the work. Launch with `accelerate launch` "
                           "or `torchrun` (on CPU: --device cpu)")
    return state


def _run_locked(config: RunConfig, items: Sequence[Item], task: str, score: Callable[[list[dict]], dict],
                extra_config: dict | None, state) -> dict:
    device = config.device or str(state.device)
    out = Path(config.out)
    _check_keys(items)
    items = sorted(items, key=lambda it: (str(it.image), str(it.key)))
    order = [it.key for it in items]
    # an image that cannot be read now is not compared: its answers (made from the bytes it had) stand
    digests = {record_id(it.key): it.digest() for it in items if input_identity(it.image) != "unreadable"}
    mine = items[state.process_index :: state.num_processes]

    # every folder is checked before any model loads; with overwrite the new records go to a hidden staging
    # folder that replaces the method's folder only once every method has succeeded (eval.atomic)
    from .preflight import check_run

    check_run(config, device)  # weights, towers and the device exist: before any model loads
    plans = {}
    if state.is_main_process:
        remove_stale_temporaries(out)
    for name in config.methods:
        folder = staging_folder(out / name) if config.overwrite else out / name
        if state.is_main_process:
            recover(out / name)
            if config.overwrite:
                clear_folder(folder)
        state.wait_for_everyone()
        settings = method_settings(config, name, task)
        own, records = _read_shards(folder, state.process_index)
        check_records(folder, records, settings, digests)
        done = {record_id(r["key"]) for r in records if not is_skip(r)}
        plans[name] = (folder, settings, own, [it for it in mine if record_id(it.key) not in done])
        _finished_marker(folder, state.process_index).unlink(missing_ok=True)
    state.wait_for_everyone()  # all have read the shards before anyone appends

    loaded: dict[str, Any] = {}
    results = {}
    for name in config.methods:
        folder, settings, own, todo = plans[name]
        stamp = fingerprint(settings)
        generation = None
        if todo:
            from .preflight import loading

            if "model" not in loaded:
                with loading("--model", config.model):
                    loaded["model"], loaded["processor"] = load_vlm(config.model, config.dtype, device)
            if needs_tower(name) and "tower" not in loaded:
                from grounding.tower.backbone import RegisterViT

                with loading("--tower", config.tower):
                    loaded["tower"] = RegisterViT.from_pretrained(config.tower, device=device,
                                                                  preprocess={"short_side": config.tower_short_side})
            model = loaded["model"]
            options = {"task": task} if name != "baseline" else {}
            method = build_method(name, loaded.get("tower"), loaded["processor"],
                                  **options, **config.method_options.get(name, {}))
            if state.is_main_process:  # saved once the method could be built: a refused run leaves none behind
                save_settings(folder, settings)
            if config.share_prefixes and hasattr(method, "prefix_cache") and len({it.image for it in todo}) < len(todo):
                method.prefix_cache = PrefixCache()  # several items per image: compute each image's prefix once
            bar = tqdm(total=len(todo), desc=f"{name} [{state.process_index}]", unit="item",
                       disable=not state.is_local_main_process and state.num_processes > 1)
            bound = method.bind(model) if hasattr(method, "bind") else contextlib.nullcontext()
            try:
                with bound:
                    _generate_all(method, model, todo, own, config, bar, stamp)
            finally:  # closed before an error or "interrupted" line is printed, not after it
                bar.close()
            # what decoding really ran with (sampling warpers included), kept for runs that only resume
            generation = getattr(method, "generation_settings", None)
            if generation is not None:
                write_json(folder / "generation.json", {"run": stamp, "generation": generation})
        if state.is_main_process:
            save_settings(folder, settings)
        write_json(_finished_marker(folder, state.process_index), {"run": stamp, "world": state.num_processes})
        state.wait_for_everyone()
        if state.is_main_process:
            results[name] = _merge_and_score(folder, name, stamp, order, state.num_processes, score)
            record = folder / "generation.json"
            saved = json.loads(record.read_text()) if record.is_file() else {}
            results[name]["generation"] = generation or (saved.get("generation") if saved.get("run") == stamp
                                                         else None)
            write_json(folder / "metrics.json", results[name])
    if state.is_main_process and config.overwrite:  # every method succeeded: now the old answers are replaced
        for name in config.methods:
            promote(plans[name][0], out / name)
    if state.is_main_process:
        summary = {m: {k: v for k, v in r.items() if k != "per_caption"} for m, r in results.items()}
        write_json(out / "metrics.json", {"task": task, "results": summary,
                                          **run_metadata({**asdict(config), **(extra_config or {})})})
    return results


def _merge_and_score(folder: Path, name: str, stamp: str, order: list, world: int,
                     score: Callable[[list[dict]], dict]) -> dict:
    unfinished = []
    for rank in range(world):
        marker = _finished_marker(folder, rank)
        if not marker.is_file() or json.loads(marker.read_text()) != {"run": stamp, "world": world}:
            unfinished.append(rank)
    if unfinished:
        raise RuntimeError(f"{folder}: process(es) {unfinished} of {world} did not finish {name}; not merging "
                           "partial answers (rerun the same command to complete them)")
    predictions = merged_predictions(folder, order)
    write_jsonl(folder / "predictions.jsonl", predictions)
    skips = [p for p in predictions if is_skip(p)]
    if len(skips) == len(predictions):
        example = f"{skips[0]['key']!r}: {skips[0][SKIPPED]}" if skips else "no items"
        raise ValueError(f"{name}: none of the {len(predictions)} items could be scored, every one was skipped (e.g. "
                         f"{example}). Fix the cause (the --images folder?) and rerun: skipped items are retried.")
    metrics = score([p for p in predictions if not is_skip(p)])
    metrics.update(scored=len(predictions) - len(skips), skipped=len(skips),
                   skipped_examples=[{"key": p["key"], "reason": p[SKIPPED]} for p in skips[:5]])
    if skips:
        log.warning("%s: %d of %d items skipped (e.g. %r: %s); rerun to retry them", name, len(skips),
                    len(predictions), skips[0]["key"], skips[0][SKIPPED])
    return metrics
