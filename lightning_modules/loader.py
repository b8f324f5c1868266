"""torchdata's `StatefulDataLoader`, with the state Lightning saves taken after the batches the trainer *trained on*.

Lightning keeps one batch in flight (it fetches batch i+1 before running step i, to know whether i is the last),
and it saves `loader.state_dict()` in mid-epoch checkpoints. A plain StatefulDataLoader would then record one batch
too many and a resumed run would skip it. This loader keeps a copy of its state after each yielded batch and, when
asked, returns the one for the trainer's count of batches taken in this epoch (`position()`); with no position (or
none recorded yet) it is a plain StatefulDataLoader. Everything else, distributed samplers, workers and their
fast-forward on resume, is torchdata's. Checkpoints written by this project's earlier loader ({"epoch", "samples"})
resume too (in-process loading: num_workers 0), at the same sample.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["TrainerStatefulLoader"]

KEEP = 8  # states kept: more than the batches a trainer holds in flight


class TrainerStatefulLoader(StatefulDataLoader):
    """StatefulDataLoader(dataset, ..., position=callable): `state_dict()` is the state after `position()` batches."""

    def __init__(self, *args, position: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position
        self._states: dict[int, dict[str, Any]] = {}

    def __iter__(self):
        iterator = super().__iter__()
        self._states = {}
        return _Recorder(self, iterator)

    def _record(self, iterator) -> None:
        count = iterator._num_yielded  # batches yielded in this epoch, resumed ones included
        self._states[count] = copy.deepcopy(iterator.state_dict())
        for old in [n for n in self._states if n <= count - KEEP]:
            del self._states[old]

    def state_dict(self) -> dict[str, Any]:
        if self.position is not None:
            state = self._states.get(self.position())
            if state is not None:
                return copy.deepcopy(state)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) == {"epoch", "samples"}:
            state_dict = self._from_samples(int(state_dict["samples"]))
        super().load_state_dict(state_dict)

    def _from_samples(self, samples: int) -> dict[str, Any]:
        """The state of this loader after `samples` samples of the epoch (the earlier loader's checkpoint format)."""
        if self.num_workers:
            raise ValueError("this checkpoint was written by the earlier loader ({'epoch', 'samples'}): resume it with "
                             "data.num_workers: 0, or start afresh")
        fresh = StatefulDataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                   collate_fn=self.collate_fn, num_workers=0)
        state = fresh.state_dict()  # a fresh epoch, then moved on by `samples` (whole batches: a multiple of the size)
        batches = samples // self.batch_size
        state["_sampler_iter_yielded"] = state["_num_yielded"] = batches
        if isinstance(state.get("_sampler_iter_state"), dict) and "samples_yielded" in state["_sampler_iter_state"]:
            state["_sampler_iter_state"]["samples_yielded"] = samples  # torchdata's batch-sampler iterator
        return state


class _Recorder:
    """The loader's iterator, recording the state after each batch it yields."""

    def __init__(self, loader: TrainerStatefulLoader, iterator):
        self.loader, self.iterator = loader, iterator

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.iterator)
        self.loader._record(self.iterator)
        return batch

    def __len__(self) -> int:
        return len(self.iterator)
