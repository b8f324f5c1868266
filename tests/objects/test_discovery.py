"""LOST / TokenCut / DINO-seg against straightforward re-computations of the published steps (numpy + scipy)."""

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch

from grounding.objects.discovery import dinoseg, lost, tokencut
from grounding.objects.regions import boxes_to_pixels, connected_components, mask_to_box, object_regions, upsample_maps


def reference_box(mask: np.ndarray, seed: int, grid):
    labels, _ = scipy.ndimage.label(mask.reshape(grid))  # 4-connectivity
    component = labels == labels[np.unravel_index(seed, grid)]
    ys, xs = np.nonzero(component)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_connected_components_match_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((9, 13)) > 0.55
        ours = connected_components(torch.from_numpy(mask)).numpy()
        theirs, count = scipy.ndimage.label(mask)
        assert ours.max() == count
        # same partition (labels may be numbered differently)
        pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist()))
        assert len(pairs) == count and (ours[~mask] == 0).all()


def test_lost_equals_reference():
    rng = np.random.default_rng(1)
    grid = (6, 7)
    for trial in range(5):
        keys = rng.standard_normal((42, 12)).astype(np.float32)
        keys[5:15] += 3.0 * (trial + 1) * rng.standard_normal(12).astype(np.float32)
        found = lost(torch.from_numpy(keys), grid, k_patches=10)
        a = keys @ keys.T
        degree = (a > 0).sum(-1)
        order = np.argsort(degree, kind="stable")
        seed = order[0]
        similars = order[:10][a[seed, order[:10]] > 0]
        score = a[similars].sum(0)
        assert found.seed == seed
        assert found.box.tolist() == reference_box(score > 0, seed, grid)


def test_tokencut_equals_scipy_generalised_eigensolver():
    rng = np.random.default_rng(2)
    grid = (5, 6)
    for trial in range(5):
        feats = rng.standard_normal((30, 8))
        feats[:9] += 2.0 * rng.standard_normal(8)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        a = feats @ feats.T
        graph = np.where(a > 0.2, 1.0, 1e-5)
        d = np.diag(graph.sum(1))
        _, vectors = scipy.linalg.eigh(d - graph, d, subset_by_index=[1, 2])
        second = vectors[:, 0]
        for sign in (1.0, -1.0):  # either eigenvector sign gives the same answer
            vec = sign * second
            partition = vec > vec.mean()
            seed = int(np.argmax(np.abs(vec)))
            if not partition[seed]:
                partition = ~partition
            expected = reference_box(partition, seed, grid)
        found = tokencut(torch.from_numpy(a), grid, tau=0.2, eps=1e-5)
        assert found.seed == seed
        assert found.box.tolist() == expected


def test_dinoseg_equals_reference():
    rng = np.random.default_rng(3)
    grid = (6, 6)
    attention = rng.random(36) ** 4
    found = dinoseg(torch.from_numpy(attention), grid, mass=0.6)
    values = np.sort(attention / attention.sum())
    order = np.argsort(attention / attention.sum())
    keep = np.zeros(36, bool)
    keep[order] = np.cumsum(values) > 0.4
    labels, count = scipy.ndimage.label(keep.reshape(grid))
    sizes = [(labels == c).sum() for c in range(1, count + 1)]
    component = labels == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(component)
    assert found.box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_boxes_scale_to_original_pixels_and_clip():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 3.0], [0.0, 0.0, 10.0, 10.0]])
    scale = torch.tensor([[10.0, 5.0], [14.0, 14.0]])
    pixels = boxes_to_pixels(boxes, scale, [(100, 200), (50, 60)])
    assert pixels.tolist() == [[10.0, 10.0, 40.0, 15.0], [0.0, 0.0, 60.0, 50.0]]


def test_regions_and_empty_masks():
    object_map = torch.zeros(6, 6)
    object_map[0:2, 0:2] = 0.9
    object_map[3:6, 2:6] = 0.7
    regions = object_regions(object_map, max_regions=5)
    assert [r.area for r in regions] == [12, 4] and regions[0].box.tolist() == [2, 3, 6, 6]
    assert object_regions(torch.zeros(4, 4)) == []
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        object_regions(torch.full((3, 3), float("nan")))
    up = upsample_maps(object_map[None], torch.tensor([[10.0, 10.0]]), [(55, 58)])[0]
    assert up.shape == (55, 58)


# ---------------------------------------------------------------- backbones whose keys share one large component
from grounding.objects.discovery import (  # noqa: E402
    DEFAULT_METHOD, DISCOVERY_METHODS, adaptive_tau, border_share, centred_cosine, cls_attention,
    discover,
    double_centre, orient_maps,
)
from grounding.tower.attention import attention_qk  # noqa: E402


def test_centring_is_exact_and_removes_any_shared_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=g).double()
    shifted = x + 50.0 * torch.randn(6, generator=g).double()  # one vector added to every feature
    expected = torch.nn.functional.normalize(x - x.mean(0), dim=-1)
    expected = expected @ expected.T
    torch.testing.assert_close(centred_cosine(shifted).double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(double_centre(shifted @ shifted.T), expected)  # from the Gram matrix alone
    flat = double_centre(torch.ones(5, 5))  # no structure at all: zero affinity, never NaN
    assert torch.equal(flat, torch.zeros(5, 5))


def test_adaptive_tau_only_replaces_a_complete_graph():
    a = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, 0.7], [0.5, 0.7, 1.0]])
    assert adaptive_tau(a, 0.6) == 0.6  # some affinity <= tau: the reference graph stands
    tau = adaptive_tau(a, 0.2)  # complete: just below the median of the off-diagonal affinities
    assert tau == pytest.approx(0.7) and tau < torch.tensor(0.7).item()
    assert adaptive_tau(a, 0.2, quantile=0.0) == pytest.approx(0.5)
    tied = torch.ones(4, 4)
    tied[0, 1:] = tied[1:, 0] = 0.5  # most pairs tie at the top: the graph keeps them
    cut = tokencut(tied, (2, 2), adaptive_tau(tied, 0.2))
    assert not cut.degenerate and int(cut.mask.sum()) in (1, 3)


def test_complete_and_empty_graphs_are_flagged():
    grid = (4, 4)
    assert tokencut(torch.ones(16, 16), grid, tau=0.2).degenerate
    assert tokencut(torch.full((16, 16), -1.0), grid, tau=0.2).degenerate
    keys = torch.randn(16, 5) + 20.0  # every inner product positive: LOST's degrees are all equal
    assert lost(keys, grid).degenerate and not lost(keys - keys.mean(0), grid).degenerate


def test_border_share_and_border_polarity():
    grid = (6, 6)
    centre = torch.zeros(grid, dtype=torch.bool)
    centre[2:4, 2:4] = True
    assert border_share(centre) == 0 and border_share(~centre) == pytest.approx(20 / 32**0.5)
    assert border_share(torch.zeros(grid, dtype=torch.bool)) == float("inf")
    # a two-block affinity whose largest-|eigenvector| patch may fall on either side: the border rule picks the centre
    features = torch.where(centre.flatten()[:, None], torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    found = tokencut(features @ features.T, grid, tau=0.5, polarity="border")
    assert found.box.tolist() == [2, 2, 4, 4]
    with pytest.raises(ValueError, match="polarity"):
        tokencut(features @ features.T, grid, polarity="peak")


def test_orient_maps_flips_only_inverted_maps():
    m = torch.ones(1, 6, 6)
    m[0, 2:4, 2:4] = 0.0  # reference polarity: the object (centre) receives little attention -> score 1 - m high
    raw = torch.cat([m, 1 - m])
    attention = torch.full((2, 6, 6), 0.01)
    attention[:, 2:4, 2:4] = 0.1  # [CLS] attends to the object in both images
    for rule, extra in (("attention", {"attention": attention}), ("border", {})):
        maps, flipped = orient_maps(raw, rule=rule, **extra)
        assert flipped.tolist() == [False, True], rule
        assert torch.equal(maps[0], maps[1]) and maps[0, 2:4, 2:4].eq(1).all() and maps[0].sum() == 4
    with pytest.raises(ValueError, match="cls_attention"):
        orient_maps(raw)


def test_cls_attention_matches_a_direct_softmax(tiny_reg_dir, rng_image):
    from grounding.tower.backbone import RegisterViT

    out = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 32})([rng_image()])
    q, k = out.q[-1][0].double(), out.k[-1][0].double()  # (H, T, d)
    expected = torch.stack([torch.softmax(q[h, 0] @ k[h].T / q.shape[-1] ** 0.5, -1) for h in range(len(q))])
    expected = expected[:, out.num_prefix_tokens:].mean(0).view(out.grid)
    torch.testing.assert_close(cls_attention(out)[0].double(), expected, rtol=1e-5, atol=1e-7)


def offset_tower(tmp_path, offset: float = 2.0):
    """A tiny register ViT whose tokens are +u on a white square and -u elsewhere, with q/k/v = token + b for one
    shared bias b (|b| = offset |u|): every key cosine is above TokenCut's tau, as on the shipped DINOv2-S/14."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from grounding.tower.backbone import RegisterViT
    from grounding.tower.capture import find_projections

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, patch_size=8, image_size=64, num_register_tokens=4)
    model = Dinov2WithRegistersModel(config)
    u = torch.randn(32)
    u = u - u.mean()
    bias = torch.randn(32)
    bias = offset * bias / bias.norm() * u.norm()
    with torch.no_grad():
        conv = model.embeddings.patch_embeddings.projection
        conv.weight.zero_()
        conv.weight[:, 0] = u[:, None, None] / 64  # red channel average of the patch -> +-u
        conv.bias.zero_()
        model.embeddings.position_embeddings.zero_()
        for projections in find_projections(model).values():
            for proj in projections:
                proj.weight.copy_(torch.eye(32) + 0.05 * torch.randn(32, 32))
                proj.bias.copy_(bias)
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.fill_(1e-3)
            layer.layer_scale2.lambda1.fill_(1e-3)
    model.save_pretrained(tmp_path)
    return RegisterViT.from_pretrained(str(tmp_path), preprocess={"size": (64, 64)})


def test_offset_keys_defeat_the_references_and_the_adaptive_methods_find_the_object(tmp_path):
    from PIL import Image

    from eval.corloc import iou
    from grounding.objects.object_dino import ObjectDINO

    out = offset_tower(tmp_path)([Image.fromarray(_square_image())])
    keys = torch.nn.functional.normalize(out.patches(out.k[-1])[0].permute(1, 0, 2).flatten(1), dim=-1)
    assert float((keys @ keys.T).min()) > 0.2  # the reference graph is complete
    truth = torch.tensor([[48.0, 32.0, 112.0, 80.0]])
    od = {"object_dino": ObjectDINO(k=2, restarts=3)}
    for method in ("lost", "tokencut", "object-dino"):
        assert bool(discover(method, out, **od).degenerate[0]), method
    for method in ("lost-centred", "tokencut-adaptive", "object-dino-adaptive"):
        found = discover(method, out, **od)
        assert not bool(found.degenerate[0]), method
        assert float(iou(found.boxes[0], truth).max()) >= 0.5, (method, found.boxes[0])
    # an explicit tau reaches the adaptive methods only when it leaves a graph: here it does
    found = discover("tokencut-adaptive", out, tau=0.999)
    assert not bool(found.degenerate[0])
    assert DEFAULT_METHOD in DISCOVERY_METHODS


def _square_image():
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    image[32:80, 48:112] = 255  # rows 2..4, cols 3..6 of the 8x8 grid after resizing to 64x64
    return image


# ---------------------------------------------------------------- DINO-seg sees q/k as attention does (RoPE)
def test_dinoseg_rotates_pre_rotary_dinov3_captures(tiny_dinov3_dir, rng_image):
    from grounding.tower.backbone import RegisterViT

    pre = RegisterViT.from_pretrained(tiny_dinov3_dir, preprocess={"short_side": 40})
    post = RegisterViT.from_pretrained(tiny_dinov3_dir, qk_position="post_rope", preprocess={"short_side": 40})
    image = rng_image(40, 56)
    a, b = pre([image]), post([image])
    q, k = attention_qk(a, tower=pre)
    torch.testing.assert_close(q, b.q[-1].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, b.k[-1].float(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.k[-1], b.k[-1])  # the raw pre-rotary capture is not what attention used
    q_post, k_post = attention_qk(b, tower=post)  # already post-rotary: returned as captured
    assert torch.equal(q_post, b.q[-1].float()) and torch.equal(k_post, b.k[-1].float())
    for head in range(a.num_heads):
        via_pre = discover("dinoseg", a, head=head, tower=pre)
        via_post = discover("dinoseg", b, head=head)
        assert torch.equal(via_pre.masks, via_post.masks) and torch.equal(via_pre.boxes, via_post.boxes)
        # reference check: [CLS] attention from the post-rotary capture, top 60 % mass, largest component
        attention = torch.softmax(b.q[-1][0, head, :1].float() @ b.k[-1][0, head].float().T / 4.0, -1)[0]
        assert torch.equal(dinoseg(attention[b.num_prefix_tokens:], b.grid).mask, via_post.masks[0])
