"""Object-DINO (arXiv 2603.26127): object-centric heads found by clustering ALL layers' heads.

For L layers x H heads and the N patch tokens of each image ([CLS] and registers dropped):

1. for each head and facet f in `facets` (q, k, v): tokens L2-normalised, S_f = x x^T (N, N) cosine,
   P_f = row_softmax(S_f / sqrt(d));
2. head descriptor = column mean of P = mean_f P_f: an N-vector (attention each patch receives);
3. per image, standardise each of the N dimensions across the L*H heads (population std, zero-variance
   dimensions left unscaled, as scikit-learn's StandardScaler) and k-means them (restarts, fixed seed);
4. object cluster = the cluster holding the most final-layer heads; ties go to the tied cluster met first in
   (layer, head) order over ALL heads (the release walks its clusters in order of first appearance and keeps
   a later one only on a strictly larger count), so the result does not depend on k-means' label numbering;
5. maps: mean descriptor over the selected heads (final layer only, as the released MLLM scripts, or all
   layers), on the (h, w) grid, min-max normalised to m; object score 1 - m, zeroed below `threshold`;
6. discovery: patch j's feature = row j of S_bar = mean_f S_f, concatenated over the selected heads of all
   layers; TokenCut runs on the cosine affinity of these features (tau = -0.35).

Column means of row-softmaxed similarities are computed in chunks of heads, so the (L*H, N, N) stack is never
held at once; the discovery affinity is accumulated as sum_h S_bar_h S_bar_h^T, never concatenating features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..tower.backbone import TowerOutput
from .cuts import DiscoveryOutput, PatchBox, Polarity, cut, discovery_output
from ..kmeans import kmeans
from .instance_registry import DEFAULT_INSTANCE_METHOD, instances
from .regions import upsample_maps

__all__ = ["ObjectDINOConfig", "ObjectDINOOutput", "ObjectDINO", "head_descriptors", "standardise", "object_cluster_of"]


@dataclass
class ObjectDINOConfig:
    k: int = 5
    restarts: int = 10
    seed: int = 0
    max_iter: int = 100
    facets: tuple[str, ...] = ("q", "k", "v")
    map_layers: Literal["final", "all"] = "final"
    threshold: float = 0.6
    chunk_elements: int | None = None  # similarity entries per chunk (None: by device, see default_chunk_elements)
    similarity_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: inexact, faster (see head_descriptors)
    tokencut_tau: float = -0.35
    tokencut_eps: float = 1e-5

    def __post_init__(self):
        self.facets = tuple(self.facets)
        if not self.facets or set(self.facets) - {"q", "k", "v"}:
            raise ValueError(f"facets must be a non-empty subset of q, k, v; got {self.facets}")
        if self.similarity_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"similarity_dtype must be 'float32' or 'bfloat16', got {self.similarity_dtype!r}")
        if self.k < 1 or self.restarts < 1:
            raise ValueError(f"k and restarts must be >= 1 (got k={self.k}, restarts={self.restarts})")


@dataclass
class ObjectDINOOutput:
    """Per image: head clustering and the object map on the patch grid."""

    descriptors: torch.Tensor  # (B, L*H, N) column means of facet-averaged softmaxed similarities
    labels: torch.Tensor  # (B, L, H) cluster of each head
    object_cluster: torch.Tensor  # (B,)
    selected: torch.Tensor  # (B, L, H) bool: heads in the object cluster
    maps: torch.Tensor  # (B, h, w) object scores in [0, 1], zero below threshold
    raw_maps: torch.Tensor  # (B, h, w) min-max normalised column means m (before 1 - m and threshold)
    degenerate: torch.Tensor  # (B,) bool: flat descriptor map (e.g. a uniform image); map is all zeros


def _facet_patches(out: TowerOutput, facet: str) -> torch.Tensor:
    x = out.patches(getattr(out, facet)).float()  # (L, B, H, N, d)
    x = F.normalize(x, dim=-1)
    layers, batch, heads, tokens, dim = x.shape
    return x.permute(1, 0, 2, 3, 4).reshape(batch, layers * heads, tokens, dim)  # (B, L*H, N, d)


def _chunks(total: int, per_item: int, budget: int) -> list[slice]:
    step = max(1, budget // max(per_item, 1))
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


def default_chunk_elements(device: torch.device | str) -> int:
    """Similarity entries per chunk: 1 MB of fp32 on a CPU (the chunk stays in a core's cache between the matmul,
    the softmax and the column sum), 256 MB on an accelerator (few, large kernels)."""
    return 1 << 18 if torch.device(device).type == "cpu" else 1 << 26


def head_descriptors(out: TowerOutput, facets=("q", "k", "v"), chunk_elements: int | None = None,
                     similarity_dtype: str = "float32") -> torch.Tensor:
    """(B, L*H, N): column mean of mean_f row_softmax(cos_f / sqrt(d)), chunked over (layer, image, head).

    Per chunk of c heads, on a (c, N, N) block small enough to stay in cache (never the whole (L*H, N, N)
    stack): L2-normalise the chunk's tokens, one batched matmul with the 1/sqrt(d) scale folded in, one
    softmax, one column sum. similarity_dtype="bfloat16" runs the matmul on bf16 copies of the normalised
    tokens (fp32 accumulation and softmax): the matmul is most of the maps' work, and bf16 runs it several times
    faster on CPUs with AVX-512 BF16 and on GPUs, at ~1e-3 relative error in each cosine; the parity with the
    reference holds for float32 only."""
    layers, batch, heads = out.q.shape[:3]
    tokens, dim = out.q.shape[-2] - out.num_prefix_tokens, out.q.shape[-1]
    budget = chunk_elements or default_chunk_elements(out.q.device)
    total = torch.zeros(layers * batch * heads, tokens, device=out.q.device)  # (L*B*H, N), (layer, image, head) order
    for facet in facets:
        x = out.patches(getattr(out, facet)).flatten(0, 2)  # (L*B*H, N, d), a view
        for part in _chunks(x.shape[0], tokens * tokens, budget):
            chunk = F.normalize(x[part].float(), dim=-1)  # (c, N, d)
            if similarity_dtype == "bfloat16":
                low = chunk.to(torch.bfloat16)
                logits = torch.bmm(low, low.transpose(1, 2)).float().mul_(dim**-0.5)  # (c, N, N)
            else:
                logits = torch.baddbmm(chunk.new_empty(()), chunk, chunk.transpose(1, 2), beta=0, alpha=dim**-0.5)
            total[part] += torch.softmax(logits, dim=-1).sum(dim=-2)  # (c, N) column sums
    total /= len(facets) * tokens
    return total.view(layers, batch, heads, tokens).transpose(0, 1).reshape(batch, layers * heads, tokens)


def object_cluster_of(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L, H) head labels -> (B,) cluster with the most final-layer heads; ties go to the one met first in
    (layer, head) order."""
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)  # (B, L*H), (layer, head) order
    members = flat[:, :, None] == torch.arange(k, device=labels.device)  # (B, L*H, k)
    order = torch.arange(flat.shape[1], device=labels.device)[None, :, None]  # (1, L*H, 1)
    first_seen = torch.where(members, order, flat.shape[1]).amin(1)  # (B, k)
    final_counts = members.view(batch, *labels.shape[1:], k)[:, -1].sum(1)  # (B, k)
    tied = final_counts == final_counts.max(-1, keepdim=True).values  # (B, k)
    return torch.where(tied, first_seen, flat.shape[1] + 1).argmin(-1)  # (B,)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """(B, M, D): zero mean, unit population std per dimension across M; zero-variance dims only centred."""
    centred = x - x.mean(dim=1, keepdim=True)
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return centred / torch.where(std > 1e-12, std, torch.ones_like(std))


class ObjectDINO:
    """Training-free object maps and discovery features from a `TowerOutput`."""

    def __init__(self, config: ObjectDINOConfig | None = None, **overrides):
        self.config = config if config is not None else ObjectDINOConfig(**overrides)

    def __call__(self, out: TowerOutput) -> ObjectDINOOutput:
        return self.analyse(out)

    def with_config(self, config: ObjectDINOConfig) -> ObjectDINO:
        """The same kind of ObjectDINO with another config (a subclass keeps what it shares, e.g. a cache)."""
        return type(self)(config)

    def analyse(self, out: TowerOutput) -> ObjectDINOOutput:
        cfg = self.config
        layers, batch, heads = out.q.shape[:3]
        h, w = out.grid
        descriptors = head_descriptors(out, cfg.facets, cfg.chunk_elements, cfg.similarity_dtype)  # (B, L*H, N)
        if cfg.k > layers * heads:
            raise ValueError(f"k={cfg.k} exceeds the number of heads {layers}x{heads}")
        result = kmeans(standardise(descriptors), cfg.k, cfg.restarts, cfg.max_iter, seed=cfg.seed)
        labels = result.labels.view(batch, layers, heads)  # (B, L, H)
        final_counts = F.one_hot(labels[:, -1], cfg.k).sum(1)  # (B, k)
        if bool((final_counts.max(-1).values == 0).any()):
            raise RuntimeError("no cluster holds a final-layer head")
        object_cluster = object_cluster_of(labels, cfg.k)  # (B,)
        selected = labels == object_cluster[:, None, None]  # (B, L, H)
        chosen = selected.clone()
        if cfg.map_layers == "final":
            chosen[:, :-1] = False
        weights = chosen.view(batch, layers * heads, 1).float()  # (B, L*H, 1)
        column_mean = (descriptors * weights).sum(1) / weights.sum(1)  # (B, N)
        low, high = column_mean.amin(-1, keepdim=True), column_mean.amax(-1, keepdim=True)
        spread = high - low
        degenerate = spread[:, 0] <= 1e-12 * high[:, 0].abs().clamp_min(1e-12)
        m = torch.where(spread > 0, (column_mean - low) / spread.clamp_min(1e-30), torch.ones_like(column_mean))
        score = 1.0 - m
        maps = torch.where(score >= cfg.threshold, score, torch.zeros_like(score))
        maps[degenerate] = 0.0
        return ObjectDINOOutput(
            descriptors=descriptors, labels=labels, object_cluster=object_cluster, selected=selected,
            maps=maps.view(batch, h, w), raw_maps=m.view(batch, h, w), degenerate=degenerate,
        )

    def object_maps(self, out: TowerOutput, upsample: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """(B, h, w) maps in [0, 1]; with upsample=True a list of (H, W) maps over each original image."""
        maps = self.analyse(out).maps
        return upsample_maps(maps, out.patch_scale, out.image_sizes) if upsample else maps

    def discovery_affinity(self, out: TowerOutput, selected: torch.Tensor) -> torch.Tensor:
        """(B, N, N) cosine affinity of the concatenated S_bar rows over each image's selected heads."""
        xs = [_facet_patches(out, f) for f in self.config.facets]  # each (B, L*H, N, d)
        batch, heads, tokens, _ = xs[0].shape
        flat = selected.view(batch, heads)
        affinity = torch.zeros(batch, tokens, tokens, device=xs[0].device)
        for b in range(batch):
            index = flat[b].nonzero().squeeze(1)
            budget = self.config.chunk_elements or default_chunk_elements(affinity.device)
            for part in _chunks(len(index), tokens * tokens, budget):
                picked = [x[b, index[part]] for x in xs]  # each (c, N, d)
                s_bar = sum(p @ p.transpose(-1, -2) for p in picked) / len(picked)  # (c, N, N)
                affinity[b] += torch.einsum("cij,ckj->ik", s_bar, s_bar)
        norms = affinity.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()  # (B, N)
        return affinity / (norms[:, :, None] * norms[:, None, :])

    def cut(self, out: TowerOutput, tau: float | None = None, centre: bool = False, adaptive: bool = False,
            polarity: Polarity = "seed") -> list[PatchBox]:
        """TokenCut on Object-DINO discovery features, one `PatchBox` per image (the "object-dino" discovery
        method's step; tau None: the config's `tokencut_tau`)."""
        analysis = self.analyse(out)
        affinity = self.discovery_affinity(out, analysis.selected)  # (B, N, N)
        tau = self.config.tokencut_tau if tau is None else tau
        return [cut(a, out.grid, tau, self.config.tokencut_eps, centre, adaptive, polarity) for a in affinity]

    def discover(self, out: TowerOutput) -> DiscoveryOutput:
        """One box per image: TokenCut (tau = -0.35) on Object-DINO discovery features.
        See `grounding.objects.discovery`."""
        return discovery_output(self.cut(out), out)

    def instances(self, out: TowerOutput, max_objects: int = 3, method: str | None = None, **options):
        """Up to `max_objects` objects per image (`grounding.objects.instances`; default method
        "object-dino-map-cut": the regions of the map with [CLS]-attention polarity, then iterative cuts of the
        object heads' discovery affinity with found objects removed). Returns an `InstanceOutput`: masks, boxes in
        original-image pixels, scores, valid. Pass `tower=` for DINOv3 towers that captured q/k before rotation."""
        return instances(method or DEFAULT_INSTANCE_METHOD, out, max_objects, object_dino=self, **options)
