"""LightningDataModule for instruction tuning with region tokens: `datasets` tables, sharded and resumable loading.

Sources (any mix), all read with `load_dataset("json", ...)`:
* `instructions`: LLaVA-format JSON (LLaVA-Instruct-665k's layout, multi-turn): a list (or JSON lines) of
  {"image": file, "conversations": [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]};
  records without an image are left out.
* `captions`: a COCO captions file -> "Please describe this image in detail." / the caption.
* `instances`: a COCO instance file -> grounded yes/no questions, POPE-style (`lightning_modules.training_records`);
  `group_questions=True` puts one image's questions into one multi-turn conversation, and
  `one_record_per_image=True` one row per image: its questions, then its caption. `question_negatives="balanced"`
  draws the "No" questions so that no category's name predicts its answer (see `grounded_questions`).

Pipeline: records -> rows whose image file is missing or not an image are dropped (counted in `skipped`; only
file headers are read) -> seeded shuffle -> validation split -> `.map` tokenisation with label spans (once per
record, cached beside the `datasets` cache files, keyed by the tokenizer and chat template) -> a Dataset that
decodes each image in the loader's workers -> `TrainerStatefulLoader` (torchdata's StatefulDataLoader) over a
`DistributedSampler`: every rank reads a disjoint share, reshuffled per epoch with (seed, epoch), and a checkpoint
taken mid-epoch resumes every rank at the batch after the last one trained. In one process the order is the same as
before this module used `datasets` (seed * 100_003 + epoch), batch for batch.

Where several processes share a machine, its local rank 0 builds the cache files first, the others then read them.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import lightning as L
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from grounding.images import load_image

from .conversation import ConversationCollator, tokenize_batch, tokenizer_fingerprint
from .loader import TrainerStatefulLoader
from .training_records import records_file

__all__ = ["InstructionDataModule", "InstructionDataset", "SEED_STRIDE"]

log = logging.getLogger(__name__)
SEED_STRIDE = 100_003  # the sampler's seed is seed * SEED_STRIDE (+ epoch, added by DistributedSampler)
COLUMNS = ["image", "conversations"]


def _image_ok(path: Path) -> bool:
    """The file exists and its header parses as an image (the pixels are decoded later, in the workers)."""
    try:
        with Image.open(path):
            return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


class InstructionDataset(Dataset):
    """Tokenised rows of a `datasets.Dataset`; each item's image is decoded when the item is read."""

    def __init__(self, table, image_root: Path):
        self.table = table
        self.image_root = image_root

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        row = self.table[index]
        image = load_image(self.image_root / row["image"])  # decoded here: in the loader's worker
        return {"input_ids": row["input_ids"], "labels": row["labels"], "image": image}


class InstructionDataModule(L.LightningDataModule):
    def __init__(self, image_root: str, instructions: str | None = None, captions: str | None = None,
                 instances: str | None = None, val_fraction: float = 0.0, batch_size: int = 4, num_workers: int = 0,
                 seed: int = 0, questions_per_image: int = 3, max_records: int | None = None,
                 group_questions: bool = False, captions_per_image: int | None = None,
                 pad_to_multiple_of: int | None = None, one_record_per_image: bool = False,
                 cache_dir: str | None = None, map_workers: int | None = None,
                 question_negatives: Literal["random", "balanced"] = "random"):
        """cache_dir: where `datasets` keeps its cache files and the generated records (default: its own cache,
        $HF_DATASETS_CACHE); map_workers: processes for the one-time tokenisation (`datasets.map(num_proc=...)`)."""
        super().__init__()
        self.save_hyperparameters()
        self.table = None  # every usable record, in source order (datasets.Dataset)
        self.order: list[int] = []  # the seeded shuffle of the table's rows: validation rows first
        self.n_val = 0
        self.skipped = 0
        self.train_set: InstructionDataset | None = None
        self.val_set: InstructionDataset | None = None
        self.sampler: DistributedSampler | None = None

    # ------------------------------------------------------------ records
    def _cache_dir(self) -> Path:
        if self.hparams.cache_dir:
            return Path(self.hparams.cache_dir).expanduser()
        import datasets

        return Path(datasets.config.HF_DATASETS_CACHE)

    def _records(self):
        from datasets import concatenate_datasets, load_dataset

        hp = self.hparams
        cache = str(self._cache_dir())
        parts = []
        if hp.instructions:
            table = load_dataset("json", data_files=hp.instructions, split="train", cache_dir=cache)
            if "image" not in table.column_names or "conversations" not in table.column_names:
                raise ValueError(f"{hp.instructions}: LLaVA-format records need 'image' and 'conversations' fields, "
                                 f"found {table.column_names}")
            table = table.select_columns(COLUMNS).filter(bool, input_columns="image", desc="records with an image")
            parts.append(table)
        generated = records_file(Path(cache) / "vlm_grounding_records", hp.captions, hp.instances,
                                 captions_per_image=hp.captions_per_image, questions_per_image=hp.questions_per_image,
                                 seed=hp.seed, group_questions=hp.group_questions,
                                 one_record_per_image=hp.one_record_per_image,
                                 question_negatives=hp.question_negatives)
        if generated is not None and generated.stat().st_size:
            table = load_dataset("json", data_files=str(generated), split="train", cache_dir=cache)
            parts.append(table.cast(parts[0].features) if parts else table)
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no training data: give instructions, captions and/or instances (with images)")
        table = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        return table.select(range(min(hp.max_records, len(table)))) if hp.max_records else table

    def _usable(self, table):
        """Drop the rows whose image is missing or not an image file (headers only; each file once)."""
        root = Path(self.hparams.image_root)
        names = table.unique("image")
        with ThreadPoolExecutor(8) as pool:
            bad = {name for name, ok in zip(names, pool.map(lambda n: _image_ok(root / n), names)) if not ok}
        for name in sorted(bad)[:20]:
            log.warning("skipping records of %s: missing or not an image", root / name)
        if not bad:
            self.skipped = 0
            return table
        kept = [i for i, name in enumerate(table["image"]) if name not in bad]
        self.skipped = len(table) - len(kept)
        log.warning("skipped %d of %d records (missing or unreadable images)", self.skipped, len(table))
        return table.select(kept)

    @contextmanager
    def _local_zero_first(self):
        """Local rank 0 runs the block first (it writes the cache files), then the other ranks (they read them)."""
        trainer = self.trainer
        strategy = trainer.strategy if trainer is not None else None
        first = strategy is None or strategy.local_rank == 0
        if strategy is not None and not first:
            strategy.barrier("datasets cache")
        try:
            yield
        finally:
            if strategy is not None and first:
                strategy.barrier("datasets cache")

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        with self._local_zero_first():
            self.table = self._usable(self._records())
        self.order = list(range(len(self.table)))
        random.Random(self.hparams.seed).shuffle(self.order)
        self.n_val = int(len(self.order) * self.hparams.val_fraction)
        if len(self.order) - self.n_val < 1:
            raise ValueError(f"no training records left after a val_fraction of {self.hparams.val_fraction}")

    def _tokenised(self, processor) -> None:
        """Tokenise every record once per tokenizer (cached), then split the shuffled rows into train and val."""
        if self.train_set is not None:
            return
        with self._local_zero_first():
            fingerprint = f"{self.table._fingerprint}-{tokenizer_fingerprint(processor)}"
            tokens = self.table.map(tokenize_batch, batched=True, batch_size=256, fn_kwargs={"processor": processor},
                                    remove_columns=["conversations"], new_fingerprint=fingerprint[:64],
                                    num_proc=self.hparams.map_workers, desc="tokenising conversations")
        root = Path(self.hparams.image_root)
        self.train_set = InstructionDataset(tokens.select(self.order[self.n_val :]), root)
        self.val_set = InstructionDataset(tokens.select(self.order[: self.n_val]), root) if self.n_val else None

    # ------------------------------------------------------------ batches
    def _processor(self):
        return self.trainer.lightning_module.processor

    def _position(self) -> int:
        """Batches the trainer has taken from the loader in this epoch (checkpoints hold the state after them)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        processor = self._processor()
        self._tokenised(processor)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self.sampler = DistributedSampler(self.train_set, num_replicas=replicas, rank=rank, shuffle=True,
                                          seed=self.hparams.seed * SEED_STRIDE, drop_last=replicas > 1)
        self.sampler.set_epoch(trainer.current_epoch if trainer is not None else 0)
        return TrainerStatefulLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=self.sampler,
                                     collate_fn=ConversationCollator(processor, self.hparams.pad_to_multiple_of),
                                     num_workers=self.hparams.num_workers,
                                     position=self._position if trainer is not None else None)

    def val_dataloader(self):
        self._tokenised(self._processor())
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
                          collate_fn=ConversationCollator(self._processor(), self.hparams.pad_to_multiple_of))
