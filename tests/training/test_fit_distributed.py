"""`grounding fit` on two CPU processes (gloo), launched by Lightning as a user would launch it:
DDP (`--trainer.strategy=ddp`) and FSDP2 (`--trainer.strategy=fsdp2`, `fully_shard`).

Each rank trains on its own share of the records; a run SIGKILLed mid-epoch and resumed with --ckpt_path ends
with the weights of the uninterrupted DDP run, every rank having read the same batches in the same order; the
exported adapter reloads onto a stock model with the trained model's logits. FSDP1 (`--trainer.strategy=fsdp`)
needs a GPU with this torch: its test is GPU-marked, and its wrap plan is checked on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tiny_vlm import write_fit_set

ROOT = Path(__file__).parents[2]
STEPS = 6  # of 9 per epoch (36 records, 2 ranks x 2 rows): mid-epoch; checkpoints at steps 3 and 6


@pytest.fixture(scope="module")
def fit_root(tmp_path_factory, tiny_reg_dir):
    root = tmp_path_factory.mktemp("fit2")
    write_fit_set(root, num_images=6)
    (root / "tower.txt").write_text(tiny_reg_dir)
    return root


def _config(root: Path, run: str) -> Path:
    out = root / run
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 2, "max_steps": STEPS, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "default_root_dir": str(out),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(out), "name": "logs"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(out / "ckpt"), "every_n_train_steps": 3,
                                                 "save_top_k": -1, "filename": "{step}"}},
                                  {"class_path": "fit_probe.BatchProbe",
                                   "init_args": {"out_dir": str(out / "probe")}}]},
        "model": {"vlm": str(root / "vlm"), "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "learning_rate": 1e-2,
                  "export_dir": str(out / "adapter"),
                  "regions": {"num_regions": 2, "tower": str(_tower(root)), "tower_short_side": 32,
                              "projector_hidden": 16, "object_dino": {"k": 2, "restarts": 2}}},
        "data": {"image_root": str(root / "images"), "instances": str(root / "instances.json"), "batch_size": 2,
                 "cache_dir": str(root / "cache")},
    }
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _tower(root: Path) -> Path:
    return Path((root / "tower.txt").read_text())


def _fit(root: Path, run: str, strategy: str, *extra: str, kill_at_step: int | None = None,
         accelerator: str = "cpu") -> int:
    """`python -m eval.cli fit ...` (= `grounding fit`) in a new session; Lightning starts rank 1 itself.
    A run resumed with --ckpt_path uses the same config (output folders, export) as the run it resumes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "FIT_PROBE_KILL_AT_STEP": str(kill_at_step or "")}
    config = root / f"{run}.yaml" if any(a.startswith("--ckpt_path") for a in extra) else _config(root, run)
    command = [sys.executable, "-m", "eval.cli", "fit", "--config", str(config),
               f"--trainer.accelerator={accelerator}", "--trainer.devices=2", f"--trainer.strategy={strategy}", *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # rank 1, if the killed rank 0 left it behind
        except ProcessLookupError:
            pass
    (root / f"{run}.log").open("a").write(output)
    if kill_at_step is None:
        assert process.returncode == 0, output[-4000:]
    return process.returncode


def _probe(root: Path, run: str, resumed: bool = False) -> dict[int, list[dict]]:
    """Per rank, the batches of the run (resumed=False) or of its resumption (True)."""
    rows = {rank: [json.loads(line) for line in (root / run / "probe" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    return {rank: [r for r in rows[rank] if r["resumed"] == resumed] for rank in rows}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False, map_location="cpu")["state_dict"]


def _trained_module(root: Path, run: str, checkpoint: Path):
    """A RegionTokensModule built from the run's config, its trainable weights loaded strictly from `checkpoint`."""
    from grounding.region_tokens import RegionConfig
    from lightning_modules.module import RegionTokensModule

    config = yaml.safe_load((root / f"{run}.yaml").read_text())["model"]
    config["regions"] = RegionConfig(**config["regions"])
    module = RegionTokensModule(**{k: v for k, v in config.items() if k != "export_dir"})
    module.configure_model()
    module.load_state_dict(_weights(checkpoint), strict=True)
    return module.eval()


def _check_shards_and_batches(root: Path, run: str, steps: range) -> dict[int, list[dict]]:
    """Each rank read its own records; each batch's labelled tokens are those of the records the sampler named."""
    from transformers import AutoProcessor

    from lightning_modules.data import InstructionDataModule

    probe = _probe(root, run)
    seen = {rank: [i for r in rows for i in r["indices"]] for rank, rows in probe.items()}
    assert [r["step"] for r in probe[0]] == list(steps) == [r["step"] for r in probe[1]]
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0])) == len(seen[0]) == 2 * len(steps)
    data = yaml.safe_load((root / f"{run}.yaml").read_text())["data"]
    datamodule = InstructionDataModule(**data)
    datamodule.setup("fit")
    datamodule._tokenised(AutoProcessor.from_pretrained(root / "vlm"))
    table = datamodule.train_set.table
    for rows in probe.values():
        for row in rows:
            expected = [[t for t in table[i]["labels"] if t != -100] for i in row["indices"]]
            assert row["labelled"] == expected, row
    return probe


@pytest.fixture(scope="module")
def ddp_run(fit_root):
    """The uninterrupted 2-process DDP run: checkpoints at steps 3 and 6, the adapter exported at the end."""
    _fit(fit_root, "ddp", "ddp")
    return fit_root


def _killed_then_resumed(root: Path, strategy: str, name: str, accelerator: str = "cpu") -> None:
    """A run SIGKILLed after step 4 (its last checkpoint: step 3), then the same command with --ckpt_path."""
    assert _fit(root, name, strategy, kill_at_step=4, accelerator=accelerator) == -signal.SIGKILL
    assert sorted(p.name for p in (root / name / "ckpt").iterdir()) == ["step=3.ckpt"]
    assert not (root / name / "adapter").exists()
    assert [r["step"] for r in _probe(root, name)[0]] == [1, 2, 3, 4]
    _fit(root, name, strategy, f"--ckpt_path={root / name / 'ckpt' / 'step=3.ckpt'}", accelerator=accelerator)


def _assert_same_run(root: Path, run: str, reference: str = "ddp", rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """`run` (resumed at step 4) read the reference run's batches from step 4 on and ends with its weights."""
    expected, resumed = _probe(root, reference), _probe(root, run, resumed=True)
    for rank in (0, 1):  # every rank continues with the batch after the last one trained
        assert [r["step"] for r in resumed[rank]] == list(range(4, STEPS + 1))
        assert [r["indices"] for r in resumed[rank]] == [r["indices"] for r in expected[rank][3:]]
    final = _weights(root / reference / "ckpt" / f"step={STEPS}.ckpt")
    again = _weights(root / run / "ckpt" / f"step={STEPS}.ckpt")
    assert set(final) == set(again) and any("lora_" in k for k in final) and any("region_projector" in k for k in final)
    for key, value in final.items():
        torch.testing.assert_close(again[key], value, rtol=rtol, atol=atol)
    start = _weights(root / run / "ckpt" / "step=3.ckpt")
    assert any(not torch.equal(start[k], final[k]) for k in final)  # steps 4-6 did train


def _assert_adapter_reloads(root: Path, run: str) -> None:
    """The adapter exported by rank 0 reloads onto a stock model with the logits of the trained model."""
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from grounding.region_tokens import RegionGrounding

    trained = _trained_module(root, "ddp", root / run / "ckpt" / f"step={STEPS}.ckpt")
    base = LlavaForConditionalGeneration.from_pretrained(root / "vlm").eval()
    processor = AutoProcessor.from_pretrained(root / "vlm")
    RegionGrounding.from_pretrained(root / run / "adapter").attach(base, processor)
    reloaded = PeftModel.from_pretrained(base, root / run / "adapter" / "lora").eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a dog ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(root / "images" / "1.jpg")
    with torch.no_grad():
        expected = trained.model(**trained.processor(images=[image], text=[text], return_tensors="pt")).logits
        got = reloaded(**processor(images=[image], text=[text], return_tensors="pt")).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ddp_two_processes_shard_resume_and_export(ddp_run):
    root = ddp_run
    _check_shards_and_batches(root, "ddp", range(1, STEPS + 1))
    assert "skipped 2 of 38 records" in (root / "ddp.log").read_text()
    _killed_then_resumed(root, "ddp", "ddp-killed")
    _assert_same_run(root, "ddp-killed")
    _assert_adapter_reloads(root, "ddp-killed")
    _assert_adapter_reloads(root, "ddp")


def test_fsdp2_two_processes_killed_and_resumed_match_ddp(ddp_run):
    """FSDP2 (fully_shard, gloo): sharded decoder layers, same batches, same weights and adapter as DDP."""
    root = ddp_run
    _killed_then_resumed(root, "fsdp2", "fsdp2")
    assert all(r["sharded"] for rows in _probe(root, "fsdp2", resumed=True).values() for r in rows)
    assert not any(r["sharded"] for rows in _probe(root, "ddp").values() for r in rows)
    _assert_same_run(root, "fsdp2")
    _assert_adapter_reloads(root, "fsdp2")


@pytest.mark.gpu
def test_fsdp1_two_gpus_killed_and_resumed_match_ddp(ddp_run):
    """Lightning's FSDP1 strategy (GPU only with this torch): the same killed-and-resumed run on two GPUs."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    root = ddp_run
    _killed_then_resumed(root, "fsdp", "fsdp1", accelerator="gpu")
    _assert_same_run(root, "fsdp1", rtol=2e-2, atol=2e-3)  # CUDA kernels: close to the CPU run, not bit-equal
    _assert_adapter_reloads(root, "fsdp1")


def test_fsdp1_wrap_plan_on_cpu(fit_root, capsys):
    """`--trainer.strategy=fsdp` validated without a GPU (Lightning refuses to start FSDP1 on a CPU): the config
    parses, and FSDP1's auto-wrap plan of the bf16 model makes every decoder layer a unit, keeps one dtype per unit
    (fp32 LoRA apart from bf16 weights) and leaves the grounding tower out of the model."""
    from grounding.region_tokens import RegionConfig
    from lightning_modules.cli import make_cli
    from lightning_modules.module import RegionTokensModule
    from lightning_modules.sharding import fsdp_units, fsdp_wrap_policy

    argv = ["--config", str(_config(fit_root, "plan")), "--trainer.accelerator=gpu", "--trainer.strategy=fsdp",
            "--trainer.accumulate_grad_batches=2", "--model.dtype=bfloat16", "--model.gradient_checkpointing=true"]
    with pytest.raises(SystemExit) as exit_:
        make_cli([*argv, "--print_config"], run=False)
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"] == "fsdp" and printed["model"]["gradient_checkpointing"] is True

    config = printed["model"]
    config["regions"] = RegionConfig(**config["regions"])
    module = RegionTokensModule(**config)
    module.configure_model()
    model = module.model
    units = fsdp_units(model, fsdp_wrap_policy(model))
    layers = {n for n, m in model.named_modules() if type(m).__name__ in ("LlamaDecoderLayer", "CLIPEncoderLayer")}
    assert layers and layers <= set(units)
    for name, params in units.items():
        assert len({model.get_parameter(p).dtype for p in params}) <= 1, (name, params)
    lora = [p for p, q in model.named_parameters() if "lora_" in p]
    assert lora and all(model.get_parameter(p).dtype == torch.float32 for p in lora)
    assert all(units.get(p.rsplit(".", 1)[0]) == [p] for p in lora)  # each LoRA matrix is a unit of its own
    assert {model.get_parameter(p).dtype for p in units[""]} == {torch.bfloat16}
    tower = {id(p) for p in module.grounding.tower.parameters()}
    assert tower and not tower & {id(p) for p in module.parameters()}
