"""The grounded transformers pipeline on the tiny LLaVA and LLaVA-NeXT: equal to guide.generate per method, equal
to the stock pipeline with guidance off, region tokens bound per call, the registry entry removable."""

import pytest
import torch
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from grounding.decoding.guidance import ObjectGuidance
from grounding.methods import build_method
from grounding.methods.pipeline import TASK, GroundedImageTextToTextPipeline, grounded_pipeline, register_grounded_pipeline
from tiny_vlm import make_tiny_llava, make_tiny_llava_next, photos

QUESTIONS = ["is there a dog in the image ?", "is there a red bus ?"]
OD = {"k": 2, "restarts": 2}  # the tiny tower has 2 layers x 2 heads
MODES = ("highlight", "masked-contrast", "vcd")


def chats(images, questions):
    return [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}]
            for im, q in zip(images, questions)]


def texts(outputs):
    return [out[0]["generated_text"].strip() for out in outputs]


@pytest.fixture(params=[make_tiny_llava, make_tiny_llava_next], ids=["llava", "llava-next"])
def vlm(request):
    model, processor = request.param()
    processor.tokenizer.padding_side = "left"  # batched generate with a decoder-only model
    return model, processor


def test_each_method_equals_guide_generate_single_and_batched(vlm, tower):
    model, processor = vlm
    images = photos(2)
    answers = {}
    for mode in MODES:
        guide = ObjectGuidance(tower, processor, mode=mode, object_dino=OD)
        expected = guide.generate(model, images, QUESTIONS, max_new_tokens=6)
        pipe = grounded_pipeline(model, processor, method=mode, tower=tower, method_options={"object_dino": OD})
        assert texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=6, return_full_text=False)) == expected
        batched = pipe(text=chats(images, QUESTIONS), max_new_tokens=6, return_full_text=False, batch_size=2)
        assert texts(batched) == expected
        assert pipe.method.generation_settings["branches"] == "joint"  # greedy: the 2B batch, as guide.generate
        answers[mode] = expected
        # the caller's chat comes back with the answer as a new assistant turn (stock postprocess)
        full = pipe(text=chats(images[:1], QUESTIONS[:1])[0], max_new_tokens=6)[0]["generated_text"]
        assert full[0]["content"][1]["text"] == QUESTIONS[0] and full[-1]["role"] == "assistant"
        assert full[-1]["content"].strip() == expected[0]
    baseline = build_method("baseline", processor=processor).generate(model, images, QUESTIONS, max_new_tokens=6)
    assert any(a != baseline for a in answers.values()), "grounding changed no answer: the test would prove nothing"


@pytest.mark.parametrize("mode", MODES)
def test_separate_branches_and_sampling_equal_guide_generate(mode, tower):
    model, processor = make_tiny_llava()
    images = photos(2)
    options = {"object_dino": OD, "branches": "separate"}
    pipe = grounded_pipeline(model, processor, method=mode, tower=tower, method_options=options)
    guide = ObjectGuidance(tower, processor, mode=mode, **options)
    assert (texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=5, return_full_text=False))
            == guide.generate(model, images, QUESTIONS, max_new_tokens=5))
    for image, question, chat in zip(images, QUESTIONS, chats(images, QUESTIONS)):
        torch.manual_seed(3)  # one chat, not a list: no DataLoader, whose iterator draws from the global RNG
        sampled = pipe(text=chat, max_new_tokens=5, return_full_text=False,
                       generate_kwargs={"do_sample": True, "temperature": 0.9})[0]["generated_text"].strip()
        assert pipe.method.generation_settings["top_k"] == 0  # the full softmax, as every method here
        torch.manual_seed(3)
        assert [sampled] == guide.generate(model, [image], [question], max_new_tokens=5, do_sample=True,
                                           temperature=0.9)


def test_guidance_off_is_the_stock_pipeline(vlm, tower):
    model, processor = vlm
    images = photos(2)
    stock = pipeline("image-text-to-text", model=model, processor=processor)
    baseline = grounded_pipeline(model, processor, method="baseline")
    guided = grounded_pipeline(model, processor, method="highlight", tower=tower, method_options={"object_dino": OD})
    prompt = processor.apply_chat_template(chats([None], QUESTIONS[:1])[0], add_generation_prompt=True)
    calls = [dict(text=chats(images, QUESTIONS), max_new_tokens=6),
             dict(text=chats(images, QUESTIONS), max_new_tokens=6, return_full_text=False, batch_size=2),
             dict(images=images[0], text=prompt, max_new_tokens=4)]
    for call in calls:
        reference = stock(**call)
        assert baseline(**call) == reference
        assert guided(**call, grounding=False) == reference
    reference = stock(images=images[0], text=prompt, max_new_tokens=4, return_tensors=True)[0]["generated_token_ids"]
    for pipe in (baseline, guided):
        ids = pipe(images=images[0], text=prompt, max_new_tokens=4, return_tensors=True, grounding=pipe is baseline)
        assert torch.equal(ids[0]["generated_token_ids"], reference)
    torch.manual_seed(1)
    reference = stock(text=chats(images, QUESTIONS), max_new_tokens=6, generate_kwargs={"do_sample": True})
    torch.manual_seed(1)
    assert baseline(text=chats(images, QUESTIONS), max_new_tokens=6, generate_kwargs={"do_sample": True}) == reference


@pytest.mark.parametrize("mode", ["masked-contrast", "vcd"])
def test_raw_prompts_with_image_tokens_equal_the_chat_form(mode, tower):
    model, processor = make_tiny_llava()
    images = photos(2)
    pipe = grounded_pipeline(model, processor, method=mode, tower=tower, method_options={"object_dino": OD})
    prompts = [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in chats(images, QUESTIONS)]
    raw = [pipe(images=im, text=p, max_new_tokens=6, return_full_text=False) for im, p in zip(images, prompts)]
    assert [r[0]["generated_text"].strip() for r in raw] == texts(
        pipe(text=chats(images, QUESTIONS), max_new_tokens=6, return_full_text=False))


def test_region_tokens_bound_for_the_call_only(tower, tiny_reg_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from grounding.region_tokens import RegionConfig, RegionGrounding

    model, processor = make_tiny_llava()
    grounding = RegionGrounding(RegionConfig(num_regions=2, tower=tiny_reg_dir, tower_short_side=32, object_dino=OD,
                                             projector_hidden=16), tower=tower)
    handle = grounding.attach(model, processor)  # the projector is made for this model at attach time
    grounding.save_pretrained(tmp_path / "adapter")
    handle.detach()
    scratch, _ = make_tiny_llava()
    get_peft_model(scratch, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                       init_lora_weights=False)).save_pretrained(tmp_path / "adapter" / "lora")
    images = photos(2)
    pipe = grounded_pipeline(model, processor, method="region-tokens",
                             method_options={"adapter": str(tmp_path / "adapter")})
    expected = build_method("region-tokens", None, processor, adapter=str(tmp_path / "adapter")).generate(
        model, images, QUESTIONS, max_new_tokens=5)
    got = texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=5, return_full_text=False))
    assert got == expected
    assert processor.num_additional_image_tokens == 1 and not hasattr(model, "region_projector")
    assert not any("lora_" in name for name, _ in model.named_parameters())
    with pipe.bound():
        assert hasattr(model, "region_projector")
        assert texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=5, return_full_text=False)) == expected
        lazy = pipe((chat for chat in chats(images, QUESTIONS)), max_new_tokens=5, return_full_text=False)
        assert [out[0]["generated_text"].strip() for out in lazy] == expected
    assert not hasattr(model, "region_projector")
    lazy = pipe((chat for chat in chats(images, QUESTIONS)), max_new_tokens=5, return_full_text=False)
    assert [out[0]["generated_text"].strip() for out in lazy] == expected  # bound while it is consumed
    assert not hasattr(model, "region_projector") and processor.num_additional_image_tokens == 1
    stock = pipeline("image-text-to-text", model=model, processor=processor)
    assert (texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=5, return_full_text=False, grounding=False))
            == texts(stock(text=chats(images, QUESTIONS), max_new_tokens=5, return_full_text=False)))


def test_registry_entry_is_added_and_removed(tower):
    model, processor = make_tiny_llava()
    assert TASK not in PIPELINE_REGISTRY.supported_tasks
    with register_grounded_pipeline() as registration:
        pipe = pipeline(TASK, model=model, processor=processor, method="vcd")
        assert isinstance(pipe, GroundedImageTextToTextPipeline) and pipe.method.config.mode == "vcd"
        assert len(pipe(text=chats(photos(1), QUESTIONS[:1]), max_new_tokens=3)) == 1
    assert registration.active is False and TASK not in PIPELINE_REGISTRY.supported_tasks
    assert "_registered_impl" not in GroundedImageTextToTextPipeline.__dict__


def test_clear_errors(tower):
    model, processor = make_tiny_llava()  # the tiny tokenizer pads on the right
    with pytest.raises(ValueError, match="needs a grounding tower"):
        grounded_pipeline(model, processor, method="highlight")
    pipe = grounded_pipeline(model, processor, method="vcd")
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        pipe(text=chats(photos(2), QUESTIONS), max_new_tokens=3, batch_size=2)
    with pytest.raises(ValueError, match="needs an image"):
        pipe(text=[{"role": "user", "content": [{"type": "text", "text": "is there a dog ?"}]}], max_new_tokens=3)
    other = build_method("vcd", None, make_tiny_llava()[1])
    with pytest.raises(ValueError, match="another processor"):
        grounded_pipeline(model, processor, method=other)


def test_image_paths_give_the_answers_of_the_images(tower, tmp_path):
    model, processor = make_tiny_llava()
    images = photos(2)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    by_path = [[{"role": "user", "content": [{"type": "image", "path": p}, {"type": "text", "text": q}]}]
               for p, q in zip(paths, QUESTIONS)]
    pipe = grounded_pipeline(model, processor, method="highlight", tower=tower, method_options={"object_dino": OD})
    assert (texts(pipe(text=by_path, max_new_tokens=6, return_full_text=False))
            == texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=6, return_full_text=False)))


def test_stack_rows_left_pads_tokens_and_tiles():
    from grounding.decoding.rows import stack_rows

    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
         "pixel_values": torch.ones(1, 3, 2, 4, 4), "image_sizes": torch.tensor([[4, 8]])}
    b = {"input_ids": torch.tensor([[8], [9]]), "attention_mask": torch.ones(2, 1, dtype=torch.long),
         "pixel_values": torch.full((2, 2, 2, 4, 4), 2.0), "image_sizes": torch.tensor([[4, 4], [4, 4]])}
    rows = stack_rows([a, b], pad_token_id=0)
    assert rows["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 9]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert rows["pixel_values"].shape == (3, 3, 2, 4, 4) and rows["pixel_values"][1:, 2].abs().sum() == 0
    assert rows["image_sizes"].tolist() == [[4, 8], [4, 4], [4, 4]]
    with pytest.raises(ValueError, match="different keys"):
        stack_rows([a, {"input_ids": b["input_ids"]}], pad_token_id=0)
    with pytest.raises(ValueError, match="cannot stack 'pixel_values'"):
        stack_rows([{"pixel_values": torch.ones(1, 3, 4, 4)}, {"pixel_values": torch.ones(1, 3, 8, 8)}], 0)


@pytest.mark.parametrize("task", ["question", "caption"])
def test_region_evidence_equals_its_generate(task, tower):
    """region-evidence runs through the logits-processor seam: the stock generate() with the method's processor."""
    from grounding.methods import RegionEvidence

    model, processor = make_tiny_llava()
    processor.tokenizer.padding_side = "left"
    images = photos(3)
    questions = QUESTIONS + ["is there a cat ?"]
    options = {"object_dino": OD, "strength": 100.0, "task": task}
    expected = RegionEvidence(tower, processor, **options).generate(model, images, questions, max_new_tokens=6)
    pipe = grounded_pipeline(model, processor, method="region-evidence", tower=tower, method_options=options)
    assert texts(pipe(text=chats(images, questions), max_new_tokens=6, return_full_text=False)) == expected
    batched = pipe(text=chats(images, questions), max_new_tokens=6, return_full_text=False, batch_size=3)
    assert texts(batched) == expected
    assert pipe.method.generation_settings["do_sample"] is False
    if task == "caption":  # strength 100 on unsupported objects' words: the answers change
        plain = build_method("baseline", processor=processor).generate(model, images, questions, max_new_tokens=6)
        assert expected != plain, "region evidence changed no answer: the test would prove nothing"
    # the raw form reads its text as the prompt: same object asked, same answer as the chat
    prompt = processor.apply_chat_template(chats([None], questions[:1])[0], add_generation_prompt=True)
    raw = pipe(images=images[0], text=prompt, max_new_tokens=6, return_full_text=False)
    assert raw[0]["generated_text"].strip() == expected[0]
    # grounding off: the stock pipeline exactly
    stock = pipeline("image-text-to-text", model=model, processor=processor)
    assert (pipe(text=chats(images, questions), max_new_tokens=6, grounding=False)
            == stock(text=chats(images, questions), max_new_tokens=6))
    # sampling: the method's full-softmax defaults, the same draws as its generate
    method = RegionEvidence(tower, processor, **options)
    torch.manual_seed(3)
    sampled = pipe(text=chats(images[:1], questions[:1])[0], max_new_tokens=5, return_full_text=False,
                   generate_kwargs={"do_sample": True, "temperature": 0.9})[0]["generated_text"].strip()
    assert pipe.method.generation_settings["top_k"] == 0
    torch.manual_seed(3)
    assert [sampled] == method.generate(model, images[:1], questions[:1], max_new_tokens=5, do_sample=True,
                                        temperature=0.9)
    with pytest.raises(ValueError, match="one image per prompt; this input has 0"):
        pipe(text=[{"role": "user", "content": [{"type": "text", "text": "is there a dog ?"}]}], max_new_tokens=3)


@pytest.mark.parametrize("name", ["highlight@random", "masked-contrast@random", "region-evidence@random"])
def test_mask_source_twins_run_through_the_pipeline(name, tower):
    model, processor = make_tiny_llava()
    processor.tokenizer.padding_side = "left"
    images = photos(2)
    options = {"object_dino": OD, "seed": 4}
    expected = build_method(name, tower, processor, **options).generate(model, images, QUESTIONS, max_new_tokens=5)
    pipe = grounded_pipeline(model, processor, method=name, tower=tower, method_options=options)
    assert pipe.method.config.mask_source == "random"
    assert texts(pipe(text=chats(images, QUESTIONS), max_new_tokens=5, return_full_text=False)) == expected
