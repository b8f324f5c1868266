"""Region tokens: LoRA training-step time and peak memory, and the generate-time overhead of K region tokens.

    python benchmarks/bench_region_tokens.py --shape 7b --device cuda --dtype bfloat16  # LLaVA-1.5-7B, batch 4, r 16
    python benchmarks/bench_region_tokens.py --shape small                              # CPU stand-in

Random weights of the given shapes; the grounding tower is a random DINOv2-with-registers (ViT-B/14 for 7b,
ViT-S/14 for small). Generate overhead: 64 forced new tokens with K = 8 vs no region tokens, same inputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from guidance import build  # noqa: E402
from timing import timed  # noqa: E402

from grounding.region_tokens import RegionConfig, RegionGrounding  # noqa: E402
from lightning_modules.module import LORA_TARGETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small", choices=["small", "7b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model, processor, tower = build(args.shape, args.device, dtype)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8)) for _ in range(args.batch)]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text":
             " ".join(f"w{i + 10}" for i in range(16))}]}], add_generation_prompt=True)] * args.batch

    def inputs():
        batch = processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="left")
        return {k: (v.to(args.device, dtype) if k == "pixel_values" else v.to(args.device)) for k, v in batch.items()}

    generate = lambda: model.generate(**inputs(), max_new_tokens=args.new_tokens,  # noqa: E731
                                      min_new_tokens=args.new_tokens, do_sample=False)
    plain = timed(generate, args.device, 2)
    grounding = RegionGrounding(RegionConfig(num_regions=args.k), tower=tower)
    handle = grounding.attach(model, processor)
    with_regions = timed(generate, args.device, 2)

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS,
                                                  modules_to_save=["region_projector"]))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    batch = inputs()
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_time = timed(step, args.device, 3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    handle.detach()
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"\nshape {args.shape}; {device}; {args.dtype}; batch {args.batch}; LoRA r 16 on the language model; "
          f"K {args.k}\n")
    print("| measure | value |\n|---|---|")
    print(f"| training step (s) | {step_time:.2f} |")
    print(f"| peak GPU memory (GiB) | {peak:.1f} |")
    print(f"| generate {args.new_tokens} tokens, no region tokens (s) | {plain:.2f} |")
    print(f"| generate {args.new_tokens} tokens, K = {args.k} (s) | {with_regions:.2f} |")
    print(f"| generate overhead | {100 * (with_regions / plain - 1):.1f}% |")


if __name__ == "__main__":
    main()
