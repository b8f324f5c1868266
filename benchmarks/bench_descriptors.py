"""Dense descriptors at stride 14 vs 7 (random weights of the real shapes): images/s and peak memory.

    python benchmarks/bench_descriptors.py                          # CPU: ViT-S/14 and ViT-B/14, batch 4, 224 x 224
    python benchmarks/bench_descriptors.py --device cuda --dtype bfloat16 --batch 32

Columns: the strided tower forward alone, last-layer key descriptors, the same log-binned, Object-DINO maps on
the strided output; peak memory is the largest extra use over the loaded model during the binned descriptors
(CUDA: allocated tensors; CPU: the process's resident set, its high-water mark reset before each run).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed  # noqa: E402

from grounding.tower.backbone import RegisterViT, TowerConfig  # noqa: E402
from grounding.descriptors import DenseExtractor  # noqa: E402
from grounding.objects.object_dino import ObjectDINO  # noqa: E402

SHAPES = {"ViT-S/14": dict(hidden_size=384, num_attention_heads=6),
          "ViT-B/14": dict(hidden_size=768, num_attention_heads=12)}


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_extra_mb(fn, device: str) -> float:
    """Largest extra memory during fn() over what was in use before it, in MiB."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark (Linux)
    except OSError:
        return float("nan")
    before = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--strides", default="14,7")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="ViT-S/14,ViT-B/14")
    parser.add_argument("--maps", action=argparse.BooleanOptionalAction, default=True, help="time Object-DINO maps")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        config = Dinov2Config(num_hidden_layers=12, intermediate_size=4 * SHAPES[shape]["hidden_size"], patch_size=14,
                              image_size=518, **SHAPES[shape])
        model = Dinov2Model(config)
        model.set_attn_implementation("sdpa")
        tower = RegisterViT(model, TowerConfig(device=args.device, dtype=args.dtype), "hf")
        pixels = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        for stride in (int(s) for s in args.strides.split(",")):
            extractor = DenseExtractor(tower, stride)
            out = extractor(pixels)
            t_tower = timed(lambda: extractor(pixels), args.device, args.repeats)
            t_desc = timed(lambda: extractor.descriptors(pixels), args.device, args.repeats)
            t_bin = timed(lambda: extractor.descriptors(pixels, bin=True), args.device, args.repeats)
            t_maps = float("nan")
            if args.maps:
                t_maps = timed(lambda out=out: ObjectDINO(k=5).object_maps(out), args.device, 1)
            del out
            memory = peak_extra_mb(lambda: extractor.descriptors(pixels, bin=True), args.device)
            grid = 1 + (args.size - 14) // stride
            rows.append((shape, stride, f"{grid}x{grid}", args.batch / t_tower, args.batch / t_desc, args.batch / t_bin,
                         args.batch / t_maps, memory))
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"\ndevice: {device}; dtype {args.dtype}; batch {args.batch}; {args.size}x{args.size}; "
          f"torch {torch.__version__}\n")
    print("| shape | stride | grid | tower img/s | key descriptors img/s | binned img/s | Object-DINO maps img/s "
          "| peak extra memory, binned (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, stride, grid, tower_ips, desc_ips, bin_ips, maps_ips, memory in rows:
        print(f"| {shape} | {stride} | {grid} | {tower_ips:.2f} | {desc_ips:.2f} | {bin_ips:.2f} | {maps_ips:.2f} "
              f"| {memory:.0f} |")


if __name__ == "__main__":
    main()
