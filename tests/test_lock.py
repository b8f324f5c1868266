"""The installed environment is the one in requirements-lock.txt (what `make install` installs with `pip -c`):
a package that drifted from the lock fails here, with the command that puts it back."""

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

LOCK = Path(__file__).parents[1] / "requirements-lock.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, pinned = line.partition("==")
        assert sep and pinned, f"requirements-lock.txt: {line!r} is not an exact pin (name==version)"
        pins[_canonical(name)] = pinned.split(";", 1)[0].strip()
    return pins


def test_the_lock_pins_every_dependency_of_the_package():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((LOCK.parent / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("test", "assets", "lmms"):
        wanted += project["optional-dependencies"][extra]
    names = {_canonical(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in wanted}
    names.discard("vlm-grounding")
    missing = sorted(names - set(_locked()))
    assert not missing, f"requirements-lock.txt has no pin for {missing}: run `make lock`"


def test_the_installed_environment_matches_the_lock():
    drifted = []
    for name, pinned in _locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            drifted.append(f"{name}: installed {installed}, locked {pinned}")
    assert not drifted, ("the environment drifted from requirements-lock.txt (run `make install`, or `make lock` "
                         "then `make test` to move the lock on purpose):\n" + "\n".join(drifted))
