"""The training progress bar of `grounding fit`: optimizer steps out of `max_steps` when the run is bounded by steps.

Lightning's bars count batches per epoch and, with `max_steps` and no `max_epochs`, label it "Epoch 0/-2" (its
Rich bar) or restart at 0 on a resumed run; with gradient accumulation their total is off by the accumulation
factor. This bar shows `step g/max_steps` across epochs and resumes, with the epoch and the logged metrics as its
postfix; runs bounded by epochs keep Lightning's per-epoch bar, labelled "Epoch e/last".
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["StepProgressBar"]


class StepProgressBar(TQDMProgressBar):
    @staticmethod
    def _by_steps(trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self._by_steps(trainer):
            self.train_progress_bar.reset(total=trainer.max_steps)
            self.train_progress_bar.n = trainer.global_step  # a resumed run starts where it stopped
            self.train_progress_bar.set_description("step")

    def on_train_epoch_start(self, trainer, *args) -> None:
        if not self._by_steps(trainer):
            super().on_train_epoch_start(trainer, *args)
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}/{trainer.max_epochs - 1}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and self._should_update(trainer.global_step, trainer.max_steps):
            bar.n = trainer.global_step
            bar.set_postfix({"epoch": trainer.current_epoch, **self.get_metrics(trainer, pl_module)})
            bar.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._by_steps(trainer):
            super().on_train_epoch_end(trainer, pl_module)
