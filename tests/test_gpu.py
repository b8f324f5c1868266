"""CUDA checks (skipped without a GPU): the same results on the device as on the CPU."""

import numpy as np
import pytest
import torch
from PIL import Image

from grounding import ObjectDINO, ObjectGuidance, RegisterViT
from tiny_vlm import make_tiny_llava

pytestmark = pytest.mark.gpu


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)) for _ in range(2)]


def test_tower_and_maps_on_cuda_match_cpu(tiny_reg_dir):
    images = _images()
    cpu = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"size": (48, 64)})(images)
    for dtype, tolerance in (("float32", 1e-4), ("bfloat16", 5e-2)):
        gpu = RegisterViT.from_pretrained(tiny_reg_dir, device="cuda", dtype=dtype, preprocess={"size": (48, 64)})(images)
        torch.testing.assert_close(gpu.q.float().cpu(), cpu.q, rtol=tolerance, atol=tolerance)
    od = ObjectDINO(k=2, restarts=3)
    gpu32 = RegisterViT.from_pretrained(tiny_reg_dir, device="cuda", preprocess={"size": (48, 64)})(images)
    torch.testing.assert_close(od.object_maps(gpu32).cpu(), od.object_maps(cpu), rtol=1e-3, atol=1e-3)


def test_guided_generate_on_cuda_matches_cpu(tiny_reg_dir):
    images, prompts = _images(), ["is there a dog ?", "is there a cat in the image ?"]
    answers = {}
    for device in ("cpu", "cuda"):
        model, processor = make_tiny_llava()
        tower = RegisterViT.from_pretrained(tiny_reg_dir, device=device, preprocess={"short_side": 32})
        guide = ObjectGuidance(tower, processor, mode="highlight", object_dino={"k": 2, "restarts": 2})
        answers[device] = guide.generate(model.to(device), images, prompts, max_new_tokens=6, do_sample=False)
    assert answers["cuda"] == answers["cpu"]
