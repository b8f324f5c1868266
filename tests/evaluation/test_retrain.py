"""eval.retrain's bookkeeping: a fit killed and resumed reports the time of all its runs, not the last one's."""

import json
import os
import time


def test_a_resumed_fit_counts_its_earlier_runs_up_to_the_checkpoint(tmp_path, monkeypatch):
    import lightning_modules.cli as cli
    from eval.retrain import _fit

    calls = []

    def fake_fit(args):  # stands in for `grounding fit`: the first run writes last.ckpt and is "killed"
        calls.append(args)
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"step")
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", fake_fit)
    try:
        _fit(tmp_path / "c.yaml", tmp_path, [])
    except KeyboardInterrupt:
        pass
    clock = json.loads((tmp_path / "fit_clock.json").read_text())
    assert clock["earlier_seconds"] == 0.0 and not any(a.startswith("--ckpt_path") for a in calls[0])
    last = tmp_path / "checkpoints" / "last.ckpt"
    os.utime(last, (clock["started"] + 100.0, clock["started"] + 100.0))  # the checkpoint came 100 s into run 1
    seconds = _fit(tmp_path / "c.yaml", tmp_path, [])
    assert f"--ckpt_path={last}" in calls[1]
    assert 100.0 <= seconds < 100.0 + 60.0
    assert json.loads((tmp_path / "fit_clock.json").read_text())["started"] <= time.time()
