"""Dense descriptors: strided towers against unstrided runs and hand-built embeddings, facets against per-head hooks,
log-binning against a per-position loop, and the applications (PCA, co-segmentation, parts, correspondences) on
planted data and tiny towers."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grounding import RegisterViT
from grounding.descriptors.correspond import CorrespondenceConfig, best_buddies, correspondences
from grounding.descriptors.cosegment import CosegmentConfig, cosegment
from grounding.descriptors.pca import pca_project, pca_rgb
from grounding.descriptors import DenseExtractor, facet_descriptors, log_bin, saliency_map
from grounding.tower.attention import strided_rope
from grounding.objects.object_dino import ObjectDINO
from grounding.descriptors.part_cosegment import PartsConfig, part_cosegment


def pixels(height=32, width=48, batch=2, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def tower_state(tower):
    model = tower.model
    embeddings = getattr(model, "embeddings", None)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return (tower.patch_conv().stride, hooks, sorted(vars(embeddings)) if embeddings is not None else None,
            {k: v.clone() for k, v in model.state_dict().items()})


def same_state(a, b):
    return a[:3] == b[:3] and all(torch.equal(a[3][k], b[3][k]) for k in a[3])


@pytest.fixture(scope="module")
def towers(tiny_reg_dir, tiny_dinov2_dir, tiny_dinov3_dir, tiny_timm_dir):
    return {"registers": RegisterViT.from_pretrained(tiny_reg_dir), "dinov2": RegisterViT.from_pretrained(tiny_dinov2_dir),
            "dinov3": RegisterViT.from_pretrained(tiny_dinov3_dir), "timm": RegisterViT.from_pretrained(tiny_timm_dir)}


def sizes_for(tower):
    return (4 * tower.patch_size, 6 * tower.patch_size)


# ---------------------------------------------------------------- the strided tower
@pytest.mark.parametrize("name", ["registers", "dinov2", "dinov3", "timm"])
def test_stride_equal_to_patch_size_is_exactly_the_tower(towers, name):
    tower = towers[name]
    x = pixels(*sizes_for(tower))
    plain = tower(x, output_hidden_states=True)
    dense = DenseExtractor(tower)(x, output_hidden_states=True)
    assert dense.grid == plain.grid and dense.step == tower.patch_size
    for field in ("q", "k", "v", "last_hidden_state", "patch_scale"):
        assert torch.equal(getattr(dense, field), getattr(plain, field)), field
    assert all(torch.equal(a, b) for a, b in zip(dense.hidden_states, plain.hidden_states))


@pytest.mark.parametrize("name", ["registers", "dinov2", "dinov3", "timm"])
def test_strided_run_has_the_finer_grid_and_leaves_the_tower_unchanged(towers, name):
    tower = towers[name]
    p = tower.patch_size
    stride = p // 2
    height, width = sizes_for(tower)
    x = pixels(height, width)
    before, reference = tower_state(tower), tower(x)
    out = DenseExtractor(tower, stride)(x)
    grid = (1 + (height - p) // stride, 1 + (width - p) // stride)
    assert out.grid == grid and out.step == stride
    assert out.q.shape[-2] == tower.num_prefix_tokens + grid[0] * grid[1]
    assert torch.isfinite(out.last_hidden_state).all()
    torch.testing.assert_close(out.patch_scale[0], torch.tensor([width / grid[1], height / grid[0]]))
    assert same_state(before, tower_state(tower))
    after = tower(x)
    assert torch.equal(after.q, reference.q) and torch.equal(after.last_hidden_state, reference.last_hidden_state)


@pytest.mark.parametrize("name,antialias", [("dinov2", False), ("registers", True)])
def test_strided_embeddings_equal_a_hand_built_reference(towers, name, antialias):
    """conv with the smaller stride + the position table resized (bicubic) to the strided grid."""
    tower = towers[name]
    model, p, stride = tower.model, tower.patch_size, 4
    x = pixels(32, 48, batch=1)
    seen = []
    handle = model.embeddings.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        DenseExtractor(tower, stride)(x)
    finally:
        handle.remove()
    grid_h, grid_w = 1 + (32 - p) // stride, 1 + (48 - p) // stride
    conv = model.embeddings.patch_embeddings.projection
    patches = F.conv2d(x, conv.weight, conv.bias, stride=stride).flatten(2).transpose(1, 2)  # (1, N, C)
    table = model.embeddings.position_embeddings  # (1, 1 + n*n, C)
    side = int(math.isqrt(table.shape[1] - 1))
    grid_table = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid_table, size=(grid_h, grid_w), mode="bicubic", align_corners=False,
                            antialias=antialias).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    expected_patches = patches + resized
    expected_cls = model.embeddings.cls_token[:, 0] + table[:, 0]
    got = seen[0]
    prefix = tower.num_prefix_tokens
    torch.testing.assert_close(got[:, prefix:], expected_patches, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, 0], expected_cls)


def test_strided_rope_is_the_models_rope_at_the_shared_centres(towers):
    tower = towers["dinov3"]
    rope, p = tower.model.rope_embeddings, tower.patch_size
    shape = torch.empty(1, 3, 32, 48)
    cos, sin = rope(shape)  # (4 * 6, d)
    same_cos, same_sin = strided_rope(rope.inv_freq, (32, 48), p, p)
    torch.testing.assert_close(same_cos, cos)
    torch.testing.assert_close(same_sin, sin)
    fine_cos, _ = strided_rope(rope.inv_freq, (32, 48), p, 2)  # every 4th cell sits on an unstrided centre
    grid = (1 + (32 - p) // 2, 1 + (48 - p) // 2)
    torch.testing.assert_close(fine_cos.view(*grid, -1)[::4, ::4].reshape(-1, cos.shape[-1]), cos)


def test_strided_dinov3_rotates_captured_q_k_at_the_strided_centres(tiny_dinov3_dir):
    from grounding.tower.attention import attention_qk

    pre = RegisterViT.from_pretrained(tiny_dinov3_dir, qk_position="pre_rope")
    post = RegisterViT.from_pretrained(tiny_dinov3_dir, qk_position="post_rope")
    x = pixels(32, 48)
    out_pre, out_post = DenseExtractor(pre, 4)(x), DenseExtractor(post, 4)(x)
    q, k = attention_qk(out_pre, pre)
    torch.testing.assert_close(q, out_post.q[-1].float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, out_post.k[-1].float(), atol=1e-5, rtol=1e-5)


def test_bad_stride_and_layer_give_clear_errors(towers):
    tower = towers["registers"]
    with pytest.raises(ValueError, match="must divide the patch size 8"):
        DenseExtractor(tower, 3)
    with pytest.raises(ValueError, match="must divide"):
        DenseExtractor(tower, 16)
    extractor = DenseExtractor(tower, 4)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        extractor.descriptors(pixels(), layer=2)
    with pytest.raises(ValueError, match="facet must be one of"):
        extractor.descriptors(pixels(), facet="attn")
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        facet_descriptors(extractor(pixels()), facet="token")


# ---------------------------------------------------------------- facets against per-head hooks
def _hf_reference_facets(tower, x, layer, stride):
    """The reference extractor's recipe: hook the layer, recompute each projection, split heads one at a time."""
    attention = tower.model.encoder.layer[layer].attention
    block = tower.model.encoder.layer[layer]
    grabbed = {}

    def grab_input(_module, args, kwargs):
        grabbed["input"] = args[0] if args else kwargs["hidden_states"]

    def grab_output(_module, _inputs, output):
        grabbed["token"] = output[0] if isinstance(output, tuple) else output

    handles = [attention.register_forward_pre_hook(grab_input, with_kwargs=True),
               block.register_forward_hook(grab_output)]
    try:
        DenseExtractor(tower, stride)(x)
    finally:
        for handle in handles:
            handle.remove()
    hidden = grabbed["input"]
    heads, prefix = tower.num_heads, tower.num_prefix_tokens
    result = {"token": grabbed["token"][:, prefix:]}
    for facet, proj in (("query", attention.q_proj), ("key", attention.k_proj), ("value", attention.v_proj)):
        with torch.inference_mode():
            full = proj(hidden)[:, prefix:]  # (B, N, H*d)
        d = full.shape[-1] // heads
        desc = torch.empty(full.shape)
        for h in range(heads):  # one head at a time, interleaved as channel i * H + h
            head = full[..., h * d : (h + 1) * d]
            for i in range(d):
                desc[..., i * heads + h] = head[..., i]
        result[facet] = desc
    return result


@pytest.mark.parametrize("layer", [0, 1])
def test_facets_equal_per_head_hooks(towers, layer):
    tower = towers["registers"]
    x = pixels(32, 40)
    extractor = DenseExtractor(tower, 4)
    reference = _hf_reference_facets(tower, x, layer, 4)
    grid = extractor(x).grid
    for facet in ("key", "query", "value", "token"):
        got = extractor.descriptors(x, layer=layer, facet=facet)
        assert got.shape[:3] == (2, *grid)
        torch.testing.assert_close(got.reshape(2, -1, got.shape[-1]), reference[facet].float(), atol=1e-5, rtol=1e-5)
    negative = extractor.descriptors(x, layer=layer - 2, facet="key")
    torch.testing.assert_close(negative, extractor.descriptors(x, layer=layer, facet="key"))


def test_timm_facets_equal_the_fused_qkv_split_per_head(towers):
    tower = towers["timm"]
    x = pixels(28, 42, batch=1)
    block = tower.model.blocks[1]
    grabbed = {}

    def grab_input(_module, inputs, _output):
        grabbed["input"] = inputs[0]

    handle = block.attn.register_forward_hook(grab_input)
    try:
        got = DenseExtractor(tower, 7).descriptors(x, layer=1, facet="key")
    finally:
        handle.remove()
    hidden = grabbed["input"]
    b, n, c = hidden.shape
    with torch.inference_mode():
        qkv = block.attn.qkv(hidden).reshape(b, n, 3, tower.num_heads, c // tower.num_heads).permute(2, 0, 3, 1, 4)
    keys = qkv[1][:, :, tower.num_prefix_tokens :]  # (B, H, N, d)
    expected = keys.permute(0, 2, 3, 1).flatten(-2)  # (B, N, d*H): head fastest, as the reference
    torch.testing.assert_close(got.reshape(1, -1, got.shape[-1]), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- log-binning
def reference_log_bin(x: np.ndarray, hierarchy: int) -> np.ndarray:
    """Per position, per bin: explicit window averages (valid cells only) and clamped bin centres."""
    batch, h, w, c = x.shape
    pools = []
    for k in range(hierarchy):
        size, half = 3**k, 3**k // 2
        pool = np.zeros_like(x)
        for y in range(h):
            for xx in range(w):
                window = x[:, max(0, y - half) : y + half + 1, max(0, xx - half) : xx + half + 1]
                pool[:, y, xx] = window.reshape(batch, -1, c).mean(1)
        pools.append(pool)
    out = np.zeros((batch, h, w, (1 + 8 * hierarchy) * c), dtype=x.dtype)
    for y in range(h):
        for xx in range(w):
            part = 0
            for k in range(hierarchy):
                size = 3**k
                for i in range(y - size, y + size + 1, size):
                    for j in range(xx - size, xx + size + 1, size):
                        if i == y and j == xx and k != 0:
                            continue
                        ci, cj = min(max(i, 0), h - 1), min(max(j, 0), w - 1)
                        out[:, y, xx, part * c : (part + 1) * c] = pools[k][:, ci, cj]
                        part += 1
    return out


@pytest.mark.parametrize("grid,hierarchy", [((5, 7), 2), ((2, 3), 2), ((1, 1), 2), ((4, 6), 3), ((11, 12), 3), ((3, 4), 1)])
def test_log_bin_equals_the_per_position_reference(grid, hierarchy):
    x = torch.randn(2, *grid, 5, generator=torch.Generator().manual_seed(sum(grid)), dtype=torch.float64)
    got = log_bin(x, hierarchy)
    assert got.shape == (2, *grid, (1 + 8 * hierarchy) * 5)
    np.testing.assert_allclose(got.numpy(), reference_log_bin(x.numpy(), hierarchy), rtol=1e-12, atol=1e-12)


def test_log_bin_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, h, w, C\)"):
        log_bin(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="hierarchy"):
        log_bin(torch.zeros(1, 3, 4, 5), hierarchy=0)


def test_binned_descriptors_from_the_extractor(towers):
    extractor = DenseExtractor(towers["registers"], 4)
    x = pixels(16, 24, batch=1)  # a 3 x 5 grid: smaller than the 3^1 bins' reach at its border
    plain = extractor.descriptors(x, facet="key")
    binned = extractor.descriptors(x, facet="key", bin=True)
    assert plain.shape[1:3] == (3, 5) and binned.shape[-1] == 17 * plain.shape[-1]
    torch.testing.assert_close(binned, log_bin(plain))
    assert torch.isfinite(binned).all()


# ---------------------------------------------------------------- saliency
def test_saliency_is_cls_attention_min_max_per_image(towers):
    tower = towers["registers"]
    extractor = DenseExtractor(tower, 4)
    x = pixels(32, 40)
    out = extractor(x)
    for heads in (None, [1], [0, 1]):
        got = saliency_map(out, tower, heads)
        q, k = out.q[-1].float(), out.k[-1].float()  # (B, H, T, d)
        chosen = range(tower.num_heads) if heads is None else heads
        maps = []
        for b in range(2):
            total = torch.zeros(out.grid[0] * out.grid[1])
            for h in chosen:
                logits = k[b, h] @ q[b, h, 0] / math.sqrt(q.shape[-1])  # (T,)
                total += torch.softmax(logits, 0)[tower.num_prefix_tokens :] / len(chosen)
            maps.append((total - total.min()) / (total.max() - total.min()))
        torch.testing.assert_close(got, torch.stack(maps).view(2, *out.grid), atol=1e-5, rtol=1e-5)
        assert float(got.amin()) == 0.0 and float(got.amax()) == pytest.approx(1.0)
    torch.testing.assert_close(extractor.saliency(x, heads=[1]), saliency_map(out, tower, [1]))
    with pytest.raises(ValueError, match="saliency heads"):
        saliency_map(out, tower, [2])


def test_flat_attention_gives_zero_saliency_not_nan(towers):
    tower = towers["registers"]
    out = DenseExtractor(tower, 4)(pixels(16, 16, batch=1))
    keys = out.k.clone()
    keys[-1][..., tower.num_prefix_tokens :, :] = keys[-1][..., -1:, :]  # every patch key alike
    got = saliency_map(dataclasses.replace(out, k=keys), tower)
    assert torch.equal(got, torch.zeros_like(got))


# ---------------------------------------------------------------- Object-DINO on a strided tower
def test_object_dino_runs_on_the_strided_grid(towers, rng_image):
    from grounding.objects.discovery import discover

    tower = RegisterViT.from_pretrained(towers["registers"].config.model, preprocess={"short_side": 32})
    images = [rng_image(40, 56)]
    plain, strided = tower(images), DenseExtractor(tower, 4)(images)
    od = ObjectDINO(k=2, restarts=2)
    assert torch.equal(od.object_maps(DenseExtractor(tower)(images)), od.object_maps(plain))
    maps = od.object_maps(strided)
    assert maps.shape == (1, *strided.grid) and strided.grid == (2 * plain.grid[0] - 1, 2 * plain.grid[1] - 1)
    full = od.object_maps(strided, upsample=True)[0]
    assert full.shape == (40, 56) and torch.isfinite(full).all()
    box = discover("object-dino-adaptive", strided, object_dino=od).boxes[0]
    assert 0 <= box[0] < box[2] <= 56 and 0 <= box[1] < box[3] <= 40


# ---------------------------------------------------------------- PCA
def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    for points, dim in ((50, 6), (6, 50)):
        x = rng.standard_normal((points, dim)) @ np.diag(np.linspace(3, 0.5, dim)) if points > dim else \
            rng.standard_normal((points, dim))
        centred = x - x.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        n = min(3, points, dim)
        expected = u[:, :n] * s[:n]
        signs = np.sign(expected[np.abs(expected).argmax(0), range(n)])  # svd_flip's rule
        scores, variance = pca_project(torch.from_numpy(x).float(), 3)
        np.testing.assert_allclose(scores.numpy(), expected * signs, atol=1e-4)
        np.testing.assert_allclose(variance.numpy(), s[:n] ** 2 / (points - 1), rtol=1e-4)


def test_pca_rgb_ranges_and_tiny_inputs():
    maps = [torch.randn(4, 5, 8), torch.randn(3, 3, 8)]
    for joint in (True, False):
        pictures = pca_rgb(maps, joint=joint)
        assert [p.shape for p in pictures] == [(4, 5, 3), (3, 3, 3)]
        assert all(float(p.min()) >= 0 and float(p.max()) <= 1 for p in pictures)
    single = pca_rgb([torch.randn(1, 2, 8)])[0]  # two points: one component, the rest zero
    assert torch.isfinite(single).all() and single.shape == (1, 2, 3)
    flat = pca_rgb([torch.ones(3, 3, 4)])[0]
    assert torch.equal(flat, torch.zeros(3, 3, 3))


# ---------------------------------------------------------------- co-segmentation and parts on planted data
def planted_images(count=3, seed=0, parts=False, grid=(8, 10)):
    """Background descriptors near one direction, a foreground square near another (with two halves when
    `parts`); saliency high on the square."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.eye(16)
    descriptors, saliency, masks = [], [], []
    for i in range(count):
        h, w = grid[0] + i, grid[1]
        d = directions[0] + 0.05 * torch.randn(h, w, 16, generator=g)
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[2 : h - 2, 3 : w - 2] = True
        d[mask] = directions[1] + 0.05 * torch.randn(int(mask.sum()), 16, generator=g)
        if parts:
            left = mask.clone()
            left[:, (3 + w - 2) // 2 :] = False
            d[left] = directions[2] + 0.05 * torch.randn(int(left.sum()), 16, generator=g)
        s = torch.where(mask, 0.9, 0.01) + 0.01 * torch.rand(h, w, generator=g)
        descriptors.append(d)
        saliency.append(s)
        masks.append(mask)
    return descriptors, saliency, masks


def reference_votes(labels, saliency, k, threshold):
    votes = np.zeros(k, dtype=int)
    for lab, sal in zip(labels, saliency):
        lab, sal = lab.numpy().ravel(), sal.numpy().ravel()
        for c in range(k):
            if (lab == c).any() and sal[lab == c].mean() > threshold:
                votes[c] += 1
    return votes


def test_cosegmentation_finds_the_planted_objects():
    descriptors, saliency, masks = planted_images()
    out = cosegment(descriptors, saliency, CosegmentConfig(sample_interval=3))
    assert out.k >= 2 and not out.empty
    for got, expected in zip(out.masks, masks):
        assert torch.equal(got, expected)
    assert out.votes.tolist() == reference_votes(out.labels, saliency, out.k, 0.065).tolist()
    assert out.salient.tolist() == (out.votes >= math.ceil(3 * 0.75)).tolist()
    assert all(b <= a for a, b in zip(out.objectives, out.objectives[1:]))


def test_cosegmentation_of_one_image_and_of_no_salient_region():
    descriptors, saliency, masks = planted_images(count=1)
    one = cosegment(descriptors, saliency, CosegmentConfig(sample_interval=2))
    assert torch.equal(one.masks[0], masks[0])
    none = cosegment(descriptors, [torch.zeros_like(s) for s in saliency])
    assert none.empty and not any(bool(m.any()) for m in none.masks)
    tiny = cosegment([torch.randn(1, 1, 4)], [torch.ones(1, 1)])  # one patch: one cluster, foreground
    assert tiny.k == 1 and bool(tiny.masks[0].all())
    uniform = cosegment([torch.ones(3, 3, 4)], [torch.full((3, 3), 0.5)])  # nothing to split: stops at k = 1
    assert uniform.k == 1 and torch.isfinite(torch.tensor(uniform.objectives)).all()
    with pytest.raises(ValueError, match="same grid"):
        cosegment([torch.randn(2, 3, 4)], [torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="NaN"):
        cosegment([torch.full((2, 2, 4), float("nan"))], [torch.zeros(2, 2)])


def test_part_cosegmentation_splits_the_planted_halves():
    descriptors, saliency, masks = planted_images(parts=True)
    out = part_cosegment(descriptors, saliency, PartsConfig(num_parts=2, cosegment=CosegmentConfig(sample_interval=2)))
    for parts, mask in zip(out.parts, masks):
        assert torch.equal(parts >= 0, mask)
        half = (3 + mask.shape[1] - 2) // 2
        left, right = parts[:, :half][mask[:, :half]], parts[:, half:][mask[:, half:]]
        assert len(left.unique()) == 1 and len(right.unique()) == 1 and int(left[0]) != int(right[0])
    nothing = part_cosegment(descriptors, [torch.zeros_like(s) for s in saliency])
    assert all(bool((p == -1).all()) for p in nothing.parts) and nothing.num_parts == 0


# ---------------------------------------------------------------- correspondences
def test_best_buddies_equal_the_full_matrix_and_ignore_chunking():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 8, generator=g), torch.randn(29, 8, generator=g)
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    nn1, nn2 = sim.argmax(1), sim.argmax(0)
    expected = nn2[nn1] == torch.arange(37)
    for chunk in (5, 37, 100):
        buddies, nearest, similarity = best_buddies(a, b, chunk)
        assert torch.equal(buddies, expected) and torch.equal(nearest, nn1)
        torch.testing.assert_close(similarity, sim.max(1).values)


def test_correspondences_recover_a_planted_shift():
    g = torch.Generator().manual_seed(1)
    first = torch.randn(9, 10, 12, generator=g)
    second = torch.randn(9, 10, 12, generator=g)
    second[1:, 2:] = first[:-1, :-2]  # image 2 is image 1 moved down by 1 and right by 2
    s1 = torch.zeros(9, 10)
    s1[2:7, 2:7] = torch.rand(5, 5, generator=g) * 0.5 + 0.5
    s2 = torch.zeros(9, 10)
    s2[1:, 2:] = s1[:-1, :-2]
    found = correspondences(first, second, s1, s2, CorrespondenceConfig(num_pairs=6))
    assert len(found) == 6 and found.buddies == 25
    assert torch.equal(found.cells2, found.cells1 + torch.tensor([1, 2]))
    assert bool((found.saliency[:-1] >= found.saliency[1:]).all())
    assert len({tuple(c) for c in found.cells1.tolist()}) == 6
    torch.testing.assert_close(found.similarity, torch.ones(6))
    few = correspondences(first, second, s1, s2, CorrespondenceConfig(num_pairs=40))
    assert len(few) <= 25 and len(few) >= 1
    none = correspondences(first, second, torch.zeros(9, 10), s2)
    assert len(none) == 0 and none.cells1.shape == (0, 2)


def test_descriptions_map_cells_to_patch_centres(towers, rng_image):
    tower = RegisterViT.from_pretrained(towers["registers"].config.model, preprocess={"short_side": 32})
    extractor = DenseExtractor(tower, 4)
    described = extractor.describe([rng_image(40, 60), rng_image(64, 48, seed=1)], facet="key", bin=True)
    first = described[0]
    assert first.descriptors.shape[:2] == first.saliency.shape == first.grid
    assert first.image_size == (40, 60) and first.stride == 4
    centres = first.centres(torch.tensor([[0, 0], [first.grid[0] - 1, first.grid[1] - 1]]))
    # input 32 x 48 for a 40 x 60 image: 1.25 original pixels per input pixel
    torch.testing.assert_close(centres, torch.tensor([[4 * 1.25, 4 * 1.25], [44 * 1.25, 28 * 1.25]]))
    found = correspondences(described[0].descriptors, described[1].descriptors, described[0].saliency,
                            described[1].saliency, CorrespondenceConfig(num_pairs=3, threshold=0.0))
    assert torch.isfinite(found.similarity).all()


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 56), (48, 48), (56, 40)]):
        array = (rng.random((*size, 3)) * 60).astype(np.uint8)
        array[10:30, 12:36] = [200, 40 + 30 * i, 40]
        Image.fromarray(array).save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize("command", ["pca", "cosegment", "parts", "correspond"])
def test_descriptors_cli_writes_pictures_and_json(tiny_reg_dir, photo_dir, tmp_path, command, capsys):
    from eval.cli import main

    out = tmp_path / command
    code = main(["descriptors", command, "--model", tiny_reg_dir, "--images", str(photo_dir), "--out", str(out),
                 "--short-side", "32", "--stride", "4", "--device", "cpu", "--threshold", "0.0"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / f"{command}.json").read_text())
    assert record["stride"] == 4 and record["images"]
    pictures = list(out.rglob("*.png"))
    assert pictures and all(Image.open(p).size[0] > 0 for p in pictures)


def test_descriptors_cli_rejects_a_bad_stride(tiny_reg_dir, photo_dir, tmp_path, capsys):
    from eval.cli import main

    code = main(["descriptors", "pca", "--model", tiny_reg_dir, "--images", str(photo_dir), "--out", str(tmp_path),
                 "--stride", "3", "--device", "cpu"])
    assert code == 2 and "must divide the patch size" in capsys.readouterr().err


def test_discover_with_a_stride(tiny_reg_dir, photo_dir, tmp_path):
    from eval.cli import main

    out = tmp_path / "discover"
    assert main(["discover", "--model", tiny_reg_dir, "--images", str(photo_dir), "--out", str(out), "--short-side",
                 "32", "--stride", "4", "--k", "2", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["map_size"][0] >= 7 for r in records)


def test_demo_descriptor_section(tiny_reg_dir, photo_dir, tmp_path):
    import re
    import shutil

    from eval.corloc import CorLocItem
    from eval.descriptors_demo import report_lines, run_descriptors_demo

    photos = tmp_path / "photos"
    shutil.copytree(photo_dir, photos)
    (photos / "objects.json").write_text(json.dumps({"img0.png": ["cat"], "img1.png": ["cat", "person"],
                                                     "img2.png": ["apple"]}))
    items = [CorLocItem(p.name, p, [[0, 0, 4, 4]]) for p in sorted(photos.glob("*.png"))]
    tower = RegisterViT.from_pretrained(tiny_reg_dir)
    result = run_descriptors_demo(tower, items, photos, tmp_path / "out", stride=4, short_side=32)
    assert result["pca"] == ["pca/img0.png", "pca/img1.png"]  # the animal photos
    assert [e["image"] for e in result["cosegment"]["images"]] == ["img0.png", "img1.png"]
    assert result["correspond"]["images"] == ["img0.png", "img1.png"]
    text = "\n".join(report_lines(result))
    pictures = re.findall(r"\]\((descriptors/[^)]+)\)", text)
    assert len(pictures) == 5 and all((tmp_path / "out" / p).is_file() for p in pictures)
    assert tower.patch_conv().stride == (8, 8)  # the demo's tower is left as it was
