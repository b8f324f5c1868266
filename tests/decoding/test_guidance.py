import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.decoding.guidance import ObjectGuidance
from grounding.decoding.chat import encode_chat
from grounding.decoding.logits_process import positions_from_mask
from grounding.decoding.highlight import diffusion_noise, jet_overlay, red_tint, remove_objects
from grounding.methods import build_method
from tiny_vlm import make_tiny_llava, make_tiny_llava_next, photos


QUESTIONS = ["is there a dog in the image ?", "is there a red bus ?"]
OD = {"k": 2, "restarts": 2}  # the tiny tower has 2 layers x 2 heads


@pytest.mark.parametrize("branches", ["separate", "joint"])
@pytest.mark.parametrize("make", [make_tiny_llava, make_tiny_llava_next])
def test_guidance_off_equals_plain_generate(make, branches, tower):
    model, processor = make()
    images = photos()
    highlight = ObjectGuidance(tower, processor, mode="highlight", alpha=1.0, object_dino=OD, branches=branches)
    templated = [f"Answer this question based on the image: {q}" for q in QUESTIONS]
    plain_inputs = encode_chat(processor, images, templated, model.device, model.dtype)
    plain = model.generate(**plain_inputs, max_new_tokens=6, do_sample=False)
    guided = highlight.generate(model, images, QUESTIONS, max_new_tokens=6, do_sample=False)
    assert guided == processor.batch_decode(plain[:, plain_inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    contrast = ObjectGuidance(tower, processor, mode="masked-contrast", contrast=0.0, object_dino=OD, branches=branches)
    baseline = build_method("baseline", processor=processor).generate(model, images, QUESTIONS, max_new_tokens=6)
    assert contrast.generate(model, images, QUESTIONS, max_new_tokens=6, do_sample=False) == baseline


def _last_logits(model, ids, mask, image_inputs):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), **image_inputs)
    return out.logits[:, -1, :]


@pytest.mark.parametrize("make", [make_tiny_llava, make_tiny_llava_next])
def test_mixed_logits_equal_two_full_forwards_each_step(make, tower):
    model, processor = make()
    guide = ObjectGuidance(tower, processor, mode="highlight", alpha=0.4, object_dino=OD)
    images = photos()
    inputs = guide.prepare(model, images, ["is there a dog in the image ? please describe it in detail", "dog ?"])
    assert not inputs["attention_mask"].all()
    processors = guide.logits_processors(inputs)
    branch = dict(processors[0].branch)
    assert not branch["attention_mask"].all()  # the two prompts differ in length: the branch is padded
    out = model.generate(**inputs, logits_processor=processors, max_new_tokens=4, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    start = inputs["input_ids"].shape[1]
    image_keys = [k for k in inputs if k not in ("input_ids", "attention_mask")]
    for step, scores in enumerate(out.scores):
        new = out.sequences[:, start : start + step]
        ones = torch.ones_like(new)
        z = _last_logits(model, torch.cat([inputs["input_ids"], new], 1), torch.cat([inputs["attention_mask"], ones], 1),
                         {k: inputs[k] for k in image_keys})
        zb = _last_logits(model, torch.cat([branch["input_ids"], new], 1), torch.cat([branch["attention_mask"], ones], 1),
                          {k: branch[k] for k in image_keys})
        torch.testing.assert_close(scores, 0.4 * z + 0.6 * zb, rtol=1e-4, atol=1e-4)


def test_sampling_and_contrast_modes_run(tower):
    model, processor = make_tiny_llava()
    images = photos(3)
    prompts = QUESTIONS + ["please describe the image in detail ."]
    for name in ("highlight", "masked-contrast", "vcd"):
        method = build_method(name, tower, processor, object_dino=OD)
        torch.manual_seed(0)
        answers = method.generate(model, images, prompts, max_new_tokens=5, do_sample=True, temperature=0.9)
        assert len(answers) == 3
    captions = ObjectGuidance(tower, processor, mode="highlight", task="caption", object_dino=OD)
    assert len(captions.generate(model, images[:1], ["x"], max_new_tokens=3)) == 1


def test_contrastive_mix_formula_and_plausibility_cut():
    from grounding.decoding.mixing import contrastive_mix

    z = torch.tensor([[2.0, 1.0, -5.0]])
    zc = torch.tensor([[1.0, 2.0, 0.0]])
    mixed = contrastive_mix(1.0, 0.1)(z, zc)
    assert mixed[0, 0] == 3.0 and mixed[0, 1] == 0.0
    assert mixed[0, 2] == -float("inf")  # p(-5) / p(2) = e^-7 < 0.1


def test_red_tint_matches_formula_pixel_for_pixel():
    image = Image.fromarray(np.full((4, 5, 3), 100, np.uint8))
    values = torch.tensor(np.linspace(0, 1, 20).reshape(4, 5), dtype=torch.float32)
    tinted = np.asarray(red_tint(image, values)).astype(np.float64)
    for y in range(4):
        for x in range(5):
            v = float(values[y, x])
            a = min(max((v - 0.5) / 0.5, 0.0), 1.0) * 0.6
            expected = np.round((1 - a) * np.array([100.0, 100, 100]) + a * np.array([255.0, 0, 0]))
            assert np.array_equal(tinted[y, x], expected), (y, x)
    assert np.asarray(jet_overlay(image, values)).shape == (4, 5, 3)
    removed = np.asarray(remove_objects(Image.fromarray(np.arange(60, dtype=np.uint8).reshape(4, 5, 3)), values))
    assert (removed[3, 4] != np.arange(60).reshape(4, 5, 3)[3, 4]).any()
    with pytest.raises(ValueError, match="does not match"):
        red_tint(image, torch.zeros(2, 2))
    noisy = diffusion_noise(torch.zeros(1, 3, 4, 4), step=999)
    assert noisy.std() > 0.9  # almost pure noise at the last step


def test_caches_freed_and_masks_cached(tower):
    model, processor = make_tiny_llava()
    guide = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD)
    images = photos()
    inputs = guide.prepare(model, images, QUESTIONS)
    processors = guide.logits_processors(inputs)
    model.generate(**inputs, logits_processor=processors, max_new_tokens=3)
    cache_ref = weakref.ref(processors[0].cache)
    del processors
    gc.collect()
    assert cache_ref() is None  # the branch's KV cache dies with its processor
    calls = guide.tower_calls
    for _ in range(3):
        guide.generate(model, images, QUESTIONS, max_new_tokens=3)
    assert guide.tower_calls == calls  # maps cached per image: the tower ran once per image
    assert not guide._pending
    with pytest.raises(KeyError, match="prepare"):
        guide.logits_processors(inputs)
    with pytest.raises(ValueError, match="beam"):
        inputs = guide.prepare(model, images, QUESTIONS)
        model.generate(**inputs, logits_processor=guide.logits_processors(inputs), num_beams=2, max_new_tokens=2)


@pytest.mark.parametrize("mode", ["highlight", "masked-contrast", "vcd"])
def test_joint_branches_give_the_separate_branch_answers(mode, tower):
    model, processor = make_tiny_llava()
    images = photos(3)
    prompts = QUESTIONS + ["please describe the image in detail ."]
    answers = {}
    for branches in ("separate", "joint"):
        guide = ObjectGuidance(tower, processor, mode=mode, alpha=0.4, object_dino=OD, branches=branches)
        answers[branches] = guide.generate(model, images, prompts, max_new_tokens=8, do_sample=False)
    assert answers["joint"] == answers["separate"]
    with pytest.raises(ValueError, match="greedy"):
        ObjectGuidance(tower, processor, mode=mode, object_dino=OD, branches="joint").generate(
            model, images, prompts, max_new_tokens=2, do_sample=True)


def test_object_maps_of_a_batch_come_from_one_tower_call_per_input_size(tower, tiny_reg_dir):
    from grounding import RegisterViT

    _, processor = make_tiny_llava()
    images = photos(4)  # sizes (40, 60), (50, 30), (36, 36), (40, 60): three tower input sizes
    images = images + [images[1]]  # a repeated image (several questions about it) is computed once
    guide = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD)
    maps = guide.object_maps(images)
    assert guide.tower_calls == 3
    for image, got in zip(images, maps):  # the same maps as one image at a time
        alone = ObjectGuidance(tower, processor, mode="highlight", object_dino=OD).object_map(image)
        assert got.shape == (image.height, image.width)
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
    guide.object_maps(images)
    assert guide.tower_calls == 3  # all cached now
    fixed = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"size": (32, 32)})
    batched = ObjectGuidance(fixed, processor, mode="highlight", object_dino=OD)
    batched.object_maps(images)
    assert batched.tower_calls == 1  # a fixed input size: the whole batch in one call
