"""POPE questions/s for baseline and highlight guidance (answers forced to a fixed length), random weights.

    python benchmarks/eval_throughput.py --shape 7b --device cuda --dtype bfloat16 --batches 1,32
    python benchmarks/eval_throughput.py --shape small --batches 1,8 --questions 32     # CPU stand-in

Questions come from the shipped COCO adversarial split (6 per image, ordered by image as the runner does, so the
grounding tower runs once per image); images are random 640x480 pictures standing in for COCO val2014.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from guidance import build  # noqa: E402  (the same random-weight LLaVA builder)

from eval.pope import load_questions  # noqa: E402
from grounding.methods import build_method  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small", choices=["small", "7b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--answer-tokens", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor, tower = build(args.shape, args.device, getattr(torch, args.dtype))
    rows = sorted(load_questions("coco_adversarial"), key=lambda r: r["image"])[: args.questions]
    rng = np.random.default_rng(0)
    pictures = {name: Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8))
                for name in dict.fromkeys(r["image"] for r in rows)}
    vocab = len(processor.tokenizer) - 10
    prompts = [" ".join(f"w{(zlib.crc32(w.encode()) % vocab) + 5}" for w in r["text"].split()) for r in rows]
    table = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name in ("baseline", "highlight"):
            method = build_method(name, tower, processor)
            start = time.perf_counter()
            for i in range(0, len(rows), batch):
                method.generate(model, [pictures[r["image"]] for r in rows[i : i + batch]], prompts[i : i + batch],
                                max_new_tokens=args.answer_tokens, min_new_tokens=args.answer_tokens, do_sample=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            table.append((name, batch, len(rows) / seconds, 3000 / (len(rows) / seconds) / 60))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nshape {args.shape}; {device}; {args.dtype}; {args.answer_tokens} answer tokens; {len(rows)} questions "
          f"({len(pictures)} images, tower time included)\n")
    print("| method | batch | questions/s | minutes for 3,000 questions |\n|---|---|---|---|")
    for name, batch, qps, minutes in table:
        print(f"| {name} | {batch} | {qps:.2f} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
