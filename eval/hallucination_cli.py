"""`grounding eval pope | chair | score | report | build-pope | lmms-task`.

Every run option can also come from `--config FILE.yaml` (keys are the long option names with underscores);
flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

__all__ = ["add_commands", "resolve_config", "run_config_from_args"]


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file with any of these options")
    parser.add_argument("--model", help="VLM hub name or local directory (image-text-to-text)")
    parser.add_argument("--images", help="folder of the benchmark images (e.g. COCO val2014)")
    parser.add_argument("--methods", default="baseline", help="comma-separated: baseline,highlight,masked-contrast,vcd,region-tokens")
    parser.add_argument("--out", help="run folder")
    parser.add_argument("--tower", default="facebook/dinov2-with-registers-base", help="grounding tower (hub or dir)")
    parser.add_argument("--tower-short-side", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="default: accelerate's device for this process")
    parser.add_argument("--max-image-side", type=int, default=2048,
                        help="decode photos at no more than this many pixels on the longer side (0: full size)")
    parser.add_argument("--method-options", default=None, help='JSON, e.g. \'{"highlight": {"alpha": 0.4}}\'')


def resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv_flags: set[str]) -> argparse.Namespace:
    """Fill options not given on the command line from --config; unknown keys are an error."""
    if not args.config:
        return args
    data = yaml.safe_load(Path(args.config).read_text()) or {}
    known = {a.dest for a in parser._actions}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{args.config}: unknown options {sorted(unknown)}")
    for key, value in data.items():
        if f"--{key.replace('_', '-')}" not in argv_flags:
            setattr(args, key, json.dumps(value) if key == "method_options" and not isinstance(value, str) else value)
    return args


def run_config_from_args(args):
    from .runner import RunConfig

    missing = [name for name in ("model", "images", "out") if not getattr(args, name)]
    if missing:
        raise ValueError(f"missing options: {', '.join('--' + m for m in missing)}")
    return RunConfig(model=args.model, methods=args.methods, out=args.out, tower=args.tower,
                     tower_short_side=args.tower_short_side, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                     seed=args.seed, dtype=args.dtype, device=args.device, max_image_side=args.max_image_side or None,
                     method_options=json.loads(args.method_options) if args.method_options else {})


def _cmd_pope(args) -> int:
    from .benchmarks import PopeBenchmark
    from .runner import run_methods

    args.max_new_tokens = args.max_new_tokens or 64
    config = run_config_from_args(args)
    bench = PopeBenchmark(args.questions or args.split, args.images, args.parser, args.limit)
    results = run_methods(config, bench.items(), bench.task, bench.score,
                          {"split": args.split, "questions": args.questions, "parser": args.parser})
    for method, m in results.items():
        print(f"{method:16s} acc {m['accuracy']:6.2f}  prec {m['precision']:6.2f}  rec {m['recall']:6.2f}  "
              f"F1 {m['f1']:6.2f}  yes {m['yes_ratio']:6.2f}  unknown {m['unknown']}")
    return 0


def _cmd_chair(args) -> int:
    from .benchmarks import ChairBenchmark, chair_image_ids
    from .records import write_json
    from .runner import run_methods

    args.max_new_tokens = args.max_new_tokens or 512
    config = run_config_from_args(args)
    if not args.annotations:
        raise ValueError("chair needs --annotations DIR (COCO 2014: instances_val2014.json, captions_*.json)")
    image_list = chair_image_ids(args.annotations, args.num_images, args.seed)
    write_json(Path(args.out) / "image_ids.json", {"seed": args.seed, "num_images": args.num_images, "images": image_list})
    bench = ChairBenchmark(args.images, args.annotations, args.ground_truth, image_list)
    results = run_methods(config, bench.items(), bench.task, bench.score,
                          {"num_images": args.num_images, "annotations": args.annotations})
    for method, m in results.items():
        print(f"{method:16s} CHAIR_s {m['chair_s']:6.2f}  CHAIR_i {m['chair_i']:6.2f}  recall {m['recall']:6.2f}  "
              f"len {m['mean_length']:6.1f}")
    return 0


def _lmms_eval_sample(row: dict) -> dict:
    """An lmms-eval --log_samples row (POPE task) -> {question_id, answer}: the raw response, before its parser."""
    response = row["filtered_resps"]
    response = response[0] if isinstance(response, list) else response
    metric = next((v for v in row.values() if isinstance(v, dict) and "question_id" in v), row.get("doc", {}))
    return {"question_id": metric["question_id"], "answer": response}


def _answers_by_question(path: Path, questions: list[dict]) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if rows and "filtered_resps" in rows[0]:  # lmms-eval's samples file
        rows = [_lmms_eval_sample(r) for r in rows]
    text_field = next((f for f in ("answer", "text", "output", "prediction") if rows and f in rows[0]), None)
    if text_field is None:
        raise ValueError(f"{path}: no answer field (answer / text / output / prediction)")
    if rows and "question_id" in rows[0]:
        by_id = {r["question_id"]: r[text_field] for r in rows}
        missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
        if missing:
            raise ValueError(f"{path}: no answers for {len(missing)} questions (e.g. {missing[:3]})")
        return [by_id[q["question_id"]] for q in questions]
    if len(rows) != len(questions):  # the official POPE answer files have no ids: line order
        raise ValueError(f"{path}: {len(rows)} answers without question ids for {len(questions)} questions")
    return [r[text_field] for r in rows]


def _cmd_score(args) -> int:
    from .benchmarks import score_captions
    from .chair import ground_truth_from_coco, ground_truth_from_json
    from .pope import load_questions, parse_answer, pope_metrics
    from .records import run_metadata, write_json

    out = Path(args.out)
    if args.kind == "pope":
        questions = load_questions(args.questions)
        answers = _answers_by_question(Path(args.answers), questions)
        parsed = [parse_answer(a, args.parser) for a in answers]
        metrics = {**pope_metrics([q["label"] for q in questions], parsed), "parser": args.parser}
        per_item = [{"question_id": q["question_id"], "label": q["label"], "answer": a, "parsed": p}
                    for q, a, p in zip(questions, answers, parsed)]
        print(f"acc {metrics['accuracy']:.2f}  F1 {metrics['f1']:.2f}  yes {metrics['yes_ratio']:.2f}")
        if args.lmms_eval:
            from .lmms_pope import lmms_eval_pope_scores

            metrics["lmms_eval"] = lmms_eval_pope_scores([q["question_id"] for q in questions],
                                                         [q["label"] for q in questions], answers)
            m = metrics["lmms_eval"]
            print(f"lmms-eval's POPE scoring on the same answers: acc {m['accuracy']:.2f}  F1 {m['f1']:.2f}  "
                  f"yes {m['yes_ratio']:.2f} (of the labels)  neither yes nor no {m['neither_yes_nor_no']}")
    else:
        rows = [json.loads(line) for line in Path(args.captions).read_text().splitlines() if line.strip()]
        truth = ground_truth_from_json(args.ground_truth) if args.ground_truth else ground_truth_from_coco(args.annotations)
        metrics = score_captions([{"image_id": r["image_id"], "caption": r["caption"]} for r in rows], truth)
        per_item = metrics.pop("per_caption")
        print(f"CHAIR_s {metrics['chair_s']:.2f}  CHAIR_i {metrics['chair_i']:.2f}  recall {metrics['recall']:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_item.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_item))
    task = "question" if args.kind == "pope" else "caption"
    write_json(out / "metrics.json", {"task": task, "results": {"scored": metrics}, **run_metadata(vars(args))})
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    report = write_report(args.runs, args.out or Path(args.runs[0]).parent / "report")
    print(report.read_text())
    return 0


def _cmd_lmms_task(args) -> int:
    from .lmms_pope import LMMS_POST_PROMPT, write_pope_task

    path = write_pope_task(args.questions, args.images, args.out, name=args.name,
                           post_prompt=LMMS_POST_PROMPT if args.lmms_prompt else "",
                           max_image_side=args.max_image_side, max_new_tokens=args.max_new_tokens, limit=args.limit)
    print(f"lmms-eval task {args.name} -> {path}\n  lmms-eval --model grounded_vlm --model_args pretrained=MODEL,"
          f"method=highlight --tasks {args.name} --include_path {path.parent} --output_path OUT --log_samples")
    return 0


def _cmd_build_pope(args) -> int:
    from .pope import build_pope

    instances = json.loads(Path(args.instances).read_text())
    questions = build_pope(instances, args.split, args.num_images, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(q) + "\n" for q in questions))
    print(f"{len(questions)} questions -> {args.out}")
    return 0


def add_commands(evaluation) -> None:
    p = evaluation.add_parser("pope", help="POPE: yes/no object questions")
    _run_args(p)
    p.add_argument("--split", default="adversarial", help="random|popular|adversarial or coco_/aokvqa_/gqa_<split>")
    p.add_argument("--questions", default=None, help="a question file instead of a shipped split")
    p.add_argument("--parser", default="official", choices=["official", "strict", "substring"])
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.set_defaults(func=_cmd_pope, parser_obj=p)

    p = evaluation.add_parser("chair", help="CHAIR: object hallucination in captions")
    _run_args(p)
    p.add_argument("--annotations", default=None, help="COCO 2014 annotation folder")
    p.add_argument("--ground-truth", default=None, help="JSON image id -> object names (instead of captions)")
    p.add_argument("--num-images", type=int, default=500)
    p.set_defaults(func=_cmd_chair, parser_obj=p)

    p = evaluation.add_parser("score", help="score answers / captions produced elsewhere")
    p.add_argument("kind", choices=["pope", "chair"])
    p.add_argument("--questions", help="pope: question file or shipped split")
    p.add_argument("--answers", help="pope: JSONL answers (question_id + answer/text), or one per line in order")
    p.add_argument("--parser", default="official", choices=["official", "strict", "substring"])
    p.add_argument("--captions", help="chair: JSONL with image_id and caption")
    p.add_argument("--ground-truth", default=None)
    p.add_argument("--annotations", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--lmms-eval", action="store_true",
                   help="pope: also lmms-eval's POPE scoring of the same answers (needs lmms-eval installed)")
    p.set_defaults(func=_cmd_score)

    p = evaluation.add_parser("report", help="markdown table + plots over run folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None)
    p.set_defaults(func=_cmd_report)

    p = evaluation.add_parser("build-pope", help="make POPE questions from a COCO-format instance file")
    p.add_argument("--instances", required=True)
    p.add_argument("--split", default="adversarial", choices=["random", "popular", "adversarial"])
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_build_pope)

    p = evaluation.add_parser("lmms-task", help="an lmms-eval task folder for a POPE question file (offline)")
    p.add_argument("--questions", required=True, help="POPE question file or shipped split")
    p.add_argument("--images", required=True, help="folder of the images the questions name")
    p.add_argument("--out", required=True, help="task folder (pass it to lmms-eval --include_path)")
    p.add_argument("--name", default="pope_local", help="task name for lmms-eval --tasks")
    p.add_argument("--lmms-prompt", action="store_true",
                   help="append lmms-eval's POPE post-prompt (default: the question alone, as `eval pope`)")
    p.add_argument("--max-image-side", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.set_defaults(func=_cmd_lmms_task)
