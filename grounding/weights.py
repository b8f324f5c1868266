"""Where a model's weights come from - a local directory, the Hugging Face cache or the hub - decided before
loading, so that a missing directory or an unreachable hub gives one clear error in seconds instead of
minutes of download retries.

`resolve_weights(name, what)` returns what to pass to `from_pretrained`:

* an existing local directory: that directory (it must hold a config.json);
* something that can only be a path (absolute, ``~``, ``./``, more than one ``/``, not a valid hub id) but is
  not a directory: `WeightsNotFoundError` "no such directory: PATH";
* a hub id with HF_HUB_OFFLINE set: its cached snapshot directory, or `WeightsNotFoundError`;
* a hub id otherwise: one quick request to the hub endpoint (`timeout` seconds, no retries). Reachable: the
  hub id (transformers downloads or refreshes as usual). Unreachable: the cached snapshot directory if there
  is one, else `WeightsNotFoundError` naming the model and how to supply it.

`lora_adapter(name)` tells a peft LoRA folder (a `grounding fit` export's ``lora/``: adapter_config.json and
adapter weights, no config.json) from a checkpoint, and names its base model, so loaders can merge it in. A
relative base path is read against the adapter's folder first (where a moved pair of folders still meets), then
against the working directory. `lora_chain(name)` follows stacked exports (a fit whose `--model.vlm` was itself a
LoRA export) down to the checkpoint they start from, refusing a chain that loops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["WeightsNotFoundError", "resolve_weights", "lora_adapter", "lora_chain", "saves_processor",
           "hub_reachable", "cached_snapshot", "missing_weights", "PROJECTOR_ATTRIBUTE"]

# the attribute region tokens register their projector under (`grounding.region_tokens.injection`); a LoRA trained
# with them lists it in its adapter_config's modules_to_save, which is how the VLM loader recognises one
PROJECTOR_ATTRIBUTE = "region_projector"

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables


class WeightsNotFoundError(FileNotFoundError):
    """The checkpoint is neither a local directory nor available from the hub or its cache."""


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_hub_id(name: str) -> bool:
    if name.startswith(("/", "~", ".", "\\")) or name.count("/") > 1 or os.path.isabs(name):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def cached_snapshot(repo_id: str) -> Path | None:
    """The cache's snapshot directory of `repo_id` (revision main) if its config.json is cached, else None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One request to the hub endpoint (HF_ENDPOINT) without retries: any HTTP answer counts as reachable."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # connection refused, DNS failure, timeout, proxy error: the transport's own error types
        return False
    return True


def missing_weights(name: str, what: str, reason: str) -> WeightsNotFoundError:
    """The one error for weights that cannot be had: names the model, why, and how to supply it."""
    if Path(name).is_dir():
        return WeightsNotFoundError(f"cannot load {what} from {name}: {reason}. The directory must hold a complete "
                                    "checkpoint (config.json, the weights and, for a VLM, the processor files).")
    return WeightsNotFoundError(
        f"cannot load {what} {name!r}: {reason}. On a machine with network run `hf download {name} --local-dir DIR` "
        "and pass DIR as the model, or fill the Hugging Face cache (HF_HOME) there, copy it here and set "
        "HF_HUB_OFFLINE=1."
    )


def lora_adapter(name: str | os.PathLike) -> tuple[Path, str] | None:
    """(adapter folder, its base model) when `name` is a local peft adapter folder without a config.json; else None."""
    local = Path(str(name)).expanduser()
    if not local.is_dir() or (local / "config.json").is_file() or not (local / "adapter_config.json").is_file():
        return None
    try:
        base = json.loads((local / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise WeightsNotFoundError(f"cannot read the LoRA adapter {local}: adapter_config.json is not valid JSON "
                                   f"({error})") from error
    if not base or not isinstance(base, str):
        raise WeightsNotFoundError(f"{local} is a LoRA adapter without its base model (adapter_config.json has no "
                                   "base_model_name_or_path): set it to the base model's directory or hub name")
    beside = local / Path(base).expanduser()
    if not Path(base).expanduser().is_absolute() and beside.is_dir():
        base = str(beside.resolve())  # relative to the adapter, as written by a tool that moves folders together
    return local, base


def saves_processor(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a saved processor (what `grounding fit` writes beside its LoRA: the trained size)."""
    return any((Path(folder) / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def lora_chain(name: str | os.PathLike) -> tuple[str, list[Path]]:
    """(the checkpoint a stack of LoRA folders starts from, the adapters to merge onto it, innermost first).

    A plain checkpoint gives (name, []). A chain that comes back to a folder it has passed (an adapter whose base
    is itself, or two exports naming each other) is a `WeightsNotFoundError` naming the loop."""
    adapters: list[Path] = []
    current = str(name)
    while (found := lora_adapter(current)) is not None:
        folder = found[0].resolve()
        if folder in adapters:
            loop = " -> ".join(str(a) for a in [*adapters[adapters.index(folder):], folder])
            raise WeightsNotFoundError(f"the LoRA adapters' base_model_name_or_path entries form a loop ({loop}): "
                                       "point the first one's adapter_config.json at a full checkpoint")
        adapters.append(folder)
        current = found[1]
    return current, adapters[::-1]


def resolve_weights(name: str | os.PathLike, what: str = "model", timeout: float = 3.0) -> str:
    """A local directory or a hub id to hand to `from_pretrained` (see the module docstring)."""
    name = str(name)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            export = (local / "lora" / "adapter_config.json").is_file()
            hint = f"; it holds a LoRA export: pass {local / 'lora'}" if export else ""
            raise WeightsNotFoundError(f"cannot load {what}: {local} is a directory but holds no config.json (pass the "
                                       f"directory that holds the checkpoint's config.json and weights{hint})")
        return str(local)
    if not _is_hub_id(name):
        raise WeightsNotFoundError(f"cannot load {what}: no such directory: {local} (pass the directory that holds "
                                   "its config.json and weights)")
    from huggingface_hub import constants

    snapshot = cached_snapshot(name)
    if _offline():
        if snapshot is None:
            raise missing_weights(name, what, f"it is not a local directory, not in the Hugging Face cache "
                                              f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 disables the hub")
        return str(snapshot)
    if hub_reachable(timeout):
        return name
    if snapshot is None:
        raise missing_weights(name, what, f"it is not a local directory, not in the Hugging Face cache "
                                          f"({constants.HF_HUB_CACHE}) and the hub {constants.ENDPOINT} could not "
                                          f"be reached within {timeout:g} s")
    return str(snapshot)
