"""`grounding eval report RUN [RUN ...]`: one markdown table of every metric for every method, plus PNG plots
(accuracy / F1 bars per run, prediction yes-ratio, CHAIR_i against recall), so the helpful method stands out.
"""

from __future__ import annotations

from pathlib import Path

from grounding.annotations import read_json
from grounding.viz import new_figure

__all__ = ["write_report", "load_runs"]

POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown", "questions", "scored", "skipped")
CHAIR_KEYS = ("chair_s", "chair_i", "recall", "mean_length", "captions", "scored", "skipped")


def load_runs(folders: list[str | Path]) -> list[dict]:
    runs = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {folder} a finished run folder?")
        data = read_json(path, "run metrics file")
        if "task" not in data or "results" not in data:
            raise ValueError(f"{path} is not a POPE/CHAIR run (no task/results)")
        runs.append({"name": Path(folder).name, **data})
    return runs


def _table(rows: list[tuple[str, str, dict]], keys: tuple[str, ...]) -> list[str]:
    lines = ["| run | method | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for run, method, metrics in rows:
        cells = [f"{metrics[k]:.2f}" if isinstance(metrics.get(k), float) else str(metrics.get(k, "")) for k in keys]
        lines.append(f"| {run} | {method} | " + " | ".join(cells) + " |")
    return lines


def _bars(rows, keys, path: Path, title: str) -> None:
    figure = new_figure(figsize=(4 * len(keys), 3.2))
    axes = figure.subplots(1, len(keys), squeeze=False)
    labels = [f"{run}\n{method}" for run, method, _ in rows]
    for axis, key in zip(axes[0], keys):
        axis.bar(range(len(rows)), [m[key] for _, _, m in rows], color="#007aff")
        axis.set_xticks(range(len(rows)), labels, fontsize=6, rotation=45, ha="right")
        axis.set_title(key, fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_report(folders: list[str | Path], out_dir: str | Path) -> Path:
    runs = load_runs(folders)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pope = [(r["name"], m, v) for r in runs if r["task"] == "question" for m, v in r["results"].items()]
    chair = [(r["name"], m, v) for r in runs if r["task"] == "caption" for m, v in r["results"].items()]
    lines = ["# Hallucination report", ""]
    if pope:
        lines += ["## POPE", "", *_table(pope, POPE_KEYS), "", "![POPE](pope.png)", ""]
        _bars(pope, ("accuracy", "f1", "yes_ratio"), out_dir / "pope.png", "POPE (yes-ratio: of the predictions)")
    if chair:
        lines += ["## CHAIR", "", *_table(chair, CHAIR_KEYS), "", "![CHAIR](chair.png)", ""]
        figure = new_figure(figsize=(4.5, 3.5))
        axis = figure.subplots()
        for run, method, metrics in chair:
            axis.scatter(metrics["recall"], metrics["chair_i"])
            axis.annotate(f"{run}/{method}", (metrics["recall"], metrics["chair_i"]), fontsize=7)
        axis.set_xlabel("recall (higher is better)")
        axis.set_ylabel("CHAIR_i (lower is better)")
        figure.tight_layout()
        figure.savefig(out_dir / "chair.png", dpi=120)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
