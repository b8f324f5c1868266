"""Replace output only after the new output exists: write aside, then rename.

* `write_new_file(path, text, overwrite, option)`: a single output file. An existing `path` is refused unless
  `overwrite` (naming `option`); the text goes to a hidden temporary file beside it, fsynced, then renamed over
  `path`, so a kill or a full disk leaves the old file whole and no temporary file behind.
* `check_new_folder(path, overwrite, option, outputs)`: an output folder that already holds any of `outputs`
  is refused unless `overwrite`; a file where a folder is wanted is refused naming it.
* `staging_folder(target)` / `promote(staging, target)`: `--overwrite` of a run folder writes its new records
  into a hidden sibling (`.<name>.overwrite`); only when the whole run has succeeded does `promote` swap it in
  (rename the old folder to `.<name>.replaced`, rename the new one into place, then delete the old one).
  `recover(target)` completes or undoes a swap that a kill interrupted between the two renames.
  `promote_contents` does the same for a folder whose own entries are replaced (`discover --out`, which holds
  the lock file): the new entries are staged in `<out>/.overwrite`.
* `remove_stale_temporaries(folder)`: deletes `.*.tmp` files that a killed writer left (the writers name them
  `.<file>.<pid>.tmp`; only those of processes that no longer run are removed).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from .records import replace_atomically

__all__ = ["write_new_file", "check_new_folder", "staging_folder", "promote", "recover", "promote_contents",
           "recover_contents", "remove_stale_temporaries",
           "OutputExistsError"]


class OutputExistsError(FileExistsError):
    """An output that exists, and was not asked to be replaced."""


def _refuse_existing(path: Path, option: str, what: str = "file") -> None:
    raise OutputExistsError(f"{option} {path} already exists; pass --overwrite to replace it (it is replaced only "
                            f"once the new {what} is complete) or choose another {option}")


def write_new_file(path: str | Path, text: str | bytes, overwrite: bool = False, option: str = "--out") -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{option} {path} is a folder; {option} takes a file name")
    if path.exists() and not overwrite:
        _refuse_existing(path, option)
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputExistsError(f"{option} {path}: {path.parent} is a file, not a folder")
    replace_atomically(path, text)
    return path


def check_new_folder(path: str | Path, overwrite: bool, option: str = "--out", outputs: Iterable[str] = ()) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{option} {path} is a file; {option} takes a folder (new, or one this command wrote)")
    present = [name for name in outputs if (path / name).exists()]
    if present and not overwrite:
        raise OutputExistsError(f"{option} {path} already holds {', '.join(present)}; pass --overwrite to replace "
                                f"{'it' if len(present) == 1 else 'them'} or choose another {option}")
    return path


def staging_folder(target: Path) -> Path:
    return target.parent / f".{target.name}.overwrite"


def _replaced(target: Path) -> Path:
    return target.parent / f".{target.name}.replaced"


def recover(target: Path) -> None:
    """Finish a swap a kill interrupted: the old folder set aside and the new one not yet in place -> put the old
    one back (the new run did not complete its promotion, so the folder is as before the run); both in place ->
    drop the set-aside old one."""
    old = _replaced(target)
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(target)


def promote(staging: Path, target: Path) -> None:
    """Swap `staging` in for `target` (which may not exist); the old contents are deleted last."""
    recover(target)
    old = _replaced(target)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def promote_contents(staging: Path, target: Path, keep: Iterable[str] = (".lock",)) -> None:
    """Swap the entries of `staging` (a folder inside `target`) in for `target`'s own (but `keep`): the old ones are
    set aside in `target/.replaced` and deleted last."""
    keep = set(keep) | {staging.name, ".replaced"}
    aside = target / ".replaced"
    recover_contents(target)
    aside.mkdir()
    for path in list(target.iterdir()):
        if path.name not in keep:
            path.rename(aside / path.name)
    for path in list(staging.iterdir()):
        path.rename(target / path.name)
    staging.rmdir()
    shutil.rmtree(aside)


def recover_contents(target: Path) -> None:
    """Undo a `promote_contents` a kill interrupted: entries set aside whose new version is not in place go back."""
    aside = target / ".replaced"
    if not aside.is_dir():
        return
    for path in list(aside.iterdir()):
        if not (target / path.name).exists():
            path.rename(target / path.name)
    shutil.rmtree(aside)


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and (int(match.group(1)) == os.getpid() or not _running(int(match.group(1)))):
            path.unlink(missing_ok=True)
