"""Run folders: append-only JSONL predictions that survive a kill, and the metadata every run records.

`JsonlLog` appends one flushed, fsynced line per record and never rewrites its file. On open it reads what is
there; a torn last line (a kill mid-write: the bytes after the last newline) is cut off with `os.truncate`, so
that item is redone. A record with a `skipped` field (the reason) is a skip: it stays in the log as a record of
what happened, but its key is not done, so a restarted run tries it again; the newest record of a key wins.

`read_jsonl` reads a user's JSON-lines file and names the file and line of anything that is not a JSON object;
`write_json` writes strict JSON (no NaN or Infinity: it names the field instead) atomically.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["JsonlLog", "SKIPPED", "is_skip", "read_jsonl", "package_versions", "write_json", "write_jsonl",
           "run_metadata", "check_finite"]

_PACKAGES = ("vlm-grounding", "torch", "transformers", "timm", "accelerate", "peft", "lightning", "datasets")
SKIPPED = "skipped"  # record field holding why an item was skipped (missing or unreadable image, ...)


def is_skip(record: dict) -> bool:
    return SKIPPED in record


class JsonlLog:
    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key
        self.records: list[dict] = []  # every record in file order (skips included)
        self.latest: dict[Any, dict] = {}  # key -> its newest record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._read()
        self.done = {k for k, r in self.latest.items() if not is_skip(r)}

    def _read(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # a record is complete only with its newline
        if end < len(data):
            os.truncate(self.path, end)  # cut the torn tail in place: the good lines are never rewritten
        for number, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path} line {number}: not valid JSON ({error.msg}); the run folder is "
                                 "damaged: delete that line (its item is then redone) or start afresh with "
                                 "--overwrite") from None
            if not isinstance(record, dict) or self.key not in record:
                raise ValueError(f"{self.path} line {number}: not a record with {self.key!r}; delete that line or "
                                 "start afresh with --overwrite")
            self.records.append(record)
            self.latest[self._key(record)] = record

    def _key(self, record: dict) -> Any:
        value = record[self.key]
        return tuple(value) if isinstance(value, list) else value

    @property
    def current(self) -> list[dict]:
        """The newest record of every key, in the order the keys first appeared."""
        return list(self.latest.values())

    def append(self, record: dict) -> None:
        key = self._key(record)
        if key in self.done:
            raise ValueError(f"{self.key}={key!r} is already in {self.path}")
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)
        self.latest[key] = record
        if not is_skip(record):
            self.done.add(key)


def read_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-empty line of a user's JSON-lines file; anything else is an error
    that names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def run_metadata(config: dict) -> dict:
    plain = {k: _plain(v) for k, v in config.items() if not callable(v)}
    return {"config": plain, "versions": package_versions(),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def check_finite(value: Any, where: str, path: str = "") -> None:
    """Raise ValueError naming the first NaN or infinite number in a JSON-ready value (`where`: what it is)."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, where, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, where, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {path.lstrip('.') or 'the value'} is {value}; a figure that cannot be computed "
                         "is an error, not a result")


def replace_atomically(path: Path, text: str | bytes) -> None:
    """Write `path` through a temporary file beside it and a rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(text.encode() if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:  # a full disk, a Ctrl-C: the old file stays whole and no temporary file stays behind
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: dict) -> None:
    """Write strict JSON atomically (temp file + rename), so a kill never leaves half a file; NaN or infinite
    numbers are refused with the field named."""
    path = Path(path)
    check_finite(json.loads(json.dumps(payload, default=_plain)), str(path))
    replace_atomically(path, json.dumps(payload, indent=2, default=_plain, allow_nan=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """A derived JSON-lines file (predictions.jsonl, per_item.jsonl), written new and renamed into place."""
    replace_atomically(Path(path), "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
