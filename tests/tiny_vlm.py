"""Tiny random LLaVA / LLaVA-NeXT models (hidden 32, 2 layers) with a word-level tokenizer, built in code."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                          LlavaNextProcessor, LlavaProcessor, PreTrainedTokenizerFast)

WORDS = """answer this question based on the image by looking at highlighted region please describe in detail
regions is there a an dog cat person car chair cup in ? . , : yes no not it of and with on red blue small large
two one man woman table pizza bus kite horse bird giraffe zebra sheep cow train boat bicycle truck""".split()
CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}USER: {% for part in message['content'] %}"
                 "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}{% endfor %}"
                 "{% else %} ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %} </s> "
                 "{% endif %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}")
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", additional_special_tokens=["<image>", "USER:", "ASSISTANT:"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _configs(tokenizer):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    return vision, text


def make_tiny_llava(seed: int = 0):
    tokenizer = make_tokenizer()
    vision, text = _configs(tokenizer)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _generation_ids(model, tokenizer)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    return model, processor


def make_tiny_llava_next(seed: int = 0):
    tokenizer = make_tokenizer()
    vision, text = _configs(tokenizer)
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    _generation_ids(model, tokenizer)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=CHAT_TEMPLATE)
    return model, processor


def _generation_ids(model, tokenizer) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def photos(n: int = 2, seed: int = 0) -> list:
    """n random RGB images of three different sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(40, 60), (50, 30), (36, 36)]
    return [Image.fromarray((rng.random((*sizes[i % 3], 3)) * 255).astype(np.uint8)) for i in range(n)]


FIT_OBJECTS = ["person", "dog", "cat", "car", "chair", "cup", "pizza", "bus"]


def write_fit_set(root, num_images: int) -> None:
    """What the fit tests train on, under `root`: a tiny LLaVA (vlm/), `num_images` random images (images/) and
    instances.json with 3 objects per image plus one record whose image is missing (skipped with a count)."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    model, processor = make_tiny_llava()
    model.save_pretrained(root / "vlm")
    processor.save_pretrained(root / "vlm")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        name = f"{image_id}.jpg"
        Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name})
        for obj in rng.choice(FIT_OBJECTS, 3, replace=False):
            annotations.append({"image_id": image_id, "category_id": FIT_OBJECTS.index(obj) + 1})
    images.append({"id": 99, "file_name": "missing.jpg"})  # a bad record: skipped with a count
    annotations.append({"image_id": 99, "category_id": 1})
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": i + 1, "name": n} for i, n in enumerate(FIT_OBJECTS)]}))
