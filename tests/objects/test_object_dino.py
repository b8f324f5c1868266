import math

import numpy as np
import pytest
import torch
from PIL import Image

from grounding import ObjectDINO, RegisterViT
from grounding.tower.capture import find_projections
from grounding.objects.discovery import discover
from grounding.kmeans import kmeans
from grounding.objects.object_dino import ObjectDINOConfig, head_descriptors, object_cluster_of, standardise


@pytest.fixture(scope="module")
def tower_out(tiny_reg_dir):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 48})
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    return tower(images)


def test_head_descriptors_equal_per_head_reference(tower_out):
    got = head_descriptors(tower_out, chunk_elements=100)  # tiny chunks: exercises the chunking
    layers, batch, heads = tower_out.q.shape[:3]
    for b in range(batch):
        for layer in range(layers):
            for head in range(heads):
                mix = 0
                for facet in "qkv":
                    x = tower_out.patches(getattr(tower_out, facet))[layer, b, head].double()  # (N, d)
                    x = x / x.norm(dim=-1, keepdim=True)
                    mix = mix + torch.softmax(x @ x.T / math.sqrt(x.shape[-1]), dim=-1)
                expected = (mix / 3).mean(0)
                torch.testing.assert_close(got[b, layer * heads + head].double(), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_similarities_stay_close_to_the_exact_descriptors(tower_out):
    exact = head_descriptors(tower_out)
    fast = head_descriptors(tower_out, similarity_dtype="bfloat16")
    assert fast.dtype == exact.dtype == torch.float32 and fast.shape == exact.shape
    # each cosine is off by at most ~2^-8; the column means of the softmax move far less than their spread
    spread = (exact - exact.mean(-1, keepdim=True)).abs().mean()
    assert (fast - exact).abs().max() < 0.05 * spread and not torch.equal(fast, exact)
    assert ObjectDINO(k=2, similarity_dtype="bfloat16").analyse(tower_out).maps.isfinite().all()
    with pytest.raises(ValueError, match="similarity_dtype"):
        ObjectDINOConfig(similarity_dtype="float16")


def test_standardise_matches_population_formula():
    x = torch.randn(3, 10, 7).double()
    x[:, :, 2] = 5.0  # zero-variance dimension: only centred
    z = standardise(x)
    expected = (x - x.mean(1, keepdim=True)) / x.std(1, unbiased=False, keepdim=True)
    expected[:, :, 2] = 0.0
    torch.testing.assert_close(z, expected)


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(20)
    points = centres[truth] + 0.3 * torch.randn(60, 2, generator=g)
    result = kmeans(points[None].repeat(2, 1, 1), k=3, restarts=4, seed=1)
    for labels in result.labels:
        # a perfect clustering: each true group maps to exactly one label
        assert all(len(set(labels[truth == t].tolist())) == 1 for t in range(3))
        assert len(set(labels.tolist())) == 3
    again = kmeans(points[None].repeat(2, 1, 1), k=3, restarts=4, seed=1)
    assert torch.equal(result.labels, again.labels)
    manual = ((points - result.centroids[0][result.labels[0]]) ** 2).sum()
    assert float(result.inertia[0]) == pytest.approx(float(manual), rel=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.full((1, 5, 2), float("nan")), k=2)


def test_kmeans_result_does_not_depend_on_batch_mates():
    g = torch.Generator().manual_seed(1)
    sets = torch.randn(4, 30, 6, generator=g)
    together = kmeans(sets, k=4, restarts=5, seed=3)
    for b in range(4):
        alone = kmeans(sets[b : b + 1], k=4, restarts=5, seed=3)
        assert torch.equal(alone.labels[0], together.labels[b])


def release_object_cluster(labels: torch.Tensor) -> int:
    """The released scripts' rule, written as they do it: group heads by cluster in (layer, head) order (dict
    insertion order = first appearance), then keep a cluster only on a strictly larger final-layer count."""
    layers = labels.shape[0]
    clusters: dict[int, dict[int, list[int]]] = {}
    for layer in range(layers):
        for head, cid in enumerate(labels[layer].tolist()):
            clusters.setdefault(cid, {}).setdefault(layer, []).append(head)
    best, most = None, 0
    for cid, by_layer in clusters.items():
        if len(by_layer.get(layers - 1, [])) > most:
            best, most = cid, len(by_layer[layers - 1])
    return best


def test_object_cluster_ties_go_to_the_cluster_met_first_in_layer_head_order():
    labels = torch.tensor([
        [[2, 0, 1, 1], [0, 1, 2, 3]],  # 1-1-1-1 tie in the final layer: cluster 2 appears first (layer 0, head 0)
        [[3, 3, 1, 1], [1, 3, 0, 0]],  # no tie: 0 holds 2 final heads although 3 and 1 are met earlier
        [[1, 1, 1, 1], [0, 2, 2, 0]],  # tie 0 vs 2: neither in layer 0; 0 is met first at (1, 0)
        [[0, 0, 2, 2], [2, 0, 0, 2]],  # tie 0 vs 2: 0 is met first, at (0, 0), although final head 0 is in 2
    ])  # (B, L, H)
    got = object_cluster_of(labels, k=4)
    assert got.tolist() == [2, 0, 0, 0]
    assert got.tolist() == [release_object_cluster(x) for x in labels]
    assert object_cluster_of(labels, k=4).tolist() != torch.nn.functional.one_hot(labels[:, -1], 4).sum(1).argmax(
        -1).tolist()  # the old lowest-index rule picks differently here
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # random labellings, many ties
        x = torch.randint(0, 4, (3, 4), generator=g)
        assert int(object_cluster_of(x[None], 4)[0]) == release_object_cluster(x)


def test_object_cluster_and_map_follow_the_rules(tower_out):
    od = ObjectDINO(k=3, restarts=5)
    result = od(tower_out)
    layers, batch, heads = tower_out.q.shape[:3]
    for b in range(batch):
        final = result.labels[b, -1]
        assert int(result.object_cluster[b]) == release_object_cluster(result.labels[b])
        assert int(torch.bincount(final, minlength=3)[result.object_cluster[b]]) == int(torch.bincount(final).max())
        assert torch.equal(result.selected[b], result.labels[b] == result.object_cluster[b])
        # map: mean descriptor over final-layer selected heads, min-max, 1 - m, zero below 0.6
        chosen = result.selected[b, -1]
        column = result.descriptors[b, (layers - 1) * heads:][chosen].mean(0)
        m = (column - column.min()) / (column.max() - column.min())
        expected = torch.where(1 - m >= 0.6, 1 - m, torch.zeros_like(m)).view(tower_out.grid)
        torch.testing.assert_close(result.maps[b], expected)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    all_layers = ObjectDINO(k=3, restarts=5, map_layers="all")(tower_out)
    assert all_layers.maps.shape == result.maps.shape


def test_facets_option_and_bad_config(tower_out):
    only_keys = head_descriptors(tower_out, facets=("k",))
    assert only_keys.shape == head_descriptors(tower_out).shape
    with pytest.raises(ValueError, match="facets"):
        ObjectDINO(facets=("x",))
    with pytest.raises(ValueError, match="exceeds"):
        ObjectDINO(k=50)(tower_out)


def test_flat_image_gives_valid_map_never_nan(tiny_reg_dir):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 32})
    flat = tower([Image.new("RGB", (40, 40), (128, 128, 128))])
    result = ObjectDINO(k=3)(flat)
    assert torch.isfinite(result.maps).all()
    filled = ObjectDINO(k=3).object_maps(flat, upsample=True)
    assert filled[0].shape == (40, 40) and torch.isfinite(filled[0]).all()


def test_discovery_affinity_equals_concatenated_features(tower_out):
    od = ObjectDINO(k=3, restarts=3)
    result = od(tower_out)
    affinity = od.discovery_affinity(tower_out, result.selected)
    layers, batch, heads = tower_out.q.shape[:3]
    for b in range(batch):
        rows = []
        for layer in range(layers):
            for head in range(heads):
                if result.selected[b, layer, head]:
                    s = 0
                    for facet in "qkv":
                        x = tower_out.patches(getattr(tower_out, facet))[layer, b, head].double()
                        x = x / x.norm(dim=-1, keepdim=True)
                        s = s + x @ x.T
                    rows.append(s / 3)
        features = torch.cat(rows, dim=1)  # (N, |sel| * N)
        features = features / features.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(affinity[b].double(), features @ features.T, rtol=1e-4, atol=1e-5)


def synthetic_tower(tmp_path):
    """A tiny register ViT whose tokens are +u on a white square and -u elsewhere (identity q/k/v, tiny residual)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, patch_size=8, image_size=64, num_register_tokens=4)
    model = Dinov2WithRegistersModel(config)
    u = torch.randn(32)
    u = u - u.mean()
    with torch.no_grad():
        conv = model.embeddings.patch_embeddings.projection
        conv.weight.zero_()
        conv.weight[:, 0] = u[:, None, None] / 64  # red channel average of the patch -> +-u
        conv.bias.zero_()
        model.embeddings.position_embeddings.zero_()
        for projections in find_projections(model).values():  # module names differ across versions
            for proj in projections:
                proj.weight.copy_(torch.eye(32) + 0.05 * torch.randn(32, 32))
                proj.bias.zero_()
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.fill_(1e-3)
            layer.layer_scale2.lambda1.fill_(1e-3)
    model.save_pretrained(tmp_path)
    return RegisterViT.from_pretrained(str(tmp_path), preprocess={"size": (64, 64)})


def test_synthetic_object_is_found_by_every_method(tmp_path):
    tower = synthetic_tower(tmp_path)
    # ImageNet-normalised red channel: black ~ -2.1, white ~ +2.2 -> tokens ~ -u / +u
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    image[32:80, 48:112] = 255  # rows 2..4, cols 3..6 of the 8x8 grid after resizing to 64x64
    out = tower([Image.fromarray(image)])
    truth = torch.tensor([[48.0, 32.0, 112.0, 80.0]])
    from eval.corloc import iou

    for method, options in [("lost", {}), ("tokencut", {}),
                            ("object-dino", {"object_dino": ObjectDINO(k=2, restarts=3)})]:
        box = discover(method, out, **options).boxes[0]
        assert float(iou(box, truth).max()) >= 0.5, (method, box)
    # [CLS] attention of this constructed model carries no object signal: only check DINO-seg's box is valid
    box = discover("dinoseg", out, head=0).boxes[0]
    assert 0 <= box[0] < box[2] <= 128 and 0 <= box[1] < box[3] <= 128
    maps = ObjectDINO(k=2, restarts=3).object_maps(out)
    inside = maps[0, 2:5, 3:7].mean()
    assert inside > maps[0].mean()
