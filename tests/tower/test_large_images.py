"""Big photos are decoded at the size the caller needs (memory independent of the file's resolution) while
boxes stay in the file's pixels; normal photos are untouched."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.discover import DiscoveryJob, run_discovery
from grounding import RegisterViT
from grounding.images import load_image, original_size, to_original_pixels

ROOT = Path(__file__).parents[2]


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradient with two blobs and fine noise (compresses well, not flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 150 + 50, y / height * 150 + 50, np.full_like(x, 90)], -1)
    pixels[((x - 0.6 * width) / (0.2 * width)) ** 2 + ((y - 0.4 * height) / (0.25 * height)) ** 2 < 1] = (220, 40, 40)
    pixels[((x - 0.25 * width) / (0.1 * width)) ** 2 + ((y - 0.7 * height) / (0.1 * height)) ** 2 < 1] = (30, 200, 60)
    pixels += rng.normal(0, 3, (1, width, 3)).astype(np.float32)  # per-column noise, cheap
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    image = _photo(4096, 2048)
    image.save(root / "big.jpg", quality=92)
    image.save(root / "big.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90 degrees clockwise)
    image.save(root / "rotated.jpg", quality=92, exif=exif)
    return root


@pytest.mark.parametrize("name", ["big.jpg", "big.png"])
def test_decoded_at_the_requested_size(big_files, name):
    image = load_image(big_files / name, max_side=1024)
    assert image.size == (1024, 512) and image.mode == "RGB" and original_size(image) == (4096, 2048)
    full = load_image(big_files / name).resize((1024, 512), Image.BICUBIC)
    difference = np.abs(np.asarray(image, dtype=np.float32) - np.asarray(full, dtype=np.float32))
    assert difference.mean() < 3.0  # the same picture, up to the resampling path
    boxes = to_original_pixels(torch.tensor([[10.0, 20.0, 512.0, 256.0]]), image)
    torch.testing.assert_close(boxes, torch.tensor([[40.0, 80.0, 2048.0, 1024.0]]))


def test_exif_rotation_and_normal_images(big_files, tmp_path):
    rotated = load_image(big_files / "rotated.jpg", max_side=1000)
    assert rotated.size == (500, 1000) and original_size(rotated) == (2048, 4096)
    _photo(640, 480).save(tmp_path / "normal.jpg")
    normal = load_image(tmp_path / "normal.jpg", max_side=1024)
    assert "original_size" not in normal.info and original_size(normal) == normal.size == (640, 480)
    assert np.array_equal(np.asarray(normal), np.asarray(load_image(tmp_path / "normal.jpg")))


def test_jpeg_peak_memory_does_not_grow_with_the_file(tmp_path):
    _photo(6000, 6000).save(tmp_path / "huge.jpg", quality=90)
    code = textwrap.dedent(f"""
        import resource
        from grounding.images import load_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = load_image({str(tmp_path / "huge.jpg")!r}, max_side=1024)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(image.size, (after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    size, grown_mb = out.stdout.split(")")
    assert size == "(1024, 1024" and int(grown_mb) < 60, out.stdout  # the full raster alone is 103 MB


def test_large_image_discovery_boxes_in_original_pixels(big_files, tiny_reg_dir, tmp_path):
    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"short_side": 32, "max_side": 1024})
    # the same pixels the loop sees, saved losslessly at the reduced size: its box, scaled by 4, is the big box
    load_image(big_files / "big.jpg", max_side=1024).save(tmp_path / "reduced.png")
    jobs = [DiscoveryJob("big.jpg", big_files / "big.jpg"), DiscoveryJob("reduced.png", tmp_path / "reduced.png")]
    big, reduced = run_discovery(tower, "lost", jobs, tmp_path / "run", progress=False)
    assert big["image_size"] == [2048, 4096] and reduced["image_size"] == [512, 1024]
    assert big["map_size"] == reduced["map_size"]
    np.testing.assert_allclose(big["box"], np.array(reduced["box"]) * 4, atol=0.02)
    assert Image.open(tmp_path / "run" / "overlays" / "big.png").size == (1024, 512)  # pictures at the decoded size

    # a path given to the tower is decoded small too, and reported in the file's pixels
    out = tower([big_files / "big.jpg"])
    assert out.image_sizes == [(2048, 4096)]
    small = tower([load_image(big_files / "big.jpg", max_side=1024)])
    torch.testing.assert_close(out.q, small.q)
    torch.testing.assert_close(out.patch_scale, small.patch_scale * 4)
    assert json.loads((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[0])["box"] == big["box"]
