"""The fit data path: conversation label masking, batches equal to the processor's own, resumable loading."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_modules.conversation import ConversationCollator, tokenize_batch
from lightning_modules.loader import TrainerStatefulLoader
from tiny_vlm import make_tiny_llava, photos

SINGLE = [{"from": "human", "value": "<image>\nis there a dog ?"}, {"from": "gpt", "value": "yes"}]
MULTI = [{"from": "human", "value": "<image>\nis there a dog ?"}, {"from": "gpt", "value": "yes"},
         {"from": "human", "value": "is there a cat ?"}, {"from": "gpt", "value": "no"},
         {"from": "human", "value": "please describe the image ."}, {"from": "gpt", "value": "a red car on a table ."}]


def _batch(processor, conversations):
    tokens = tokenize_batch({"conversations": conversations}, processor)
    items = [{"input_ids": i, "labels": l, "image": image}
             for i, l, image in zip(tokens["input_ids"], tokens["labels"], photos(len(conversations)))]
    return ConversationCollator(processor)(items), tokens


@pytest.mark.parametrize("regions", [0, 3])
def test_only_assistant_tokens_carry_labels(regions):
    """Labels are the answers and their end-of-turn token, in order; prompts, headers, image, padding: -100."""
    _, processor = make_tiny_llava()
    processor.num_additional_image_tokens += regions  # what attaching K region tokens does
    tokenizer = processor.tokenizer
    batch, _ = _batch(processor, [SINGLE, MULTI])
    ids, labels = batch["input_ids"], batch["labels"]
    assert labels.shape == ids.shape
    labelled = labels != -100
    assert torch.equal(labels[labelled], ids[labelled])  # a label is the token at its position
    assert tokenizer.convert_ids_to_tokens(labels[0][labelled[0]]) == ["yes", "</s>"]
    assert tokenizer.convert_ids_to_tokens(labels[1][labelled[1]]) == \
        ["yes", "</s>", "no", "</s>", "a", "red", "car", "on", "a", "table", ".", "</s>"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assistant = tokenizer.convert_tokens_to_ids("ASSISTANT:")
    for row in range(2):
        assert not labelled[row][ids[row] == image_id].any()
        assert not labelled[row][batch["attention_mask"][row] == 0].any()
        starts = [i for i in range(1, ids.shape[1]) if labelled[row, i] and not labelled[row, i - 1]]
        assert starts and all(ids[row, i - 1] == assistant for i in starts)  # each answer right after its header
    assert int((ids[0] == image_id).sum()) == (32 // 8) ** 2 + regions  # patches of the 32 px image, + K regions


@pytest.mark.parametrize("regions", [0, 2])
def test_batches_equal_the_processor_on_the_full_texts(regions):
    """Tokenised once per record, expanded per batch: the processor's own input_ids, mask and pixels."""
    from lightning_modules.conversation import to_messages

    _, processor = make_tiny_llava()
    processor.num_additional_image_tokens += regions
    conversations = [MULTI, SINGLE, MULTI[:4]]
    batch, _ = _batch(processor, conversations)
    texts = [processor.apply_chat_template(to_messages(c)) for c in conversations]
    reference = processor(images=photos(3), text=texts, return_tensors="pt", padding=True, padding_side="right")
    assert set(batch) == set(reference) | {"labels"}
    for key in reference:
        assert torch.equal(batch[key], reference[key]), key


def test_a_template_without_the_image_token_is_a_clear_error():
    _, processor = make_tiny_llava()
    processor.chat_template = processor.tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="rendered 0 image tokens"):
        tokenize_batch({"conversations": [SINGLE]}, processor)


class _Squares(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> int:
        return index * index


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_state_is_taken_after_the_batches_trained(workers):
    """With a batch in flight (as Lightning fetches one ahead), the saved state resumes at the next untrained batch,
    for a rank of a distributed sampler, in-process or with a worker."""
    def loader(position):
        sampler = DistributedSampler(_Squares(), num_replicas=2, rank=1, shuffle=True, seed=7, drop_last=True)
        sampler.set_epoch(3)
        return TrainerStatefulLoader(_Squares(), batch_size=2, sampler=sampler, num_workers=workers, position=position)

    trained = 0
    first = loader(lambda: trained)
    iterator = iter(first)
    order, pending = [], next(iterator)
    for _ in range(3):
        following = next(iterator)  # fetched before the step on `pending`, like Lightning's prefetcher
        order.append(pending.tolist())
        trained += 1
        pending = following
    state = first.state_dict()
    rest = [b.tolist() for b in [pending, *iterator]]

    second = loader(None)
    second.load_state_dict(state)
    assert [b.tolist() for b in second] == rest  # not one batch later
    assert len(order) + len(rest) == 6 and not set(map(tuple, order)) & set(map(tuple, rest))


def test_loader_resumes_a_checkpoint_of_the_earlier_loader():
    """{"epoch", "samples"} (what checkpoints held before torchdata) resumes at that sample."""
    def loader():
        sampler = DistributedSampler(_Squares(), num_replicas=1, rank=0, shuffle=True, seed=7)
        sampler.set_epoch(2)
        return TrainerStatefulLoader(_Squares(), batch_size=3, sampler=sampler)

    whole = [b.tolist() for b in loader()]
    resumed = loader()
    resumed.load_state_dict({"epoch": 2, "samples": 9})
    assert [b.tolist() for b in resumed] == whole[3:]


def test_llava_instruction_files_mix_with_coco_records(tmp_path):
    """A LLaVA-Instruct-665k-style file (ids, multi-turn, a text-only record, a missing image) and COCO instances:
    text-only and missing-image records are left out, the rest tokenised once and served with their images."""
    import json
    import types

    from lightning_modules.data import InstructionDataModule

    for i, image in enumerate(photos(2)):
        image.save(tmp_path / f"{i}.png")
    records = [{"id": "000000033471", "image": "0.png", "conversations": MULTI},
               {"id": 7, "conversations": [{"from": "human", "value": "is there a dog ?"}, {"from": "gpt", "value": "no"}]},
               {"id": "x", "image": "gone.png", "conversations": SINGLE},
               {"id": "y", "image": "1.png", "conversations": SINGLE}]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    instances = {"images": [{"id": 1, "file_name": "1.png"}], "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
                 "annotations": [{"image_id": 1, "category_id": 1}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    _, processor = make_tiny_llava()
    datamodule = InstructionDataModule(image_root=str(tmp_path), instructions=str(tmp_path / "llava.json"),
                                       instances=str(tmp_path / "instances.json"), batch_size=2,
                                       cache_dir=str(tmp_path / "cache"))
    datamodule.trainer = types.SimpleNamespace(lightning_module=types.SimpleNamespace(processor=processor),
                                               strategy=types.SimpleNamespace(local_rank=0, barrier=lambda *a: None),
                                               world_size=1, global_rank=0, current_epoch=0)
    datamodule.setup("fit")
    assert datamodule.skipped == 1  # the missing image; the text-only record never counts as a training record
    assert datamodule.table["image"] == ["0.png", "1.png", "1.png", "1.png"]  # 2 instructions, then yes + no
    batches = list(datamodule.train_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == 4
    answers = sorted(" ".join(processor.tokenizer.convert_ids_to_tokens(row[row != -100]))
                     for b in batches for row in b["labels"])
    assert answers == ["no </s>", "yes </s>", "yes </s>", "yes </s> no </s> a red car on a table . </s>"]
