"""A Lightning callback for the distributed fit tests (imported by `grounding fit` subprocesses via PYTHONPATH).

Per rank it appends one JSON line per training batch: the step, the batch index, the dataset indices the rank's
DistributedSampler gave for this batch, the labelled token ids of the batch (to match them to those records), and
whether the weights are sharded (FSDP2 DTensors).
With $FIT_PROBE_KILL_AT_STEP, every rank SIGKILLs itself right after that optimizer step: a run killed mid-epoch
(the same config then resumes it)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchProbe(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        kill = os.environ.get("FIT_PROBE_KILL_AT_STEP")
        self.kill_at_step = int(kill) if kill else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        datamodule = trainer.datamodule
        size = datamodule.hparams.batch_size
        order = list(iter(datamodule.sampler))  # this rank's share of this epoch, in order
        labels = batch["labels"]
        record = {"step": trainer.global_step + 1, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
                  "resumed": trainer.ckpt_path is not None,
                  "indices": order[batch_idx * size : (batch_idx + 1) * size],
                  "labelled": [row[row != -100].tolist() for row in labels],
                  "sharded": any(type(p).__name__ == "DTensor" for p in pl_module.parameters())}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.kill_at_step is not None and trainer.global_step >= self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
