"""Images/s of the bare tower, the tower + the library's Object-DINO maps, and a release-style pipeline.

    python benchmarks/bench_object_dino.py                          # CPU: ViT-S/14 and ViT-B/14, batch 8 and 32
    python benchmarks/bench_object_dino.py --device cuda --dtype bfloat16 --batches 32
    python benchmarks/bench_object_dino.py --discovery              # also tower + discovery (TokenCut, k 12)
    python benchmarks/bench_object_dino.py --bf16-similarity        # also the library with bf16 similarities (inexact)

Random weights of the real shapes (DINOv2 with 4 registers, 12 layers), 224 x 224 inputs. Three pipelines run
side by side, in rounds (each round times every pipeline once; the table takes each one's median over rounds),
so a busy machine slows all of them alike; on a CPU the clock is this process's CPU time (`--clock`), which other
jobs sharing the cores barely move:

* bare tower: the Hugging Face model's forward, nothing captured;
* library: `RegisterViT` (q/k/v captured) + `ObjectDINO(k=5).object_maps` on the whole batch;
* release-style: the published Object-DINO procedure (github.com/SamyakR99/Object-DINO,
  mllm_hallucinations/pope/dino_pope.py) re-implemented here, image by image: forward hooks on each attention
  module that recompute q, k, v with its projections and copy them to the CPU, per layer the similarity
  softmax of q, k and v (including the release's unused second einsum), a Python loop over heads collecting the
  head maps, scikit-learn's StandardScaler + KMeans(n_clusters=5, n_init=10, random_state=42), the final-layer
  cluster rule, and the final layer's map recomputed for the chosen heads (1 - m, zero below 0.6). Maps stay on
  the patch grid in both pipelines (no resize to the image).

"overhead" = a pipeline's time beyond the bare tower (same batch for the library, batch 1 for the release);
"share" = library overhead / bare tower time (the issue's target: <= 15%); "x release" = release overhead /
library overhead, and end-to-end images/s of the library / the release. Needs scikit-learn (`pip install
scikit-learn`) for the release-style pipeline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

sys.path.insert(0, str(Path(__file__).parent))
from timing import sync  # noqa: E402

from grounding.tower.backbone import RegisterViT, TowerConfig  # noqa: E402
from grounding.objects.object_dino import ObjectDINO  # noqa: E402

SHAPES = {"ViT-S/14": dict(hidden_size=384, num_attention_heads=6),
          "ViT-B/14": dict(hidden_size=768, num_attention_heads=12)}


# ---------------------------------------------------------------- release-style pipeline (one image at a time)
def _release_similarity(x: torch.Tensor, iters: int = 1, temp: float | None = None) -> torch.Tensor:
    """The release's object_dino_similarity: (1, H, N, d) -> (1, H, N, N) row-softmaxed cosine / sqrt(d)."""
    d = x.size(-1)
    temp = d**-0.5 if temp is None else temp
    xs = x.clone()
    for _ in range(iters):
        xs = F.normalize(xs, dim=-1)
        logits = torch.einsum("bhid,bhjd->bhij", xs, xs) * temp
        attn = logits.softmax(dim=-1)
        xs = torch.einsum("bhij,bhjd->bhid", attn, xs)
    return attn


class ReleasePipeline:
    """Per image: hooked forward, per-layer similarities, per-head loop, StandardScaler + KMeans, final-layer map."""

    def __init__(self, model: Dinov2WithRegistersModel, num_prefix: int):
        from sklearn.cluster import KMeans
        from sklearn.preprocessing import StandardScaler

        self.model, self.num_prefix = model, num_prefix
        self.kmeans, self.scaler = KMeans, StandardScaler
        config = model.config
        self.heads, self.head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}

    def _hook(self, index: int):
        def hook(module, inputs, _output):
            hidden = inputs[0]
            self.outputs[index] = {"q": module.q_proj(hidden).detach().cpu(), "k": module.k_proj(hidden).detach().cpu(),
                                   "v": module.v_proj(hidden).detach().cpu()}

        return hook

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The hooks are registered for this call only (the release registers them once: same per-image cost)."""
        handles = [layer.attention.register_forward_hook(self._hook(i))
                   for i, layer in enumerate(self.model.encoder.layer)]
        try:
            return [self.one(pixels[i : i + 1]) for i in range(pixels.shape[0])]
        finally:
            for handle in handles:
                handle.remove()

    def one(self, pixels: torch.Tensor) -> torch.Tensor:
        self.outputs.clear()
        self.model(pixel_values=pixels)
        per_layer = {}
        for index, qkv in self.outputs.items():
            per_layer[index] = {  # each (1, H, N, d)
                f: t[:, self.num_prefix :, :].reshape(1, -1, self.heads, self.head_dim).permute(0, 2, 1, 3)
                for f, t in qkv.items()}
        all_maps, map_labels = [], []
        side = int(per_layer[0]["q"].shape[2] ** 0.5)
        for index, t in per_layer.items():
            attn = (_release_similarity(t["q"]) + _release_similarity(t["k"]) + _release_similarity(t["v"])) / 3.0
            for head in range(attn.shape[1]):
                token_map = attn[0, head].mean(0)
                all_maps.append(token_map.reshape(side, side).flatten().cpu().numpy())
                map_labels.append((index, head))
        scaled = self.scaler().fit_transform(all_maps)
        cluster_ids = self.kmeans(n_clusters=5, random_state=42, n_init=10).fit_predict(scaled)
        clusters: dict = defaultdict(lambda: defaultdict(list))
        for i, cid in enumerate(cluster_ids):
            layer, head = map_labels[i]
            clusters[cid][layer].append(head)
        last = max(per_layer)
        best, most = None, 0
        for cid, by_layer in clusters.items():
            if last in by_layer and len(by_layer[last]) > most:
                best, most = by_layer[last], len(by_layer[last])
        t = per_layer[last]
        attn = (_release_similarity(t["q"]) + _release_similarity(t["k"]) + _release_similarity(t["v"])) / 3.0
        patch_corr = attn[:, best].mean(1)[0].mean(0).reshape(side, side)
        normalised = (patch_corr - patch_corr.min()) / (patch_corr.max() - patch_corr.min())
        inverse = 1.0 - normalised
        return torch.where(inverse >= 0.6, inverse, torch.zeros_like(inverse))


# ---------------------------------------------------------------- timing
def rounds(pipelines: dict, device: str, repeats: int, clock) -> dict[str, float]:
    """Median seconds of each pipeline over `repeats` rounds; every round runs each pipeline once (after a warm-up)."""
    for fn in pipelines.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, fn in pipelines.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="ViT-S/14,ViT-B/14")
    parser.add_argument("--no-release", action="store_true", help="skip the release-style pipeline")
    parser.add_argument("--discovery", action="store_true", help="also time tower + discovery (TokenCut, k 12)")
    parser.add_argument("--bf16-similarity", action="store_true",
                        help="also time the library with ObjectDINO(similarity_dtype='bfloat16') (inexact, faster)")
    parser.add_argument("--clock", choices=["auto", "process", "wall"], default="auto",
                        help="process: this process's CPU seconds (all its threads), unmoved by other jobs on a shared "
                             "CPU; wall: elapsed seconds (what a GPU needs); auto: process on CPU, wall on GPU")
    args = parser.parse_args()
    clock_name = args.clock if args.clock != "auto" else ("wall" if args.device.startswith("cuda") else "process")
    clock = time.process_time if clock_name == "process" else time.perf_counter
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    rows = []
    for shape in args.shapes.split(","):
        config = Dinov2WithRegistersConfig(num_hidden_layers=12, intermediate_size=4 * SHAPES[shape]["hidden_size"],
                                           patch_size=14, image_size=518, num_register_tokens=4, **SHAPES[shape])
        model = Dinov2WithRegistersModel(config)
        model.set_attn_implementation("sdpa")
        tower = RegisterViT(model, TowerConfig(device=args.device, dtype=args.dtype), "hf")
        maps, discovery = ObjectDINO(k=5), ObjectDINO(k=12)
        maps_bf16 = ObjectDINO(k=5, similarity_dtype="bfloat16")
        release = None if args.no_release else ReleasePipeline(model, tower.num_prefix_tokens)
        for batch in (int(b) for b in args.batches.split(",")):
            pixels = torch.randn(batch, 3, args.size, args.size, device=args.device, dtype=dtype)

            def bare(p=pixels):
                with torch.inference_mode():
                    model(pixel_values=p)

            pipelines = {"bare": bare, "library": lambda p=pixels: maps.object_maps(tower(p))}
            if release is not None:
                pipelines["bare1"] = lambda p=pixels[:1]: bare(p)
                pipelines["release"] = lambda p=pixels: release(p)
            if args.bf16_similarity:
                pipelines["library_bf16"] = lambda p=pixels: maps_bf16.object_maps(tower(p))
            if args.discovery:
                from grounding.objects.discovery import discover

                pipelines["discovery"] = lambda p=pixels: discover("object-dino", tower(p), object_dino=discovery)
            t = rounds(pipelines, args.device, args.repeats, clock)
            rows.append((shape, batch, t))
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"\ndevice: {device}; dtype {args.dtype}; {args.size}x{args.size}; torch {torch.__version__}; "
          f"median of {args.repeats} rounds; {clock_name} seconds\n")
    header = "| shape | batch | bare tower img/s | library tower+maps img/s | maps share of tower |"
    if not args.no_release:
        header += " release-style img/s | library / release (end to end) | release / library overhead |"
    if args.bf16_similarity:
        header += " tower+maps, bf16 similarity img/s | maps share, bf16 similarity |"
        if not args.no_release:
            header += " release / library overhead, bf16 similarity |"
    if args.discovery:
        header += " tower+discovery img/s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for shape, batch, t in rows:
        overhead = t["library"] - t["bare"]
        line = (f"| {shape} | {batch} | {batch / t['bare']:.1f} | {batch / t['library']:.1f} | "
                f"{100 * overhead / t['bare']:.0f}% |")
        if "release" in t:
            release_overhead = t["release"] - batch * t["bare1"]
            line += (f" {batch / t['release']:.1f} | {t['release'] / t['library']:.1f}x |"
                     f" {release_overhead / max(overhead, 1e-9):.1f}x |")
        if "library_bf16" in t:
            bf16_overhead = t["library_bf16"] - t["bare"]
            line += f" {batch / t['library_bf16']:.1f} | {100 * bf16_overhead / t['bare']:.0f}% |"
            if "release" in t:
                line += f" {(t['release'] - batch * t['bare1']) / max(bf16_overhead, 1e-9):.1f}x |"
        if "discovery" in t:
            line += f" {batch / t['discovery']:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
