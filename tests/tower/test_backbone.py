import numpy as np
import pytest
import torch
from PIL import Image

from grounding import ImageError, RegisterViT, WeightsNotFoundError
from grounding.tower.capture import QKVCollector, attention_capture, find_projections, projection_capture


def test_prefix_tokens_are_derived(tiny_reg_dir, tiny_dinov2_dir, tiny_timm_dir):
    assert RegisterViT.from_pretrained(tiny_reg_dir).num_prefix_tokens == 1 + 4
    assert RegisterViT.from_pretrained(tiny_dinov2_dir).num_prefix_tokens == 1
    timm_tower = RegisterViT.from_pretrained(tiny_timm_dir)
    assert timm_tower.backend == "timm" and timm_tower.num_prefix_tokens == 5


def test_attention_capture_equals_projection_outputs(tiny_reg_dir, rng_image):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, capture="attention", preprocess={"short_side": 40})
    pixels, _, _ = tower.preprocess([rng_image(), rng_image(seed=1)])
    by_attention, by_hooks = QKVCollector(2), QKVCollector(2)
    with attention_capture(tower.model, by_attention):
        tower.model(pixel_values=pixels)
    with projection_capture(tower.model, by_hooks):
        tower.model(pixel_values=pixels)
    for a, b in zip(by_attention.stacked(2), by_hooks.stacked(2)):
        torch.testing.assert_close(a, b)
    # reference: the projection Linear applied to the layer's normed input, by hand
    layer0 = tower.model.encoder.layer[0]
    normed = layer0.norm1(tower.model.embeddings(pixels))
    proj = find_projections(tower.model)["q"][0]
    manual = proj(normed).view(2, normed.shape[1], 2, 16).transpose(1, 2)
    torch.testing.assert_close(by_attention.q[0], manual)
    assert tower.model.config._attn_implementation == "sdpa"  # switched back


def test_collector_with_known_layer_count_fills_buffers_equal_to_stacking(tiny_reg_dir, rng_image):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, capture="attention", preprocess={"short_side": 40})
    pixels, _, _ = tower.preprocess([rng_image(), rng_image(seed=1)])
    plain, buffered = QKVCollector(2), QKVCollector(2, num_layers=2)
    for collector in (plain, buffered):
        with attention_capture(tower.model, collector):
            tower.model(pixel_values=pixels)
    for a, b in zip(plain.stacked(2), buffered.stacked(2)):
        assert torch.equal(a, b) and b.is_contiguous()
    uneven = QKVCollector(2, num_layers=2)  # layers of different shapes fall back to stacking lists
    uneven.add(*[torch.zeros(1, 2, 3, 4)] * 3)
    uneven.add(*[torch.ones(1, 2, 5, 4)] * 3)
    with pytest.raises(RuntimeError):
        uneven.stacked(2)  # torch.stack refuses different shapes, as before
    with pytest.raises(RuntimeError, match="expected 3"):
        buffered.stacked(3)


def test_final_hidden_states_equal_transformers_model(tiny_reg_dir, rng_image):
    from transformers import Dinov2WithRegistersModel

    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 40})
    reference = Dinov2WithRegistersModel.from_pretrained(tiny_reg_dir).eval()
    images = [rng_image(), rng_image(seed=3)]
    pixels, _, _ = tower.preprocess(images)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state
    out = tower(images)
    torch.testing.assert_close(out.last_hidden_state, expected)
    assert out.q.shape == (2, 2, 2, 5 + out.grid[0] * out.grid[1], 16)


def test_preprocessing_keeps_aspect_and_never_crops(tiny_reg_dir):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 64})
    (content, padded) = tower.input_geometry(100, 300)
    assert content == padded and content[0] == 64 and content[1] == 192
    out = tower([Image.new("RGB", (300, 100), (10, 200, 30))])
    assert out.grid == (8, 24)
    sx, sy = out.patch_scale[0].tolist()
    assert sx * 24 == pytest.approx(300) and sy * 8 == pytest.approx(100)
    pad = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"mode": "pad"})
    (content, padded) = pad.input_geometry(50, 70)
    assert content == (50, 70) and padded == (56, 72)
    assert pad([Image.new("RGB", (70, 50))]).patch_scale[0].tolist() == [8.0, 8.0]


def test_dinov3_pre_and_post_rotary_capture(tiny_dinov3_dir, rng_image):
    pre = RegisterViT.from_pretrained(tiny_dinov3_dir, preprocess={"short_side": 40})
    post = RegisterViT.from_pretrained(tiny_dinov3_dir, qk_position="post_rope", preprocess={"short_side": 40})
    assert pre._capture_mode() == "projection" and post._capture_mode() == "attention"
    a, b = pre([rng_image()]), post([rng_image()])
    assert a.num_prefix_tokens == 5
    torch.testing.assert_close(a.v, b.v)
    # rotary embeddings touch only patch tokens: prefix q equal, patch q differ
    torch.testing.assert_close(a.q[..., :5, :], b.q[..., :5, :])
    assert not torch.allclose(a.patches(a.q), b.patches(b.q))


def test_dinov2_and_timm_towers_run(tiny_dinov2_dir, tiny_timm_dir, rng_image):
    for directory in (tiny_dinov2_dir, tiny_timm_dir):
        tower = RegisterViT.from_pretrained(directory, preprocess={"short_side": 56})
        out = tower([rng_image(56, 84)], output_hidden_states=True)
        assert out.q.shape[0] == 2 and len(out.hidden_states) == 3
        assert out.q.shape[-2] == out.num_prefix_tokens + out.grid[0] * out.grid[1]


def test_timm_capture_matches_fused_qkv(tiny_timm_dir, rng_image):
    tower = RegisterViT.from_pretrained(tiny_timm_dir, preprocess={"short_side": 28})
    out = tower([rng_image(28, 28)])
    block = tower.model.blocks[0]
    pixels, _, _ = tower.preprocess([rng_image(28, 28)])
    x = tower.model._pos_embed(tower.model.patch_embed(pixels))
    qkv = block.attn.qkv(block.norm1(tower.model.norm_pre(x)))  # (B, T, 3C)
    q = qkv.view(1, x.shape[1], 3, 2, 16).permute(2, 0, 3, 1, 4)[0]
    torch.testing.assert_close(out.q[0], q)


def test_bfloat16_tower(tiny_reg_dir, rng_image):
    out = RegisterViT.from_pretrained(tiny_reg_dir, dtype="bfloat16")([rng_image()])
    assert out.q.dtype == torch.bfloat16 and torch.isfinite(out.q.float()).all()


def test_missing_checkpoint_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="facebook/dinov2-with-registers-nonexistent.*local"):
        RegisterViT.from_pretrained("facebook/dinov2-with-registers-nonexistent")


def test_wrong_model_type_is_rejected(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bert"):
        RegisterViT.from_pretrained(str(tmp_path))


def test_odd_images(tiny_reg_dir, tmp_path):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 32})
    gray = Image.fromarray(np.arange(40 * 60, dtype=np.uint8).reshape(40, 60) % 255, "L")
    rgba = Image.new("RGBA", (60, 40), (255, 0, 0, 128))
    sixteen = Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16))
    tiny = Image.new("RGB", (3, 2), (0, 0, 255))
    huge = Image.new("RGB", (6000, 4000), (0, 255, 0))
    for image in (gray, rgba, sixteen, tiny, huge):
        out = tower([image])
        assert torch.isfinite(out.q).all() and min(out.grid) >= 2
    sixteen.save(tmp_path / "deep.png")
    assert RegisterViT.from_pretrained(tiny_reg_dir)([tmp_path / "deep.png"]).grid[0] >= 2
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        tower([tmp_path / "broken.jpg"])
    with pytest.raises(ImageError, match="not found"):
        tower([tmp_path / "missing.png"])
    with pytest.raises(ImageError, match="NaN"):
        tower([np.full((20, 20, 3), np.nan)])
    with pytest.raises(ValueError, match="different inputs"):
        tower([Image.new("RGB", (60, 40)), Image.new("RGB", (40, 60))])
