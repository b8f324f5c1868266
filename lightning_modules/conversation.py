"""Chat-templated conversations -> token ids and labels, once per record; batches with the image tokens expanded.

`tokenize_batch` is a `datasets.map(batched=True)` function: each record's conversation is rendered with the
processor's chat template and tokenised with `<image>` as ONE token; labels are -100 except on the assistant turns.
Each assistant turn's span is the difference of two rendered prefixes (up to the assistant header, and up to the
end of the answer), so the answer and the end-of-turn text the template puts after it carry labels, the headers
and user turns do not.

`ConversationCollator` runs in the loader's workers: it decodes nothing itself (the dataset decodes the images),
asks the processor for the pixels and for how many image tokens each image takes (LLaVA: a fixed count; the region
tokens of `grounding.region_tokens.injection` included), repeats the image token that often, and pads to the right.
The result is token for token what `processor(images=..., text=...)` returns on the full texts (tests/test_fit.py
checks it).
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["to_messages", "tokenize_batch", "tokenizer_fingerprint", "ConversationCollator"]

IGNORE = -100


def to_messages(conversation: list[dict]) -> list[dict]:
    """LLaVA turns ({"from", "value"} with "<image>") -> chat messages with the image part in the first user turn."""
    messages = []
    for turn in conversation:
        role = "user" if turn["from"] in ("human", "user") else "assistant"
        text = turn["value"].replace("<image>", "").strip()
        first_user = role == "user" and not messages
        content = [{"type": "text", "text": text}]
        if first_user:
            content.insert(0, {"type": "image"})
        messages.append({"role": role, "content": content})
    return messages


def _tokenize_record(conversation: list[dict], processor) -> tuple[list[int], list[int]]:
    tokenizer = processor.tokenizer
    messages = to_messages(conversation)
    texts = [processor.apply_chat_template(messages)]
    for j, message in enumerate(messages):
        if message["role"] == "assistant":
            texts += [processor.apply_chat_template(messages[:j], add_generation_prompt=True),
                      processor.apply_chat_template(messages[: j + 1])]
    encoded = tokenizer(texts)["input_ids"]  # one call: the full text, then two prefixes per assistant turn
    input_ids = list(encoded[0])
    labels = [IGNORE] * len(input_ids)
    for before, through in zip(encoded[1::2], encoded[2::2]):
        labels[len(before) : len(through)] = input_ids[len(before) : len(through)]
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    if input_ids.count(image_id) != 1:
        raise ValueError(f"the chat template of {tokenizer.name_or_path!r} rendered {input_ids.count(image_id)} image "
                         f"tokens ({processor.image_token}) for one image: cannot place the image")
    return input_ids, labels


def tokenize_batch(batch: dict, processor) -> dict:
    """datasets.map(batched=True) function: {"conversations": [...]} -> {"input_ids", "labels"} (one image token)."""
    rows = [_tokenize_record(conversation, processor) for conversation in batch["conversations"]]
    return {"input_ids": [ids for ids, _ in rows], "labels": [labels for _, labels in rows]}


def tokenizer_fingerprint(processor) -> str:
    """What the tokenised rows depend on: tokenizer, vocabulary, chat template, image token (a cache key part)."""
    tokenizer = processor.tokenizer
    template = processor.chat_template if isinstance(processor.chat_template, str) else repr(processor.chat_template)
    parts = [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), str(template), processor.image_token,
             repr(sorted(tokenizer.get_vocab().items())[:50]), "labels-v1"]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class ConversationCollator:
    """Tokenised rows + decoded images -> a padded batch with `labels`, as the processor would make it."""

    def __init__(self, processor, pad_to_multiple_of: int | None = None):
        self.processor = processor
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict:
        processor = self.processor
        tokenizer, image_token = processor.tokenizer, processor.image_token
        image_id = tokenizer.convert_tokens_to_ids(image_token)
        # the pixels, and each image's token count: the processor expands one "<image>" per image
        vision = processor(images=[item["image"] for item in items], text=[image_token] * len(items),
                           return_tensors="pt", padding=True)
        counts = (vision["input_ids"] == image_id).sum(1).tolist()  # (B,)
        rows, labels = [], []
        for item, count in zip(items, counts):
            at = item["input_ids"].index(image_id)
            rows.append(item["input_ids"][:at] + [image_id] * count + item["input_ids"][at + 1 :])
            labels.append(item["labels"][:at] + [IGNORE] * count + item["labels"][at + 1 :])
        length = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, T)
        label_ids = torch.full((len(rows), length), IGNORE, dtype=torch.long)  # (B, T)
        for i, (row, row_labels) in enumerate(zip(rows, labels)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            label_ids[i, : len(row)] = torch.tensor(row_labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        batch.update({k: v for k, v in vision.items() if k not in ("input_ids", "attention_mask")})
        batch["labels"] = label_ids
        return batch
