"""What makes a run folder trustworthy: every record says what produced it, one writer at a time.

* Settings: a run folder's `settings.json` holds everything that decides a record's content (model and tower
  weights, method and its options, generation settings, ...) and its `fingerprint` (a hash). Every record
  carries that fingerprint (`run`) and a digest of its input (`item`: question text, image file, label, ...).
  A rerun resumes only records made with the same settings and the same input; anything else is refused with
  one error that names what differs and offers `--overwrite` (which replaces them once the new run succeeded).
* Lock: `RunLock` takes an exclusive `flock` on a lock file in the folder and writes its pid there. A second
  run on the same folder fails at once, naming the file and the pid; the kernel drops the lock when its
  process dies, so the lock of a killed run is simply taken over.

Weights given as local folders are identified by their content (`eval.identity`): weights replaced or retrained
in the same folder, an edited chat template or tokenizer file, count as other settings; a copied or moved model
folder is the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grounding.weights import lora_chain

from .identity import file_identity, path_identity
from .records import is_skip, write_json

__all__ = ["fingerprint", "item_digest", "record_id", "input_identity", "effective_options", "weights_identity",
           "SettingsMismatch", "check_records", "save_settings", "clear_folder", "RunLock", "LOCK_NAME",
           "SETTINGS_NAME"]

LOCK_NAME = ".lock"
SETTINGS_NAME = "settings.json"


class SettingsMismatch(ValueError):
    """A run folder holds records made with other settings or other inputs."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:16]


def record_id(value: Any) -> str:
    """The id a record is filed under: 3 and "3" are one item (as in the question files), a list by its JSON."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


def input_identity(path: str | Path) -> str:
    """An input file by its bytes (eval.identity); a file that cannot be read as "unreadable" (its record is a
    skip, retried anyway)."""
    try:
        return file_identity(path)
    except OSError:
        return "unreadable"


def item_digest(*parts: Any) -> str:
    """Digest of what one record was made from (key, image file name, prompt, label, ...)."""
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()[:12]


def weights_identity(name: str | None) -> str | None:
    """A hub name as given; a local folder by its content (`eval.identity.folder_identity`). A LoRA folder also
    names every adapter under it and the checkpoint it starts from (a LoRA is nothing without its base)."""
    if name is None:
        return None
    base, adapters = lora_chain(name)
    if not adapters:
        return _folder_identity(name)
    return "+".join([_folder_identity(str(a)) for a in reversed(adapters)] + [_folder_identity(base)])


def _folder_identity(name: str) -> str:
    """A local folder or file by its content (eval.identity: weights by size, safetensors header and sampled
    blocks, every config / tokenizer / processor / chat-template file by its bytes); a hub id as given."""
    return path_identity(name)


def effective_options(method: str, options: dict) -> dict:
    """A method's options as it will run them: every option of a config-dataclass method with its value (given or
    default), so an option given at its default value is no change; other methods' options as given."""
    import dataclasses

    from grounding.methods import method_options

    rule = method_options(method)
    if not (dataclasses.is_dataclass(rule) and isinstance(rule, type)):
        return dict(options)
    try:
        full = dataclasses.asdict(rule(**options))
    except (TypeError, ValueError):  # refused elsewhere with its own message
        return dict(options)
    full.pop("mode", None)  # set by the method itself
    return full


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _differences(a, b, f"{prefix}{key}.")
        elif _canonical(a) != _canonical(b):
            lines.append(f"{prefix}{key}: {_canonical(a)} -> {_canonical(b)}")
    return lines


def check_records(folder: Path, records: Iterable[dict], settings: dict, digests: dict[Any, str],
                  key: str = "key") -> None:
    """Refuse a folder whose records were made with other settings, or from other inputs under the same keys.

    records: the folder's records (skips included); digests: this run's item digest per `record_id`. Skipped records
    are retried anyway, so only their settings must match."""
    stamp = fingerprint(settings)
    foreign, changed, total = [], [], 0
    for record in records:
        total += 1
        if record.get("run") != stamp:
            foreign.append(record)
        elif not is_skip(record):
            k = record_id(record[key])
            if k in digests and record.get("item") != digests[k]:
                changed.append(k)
    if foreign:
        saved = folder / SETTINGS_NAME
        old = json.loads(saved.read_text()).get("settings", {}) if saved.is_file() else None
        if old is None or fingerprint(old) == stamp:
            what = ("were made by an older version that did not record its settings" if foreign[0].get("run") is None
                    else "were made with other settings (their settings.json is gone)")
        else:
            what = "were made with other settings:\n  " + "\n  ".join(_differences(old, settings))
        raise SettingsMismatch(
            f"{folder}: {len(foreign)} of {total} records {what}\nResuming would mix them with this run's. Rerun "
            f"with --overwrite to replace them once the new run has succeeded, or choose another --out.")
    if changed:
        raise SettingsMismatch(
            f"{folder}: {len(changed)} records were made from other inputs under the same ids (e.g. {changed[:3]}: "
            "another question file, other image bytes under the same file name, or another label). Rerun with "
            "--overwrite to replace them once the new run has succeeded, or choose another --out.")


def save_settings(folder: Path, settings: dict) -> None:
    write_json(folder / SETTINGS_NAME, {"fingerprint": fingerprint(settings), "settings": settings})


def clear_folder(folder: Path, keep: Iterable[str] = (LOCK_NAME,)) -> None:
    """--overwrite: delete what a folder holds (except the lock file this run holds)."""
    if not folder.is_dir():
        return
    keep = set(keep)
    for path in folder.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class RunLock:
    """`with RunLock(folder):` one writer per run folder (and per process rank: `name` = ".lock.1", ...).

    An exclusive, non-blocking `flock` on `folder/name`, which then holds "pid@host". Held by a live process:
    RuntimeError naming the file and the pid. Left by a dead process: the kernel has released it; it is taken.
    """

    def __init__(self, folder: str | Path, name: str = LOCK_NAME):
        self.path = Path(folder) / name
        self._handle = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown pid"
                handle.close()
                raise RuntimeError(
                    f"another run ({holder}) is writing to {self.path.parent} (lock file {self.path}); wait for it to "
                    "finish or stop it, or choose another --out") from None
            try:  # the file may have been removed by its last holder between our open and our lock: lock again
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}@{socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            try:
                self.path.unlink()  # while still holding the lock: no one can hold a lock on this inode
            except FileNotFoundError:
                pass
            self._handle.close()
            self._handle = None
