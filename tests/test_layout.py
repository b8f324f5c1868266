"""The house drawn from the code: the package layout's import rules, checked on the source with `ast`, and
`ruff check` over the repository (the settings are in pyproject.toml).

Rules (README, "Layout"):
* every project import names a module of this tree (an editable install elsewhere would otherwise answer for a
  module that is missing here: setuptools' editable finder resolves direct children of the top-level packages);
* no import circle among the project's modules (module-level imports; `if TYPE_CHECKING:` blocks do not run);
* no function-level import of a project module in grounding/ or lightning_modules/, except the lazy imports
  listed in LAZY (each says why); eval/ defers imports in its command-line modules on purpose (argument parsing
  stays free of torch), and even with those counted the project has no circle;
* grounding/ imports neither eval nor lightning_modules; lightning_modules/ does not import eval;
* inside grounding/ the arrows point down: methods -> decoding / region_tokens -> objects / descriptors -> tower ->
  the shared modules (vlm, images, weights, compat, viz, assets, kmeans, annotations); world/ imports shared
  modules only. A package imports its own modules freely (its __init__ re-exports them).
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("grounding", "lightning_modules", "eval")

# what each folder of grounding/ may import besides itself ("shared": grounding's top-level modules)
MAY_IMPORT = {
    "shared": {"shared"},
    "tower": {"shared"},
    "objects": {"tower", "shared"},
    "descriptors": {"tower", "shared"},
    "decoding": {"objects", "descriptors", "tower", "shared"},
    "region_tokens": {"objects", "descriptors", "tower", "shared"},
    "methods": {"decoding", "region_tokens", "objects", "descriptors", "tower", "shared"},
    "world": {"shared"},
}
# function-level imports of project modules allowed in grounding/ and lightning_modules/: (importer, imported)
LAZY: dict[tuple[str, str], str] = {
    # none left: every function-level import of a project module was a circle or a back-arrow, now moved
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement loads (the deepest module each name reaches)."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        return [b for b in bases if b.split(".")[0] in PACKAGES]
    if node.level:
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] not in PACKAGES:
        return []
    targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return sorted(set(targets))


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level, function-level) project imports of every module."""
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    inner: dict[str, set[str]] = {m: set() for m in MODULES}

    def visit(module: str, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only: never executed
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top)[module].update(t for t in _resolve(module, child) if t != module)
            else:
                visit(module, child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.Lambda)))

    for module, path in MODULES.items():
        visit(module, ast.parse(path.read_text(), str(path)), False)
    return top, inner


TOP, INNER = _imports()


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph`, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "face"  # grounding/__init__.py: lazy names only
    return parts[1] if parts[1] in MAY_IMPORT and (MODULES[module].parent.name == parts[1]
                                                    or len(parts) > 2) else "shared"


def test_every_project_import_exists_in_this_tree():
    missing = sorted(f"{m} -> {t}" for m in MODULES for t in TOP[m] | INNER[m] if t not in MODULES)
    assert not missing, "imports of modules that are not in the tree (moved or renamed?):\n" + "\n".join(missing)


def test_no_import_circle():
    cycle = _cycle(TOP)
    assert cycle is None, "import circle (module level): " + " -> ".join(cycle)
    both = {m: TOP[m] | INNER[m] for m in MODULES}
    cycle = _cycle(both)
    assert cycle is None, "import circle (counting function-level imports too): " + " -> ".join(cycle)


def test_no_function_level_imports_in_the_library():
    found = sorted((m, t) for m, targets in INNER.items() if m.split(".")[0] in ("grounding", "lightning_modules")
                   for t in targets if (m, t) not in LAZY)
    assert not found, f"function-level imports of project modules (move them up, or list them in LAZY): {found}"


def test_training_and_library_do_not_import_evaluation():
    for module in MODULES:
        top = module.split(".")[0]
        forbidden = {"grounding": ("eval", "lightning_modules"), "lightning_modules": ("eval",)}.get(top, ())
        bad = sorted(t for t in TOP[module] | INNER[module] if t.split(".")[0] in forbidden)
        assert not bad, f"{module} imports {bad}: arrows point down (eval -> lightning_modules -> grounding)"


def test_arrows_inside_grounding_point_down():
    assert {_room(m) for m in MODULES if m.startswith("grounding.")} <= set(MAY_IMPORT)
    bad = []
    for module in MODULES:
        if not module.startswith("grounding.") or module == "grounding":
            continue
        room = _room(module)
        for target in TOP[module] | INNER[module]:
            if not target.startswith("grounding.") and target != "grounding":
                continue
            other = _room(target)
            if other != room and other not in MAY_IMPORT[room]:
                bad.append(f"{module} ({room}) -> {target} ({other})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_every_folder_is_a_package():
    for folder in (ROOT / "grounding").rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"


def _ruff() -> list[str] | None:
    if shutil.which("ruff"):
        return ["ruff"]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return None


def test_ruff_check():
    command = _ruff()
    if command is None:
        pytest.skip("ruff is not installed (pip install ruff): the lint settings are in pyproject.toml [tool.ruff]")
    result = subprocess.run([*command, "check", "--no-cache", "grounding", "lightning_modules", "eval", "benchmarks",
                             "tests"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
