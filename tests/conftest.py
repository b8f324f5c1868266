"""Shared fixtures: tiny random-weight towers (hidden 32, 2 layers) saved to disk by the tests themselves."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
            image_size=32)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _save_hf(directory, config_cls, model_cls, **overrides):
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**TINY, **overrides}))
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_reg_dir(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    return _save_hf(tmp_path_factory.mktemp("reg"), Dinov2WithRegistersConfig, Dinov2WithRegistersModel,
                    num_register_tokens=4)


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    return _save_hf(tmp_path_factory.mktemp("dinov2"), Dinov2Config, Dinov2Model)


@pytest.fixture(scope="session")
def tiny_dinov3_dir(tmp_path_factory):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    return _save_hf(tmp_path_factory.mktemp("dinov3"), DINOv3ViTConfig, DINOv3ViTModel, num_register_tokens=4)


@pytest.fixture(scope="session")
def tiny_timm_dir(tmp_path_factory):
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    args = dict(embed_dim=32, depth=2, num_heads=2, img_size=28)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, **args)
    directory = tmp_path_factory.mktemp("timm")
    save_for_hf(model, directory, model_args=args, safe_serialization=True)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LLaVA (tests/tiny_vlm.py) and its processor, saved once per session."""
    from tiny_vlm import make_tiny_llava

    model, processor = make_tiny_llava()
    directory = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def rng_image():
    def make(height=50, width=70, seed=0):
        rng = np.random.default_rng(seed)
        return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))

    return make


@pytest.fixture(scope="module")
def tower(tiny_reg_dir):
    """The tiny register tower at a 32-pixel short side (modules that need another size define their own)."""
    from grounding import RegisterViT

    return RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 32})
