"""POPE questions/s for baseline and highlight guidance (answers forced to a fixed length), random weights, with
and without prefix sharing (`grounding.decoding.prefix_cache`: each image's system prompt + image tokens computed once).

    python benchmarks/eval_throughput.py --shape 7b --device cuda --dtype bfloat16 --batches 1,32
    python benchmarks/eval_throughput.py --shape small --batches 1,8 --questions 32     # CPU stand-in

Questions come from the shipped COCO adversarial split (6 per image, ordered by image as the runner does, so the
grounding tower runs once per image); images are random 640x480 pictures standing in for COCO val2014. The runs
with and without sharing alternate batch by batch (each keeps its own map and prefix caches), so a busy machine
slows both alike; each run's time is the sum of its own batches, in this process's CPU seconds on a CPU (other
jobs sharing the cores barely move them) and wall seconds on a GPU.
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
from grounding.decoding.prefix_cache import PrefixCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small", choices=["small", "7b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--methods", default="baseline,highlight")
    args = parser.parse_args()
    torch.manual_seed(0)
    clock = time.perf_counter if args.device.startswith("cuda") else time.process_time
    model, processor, tower = build(args.shape, args.device, getattr(torch, args.dtype))
    rows = sorted(load_questions("coco_adversarial"), key=lambda r: r["image"])[: args.questions]
    rng = np.random.default_rng(0)
    pictures = {name: Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8))
                for name in dict.fromkeys(r["image"] for r in rows)}
    vocab = len(processor.tokenizer) - 10
    prompts = [" ".join(f"w{(zlib.crc32(w.encode()) % vocab) + 5}" for w in r["text"].split()) for r in rows]
    table = []
    first_answers: dict[str, list[str]] = {}  # unshared answers at the first batch size, per method
    for batch in (int(b) for b in args.batches.split(",")):
        for name in args.methods.split(","):
            plain, shared = build_method(name, tower, processor), build_method(name, tower, processor)
            shared.prefix_cache = PrefixCache()
            seconds = {False: 0.0, True: 0.0}
            answers: dict[bool, list[str]] = {False: [], True: []}
            for i in range(0, len(rows), batch):
                images = [pictures[r["image"]] for r in rows[i : i + batch]]
                for reuse, method in ((False, plain), (True, shared)):
                    start = clock()
                    answers[reuse] += method.generate(model, images, prompts[i : i + batch], do_sample=False,
                                                      max_new_tokens=args.answer_tokens,
                                                      min_new_tokens=args.answer_tokens)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds[reuse] += clock() - start
            same = sum(a == b for a, b in zip(answers[False], answers[True]))
            print(f"{name}, batch {batch}: {same}/{len(rows)} answers identical with and without prefix sharing")
            reference = first_answers.setdefault(name, answers[False])
            if reference is not answers[False]:  # the rounding noise of a batch change alone, for comparison
                same = sum(a == b for a, b in zip(reference, answers[False]))
                print(f"{name}, batch {batch}: {same}/{len(rows)} answers identical to the first batch size's, "
                      "both unshared")
            for reuse in (False, True):
                qps = len(rows) / seconds[reuse]
                table.append((name, batch, reuse, qps, 3000 / qps / 60, seconds[False] / seconds[reuse]))
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"\nshape {args.shape}; {device}; {args.dtype}; {args.answer_tokens} answer tokens; {len(rows)} questions "
          f"({len(pictures)} images, tower time included); "
          f"{'wall' if args.device.startswith('cuda') else 'process CPU'} seconds\n")
    print("| method | batch | prefix sharing | questions/s | minutes for 3,000 questions | x without sharing |")
    print("|---|---|---|---|---|---|")
    for name, batch, reuse, qps, minutes, speedup in table:
        print(f"| {name} | {batch} | {'yes' if reuse else 'no'} | {qps:.2f} | {minutes:.1f} | {speedup:.2f} |")


if __name__ == "__main__":
    main()
