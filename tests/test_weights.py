"""Missing weights fail fast with one clear error: a local path that does not exist, a hub name with the hub
unreachable (a fake endpoint, HF_HUB_OFFLINE unset) or disabled; cached hub names load without the network."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grounding import RegisterViT, WeightsNotFoundError

ROOT = Path(__file__).parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from grounding import RegisterViT
    from grounding.vlm import load_vlm

    loaders = {"tower": lambda name: RegisterViT.from_pretrained(name),
               "vlm": lambda name: load_vlm(name, "float32", "cpu")}
    results = []
    for kind, name in json.loads(sys.argv[1]):
        start = time.perf_counter()
        try:
            loaders[kind](name)
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        results.append({"kind": kind, "name": name, "seconds": time.perf_counter() - start, "error": error})
    print(json.dumps(results))
""")


def _fake_cache(hf_home: Path, repo_id: str, source: str) -> None:
    """A Hugging Face cache entry (revision main) holding the files of `source`."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_unreachable_hub_fails_fast_and_cache_is_used(tmp_path, tiny_reg_dir, tiny_llava_dir):
    hf_home = tmp_path / "hf"
    _fake_cache(hf_home, "acme/cached-tower", tiny_reg_dir)
    _fake_cache(hf_home, "acme/cached-vlm", tiny_llava_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(hf_home), PYTHONPATH=str(ROOT))
    cases = [("tower", "acme/no-such-tower"), ("vlm", "acme/no-such-vlm"), ("tower", "/that/path"),
             ("vlm", "/that/path"), ("tower", "acme/cached-tower"), ("vlm", "acme/cached-vlm")]
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    by_case = {(r["kind"], r["name"]): r for r in json.loads(result.stdout.strip().splitlines()[-1])}
    for kind, what in (("tower", "grounding tower"), ("vlm", "VLM")):
        hub = by_case[kind, f"acme/no-such-{kind}"]
        assert hub["seconds"] < 10, hub  # one quick reachability check instead of minutes of retries
        assert hub["error"].startswith("WeightsNotFoundError"), hub
        assert f"cannot load {what} 'acme/no-such-{kind}'" in hub["error"]
        assert "http://127.0.0.1:9 could not be reached" in hub["error"] and f"hf download acme/no-such-{kind}" in hub["error"]
        path = by_case[kind, "/that/path"]
        assert "no such directory: /that/path" in path["error"] and "hf download" not in path["error"], path
        cached = by_case[kind, f"acme/cached-{kind}"]
        assert cached["error"] is None and cached["seconds"] < 60, cached


def test_offline_hub_names_fail_at_once(monkeypatch):
    from grounding.vlm import load_vlm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="cannot load VLM 'acme/no-such-vlm'.*HF_HUB_OFFLINE=1 disables"):
        load_vlm("acme/no-such-vlm", "float32", "cpu")
    with pytest.raises(WeightsNotFoundError, match="no such directory: .*missing"):
        RegisterViT.from_pretrained("./missing")


def test_directory_without_config_is_named(tmp_path):
    from grounding.vlm import load_vlm

    for load in (lambda: load_vlm(str(tmp_path), "float32", "cpu"), lambda: RegisterViT.from_pretrained(tmp_path)):
        with pytest.raises(WeightsNotFoundError, match=f"{tmp_path} is a directory but holds no config.json"):
            load()


def test_lora_folder_loads_merged_onto_its_base(tiny_llava_dir, tmp_path):
    """A `grounding fit` export's lora/ folder is a VLM for the eval CLI: its base with the adapter merged in."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    from eval.run_folder import weights_identity
    from grounding.vlm import load_vlm

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                           init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_llava_dir  # peft records where the base came from

    model, processor = load_vlm(str(tmp_path / "lora"), "float32", "cpu")
    reference = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32), tmp_path / "lora").eval()
    plain = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        got, want, without = (m(input_ids=ids).logits for m in (model, reference, plain))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - without).abs().max() > 1e-3  # the adapter changed the model: it was merged, not dropped
    assert processor is not None and not hasattr(model, "peft_config")  # a plain transformers model

    # the run folder's identity of the adapter names its base too (a changed base must not reuse old answers)
    assert weights_identity(str(tmp_path / "lora")).endswith("+" + weights_identity(tiny_llava_dir))

    with pytest.raises(WeightsNotFoundError, match=f"holds a LoRA export: pass {tmp_path / 'lora'}"):
        load_vlm(str(tmp_path), "float32", "cpu")  # the export folder itself: pointed at its lora/

    config["base_model_name_or_path"] = None
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsNotFoundError, match="LoRA adapter without its base model"):
        load_vlm(str(tmp_path / "lora"), "float32", "cpu")


def test_lora_chains_refuse_loops_and_read_relative_bases_beside_the_adapter(tiny_llava_dir, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from eval.run_folder import weights_identity
    from grounding.vlm import load_vlm
    from grounding.weights import lora_chain

    shutil.copytree(tiny_llava_dir, tmp_path / "pair" / "base")
    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(tmp_path / "pair" / "base", dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj", init_lora_weights=False)
                   ).save_pretrained(tmp_path / "pair" / "lora")
    config_path = tmp_path / "pair" / "lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())

    # a relative base is read beside the adapter first, whatever the working directory
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "../base"}))
    monkeypatch.chdir(tmp_path)
    assert lora_chain("pair/lora") == (str((tmp_path / "pair" / "base").resolve()), [(tmp_path / "pair" / "lora").resolve()])
    model, _ = load_vlm("pair/lora", "float32", "cpu")
    assert model.name_or_path == str((tmp_path / "pair" / "lora").resolve())  # a fit on it records this folder

    # an adapter that names itself, or two that name each other: one clear error, not a recursion overflow
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "."}))
    for load in (lambda: load_vlm(str(tmp_path / "pair" / "lora"), "float32", "cpu"),
                 lambda: weights_identity(str(tmp_path / "pair" / "lora"))):
        with pytest.raises(WeightsNotFoundError, match="form a loop"):
            load()
    shutil.copytree(tmp_path / "pair" / "lora", tmp_path / "other")
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "other")}))
    (tmp_path / "other" / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(tmp_path / "pair" / "lora")}))
    with pytest.raises(WeightsNotFoundError, match="form a loop"):
        weights_identity(str(tmp_path / "pair" / "lora"))
