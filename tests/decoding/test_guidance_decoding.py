"""Decoding defaults of the methods: full-softmax sampling, branch choice from the merged generation config,
the joint path's paired-row check, and per-image VCD noise."""

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor

from grounding.decoding.guidance import ObjectGuidance
from grounding.decoding.chat import encode_chat
from grounding.decoding.logits_process import check_paired_rows, positions_from_mask
from grounding.decoding.mixing import highlight_mix
from grounding.decoding.noise import pixel_blocks
from grounding.methods import build_method, sampling_settings
from grounding.decoding.sampling import with_reference_sampling
from tiny_vlm import make_tiny_llava, make_tiny_llava_next, photos

OD = {"k": 2, "restarts": 2}
QUESTIONS = ["is there a dog in the image ?", "is there a red bus ?"]
TEMPLATES = ("Answer this question based on the image: {}", "Answer this question by looking at the highlighted region: {}")


def last_logits(model, inputs, new):
    ones = torch.ones_like(new)
    mask = torch.cat([inputs["attention_mask"], ones], 1)
    images = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return model(input_ids=torch.cat([inputs["input_ids"], new], 1), attention_mask=mask,
                     position_ids=positions_from_mask(mask), **images).logits[:, -1, :]


def reference_sampling(model, steps, temperature, inputs, branch=None, alpha=1.0):
    """The release's loop: softmax(mix / T) over the whole vocabulary, one torch.multinomial per step."""
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    new = inputs["input_ids"][:, :0]
    running = torch.ones(new.shape[0], dtype=torch.bool)
    for _ in range(steps):
        z = last_logits(model, inputs, new)
        if branch is not None:
            z = alpha * z + (1 - alpha) * last_logits(model, branch, new)
        token = torch.multinomial(torch.softmax(z / temperature, dim=-1), num_samples=1).squeeze(1)
        token = torch.where(running, token, torch.full_like(token, pad))
        new = torch.cat([new, token[:, None]], 1)
        running &= token != eos
        if not running.any():
            break
    return new


def test_reference_warpers_are_added_only_when_sampling_and_not_set():
    model, _ = make_tiny_llava()
    assert with_reference_sampling(model, {"do_sample": False}) == {"do_sample": False}
    assert with_reference_sampling(model, {"do_sample": True}) == {"do_sample": True, "top_k": 0, "top_p": 1.0}
    assert with_reference_sampling(model, {"do_sample": True, "top_k": 5}) == {"do_sample": True, "top_k": 5, "top_p": 1.0}
    passed = GenerationConfig(do_sample=True, top_p=0.9)
    kwargs = with_reference_sampling(model, {"generation_config": passed})
    assert kwargs["generation_config"].top_k == 0 and kwargs["generation_config"].top_p == 0.9
    assert passed.top_k is None  # the caller's config is not modified
    settings = sampling_settings({"do_sample": True, "temperature": 0.7, "max_new_tokens": 5}, model)
    assert settings["top_k"] == 0 and settings["top_p"] == 1.0 and settings["temperature"] == 0.7
    assert settings["do_sample"] is True and settings["max_new_tokens"] == 5
    plain = model.generation_config
    assert sampling_settings({"do_sample": True}, model)["top_k"] == 0 and plain.top_k in (None, 50)
    model.generation_config.top_k = 50  # a checkpoint's own value is replaced too
    assert sampling_settings({"do_sample": True}, model)["top_k"] == 0
    assert sampling_settings({}, model)["do_sample"] is False


def test_sampled_baseline_equals_a_multinomial_over_the_full_softmax():
    model, processor = make_tiny_llava()
    assert len(processor.tokenizer) > 50  # a top-k of 50 would cut tokens
    images = photos()
    baseline = build_method("baseline", processor=processor)
    torch.manual_seed(3)
    answers = baseline.generate(model, images, QUESTIONS, max_new_tokens=6, do_sample=True, temperature=0.8)
    assert baseline.generation_settings["top_k"] == 0
    inputs = encode_chat(processor, images, QUESTIONS, model.device, model.dtype)
    torch.manual_seed(3)
    expected = processor.batch_decode(reference_sampling(model, 6, 0.8, inputs), skip_special_tokens=True)
    assert answers == expected
    torch.manual_seed(3)  # sensitivity: transformers' default top_k = 50 samples other tokens here
    default = model.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=0.8)
    assert processor.batch_decode(default[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True) != expected


def test_guided_sampling_equals_the_release_loop(tower):
    model, processor = make_tiny_llava()
    images = photos()
    guide = ObjectGuidance(tower, processor, mode="highlight", alpha=0.4, object_dino=OD)
    torch.manual_seed(5)
    answers = guide.generate(model, images, QUESTIONS, max_new_tokens=6, do_sample=True, temperature=0.9)
    assert guide.generation_settings["branches"] == "separate" and guide.generation_settings["top_k"] == 0
    inputs = encode_chat(processor, images, [TEMPLATES[0].format(q) for q in QUESTIONS], model.device, model.dtype)
    branch_images = [guide.branch_image(im) for im in images]
    branch = encode_chat(processor, branch_images, [TEMPLATES[1].format(q) for q in QUESTIONS], model.device, model.dtype)
    torch.manual_seed(5)
    expected = reference_sampling(model, 6, 0.9, inputs, branch, alpha=0.4)
    assert answers == processor.batch_decode(expected, skip_special_tokens=True)


def test_auto_branches_read_the_merged_generation_config(tower):
    model, processor = make_tiny_llava()
    images = photos()
    guide = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD)
    guide.generate(model, images, QUESTIONS, max_new_tokens=2)
    assert guide.generation_settings["branches"] == "joint"
    guide.generate(model, images, QUESTIONS, max_new_tokens=2, generation_config=GenerationConfig(do_sample=True))
    assert guide.generation_settings["branches"] == "separate" and guide.generation_settings["do_sample"] is True
    model.generation_config.do_sample = True  # a checkpoint that samples by default
    guide.generate(model, images, QUESTIONS, max_new_tokens=2)
    assert guide.generation_settings["branches"] == "separate" and guide.generation_settings["top_k"] == 0
    guide.generate(model, images, QUESTIONS, max_new_tokens=2, do_sample=False)
    assert guide.generation_settings["branches"] == "joint"
    joint = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD, branches="joint")
    with pytest.raises(ValueError, match="greedy"):
        joint.generate(model, images, QUESTIONS, max_new_tokens=2)  # the model's config samples
    model.generation_config.do_sample = False
    with pytest.raises(ValueError, match="greedy"):
        joint.generate(model, images, QUESTIONS, max_new_tokens=2, generation_config=GenerationConfig(do_sample=True))
    with pytest.raises(ValueError, match="num_return_sequences"):
        guide.generate(model, images, QUESTIONS, max_new_tokens=2, do_sample=False, num_return_sequences=2)


class PromptLengthBias(LogitsProcessor):
    """Row-dependent: favours token (number of non-pad tokens in the row) - the two prompts differ in length."""

    def __init__(self, pad):
        self.pad = pad

    def __call__(self, input_ids, scores):
        lengths = (input_ids != self.pad).sum(-1) % scores.shape[-1]  # (R,)
        return scores + 100 * torch.nn.functional.one_hot(lengths, scores.shape[-1]).to(scores.dtype)


def test_joint_branches_fail_loudly_when_paired_rows_drift(tower):
    model, processor = make_tiny_llava()
    images = photos()
    guide = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD, branches="joint")
    with pytest.raises(RuntimeError, match="row 0 and its branch row 2"):
        guide.generate(model, images, QUESTIONS, max_new_tokens=3,
                       logits_processor=[PromptLengthBias(processor.tokenizer.pad_token_id)])
    separate = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD, branches="separate")
    assert len(separate.generate(model, images, QUESTIONS, max_new_tokens=3,
                                 logits_processor=[PromptLengthBias(processor.tokenizer.pad_token_id)])) == 2
    rows = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 7]])
    with pytest.raises(RuntimeError, match="row 1 and its branch row 3 first differ at new token 2"):
        check_paired_rows(rows, 2)
    check_paired_rows(rows[[0, 1, 0, 1]], 2)


def test_highlight_mix_keeps_bans_and_never_makes_nan():
    z = torch.tensor([[1.0, -float("inf"), 2.0]])
    zb = torch.tensor([[-float("inf"), -float("inf"), 0.5]])
    for alpha in (0.0, 0.4, 1.0):
        mixed = highlight_mix(alpha)(z, zb)
        assert not mixed.isnan().any() and mixed[0, 1] == -float("inf")
    assert torch.equal(highlight_mix(1.0)(z, zb), z)


@pytest.mark.parametrize("make", [make_tiny_llava, make_tiny_llava_next])
def test_vcd_noise_of_an_image_does_not_depend_on_its_batch(make):
    model, processor = make()
    guide = ObjectGuidance(processor=processor, mode="vcd", seed=7)
    images = photos(3)
    wide = images[0]  # LLaVA-NeXT: more tiles than image 1, so image 1 is padded in the batch
    alone = guide.logits_processors(guide.prepare(model, images[1:2], ["dog ?"]))[0].branch
    together = guide.logits_processors(guide.prepare(model, [wide, images[1], images[2]], ["a", "b ?", "c"]))[0].branch
    joint = guide.joint_inputs(model, [wide, images[1], images[2]], ["a", "b ?", "c"])
    clean = encode_chat(processor, images[1:2], ["dog ?"], model.device, model.dtype)
    reference = pixel_blocks(alone, 0)
    assert len(pixel_blocks(together, 1)) >= len(reference)
    for got in (pixel_blocks(together, 1), pixel_blocks(joint, 4)):
        for block, expected in zip(got, reference):
            torch.testing.assert_close(block, expected, rtol=0, atol=0)
    assert not torch.equal(reference[0], pixel_blocks(clean, 0)[0])  # really noised
    nudged = images[1].copy()
    nudged.putpixel((0, 0), (0, 0, 0))  # another image (one pixel off): its own noise almost everywhere
    pair = guide.joint_inputs(model, [images[1], nudged], ["a", "b"])
    assert (pixel_blocks(pair, 2)[0] != pixel_blocks(pair, 3)[0]).float().mean() > 0.9
    other_seed = ObjectGuidance(processor=processor, mode="vcd", seed=8)
    moved = other_seed.logits_processors(other_seed.prepare(model, images[1:2], ["dog ?"]))[0].branch
    assert not torch.equal(pixel_blocks(moved, 0)[0], reference[0])
    same = ObjectGuidance(processor=processor, mode="vcd", seed=7).joint_inputs(model, [images[1], images[1]], ["a", "b"])
    twin = pixel_blocks(same, 2)[0] - pixel_blocks(same, 3)[0]
    assert twin.abs().max() == 0  # the same picture gets the same noise in any row
