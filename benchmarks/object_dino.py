"""Images/s for tower forward, Object-DINO maps and discovery (random weights of the real shapes).

    python benchmarks/object_dino.py                 # CPU: ViT-S/14 and ViT-B/14, batch 1 and 32
    python benchmarks/object_dino.py --device cuda --dtype bfloat16

Prints a markdown table; the Object-DINO column shares are of tower + maps time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed  # noqa: E402

from grounding.backbone import RegisterViT, TowerConfig  # noqa: E402
from grounding.object_dino import ObjectDINO  # noqa: E402

SHAPES = {"ViT-S/14": dict(hidden_size=384, num_attention_heads=6), "ViT-B/14": dict(hidden_size=768, num_attention_heads=12)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="ViT-S/14,ViT-B/14")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        config = Dinov2WithRegistersConfig(num_hidden_layers=12, intermediate_size=4 * SHAPES[shape]["hidden_size"],
                                           patch_size=14, image_size=518, num_register_tokens=4, **SHAPES[shape])
        model = Dinov2WithRegistersModel(config)
        model.set_attn_implementation("sdpa")
        tower = RegisterViT(model, TowerConfig(device=args.device, dtype=args.dtype), "hf")
        maps, discovery = ObjectDINO(k=5), ObjectDINO(k=12)
        for batch in (int(b) for b in args.batches.split(",")):
            pixels = torch.randn(batch, 3, args.size, args.size, device=args.device)
            out = tower(pixels)
            t_tower = timed(lambda: tower(pixels), args.device, args.repeats)
            t_maps = timed(lambda: maps.object_maps(out), args.device, args.repeats)
            t_disc = timed(lambda: maps_disc(discovery, out), args.device, max(1, args.repeats // 2))
            rows.append((shape, batch, batch / t_tower, batch / t_maps, batch / (t_tower + t_maps),
                         100 * t_maps / (t_tower + t_maps), batch / (t_tower + t_disc)))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {device}; dtype {args.dtype}; {args.size}x{args.size}; torch {torch.__version__}\n")
    print("| shape | batch | tower img/s | maps img/s | tower+maps img/s | Object-DINO share | tower+discovery img/s |")
    print("|---|---|---|---|---|---|---|")
    for shape, batch, tower_ips, maps_ips, both, share, disc in rows:
        print(f"| {shape} | {batch} | {tower_ips:.1f} | {maps_ips:.1f} | {both:.1f} | {share:.0f}% | {disc:.2f} |")


def maps_disc(object_dino: ObjectDINO, out) -> None:
    from grounding.discovery import discover

    discover("object-dino", out, object_dino=object_dino)


if __name__ == "__main__":
    main()
