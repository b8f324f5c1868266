"""Run folders: append-only JSONL predictions that survive a kill, and the metadata every run records.

`JsonlLog` appends one flushed, fsynced line per record. On open it reads what is there, drops a torn last
line (a kill mid-write) and reports the keys already done, so a restarted run skips them: no question is
repeated or lost.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["JsonlLog", "package_versions", "write_json", "run_metadata"]

_PACKAGES = ("vlm-grounding", "torch", "transformers", "timm", "accelerate", "peft", "lightning", "datasets")


class JsonlLog:
    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key
        self.records: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            good_lines = []
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write from a killed run: that item will be redone
                self.records.append(record)
                good_lines.append(line)
            self.path.write_text("".join(line + "\n" for line in good_lines))
        self.done = {self._key(r) for r in self.records}

    def _key(self, record: dict) -> Any:
        value = record[self.key]
        return tuple(value) if isinstance(value, list) else value

    def append(self, record: dict) -> None:
        key = self._key(record)
        if key in self.done:
            raise ValueError(f"{self.key}={key!r} is already in {self.path}")
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)
        self.done.add(key)


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


def write_json(path: str | Path, payload: dict) -> None:
    """Write atomically (temp file + rename) so a kill never leaves half a metrics file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
    temporary.replace(path)
