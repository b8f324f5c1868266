"""`grounding fit ...`: LightningCLI over `RegionTokensModule` and `InstructionDataModule`.

    grounding fit --config configs/train/region_tokens_tiny.yaml
    grounding fit --config configs/train/region_tokens_llava15.yaml --trainer.devices=8 --trainer.strategy=ddp
    grounding fit --config configs/train/region_tokens_llava15.yaml --trainer.devices=8 --trainer.strategy=fsdp
    grounding fit --print_config

`--trainer.strategy=fsdp2` is FSDP2 (`fully_shard`; `lightning_modules.sharding.FSDP2Strategy`: data parallel only,
one-file checkpoints); it runs on CPUs (gloo) as well as GPUs. `fsdp` is Lightning's FSDP1 strategy (GPUs).

Defaults a researcher expects: a progress bar in optimizer steps (`StepProgressBar`) unless the config names a
progress bar or turns it off, and Lightning's CSV logger under `default_root_dir` (train/loss, train/lr,
train/tokens_per_s) unless the config chooses a logger (TensorBoard, W&B, ...: any `class_path`) or `false`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .data import InstructionDataModule
from .fit_checks import FitConfigError, check_fit_config
from .module import RegionTokensModule
from .progress import StepProgressBar
from .sharding import FSDP2Strategy

__all__ = ["main", "make_cli", "FitCLI"]


class FitCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        # ranges (lora_r >= 1, a finite learning rate, ...) before any class, model or data is instantiated
        check_fit_config(self.config[self.subcommand] if self.subcommand else self.config)
        super().before_instantiate_classes()

    def instantiate_trainer(self, **kwargs):
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, StepProgressBar()])
        if config.get("strategy") == "fsdp2":
            kwargs.setdefault("strategy", FSDP2Strategy())
        if config.get("logger") in (None, True):
            root = config.get("default_root_dir") or os.getcwd()
            kwargs.setdefault("logger", CSVLogger(save_dir=root, name="logs"))
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except FileNotFoundError as error:
            # a file missing once batches ran is not a setting to fix (a bug, a file removed mid-run): main() shows
            # its traceback; before that (model, tower, data, checkpoint) it is one line
            loop = getattr(getattr(self, "trainer", None), "fit_loop", None)
            error.during_training = bool(loop is not None and loop.epoch_loop.batch_progress.total.started)
            raise


def make_cli(argv: list[str], run: bool = True) -> LightningCLI:
    args = argv if not run else ["fit", *argv]
    # the console script passes its own argv explicitly; LightningCLI warns when sys.argv is also set
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return FitCLI(RegionTokensModule, InstructionDataModule, args=args, run=run,
                  save_config_kwargs={"overwrite": True}, seed_everything_default=0)


class _NoAdvertisingTips(logging.Filter):
    """Drops Lightning's "Tip: try installing litlogger / litmodels" lines (printed at every fit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def main(argv: list[str]) -> int:
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tips = _NoAdvertisingTips()
    rank_zero.addFilter(tips)
    try:
        make_cli(argv)
    except FileNotFoundError as error:  # a missing model, tower, data file or folder: one line, no traceback
        if getattr(error, "during_training", False):
            raise
        print(f"grounding fit: error: {error}", file=sys.stderr)
        return 2
    except FitConfigError as error:  # a setting out of range: one line naming the key
        print(f"grounding fit: error: {error}", file=sys.stderr)
        return 2
    finally:
        rank_zero.removeFilter(tips)
    return 0
