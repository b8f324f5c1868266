"""`grounding fit ...`: LightningCLI over `RegionTokensModule` and `InstructionDataModule`.

    grounding fit --config configs/train/region_tokens_tiny.yaml
    grounding fit --config configs/train/region_tokens_llava15.yaml --trainer.strategy=fsdp
    grounding fit --print_config
"""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.cli import LightningCLI

from .data import InstructionDataModule
from .module import RegionTokensModule

__all__ = ["main", "make_cli"]


def make_cli(argv: list[str], run: bool = True) -> LightningCLI:
    args = argv if not run else ["fit", *argv]
    # the console script passes its own argv explicitly; LightningCLI warns when sys.argv is also set
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return LightningCLI(RegionTokensModule, InstructionDataModule, args=args, run=run,
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
    finally:
        rank_zero.removeFilter(tips)
    return 0
