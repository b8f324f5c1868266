"""Importing the library has no global side effects and is cheap (heavy modules load on first use)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_keeps_the_matplotlib_backend():
    out = _run("""
        import matplotlib
        matplotlib.use("svg")
        import grounding
        import grounding.viz, grounding.decoding.highlight, eval.report
        from grounding import ObjectGuidance, RegisterViT
        import sys
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    assert out == "svg False"


def test_import_grounding_is_lazy():
    out = _run("""
        import sys
        import grounding
        heavy = [m for m in ("torch", "transformers", "matplotlib") if m in sys.modules]
        from grounding import load_image, RegisterViT
        print(heavy, RegisterViT.__module__, load_image.__module__, sorted(grounding.__all__) == sorted(set(dir(grounding)) & set(grounding.__all__)))
    """)
    assert out == "[] grounding.tower.backbone grounding.images True"


def test_figures_render_without_pyplot(tmp_path):
    import torch

    from eval.report import write_report
    from grounding.viz import head_cluster_grid, norm_histograms

    image = norm_histograms(torch.rand(3, 1, 20))
    assert image.mode == "RGB" and min(image.size) > 50
    grid = head_cluster_grid(torch.randint(0, 3, (4, 6)), object_cluster=1)
    assert grid.mode == "RGB"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"task": "question", "results": {"baseline": {"accuracy": 80.0, "f1": 79.0, '
                                      '"yes_ratio": 51.0}}}')
    report = write_report([run], tmp_path / "report")
    assert (tmp_path / "report" / "pope.png").stat().st_size > 1000 and report.exists()
