"""LightningModule: a Hugging Face LLaVA-style VLM with region tokens attached and LoRA on its language model.

* LoRA (peft) targets the language model only: a regex anchored on `language_model` (both towers also name
  layers q_proj/k_proj/v_proj); the region projector is in `modules_to_save`. Everything else is frozen.
* `dtype="bfloat16"` loads the frozen VLM in bf16 (no fp32 copy, no per-step weight casts under autocast; use
  with `precision: 32-true` or `bf16-mixed`); peft keeps the LoRA weights in fp32, the trained projector stays in
  the model's dtype. Each rank loads it straight onto its own device (transformers' low-memory loading), except
  under FSDP, which shards it from the CPU.
* `train_projector=True` also trains the VLM's own multimodal projector (in `modules_to_save`): what a LLaVA
  whose projector is new (e.g. the embedded `world-llava`) needs. `projector_init` starts it from a stage-1
  aligned projector (`lightning_modules.align`, safetensors) instead of the VLM's own.
* Loss = the causal-LM loss on `labels` (-100 everywhere but answer tokens; see the data module), computed from
  the logits of the labelled positions only (`logits_to_keep`): the same number as the model's own loss, without
  projecting every image and prompt token onto the vocabulary.
* Checkpoints keep only trainable weights (LoRA + projector); optimizer and loop state come from Lightning, so
  `ckpt_path=` resumes exactly (the data module's loader resumes mid-epoch). Loading is strict on that set: a
  checkpoint missing a trainable weight, or holding one this model does not train, is an error naming the keys;
  only the frozen weights (which come from `vlm`) may be absent.
* The grounding tower is frozen bookkeeping outside the module tree: it is neither wrapped by DDP / FSDP nor saved;
  `on_fit_start` moves it to the device. The projector lives in the model (`region_projector`).
* `gradient_checkpointing=True` recomputes the model's layer activations in the backward pass (transformers'
  non-reentrant checkpointing: less memory, one more forward). Gradient accumulation is the trainer's
  `accumulate_grad_batches`; `lr_schedule: cosine` counts optimizer steps (`trainer.max_steps`).
* FSDP (`--trainer.strategy=fsdp`): unless the strategy names its own `auto_wrap_policy`, each decoder layer (of
  the language model and of the vision tower) and each trainable leaf (LoRA, projector) is its own unit (peft's
  policy: one dtype per unit, frozen bf16 weights apart from fp32 LoRA). `--trainer.strategy=fsdp2` (FSDP2,
  `fully_shard`, also on CPU with gloo) shards the same decoder layers, then the whole model.
* Logged each step: train/loss, train/lr, train/tokens_per_s (every rank's tokens over the step's time, summed).
* `on_train_end` exports the adapter: lora/ (peft's `adapter_model.safetensors` and the processor it was trained
  with, without region tokens) + the RegionGrounding projector/config. Without region tokens, `grounding.vlm.load_vlm`
  loads lora/ as a VLM; with them, the region-tokens method runs the export folder on its base model (load_vlm
  refuses such a lora/: it would run without its region tokens).
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F

from grounding.assets import set_image_size
from grounding.compat import activation_checkpointing_enable
from grounding.region_tokens import RegionConfig, RegionGrounding, RegionProjector
from grounding.vlm import load_vlm

from .align import projector_of
from .sharding import apply_fsdp2, fsdp_wrap_policy

__all__ = ["RegionTokensModule", "LORA_TARGETS"]

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def lr_factor(step: int, warmup: int, total: int | None) -> float:
    """Linear warm-up over `warmup` steps, then constant (total None) or cosine decay to 0.1 at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if total is None:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


class RegionTokensModule(L.LightningModule):
    def __init__(
        self,
        vlm: str,
        regions: RegionConfig | None = None,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        export_dir: str | None = None,
        train_projector: bool = False,
        projector_learning_rate: float | None = None,
        image_size: int | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        projector_init: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.regions_config = regions or RegionConfig()
        self.model = None
        self.processor = None
        self.grounding: RegionGrounding | None = None  # not a submodule (see the module docstring)
        self.handle = None
        self._step_start: float | None = None
        self.register_load_state_dict_post_hook(_trainable_only_strict)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model

        model, processor = load_vlm(self.hparams.vlm, self.hparams.dtype, self._load_device())
        if self.hparams.image_size:  # the VLM's input size (image tokens = (size / patch)^2)
            set_image_size(processor, self.hparams.image_size)
        if self.hparams.projector_init:  # a stage-1 aligned projector (lightning_modules.align)
            self._init_projector(model, self.hparams.projector_init)
        self.processor = processor
        grounding = RegionGrounding(self.regions_config)
        object.__setattr__(self, "grounding", grounding)  # kept out of the module tree: not wrapped, not saved
        if self.regions_config.num_regions:
            grounding.load_tower(model.device).requires_grad_(False)
        self.handle = grounding.attach(model, processor)
        if self.hparams.gradient_checkpointing:
            activation_checkpointing_enable(model, use_reentrant=False)
        lora = LoraConfig(r=self.hparams.lora_r, lora_alpha=self.hparams.lora_alpha,
                          lora_dropout=self.hparams.lora_dropout, target_modules=LORA_TARGETS,
                          modules_to_save=self.saved_modules() or None)
        self.model = get_peft_model(model, lora)
        self.model.train()  # load_vlm returns eval mode; the frozen tower stays in eval mode
        if self.grounding.tower is not None:
            self.grounding.tower.eval()
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        stray = [n for n in trainable if "lora_" not in n and not any(m in n for m in self.saved_modules())]
        if stray:
            raise RuntimeError(f"unexpected trainable parameters: {stray[:5]}")
        self._shard()

    @staticmethod
    def _init_projector(model, path: str) -> None:
        from safetensors.torch import load_file

        projector = projector_of(model)
        state, own = load_file(str(Path(path).expanduser())), projector.state_dict()
        if set(state) != set(own):
            raise ValueError(f"{path} does not hold this VLM's projector weights: it has {sorted(state)}, the "
                             f"projector {sorted(own)}")
        try:
            projector.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        except RuntimeError as error:  # shapes
            raise ValueError(f"{path} does not fit this VLM's projector: {error}") from error

    def _load_device(self) -> str:
        """Where the VLM is loaded: this rank's device (no host copy), or the CPU when FSDP shards it from there."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is None or isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
            return "cpu"
        return str(strategy.root_device)

    def _shard(self) -> None:
        """FSDP: set the wrap policy (fsdp) or shard the decoder layers now (model_parallel); else nothing."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDPStrategy) and "auto_wrap_policy" not in strategy.kwargs:
            strategy.kwargs["auto_wrap_policy"] = fsdp_wrap_policy(self.model)
        elif isinstance(strategy, ModelParallelStrategy):
            if strategy._save_distributed_checkpoint:
                raise ValueError("ModelParallelStrategy: set save_distributed_checkpoint: false (or use "
                                 "--trainer.strategy=fsdp2): checkpoints hold the trainable weights only, one small "
                                 "file; Lightning's sharded loader expects every weight of the model in them")
            apply_fsdp2(self.model, strategy.device_mesh["data_parallel"])
            self.strict_loading = False  # Lightning's FSDP2 load wants every weight; _check_resume checked ours
        if self._trainer is not None and self._trainer.ckpt_path:
            self._check_resume(self._trainer.ckpt_path)

    def _check_resume(self, path: str) -> None:
        """Before Lightning loads a checkpoint: it must hold exactly this model's trainable weights."""
        if not Path(path).is_file():
            return  # a sharded directory (not written by this module): Lightning's own loader checks it
        keys = set(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["state_dict"])
        trainable = self.trainable_names()
        saved = {_clean(k) for k in keys}
        missing, unexpected = sorted(trainable - saved), sorted(saved - trainable)
        if missing or unexpected:
            raise RuntimeError(f"{path} does not hold this model's trainable weights: missing {missing[:5]} "
                               f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}). It was saved with "
                               "other LoRA / regions / train_projector settings: resume with those, or start afresh.")

    def saved_modules(self) -> list[str]:
        """Modules trained in full (peft `modules_to_save`): the region projector and/or the VLM's projector."""
        return (["region_projector"] if self.regions_config.num_regions else []) + \
            (["multi_modal_projector"] if self.hparams.train_projector else [])

    def on_fit_start(self) -> None:
        if self.grounding.tower is not None:
            self.grounding.tower.to(self.device)

    def forward(self, **batch):
        return self.model(**batch)

    def answer_loss(self, batch: dict) -> torch.Tensor:
        """Mean next-token cross-entropy over the labelled positions, from their logits only."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        targets = batch["labels"][:, 1:]  # (B, T-1)
        keep = torch.zeros_like(batch["labels"], dtype=torch.bool)  # (B, T): positions whose next token is labelled
        keep[:, :-1] = targets != -100
        if not keep.any():
            raise ValueError("a batch holds no answer tokens: every label is -100")
        logits = self.model(**inputs, logits_to_keep=keep).logits  # (n, V)
        if logits.ndim != 2 or logits.shape[0] != int(keep.sum()):
            raise RuntimeError(f"logits_to_keep with a boolean mask gave logits {tuple(logits.shape)} for "
                               f"{int(keep.sum())} positions: this transformers version does not support it")
        return F.cross_entropy(logits.float(), targets[keep[:, :-1]])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.answer_loss(batch)
        rows = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=rows)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=rows)
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._step_start is None:
            return
        seconds = time.perf_counter() - self._step_start
        tokens = float(batch["attention_mask"].sum())  # this rank's real (unpadded) tokens
        self.log("train/tokens_per_s", tokens / max(seconds, 1e-9), reduce_fx="sum", sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.answer_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        projector_lr = self.hparams.projector_learning_rate or self.hparams.learning_rate
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if "lora_" in n], "lr": self.hparams.learning_rate},
                  {"params": [p for n, p in named if "lora_" not in n], "lr": projector_lr}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hparams.learning_rate,
                                      weight_decay=self.hparams.weight_decay)
        if not self.hparams.warmup_steps and self.hparams.lr_schedule == "constant":
            return optimizer
        total = self.trainer.max_steps if self.hparams.lr_schedule == "cosine" else None
        if total is not None and total <= 0:
            raise ValueError("lr_schedule: cosine needs trainer.max_steps (the step the rate decays to 10% at)")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=self.hparams.warmup_steps,
                                                                         total=total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ trainable-only checkpoints
    def trainable_names(self) -> set[str]:
        """State-dict keys of the trained weights (wrapper prefixes of FSDP / activation checkpointing removed)."""
        return {_clean(n) for n, p in self.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = self.trainable_names()
        return {k: v for k, v in self.state_dict().items() if _clean(k) in names}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        names = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if _clean(k) in names}

    # ------------------------------------------------------------ export
    def export(self, directory: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """lora/: the peft adapter (LoRA + projector copy) and the processor; the RegionGrounding adapter
        (projector + config); safetensors.

        state: the trainable weights gathered from a sharded model (keys of this module); None: the live modules."""

        directory = Path(directory)
        # the processor beside the adapter: its image size is the trained one, which may not be the base's.
        # save_embedding_layers=False: LoRA never targets the embeddings (LORA_TARGETS), and peft's "auto" check
        # would look for the base's config.json on the hub when the base is itself a LoRA folder
        # the plain model's processor, without the region tokens attach() added: load_vlm loads a no-region lora/
        # with it, and the region-tokens method attaches the tokens again (and checks the trained image size)
        extra = self.processor.num_additional_image_tokens
        if self.handle is not None:
            self.processor.num_additional_image_tokens = self.handle.previous_additional_tokens
        try:
            self.processor.save_pretrained(directory / "lora")
        finally:
            self.processor.num_additional_image_tokens = extra
        if state is None:
            self.model.save_pretrained(directory / "lora", safe_serialization=True, save_embedding_layers=False)
            if self.regions_config.num_regions:
                self.grounding.save_pretrained(directory)  # the projector the model runs: peft's trained copy
            return directory
        peft_state = {k.removeprefix("model."): v for k, v in state.items()}
        self.model.save_pretrained(directory / "lora", safe_serialization=True, state_dict=peft_state,
                                save_embedding_layers=False)
        if self.regions_config.num_regions:
            prefix = f"base_model.model.region_projector.modules_to_save.{self.model.active_adapter}."
            weights = {k.removeprefix(prefix): v for k, v in peft_state.items() if k.startswith(prefix)}
            projector = RegionProjector(weights["norm.weight"].shape[0], weights["null"].shape[0],
                                        weights["mlp.0.weight"].shape[0])
            projector.load_state_dict(weights)
            self.grounding.save_pretrained(directory, projector=projector)
        return directory

    def _gathered_trainable_state(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP: the full trainable weights on rank 0 (a collective: every rank calls it); else None."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                state = strategy.model.state_dict()
        elif isinstance(strategy, ModelParallelStrategy):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            return None
        names = self.trainable_names()
        return {_clean(k): v for k, v in state.items() if _clean(k) in names}

    def on_train_end(self) -> None:
        if not self.hparams.export_dir:
            return
        state = self._gathered_trainable_state()
        if self.trainer.is_global_zero:
            self.export(self.hparams.export_dir, state)


_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _clean(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _trainable_only_strict(module: RegionTokensModule, incompatible) -> None:
    """load_state_dict post-hook: checkpoints hold the trainable weights only, so strict loading means exactly those.

    Missing frozen weights are dropped from the report (they come from `vlm`); a missing trainable weight stays in
    it, and so does any unexpected key: `strict=True` then fails and names them."""
    if module.model is None:
        return
    trainable = module.trainable_names()
    for key in [k for k in incompatible.missing_keys if _clean(k) not in trainable]:
        incompatible.missing_keys.remove(key)
