"""Declared dependencies match the imports: every third-party module the package or the tests import is
declared in pyproject.toml, and every declared package is imported (or listed below with why not)."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parents[1]
LOCAL = {"grounding", "eval", "lightning_modules", "conftest"} | {p.stem for p in Path(__file__).parent.glob("*.py")}
# declared but not imported by our code, on purpose
INDIRECT = {
    "torchvision": "transformers' image processors run on its backend",
    "jsonargparse": "LightningCLI parses the command line and configs with it",
    "gguf": "transformers reads the GGUF checkpoint with it (assets)",
    "pycocotools": "COCO tools for users' evaluation scripts",
    "ruff": "the linter the tests run as a command (`ruff check`)",
}
# imported only by the checkpoint converter (grounding/assets.py), declared in the `assets` extra
ASSETS_ONLY = {"onnx", "onnxruntime"}
# optional integrations: module -> (distribution, extra); they need not be installed
OPTIONAL = {"lmms_eval": ("lmms-eval", "lmms")}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]).lower()


def _imports(folders: list[str]) -> set[str]:
    found = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in LOCAL}


def _distributions(modules: set[str]) -> set[str]:
    mapping = packages_distributions()
    missing = sorted(m for m in modules if m not in mapping)
    assert not missing, f"imported but not installed: {missing}"
    return {_name(mapping[m][0]) for m in modules}


def test_dependencies_match_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    package_modules = _imports(["grounding", "eval", "lightning_modules"])
    for module, (distribution, extra) in OPTIONAL.items():
        assert module in package_modules and distribution in extras[extra], (module, extras.get(extra))
    package = _distributions(package_modules - set(OPTIONAL))
    tests = _distributions(_imports(["tests"]))

    assert package - core == ASSETS_ONLY and ASSETS_ONLY <= extras["assets"], package - core
    # tests/test_lmms_eval.py also imports lmms-eval (the `lmms` extra), and is skipped where it is not installed
    assert not tests - core - extras["test"] - extras["assets"] - extras["lmms"], tests - core - extras["test"]
    unused = (core | extras["assets"] | extras["test"]) - package - tests - set(INDIRECT) - {"vlm-grounding"}
    assert not unused, f"declared but never imported: {sorted(unused)}"
