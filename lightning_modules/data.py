"""LightningDataModule for instruction tuning with region tokens, from local files through `datasets`.

Sources (any mix):
* `instructions`: LLaVA-style JSON, a list of {"image": file, "conversations": [{"from": "human", "value":
  "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}.
* `captions`: a COCO captions file -> "Please describe this image in detail." / the caption.
* `instances`: a COCO instance file -> grounded yes/no questions, POPE-style (first `per_image` present
  objects "yes", as many absent ones "no", negatives chosen at random with a seed). `group_questions=True`
  puts one image's questions into one multi-turn conversation (LLaVA-Instruct's layout), in a seeded random
  order: the image tokens are then paid once per image instead of once per question.

Records whose image is missing or unreadable are skipped and counted in the log. Labels are -100 except on the
answer tokens (and the end-of-turn token after them). The training sampler shuffles with (seed, epoch) and
resumes mid-epoch from a checkpoint: the loader implements Lightning's `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eval.pope import objects_per_image
from grounding.images import ImageError, load_image

__all__ = ["InstructionDataModule", "ResumableSampler", "ResumableLoader", "grounded_questions", "join_per_image"]

log = logging.getLogger(__name__)
CAPTION_PROMPT = "Please describe this image in detail."


def grounded_questions(instances: dict, per_image: int = 3, seed: int = 0, grouped: bool = False) -> list[dict]:
    """Yes/no object questions per image (LLaVA-format records): one record per question, or per image if grouped."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    present = objects_per_image(instances)
    rng = random.Random(seed)
    records = []
    for image_id in sorted(present):
        objs = present[image_id]
        absent = [n for n in names.values() if n not in objs]
        positives = objs[:per_image]
        negatives = rng.sample(absent, min(len(positives), len(absent)))
        pairs = [(o, "Yes") for o in positives] + [(o, "No") for o in negatives]
        turns = [[{"from": "human", "value": f"Is there a {obj} in the image?"}, {"from": "gpt", "value": answer}]
                 for obj, answer in pairs]
        if grouped:
            rng.shuffle(turns)
            turns = [[turn for qa in turns for turn in qa]]
        for conversation in turns:
            conversation[0] = {**conversation[0], "value": "<image>\n" + conversation[0]["value"]}
            records.append({"image": files[image_id], "conversations": conversation})
    return records


def join_per_image(records: list[dict]) -> list[dict]:
    """One conversation per image: its records' turns in order (the image stays in the first user turn only).

    The image tokens are the bulk of every row, so one row per image trains on the same answers at a fraction of
    the compute of one row per question set and one per caption."""
    joined: dict[str, list[dict]] = {}
    for record in records:
        turns = joined.setdefault(record["image"], [])
        for turn in record["conversations"]:
            value = turn["value"]
            if turns and "<image>" in value:
                value = value.replace("<image>", "").strip()
            turns.append({**turn, "value": value})
    return [{"image": image, "conversations": turns} for image, turns in joined.items()]


def _from_captions(data: dict, per_image: int | None = None) -> list[dict]:
    files = {im["id"]: im["file_name"] for im in data["images"]}
    counts: dict[int, int] = {}
    records = []
    for a in data["annotations"]:
        if a["image_id"] not in files or (per_image is not None and counts.get(a["image_id"], 0) >= per_image):
            continue
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
        records.append({"image": files[a["image_id"]], "conversations": [
            {"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"}, {"from": "gpt", "value": a["caption"].strip()}]})
    return records


def _messages(conversation: list[dict]) -> list[dict]:
    """LLaVA turns ({"from", "value"} with "<image>") -> chat messages with the image part in the first user turn."""
    messages = []
    for turn in conversation:
        role = "user" if turn["from"] in ("human", "user") else "assistant"
        text = turn["value"].replace("<image>", "").strip()
        first_user = role == "user" and not messages
        content = [{"type": "image"}, {"type": "text", "text": text}] if first_user else [{"type": "text", "text": text}]
        messages.append({"role": role, "content": content})
    return messages


class InstructionDataset(Dataset):
    def __init__(self, records: list[dict], image_root: Path):
        self.records = records
        self.image_root = image_root

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"image": load_image(self.image_root / record["image"]), "conversations": record["conversations"]}


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffle that can start part-way through an epoch."""

    def __init__(self, size: int, shuffle: bool, seed: int):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch = 0
        self.skip = 0  # samples to skip at the start of the current epoch (set on resume)

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        order = self.order()[self.skip :]
        self.skip = 0
        return iter(order)

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch is saved in checkpoints (Lightning reads `state_dict`).

    The place is the trainer's count of processed batches (not of fetched ones: Lightning prefetches)."""

    def __init__(self, dataset, batch_size: int, sampler: ResumableSampler, collate_fn, num_workers: int, progress):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers)
        self.resumable_sampler = sampler
        self.progress = progress  # () -> (epoch, batches processed in this epoch)

    def state_dict(self) -> dict:
        epoch, batches = self.progress()
        return {"epoch": epoch, "samples": batches * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.resumable_sampler.epoch = state["epoch"]
        self.resumable_sampler.skip = state["samples"]


class InstructionDataModule(L.LightningDataModule):
    def __init__(self, image_root: str, instructions: str | None = None, captions: str | None = None,
                 instances: str | None = None, val_fraction: float = 0.0, batch_size: int = 4, num_workers: int = 0,
                 seed: int = 0, questions_per_image: int = 3, max_records: int | None = None,
                 group_questions: bool = False, captions_per_image: int | None = None,
                 pad_to_multiple_of: int | None = None, one_record_per_image: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: InstructionDataset | None = None
        self.val_set: InstructionDataset | None = None
        self.skipped = 0
        self.sampler: ResumableSampler | None = None

    # ------------------------------------------------------------ records
    def _records(self) -> list[dict]:
        from datasets import load_dataset

        hp = self.hparams
        records: list[dict] = []
        if hp.instructions:
            table = load_dataset("json", data_files=hp.instructions, split="train")
            records += [{"image": r["image"], "conversations": r["conversations"]} for r in table if r.get("image")]
        captions = _from_captions(json.loads(Path(hp.captions).read_text()), hp.captions_per_image) if hp.captions else []
        questions = grounded_questions(json.loads(Path(hp.instances).read_text()), hp.questions_per_image, hp.seed,
                                       grouped=hp.group_questions) if hp.instances else []
        records += (join_per_image(questions + captions) if hp.one_record_per_image else captions + questions)
        if not records:
            raise ValueError("no training data: give instructions, captions and/or instances")
        return records[: hp.max_records] if hp.max_records else records

    def _check_images(self, records: list[dict]) -> list[dict]:
        root, good, cache = Path(self.hparams.image_root), [], {}
        for record in records:
            name = record["image"]
            if name not in cache:
                try:
                    load_image(root / name)
                    cache[name] = True
                except ImageError as error:
                    log.warning("skipping records of %s: %s", name, error)
                    cache[name] = False
            if cache[name]:
                good.append(record)
        self.skipped = len(records) - len(good)
        if self.skipped:
            log.warning("skipped %d of %d records (missing or unreadable images)", self.skipped, len(records))
        return good

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        records = self._check_images(self._records())
        random.Random(self.hparams.seed).shuffle(records)
        n_val = int(len(records) * self.hparams.val_fraction)
        root = Path(self.hparams.image_root)
        self.train_set = InstructionDataset(records[n_val:], root)
        self.val_set = InstructionDataset(records[:n_val], root) if n_val else None

    # ------------------------------------------------------------ batches
    def _processor(self):
        return self.trainer.lightning_module.processor

    def collate(self, items: list[dict]) -> dict:
        """Chat-templated conversations; labels only on assistant turns.

        Each assistant turn's span is the difference of two rendered prefixes (up to the assistant header, and up
        to the end of the answer), measured with the tokenizer alone: the processor's `<image>` expansion is
        replayed by repeating the image token as often as it stands in the encoded row (region tokens included).
        """
        processor = self._processor()
        tokenizer, image_token = processor.tokenizer, processor.image_token
        image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        conversations = [_messages(item["conversations"]) for item in items]
        texts = [processor.apply_chat_template(messages) for messages in conversations]
        batch = processor(images=[item["image"] for item in items], text=texts, return_tensors="pt", padding=True,
                          padding_side="right", pad_to_multiple_of=self.hparams.pad_to_multiple_of)
        labels = torch.full_like(batch["input_ids"], -100)
        for row, messages in enumerate(conversations):
            expanded = image_token * int((batch["input_ids"][row] == image_token_id).sum())

            def length(text: str) -> int:
                return len(tokenizer(text.replace(image_token, expanded))["input_ids"])

            if length(texts[row]) != int(batch["attention_mask"][row].sum()):
                raise RuntimeError(f"{type(processor).__name__} does not expand {image_token} by repetition: "
                                   "cannot place the answer labels")
            for j, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                start = length(processor.apply_chat_template(messages[:j], add_generation_prompt=True))
                stop = length(processor.apply_chat_template(messages[: j + 1]))
                labels[row, start:stop] = batch["input_ids"][row, start:stop]
        batch["labels"] = labels
        return dict(batch)

    def _progress(self) -> tuple[int, int]:
        loop = self.trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        self.sampler = ResumableSampler(len(self.train_set), shuffle=True, seed=self.hparams.seed)
        self.sampler.epoch = self.trainer.current_epoch if self.trainer else 0
        return ResumableLoader(self.train_set, self.hparams.batch_size, self.sampler, self.collate,
                               self.hparams.num_workers, self._progress)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, collate_fn=self.collate,
                          num_workers=self.hparams.num_workers)
