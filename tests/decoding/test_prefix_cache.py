"""Prefix sharing gives the answers (and logits) of the unshared run: batched, padded, LLaVA and LLaVA-NeXT."""

import pytest
import torch

from grounding.decoding.guidance import ObjectGuidance
from grounding.decoding.chat import encode_chat
from grounding.methods import build_method
from grounding.decoding.prefix_cache import PrefixCache, generate_new_tokens
from tiny_vlm import make_tiny_llava, make_tiny_llava_next, photos

OD = {"k": 2, "restarts": 2}  # the tiny tower has 2 layers x 2 heads
PROMPTS = ["is there a dog ?", "is there a red bus in the image ?", "is there a cat ?", "two ?",
           "is there a man with a kite on a boat ?", "yes"]


def batch():
    """Six rows over three images of three sizes, an image repeated three times, prompts of different lengths."""
    a, b, c = photos(3)
    return [a, a, b, a, c, b], PROMPTS


@pytest.mark.parametrize("make", [make_tiny_llava, make_tiny_llava_next])
def test_shared_prefixes_give_the_unshared_logits_and_answers(make):
    model, processor = make()
    images, prompts = batch()
    inputs = encode_chat(processor, images, prompts, model.device, model.dtype)
    assert inputs["attention_mask"].eq(0).any()  # left padding in play
    kwargs = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    plain = model.generate(**inputs, **kwargs)
    cache = PrefixCache()
    assert cache.unsupported(model, inputs) is None
    shared = cache.prepare(model, inputs)
    assert (shared.distinct, shared.computed) == (3, 3)
    assert shared.past_key_values.get_seq_length() == shared.prefix_length
    assert shared.input_ids.shape[1] < inputs["input_ids"].shape[1] + shared.prefix_length
    out = model.generate(**shared.generate_inputs(), **kwargs)
    for a, b in zip(plain.scores, out.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(plain.sequences[:, inputs["input_ids"].shape[1]:], out.sequences[:, shared.input_ids.shape[1]:])
    # a second call reuses every prefix from the LRU; the answers stay the same
    again = generate_new_tokens(model, inputs, cache, max_new_tokens=6, do_sample=False)
    assert torch.equal(again, plain.sequences[:, inputs["input_ids"].shape[1]:])
    assert cache.misses == 3 and cache.hits == 3 + 6


@pytest.mark.parametrize("make", [make_tiny_llava, make_tiny_llava_next])
def test_rows_of_one_image_in_other_batches_reuse_and_match(make):
    model, processor = make()
    images, prompts = batch()
    cache = PrefixCache(max_prefixes=2)
    for start, size in [(0, 2), (2, 3), (5, 1)]:  # batches cut through an image's rows, as the runner's may
        rows = slice(start, start + size)
        inputs = encode_chat(processor, images[rows], prompts[rows], model.device, model.dtype)
        plain = generate_new_tokens(model, inputs, None, max_new_tokens=6, do_sample=False)
        assert torch.equal(generate_new_tokens(model, inputs, cache, max_new_tokens=6, do_sample=False), plain)
    assert len(cache._store) <= 2
    assert cache.hits >= 2  # image a's prefix carried from the first batch into the second


@pytest.mark.parametrize("make", [make_tiny_llava, make_tiny_llava_next])
def test_baseline_and_every_guided_method_answer_the_same_with_shared_prefixes(make, tower):
    model, processor = make()
    images, prompts = batch()
    settings = [("baseline", {}), ("highlight", {"branches": "joint"}), ("highlight", {"branches": "separate"}),
                ("masked-contrast", {"branches": "joint"}), ("vcd", {"branches": "separate"})]
    for name, options in settings:
        extra = {} if name == "baseline" else {"object_dino": OD, **options}
        method = build_method(name, tower, processor, **extra)
        plain = method.generate(model, images, prompts, max_new_tokens=6, do_sample=False)
        method.prefix_cache = PrefixCache()
        shared = method.generate(model, images, prompts, max_new_tokens=6, do_sample=False)
        assert shared == plain, (name, options)
        assert method.prefix_cache.misses > 0  # the shared path really ran
    # sampling on the separate branch: the same draws from the same seed
    guide = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD)
    torch.manual_seed(3)
    plain = guide.generate(model, images, prompts, max_new_tokens=6, do_sample=True)
    guide.prefix_cache = PrefixCache()
    torch.manual_seed(3)
    assert guide.generate(model, images, prompts, max_new_tokens=6, do_sample=True) == plain


def test_unsupported_inputs_fall_back_to_the_plain_generate():
    model, processor = make_tiny_llava()
    images, prompts = batch()
    inputs = encode_chat(processor, images[:2], prompts[:2], model.device, model.dtype)
    cache = PrefixCache()
    extra = {**inputs, "token_type_ids": torch.zeros_like(inputs["input_ids"])}
    assert "token_type_ids" in cache.unsupported(model, extra)
    text_only = {k: v for k, v in inputs.items() if k != "pixel_values"}
    assert "pixel_values" in cache.unsupported(model, text_only)
    with pytest.raises(ValueError, match="cannot share prefixes"):
        cache.prepare(model, extra)
    with pytest.raises(ValueError, match="max_prefixes"):
        PrefixCache(max_prefixes=0)


def test_multimodal_rotary_models_are_refused():
    from tiny_qwen2_vl import make_tiny_qwen2_vl

    model, processor = make_tiny_qwen2_vl()
    images, prompts = batch()
    inputs = encode_chat(processor, images[:2], prompts[:2], model.device, model.dtype)
    cache = PrefixCache()
    assert cache.unsupported(model, inputs) is not None
    plain = generate_new_tokens(model, inputs, None, max_new_tokens=3, do_sample=False)
    assert torch.equal(generate_new_tokens(model, inputs, cache, max_new_tokens=3, do_sample=False), plain)
    assert cache.misses == 0


def test_runner_answers_the_same_with_and_without_shared_prefixes(tiny_reg_dir, tmp_path, monkeypatch):
    import json

    import eval.runner
    from eval.runner import Item, RunConfig, run_methods

    made = []

    class Counting(PrefixCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(eval.runner, "PrefixCache", Counting)

    model, processor = make_tiny_llava()
    model.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    paths = []
    for i, image in enumerate(photos(3)):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    items = [Item(key=f"q{j}", image=paths[j % 3], prompt=PROMPTS[j]) for j in range(6)]  # two questions per image
    predictions = {}
    for share in (False, True):
        out = tmp_path / f"share-{share}"
        config = RunConfig(model=str(tmp_path / "vlm"), methods="baseline,highlight", out=str(out), tower=tiny_reg_dir,
                           tower_short_side=32, batch_size=4, max_new_tokens=5, device="cpu", share_prefixes=share,
                           method_options={"highlight": {"object_dino": OD}})
        run_methods(config, items, "pope", score=lambda rows: {"answered": len(rows)})
        predictions[share] = {m: [json.loads(line)["answer"] for line in (out / m / "predictions.jsonl").read_text().splitlines()]
                              for m in ("baseline", "highlight")}
    assert predictions[True] == predictions[False]
    assert len(made) == 2 and all(cache.misses > 0 and cache.hits > 0 for cache in made)  # one per method, used
    assert all(len(answers) == 6 for answers in predictions[True].values())
