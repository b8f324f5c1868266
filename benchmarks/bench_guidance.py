"""Tokens/s and latency per answer: plain greedy vs highlight guidance vs object-masked contrast.

    python benchmarks/bench_guidance.py --shape 7b --device cuda --dtype bfloat16  # LLaVA-1.5-7B shapes, random
    python benchmarks/bench_guidance.py --shape small                                # CPU-sized stand-in

Answers are forced to a fixed length (min_new_tokens = max_new_tokens); the grounding tower is a random
DINOv2-with-registers ViT-B/14 at 224 px. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, Dinov2WithRegistersConfig, Dinov2WithRegistersModel,
                          LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                          PreTrainedTokenizerFast)

from grounding.tower.backbone import RegisterViT, TowerConfig
from grounding.methods import build_method

SHAPES = {
    # LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B (4096 wide, 32 layers), 576 image tokens
    "7b": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14),
               text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32064), tower=(768, 12, 12)),
    "small": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=224, patch_size=14),
                  text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                            num_key_value_heads=8, vocab_size=8000), tower=(384, 12, 6)),
}
CHAT = ("{% for m in messages %}USER: {% for p in m['content'] %}{% if p['type'] == 'image' %}<image>\n{% else %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}")


def build(shape: str, device: str, dtype: torch.dtype):
    spec = SHAPES[shape]
    words = ["<pad>", "<unk>", "<s>", "</s>", "<image>"] + [f"w{i}" for i in range(spec["text"]["vocab_size"] - 5)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", additional_special_tokens=["<image>"])
    config = LlavaConfig(vision_config=CLIPVisionConfig(**spec["vision"]), text_config=LlamaConfig(**spec["text"]),
                         image_token_id=4)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype: a 7B model never exists in fp32 (28 GB)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).to(dtype).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 3
    size = spec["vision"]["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor, tokenizer, patch_size=spec["vision"]["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT)
    hidden, layers, heads = spec["tower"]
    tower_model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
        patch_size=14, image_size=518))
    tower = RegisterViT(tower_model, TowerConfig(device=device, dtype="float32"), "hf")
    return model, processor, tower


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor, tower = build(args.shape, args.device, getattr(torch, args.dtype))
    rng = np.random.default_rng(0)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        images = [Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8)) for _ in range(batch)]
        prompts = [" ".join(f"w{rng.integers(10, 7000)}" for _ in range(12)) for _ in range(batch)]
        for name, options in (("baseline", {}), ("highlight", {"branches": "separate"}),
                              ("highlight", {"branches": "joint"}), ("masked-contrast", {"branches": "joint"})):
            method = build_method(name, tower, processor, **options)
            name = name + (f" ({options['branches']})" if options else "")
            kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
            method.generate(model, images, prompts, max_new_tokens=2, min_new_tokens=2)  # warm-up (+ map cache)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            method.generate(model, images, prompts, **kwargs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            rows.append((name, batch, batch * args.new_tokens / seconds, seconds))
    base = {b: s for n, b, _, s in rows if n == "baseline"}
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"\nshape {args.shape}; device {device}; {args.dtype}; {args.new_tokens} new tokens (forced); maps cached\n")
    print("| method | batch | tokens/s | latency per batch (s) | x baseline |\n|---|---|---|---|---|")
    for name, batch, tps, seconds in rows:
        print(f"| {name} | {batch} | {tps:.1f} | {seconds:.2f} | {seconds / base[batch]:.2f} |")


if __name__ == "__main__":
    main()
