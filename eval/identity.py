"""Content identity: what a model folder or an input file IS, not what it is called.

A run folder resumes only records made by the same model from the same inputs, so both are identified by their
bytes, cheaply enough that a 7B checkpoint costs well under a second:

* `file_identity(path)`: a file of up to `SMALL_FILE` bytes (configs, tokenizer files, chat templates, images,
  question files) by the SHA-256 of all its bytes. A larger file by its size plus the SHA-256 of its
  `.safetensors` header (tensor names, dtypes, shapes, offsets) and of `SAMPLES` blocks of `SAMPLE_BYTES`
  spread evenly over the file (first and last included): other weights of the same architecture differ in every
  block. Results are cached in the process by (path, size, mtime, inode), so an image asked about by many
  questions is read once.
* `folder_identity(path)`: every file in the folder tree that can decide a model's outputs - weights, configs,
  tokenizer, processor and chat-template files (`*.jinja`), remote code - by relative name and
  `file_identity`. Not counted: hidden files and folders, markdown, licences, logs, and the marker files an
  asset build writes (DONE.json): a marker names a build, not the bytes that a rebuilt or replaced folder holds.
  Where a folder lives does not count either: a copied or moved model is the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

__all__ = ["file_identity", "folder_identity", "path_identity", "MODEL_SUFFIXES", "SMALL_FILE"]

SMALL_FILE = 8 << 20  # files up to this size are hashed whole
SAMPLES = 16
SAMPLE_BYTES = 64 << 10
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".model", ".txt", ".jinja", ".py",
                  ".tiktoken", ".msgpack", ".h5", ".gguf", ".npz", ".npy", ".yaml", ".yml", ".vocab", ".spm",
                  ".bpe", ".merges")
_NOT_MODEL = {"done.json", "readme.md", "license", "license.txt", "notice", "trainer_state.json", "run.json"}

_cache: dict[tuple, str] = {}


def _digest(path: Path, size: int) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= max(SMALL_FILE, SAMPLES * SAMPLE_BYTES):
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
            return f"sha256:{hasher.hexdigest()[:24]}"
        hasher.update(str(size).encode())
        if path.suffix == ".safetensors":
            (length,) = struct.unpack("<Q", handle.read(8))
            hasher.update(handle.read(min(length, 64 << 20)))
        for i in range(SAMPLES):
            handle.seek(i * (size - SAMPLE_BYTES) // (SAMPLES - 1))
            hasher.update(handle.read(SAMPLE_BYTES))
    return f"sampled:{size}:{hasher.hexdigest()[:24]}"


def file_identity(path: str | Path) -> str:
    """The file's content digest (see the module doc), cached by path, size, mtime and inode."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _cache:
        _cache[key] = _digest(path, stat.st_size)
    return _cache[key]


def _counts(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts) or relative.name.lower() in _NOT_MODEL:
        return False
    return relative.suffix.lower() in MODEL_SUFFIXES or relative.name in ("tokenizer", "vocab", "merges")


def folder_identity(path: str | Path) -> str:
    """A digest over every file that decides a model's outputs (names and contents; see the module doc)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and _counts(p.relative_to(path)))
    listing = [[str(p.relative_to(path)), file_identity(p)] for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def path_identity(name: str | os.PathLike) -> str:
    """A local folder or file by its content ("content:<digest>"); anything else (a hub id) as given."""
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return f"content:{folder_identity(path)}"
    if path.is_file():
        return f"content:{file_identity(path)}"
    return str(name)
