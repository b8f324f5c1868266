"""LightningModule: a Hugging Face LLaVA-style VLM with region tokens attached and LoRA on its language model.

* LoRA (peft) targets the language model only: a regex anchored on `language_model` (both towers also name
  layers q_proj/k_proj/v_proj); the region projector is in `modules_to_save`. Everything else is frozen.
* `dtype="bfloat16"` loads the frozen VLM in bf16 (no fp32 copy, no per-step weight casts under autocast; use
  with `precision: 32-true`); peft keeps the LoRA weights in fp32, the trained projector stays in the model's dtype.
* `train_projector=True` also trains the VLM's own multimodal projector (in `modules_to_save`): what a LLaVA
  whose projector is new (e.g. the embedded `world-llava`) needs.
* Loss = the causal-LM loss on `labels` (-100 everywhere but answer tokens; see the data module), computed from
  the logits of the labelled positions only (`logits_to_keep`): the same number as the model's own loss, without
  projecting every image and prompt token onto the vocabulary.
* Checkpoints keep only trainable weights (LoRA + projector); optimizer and loop state come from Lightning, so
  `ckpt_path=` resumes exactly (the data module's sampler resumes mid-epoch).
* `on_train_end` exports the adapter: peft's `adapter_model.safetensors` + the RegionGrounding projector/config.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F

from grounding.region_tokens import RegionConfig, RegionGrounding

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
    ):
        super().__init__()
        self.save_hyperparameters()
        self.regions_config = regions or RegionConfig()
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.model = None
        self.processor = None
        self.grounding: RegionGrounding | None = None
        self.handle = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model

        from eval.runner import load_vlm
        from grounding.assets import set_image_size

        model, processor = load_vlm(self.hparams.vlm, self.hparams.dtype, "cpu")
        if self.hparams.image_size:  # the VLM's input size (image tokens = (size / patch)^2)
            set_image_size(processor, self.hparams.image_size)
        self.processor = processor
        self.grounding = RegionGrounding(self.regions_config)
        if self.regions_config.num_regions:
            self.grounding.load_tower("cpu").requires_grad_(False)
        self.handle = self.grounding.attach(model, processor)
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
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

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
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()

    # ------------------------------------------------------------ export
    def export(self, directory: str | Path) -> Path:
        """peft adapter (LoRA + projector copy) and the RegionGrounding adapter (projector + config), safetensors."""
        directory = Path(directory)
        self.model.save_pretrained(directory / "lora", safe_serialization=True)
        if self.regions_config.num_regions:
            wrapper = self.model.base_model.model.get_submodule("region_projector")
            copies = getattr(wrapper, "modules_to_save", None)  # peft's trained copy of the projector
            projector = copies[self.model.active_adapter] if copies is not None else wrapper
            self.grounding.save_pretrained(directory, projector=projector)
        return directory

    def on_train_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.export(self.hparams.export_dir)
