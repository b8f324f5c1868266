"""Guided decoding on models with multimodal rotary positions (Qwen2-VL / Qwen2.5-VL M-RoPE)."""

import types

import pytest
import torch

from grounding.compat import rope_index_function
from grounding.decoding.guidance import ObjectGuidance
from grounding.decoding.chat import encode_chat
from grounding.decoding.logits_process import positions_from_mask
from grounding.decoding.noise import pixel_blocks
from tiny_qwen2_vl import make_tiny_qwen2_vl, vision_token_ids
from tiny_vlm import photos

OD = {"k": 2, "restarts": 2}
QUESTIONS = ["is there a dog in the image ?", "is there a red bus ?"]


@pytest.fixture(scope="module", params=["2", "2.5"], ids=["qwen2-vl", "qwen2.5-vl"])
def qwen(request):
    return make_tiny_qwen2_vl(version=request.param)


def full_forward_last_logits(model, inputs, new):
    """Last-position logits of one uncached forward over prompt + new tokens; the model builds its own M-RoPE."""
    ones = torch.ones_like(new)
    extended = dict(inputs, input_ids=torch.cat([inputs["input_ids"], new], 1),
                    attention_mask=torch.cat([inputs["attention_mask"], ones], 1),
                    mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1))
    with torch.no_grad():
        return model(**extended, use_cache=False).logits[:, -1, :]


@pytest.mark.parametrize("branches", ["separate", "joint"])
def test_guidance_off_equals_the_models_own_generate(qwen, tower, branches):
    model, processor = qwen
    images = photos()
    guide = ObjectGuidance(tower, processor, mode="highlight", alpha=1.0, object_dino=OD, branches=branches)
    templated = [f"Answer this question based on the image: {q}" for q in QUESTIONS]
    plain_inputs = encode_chat(processor, images, templated, model.device, model.dtype)
    kwargs = dict(max_new_tokens=6, do_sample=False, suppress_tokens=vision_token_ids(processor))
    plain = model.generate(**plain_inputs, **kwargs)
    expected = processor.batch_decode(plain[:, plain_inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert guide.generate(model, images, QUESTIONS, **kwargs) == expected


def test_separate_branch_uses_mrope_and_leaves_the_models_rope_deltas(qwen, tower):
    model, processor = qwen
    guide = ObjectGuidance(tower, processor, mode="highlight", alpha=0.4, object_dino=OD, branches="separate")
    inputs = guide.prepare(model, photos(), ["is there a dog in the image ? please describe it in detail", "dog ?"])
    processors = guide.logits_processors(inputs)
    branch = dict(processors[0].branch)
    assert not branch["attention_mask"].all()  # left padding in the branch too
    out = model.generate(**inputs, logits_processor=processors, max_new_tokens=4, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, suppress_tokens=vision_token_ids(processor))
    deltas_after_generate = model.model.rope_deltas.clone()
    start = inputs["input_ids"].shape[1]
    suppressed = vision_token_ids(processor)
    for step, scores in enumerate(out.scores):
        new = out.sequences[:, start : start + step]
        z = full_forward_last_logits(model, inputs, new)
        zb = full_forward_last_logits(model, branch, new)
        expected = 0.4 * z + 0.6 * zb
        expected[:, suppressed] = -float("inf")
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    # generate()'s own rows kept their rope deltas: those of the main prompt, not the branch's
    main_positions, main_deltas = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    assert torch.equal(deltas_after_generate, main_deltas)
    assert bool((main_deltas != 0).all())  # the positions really are multimodal
    # sensitivity: 1-D positions on the branch give other logits than the model's M-RoPE
    with torch.no_grad():
        flat = model(**branch, position_ids=positions_from_mask(branch["attention_mask"]), use_cache=False).logits[:, -1]
    assert not torch.allclose(flat, full_forward_last_logits(model, branch, out.sequences[:, start:start]), atol=1e-4)


def test_sampling_on_qwen_runs_the_separate_branch(qwen, tower):
    model, processor = qwen
    for mode in ("highlight", "vcd"):
        guide = ObjectGuidance(tower, processor, mode=mode, object_dino=OD)
        torch.manual_seed(0)
        answers = guide.generate(model, photos(3), QUESTIONS + ["describe"], max_new_tokens=4, do_sample=True,
                                 suppress_tokens=vision_token_ids(processor))
        assert len(answers) == 3 and guide.generation_settings["branches"] == "separate"


def test_vcd_noise_of_an_image_does_not_depend_on_its_batch_qwen(qwen):
    model, processor = qwen
    guide = ObjectGuidance(processor=processor, mode="vcd")
    images = photos(3)
    alone = guide.logits_processors(guide.prepare(model, images[1:2], ["dog ?"]))[0].branch
    together = guide.logits_processors(guide.prepare(model, images, ["a", "b ?", "c"]))[0].branch
    torch.testing.assert_close(pixel_blocks(together, 1)[0], pixel_blocks(alone, 0)[0], rtol=0, atol=0)
    joint = guide.joint_inputs(model, images, ["a", "b ?", "c"])
    torch.testing.assert_close(pixel_blocks(joint, 4)[0], pixel_blocks(alone, 0)[0], rtol=0, atol=0)
    clean = encode_chat(processor, images, ["a", "b ?", "c"], model.device, model.dtype)
    torch.testing.assert_close(pixel_blocks(joint, 0)[0], pixel_blocks(clean, 0)[0], rtol=0, atol=0)  # originals clean


def test_other_rope_index_models_are_refused_on_the_separate_branch():
    fake = types.SimpleNamespace(model=types.SimpleNamespace(get_rope_index=lambda *a, **k: None),
                                 config=types.SimpleNamespace(model_type="qwen3_vl"))
    with pytest.raises(NotImplementedError, match="branches='joint'"):
        rope_index_function(fake)
    plain = types.SimpleNamespace(model=types.SimpleNamespace(), config=types.SimpleNamespace(model_type="llava"))
    assert rope_index_function(plain) is None
