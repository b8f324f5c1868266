"""`grounding eval pope | chair | score | report | build-pope | lmms-task`.

Every run option can also come from `--config FILE.yaml` (keys are the long option names with underscores);
flags given on the command line win over the file, and the file's values go through the flags' own types and
choices. A run folder resumes only a run with the same settings (`--overwrite` starts it afresh); see
`eval.runner`. Input files are checked before any model loads, and every error names the file, line, field or
option at fault.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from .config_checks import read_yaml
from .cli_types import config_value, nonnegative_int, positive_float, positive_int

__all__ = ["add_commands", "resolve_config", "run_config_from_args"]


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file with any of these options")
    parser.add_argument("--model", help="VLM hub name or local directory (image-text-to-text)")
    parser.add_argument("--images", help="folder of the benchmark images (e.g. COCO val2014)")
    parser.add_argument("--methods", default="baseline",
                        help="comma-separated: baseline,highlight,masked-contrast,vcd,region-tokens,region-evidence; "
                             "mask-source twins METHOD@random, METHOD@oracle (highlight, masked-contrast, "
                             "region-evidence; @oracle: --method-options '{\"METHOD@oracle\": {\"oracle_instances\": "
                             "\"FILE\"}}', default for chair: --annotations' instances_val2014.json)")
    parser.add_argument("--out", help="run folder")
    parser.add_argument("--tower", default="facebook/dinov2-with-registers-base", help="grounding tower (hub or dir)")
    parser.add_argument("--tower-short-side", type=positive_int, default=224)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="default: 64 for pope, 512 for chair")
    parser.add_argument("--do-sample", action="store_true",
                        help="sample (full softmax, each item from its own seed) instead of greedy decoding")
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="default: accelerate's device for this process")
    parser.add_argument("--max-image-side", type=nonnegative_int, default=2048,
                        help="decode photos at no more than this many pixels on the longer side (0: full size)")
    parser.add_argument("--method-options", default=None, help='JSON, e.g. \'{"highlight": {"alpha": 0.4}}\'')
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the methods' earlier answers in --out (once this run has succeeded) instead of "
                             "refusing other settings")


def resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   argv_flags: set[str]) -> argparse.Namespace:
    """Fill options not given on the command line from --config; unknown keys and values the flag would refuse
    are an error naming the file and the key."""
    if not args.config:
        return args
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    data = read_yaml(path, "--config")
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected option: value pairs, got a {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = sorted(str(k) for k in data if k not in actions)
    if unknown:
        raise ValueError(f"--config {path}: unknown options {unknown}; it takes {', '.join(sorted(actions))}")
    for key, value in data.items():
        if any(flag in argv_flags for flag in actions[key].option_strings):
            continue
        if key == "method_options":
            value = value if value is None or isinstance(value, str) else json.dumps(value)
        elif key == "methods" and isinstance(value, list):
            value = ",".join(map(str, value))
        setattr(args, key, config_value(actions[key], value, f"--config {path}"))
    return args


def _method_options(text: str | None) -> dict:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--method-options: not valid JSON ({error.msg} at column {error.colno}): {text}") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError(f"--method-options must be a JSON object of method: {{option: value}}, e.g. "
                         f"'{{\"highlight\": {{\"alpha\": 0.4}}}}'; got {text}")
    return options


def _oracle_options(methods: str | list[str], options: dict, images: str, annotations: str | None) -> dict:
    """`options` with what the methods that read ground-truth masks (mask_source oracle: the @oracle twins, or an
    option) need from the command line: oracle_images defaults to --images (the items' own images), and
    oracle_instances to --annotations' instances_val2014.json when there is one (chair); without it, an error that
    says how to give it. Checked before any model loads."""
    import dataclasses

    from grounding.methods import METHODS, method_options

    names = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)
    options = {name: dict(values) for name, values in options.items()}
    for name in names:
        rule = method_options(name) if name in METHODS else None
        if not (dataclasses.is_dataclass(rule) and isinstance(rule, type)):
            continue
        fields = {f.name: f for f in dataclasses.fields(rule)}
        given = options.get(name, {})
        if "mask_source" not in fields or given.get("mask_source", fields["mask_source"].default) != "oracle":
            continue
        instances = Path(annotations) / "instances_val2014.json" if annotations else None
        if not given.get("oracle_instances"):
            if instances is None or not instances.is_file():
                raise ValueError(f"{name} reads ground-truth masks (mask_source oracle): give their COCO instances "
                                 f"file with --method-options '{{\"{name}\": {{\"oracle_instances\": \"FILE\"}}}}' "
                                 "(COCO's instances_val2014.json, a world's annotations/instances.json)")
            given["oracle_instances"] = str(instances)
        if not Path(given["oracle_instances"]).expanduser().is_file():
            raise FileNotFoundError(f"--method-options {name}.oracle_instances: no such file: "
                                    f"{given['oracle_instances']}")
        given.setdefault("oracle_images", images)
        options[name] = given
    return options


def run_config_from_args(args):
    from .runner import RunConfig

    missing = [name for name in ("model", "images", "out") if not getattr(args, name)]
    if missing:
        raise ValueError(f"missing options: {', '.join('--' + m.replace('_', '-') for m in missing)}")
    if not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images}: no such folder")
    from .atomic import check_new_folder

    check_new_folder(args.out, True, "--out")  # a file given as --out: named, not "[Errno 17] File exists"
    return RunConfig(model=args.model, methods=args.methods, out=args.out, tower=args.tower,
                     tower_short_side=args.tower_short_side, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                     seed=args.seed, dtype=args.dtype, device=args.device, max_image_side=args.max_image_side or None,
                     method_options=_oracle_options(args.methods, _method_options(args.method_options), args.images,
                                                    getattr(args, "annotations", None)),
                     overwrite=args.overwrite)


def _print_counts(method: str, metrics: dict) -> None:
    if metrics.get("skipped"):
        example = metrics["skipped_examples"][0]
        print(f"warning: {method}: {metrics['skipped']} of {metrics['scored'] + metrics['skipped']} items skipped "
              f"(e.g. {example['key']!r}: {example['reason']}); the figures cover the {metrics['scored']} scored; "
              "rerun the same command to retry them", file=sys.stderr)


def _cmd_pope(args) -> int:
    from .benchmarks import PopeBenchmark
    from .runner import run_methods

    args.max_new_tokens = args.max_new_tokens or 64
    config = run_config_from_args(args)
    bench = PopeBenchmark(args.questions or args.split, args.images, args.parser, args.limit)
    items = bench.items()
    unlabelled = [it.key for it in items if it.extra.get("label") is None]
    if unlabelled:  # scoring needs them: refused before any model loads, not after every question was answered
        raise ValueError(f"{args.questions or args.split}: {len(unlabelled)} questions have no yes/no label (e.g. "
                         f"{unlabelled[:3]}); POPE scores answers against a label per question")
    results = run_methods(config, items, bench.task, bench.score,
                          {"split": None if args.questions else args.split, "questions": args.questions,
                           "parser": args.parser})
    for method, m in results.items():
        print(f"{method:16s} acc {m['accuracy']:6.2f}  prec {m['precision']:6.2f}  rec {m['recall']:6.2f}  "
              f"F1 {m['f1']:6.2f}  yes {m['yes_ratio']:6.2f}  unknown {m['unknown']}  scored {m['scored']}  "
              f"skipped {m['skipped']}")
    for method, m in results.items():
        _print_counts(method, m)
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
    bench = ChairBenchmark(args.images, args.annotations, args.ground_truth, image_list)
    bench.check_truth()  # the ground truth is read (and checked) before any model loads
    results = run_methods(config, bench.items(), bench.task, bench.score,
                          {"num_images": args.num_images, "annotations": args.annotations})
    write_json(Path(args.out) / "image_ids.json",
               {"seed": args.seed, "num_images": args.num_images, "images": image_list})
    for method, m in results.items():
        print(f"{method:16s} CHAIR_s {m['chair_s']:6.2f}  CHAIR_i {m['chair_i']:6.2f}  recall {m['recall']:6.2f}  "
              f"len {m['mean_length']:6.1f}  scored {m['scored']}  skipped {m['skipped']}")
    for method, m in results.items():
        _print_counts(method, m)
    return 0


def _cmd_score(args) -> int:
    from .answers import caption_rows, pope_answers
    from .atomic import check_new_folder
    from .benchmarks import score_captions
    from .chair import ground_truth_from_coco, ground_truth_from_json
    from .pope import load_questions, parse_answer, pope_metrics
    from .records import run_metadata, write_json, write_jsonl

    out = check_new_folder(args.out, True, "--out")  # a file given as --out: refused before anything is read
    skipped = []
    if args.kind == "pope":
        if not args.questions:
            raise ValueError("missing --questions (a question file or a shipped split such as coco_adversarial)")
        questions = load_questions(args.questions)
        unlabelled = [q["question_id"] for q in questions if "label" not in q]
        if unlabelled:
            raise ValueError(f"{args.questions}: {len(unlabelled)} questions have no yes/no label (e.g. "
                             f"{unlabelled[:3]}): cannot score")
        questions, answers, skipped = pope_answers(args.answers, questions)
        parsed = [parse_answer(a, args.parser) for a in answers]
        metrics = {**pope_metrics([q["label"] for q in questions], parsed), "parser": args.parser}
        per_item = [{"question_id": q["question_id"], "label": q["label"], "answer": a, "parsed": p}
                    for q, a, p in zip(questions, answers, parsed)]
        print(f"acc {metrics['accuracy']:.2f}  F1 {metrics['f1']:.2f}  yes {metrics['yes_ratio']:.2f}  "
              f"({metrics['questions']} questions)")
        if args.lmms_eval:
            from .lmms_pope import lmms_eval_pope_scores

            metrics["lmms_eval"] = lmms_eval_pope_scores([q["question_id"] for q in questions],
                                                         [q["label"] for q in questions], answers)
            m = metrics["lmms_eval"]
            print(f"lmms-eval's POPE scoring on the same answers: acc {m['accuracy']:.2f}  F1 {m['f1']:.2f}  "
                  f"yes {m['yes_ratio']:.2f} (of the labels)  neither yes nor no {m['neither_yes_nor_no']}")
    else:
        if not args.ground_truth and not args.annotations:
            raise ValueError("chair needs --annotations DIR (COCO 2014 instances_/captions_*.json) or --ground-truth "
                             "FILE (JSON image id -> object names)")
        captions, skipped = caption_rows(args.captions)
        truth = (ground_truth_from_json(args.ground_truth) if args.ground_truth
                 else ground_truth_from_coco(args.annotations))
        truth = {str(k): v for k, v in truth.items()}  # 1 and "1" are the same image
        missing = [c["image_id"] for c in captions if str(c["image_id"]) not in truth]
        if missing:
            raise ValueError(f"{args.captions}: {len(missing)} image ids have no ground truth in "
                             f"{args.ground_truth or args.annotations} (e.g. {missing[:3]})")
        metrics = score_captions(captions, truth)
        per_item = metrics.pop("per_caption")
        print(f"CHAIR_s {metrics['chair_s']:.2f}  CHAIR_i {metrics['chair_i']:.2f}  recall {metrics['recall']:.2f}  "
              f"({metrics['captions']} captions)")
    if skipped:
        example = skipped[0].get("key", skipped[0].get("question_id", skipped[0].get("image_id")))
        print(f"warning: {len(skipped)} items of {args.answers or args.captions} were skipped by their run (e.g. "
              f"{example!r}: {skipped[0].get('skipped')}); the figures cover the other "
              f"{len(per_item)}, as the run's own did", file=sys.stderr)
    metrics.update(scored=len(per_item), skipped=len(skipped))
    task = "question" if args.kind == "pope" else "caption"
    check_new_folder(out, args.overwrite, "--out", ("metrics.json", "per_item.jsonl"))
    write_json(out / "metrics.json", {"task": task, "results": {"scored": metrics}, **run_metadata(vars(args))})
    write_jsonl(out / "per_item.jsonl", per_item)
    return 0


def _cmd_report(args) -> int:
    from .atomic import check_new_folder
    from .report import load_runs, write_report

    out = args.out or Path(args.runs[0]).parent / "report"
    load_runs(args.runs)  # every run folder readable before anything is written
    check_new_folder(out, args.overwrite, "--out", ("report.md", "pope.png", "chair.png"))
    report = write_report(args.runs, out)
    print(report.read_text())
    return 0


def _cmd_lmms_task(args) -> int:
    from .atomic import check_new_folder
    from .lmms_pope import LMMS_POST_PROMPT, write_pope_task

    check_new_folder(args.out, args.overwrite, "--out", (f"{args.name}.yaml", f"{args.name}.jsonl"))
    path = write_pope_task(args.questions, args.images, args.out, name=args.name,
                           post_prompt=LMMS_POST_PROMPT if args.lmms_prompt else "",
                           max_image_side=args.max_image_side or None, max_new_tokens=args.max_new_tokens,
                           limit=args.limit)
    print(f"lmms-eval task {args.name} -> {path}\n  lmms-eval --model grounded_vlm --model_args pretrained=MODEL,"
          f"method=highlight --tasks {args.name} --include_path {path.parent} --output_path OUT --log_samples")
    return 0


def _check_instances(instances: dict, path: str) -> None:
    """Every image, category and annotation as build-pope reads them: one line naming the entry at fault."""
    for key, fields in (("images", ("id", "file_name")), ("categories", ("id", "name")),
                        ("annotations", ("image_id", "category_id"))):
        if not isinstance(instances[key], list):
            raise ValueError(f"{path}: {key} must be a list, got {type(instances[key]).__name__}")
        for i, entry in enumerate(instances[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise ValueError(f"{path}: {key}[{i}] has no {', '.join(missing)}")
    categories = {c["id"] for c in instances["categories"]}
    for i, ann in enumerate(instances["annotations"]):
        if ann["category_id"] not in categories:
            raise ValueError(f"{path}: annotations[{i}] names category_id {ann['category_id']!r}, which is not among "
                             "the categories")


def _cmd_build_pope(args) -> int:
    from .pope import build_pope

    from grounding.annotations import read_json

    from .atomic import write_new_file

    out = Path(args.out)
    if out.is_dir() or (out.exists() and not args.overwrite):
        write_new_file(out, "", overwrite=args.overwrite)  # refused with the reason before any work (writes nothing)
    instances = read_json(args.instances, "COCO instances file (--instances)", ("images", "annotations", "categories"))
    _check_instances(instances, args.instances)
    questions = build_pope(instances, args.split, args.num_images, args.seed)
    if not questions:
        raise ValueError(f"{args.instances}: no image has 3 or more distinct object categories (of "
                         f"{len(instances['images'])} images, {len(instances['annotations'])} annotations): no POPE "
                         "questions can be made; nothing written")
    write_new_file(out, "".join(json.dumps(q) + "\n" for q in questions), overwrite=args.overwrite)
    print(f"{len(questions)} questions -> {args.out}")
    return 0


def add_commands(evaluation) -> None:
    p = evaluation.add_parser("pope", help="POPE: yes/no object questions", allow_abbrev=False)
    _run_args(p)
    p.add_argument("--split", default="adversarial", help="random|popular|adversarial or coco_/aokvqa_/gqa_<split>")
    p.add_argument("--questions", default=None, help="a question file instead of a shipped split")
    p.add_argument("--parser", default="official", choices=["official", "strict", "substring"])
    p.add_argument("--limit", type=positive_int, default=None, help="first N questions only")
    p.set_defaults(func=_cmd_pope, parser_obj=p)

    p = evaluation.add_parser("chair", help="CHAIR: object hallucination in captions", allow_abbrev=False)
    _run_args(p)
    p.add_argument("--annotations", default=None, help="COCO 2014 annotation folder")
    p.add_argument("--ground-truth", default=None, help="JSON image id -> object names (instead of captions)")
    p.add_argument("--num-images", type=positive_int, default=500)
    p.set_defaults(func=_cmd_chair, parser_obj=p)

    p = evaluation.add_parser("score", help="score answers / captions produced elsewhere")
    p.add_argument("kind", choices=["pope", "chair"])
    p.add_argument("--questions", help="pope: question file or shipped split")
    p.add_argument("--answers", help="pope: JSONL answers matched by id (question_id or a run's key, + answer/text; "
                                     "a run's predictions.jsonl as it is), or plain text, one answer per line in "
                                     "the question file's order")
    p.add_argument("--parser", default="official", choices=["official", "strict", "substring"])
    p.add_argument("--captions", help="chair: JSONL with image_id and caption")
    p.add_argument("--ground-truth", default=None)
    p.add_argument("--annotations", default=None)
    p.add_argument("--out", required=True, help="folder for metrics.json and per_item.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace the metrics.json / per_item.jsonl in --out")
    p.add_argument("--lmms-eval", action="store_true",
                   help="pope: also lmms-eval's POPE scoring of the same answers (needs lmms-eval installed)")
    p.set_defaults(func=_cmd_score)

    p = evaluation.add_parser("report", help="markdown table + plots over run folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="report folder (default: report/ beside the first run)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.set_defaults(func=_cmd_report)

    p = evaluation.add_parser("build-pope", help="make POPE questions from a COCO-format instance file")
    p.add_argument("--instances", required=True)
    p.add_argument("--split", default="adversarial", choices=["random", "popular", "adversarial"])
    p.add_argument("--num-images", type=positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="question file to write (JSON lines)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (once the new file is ready)")
    p.set_defaults(func=_cmd_build_pope)

    p = evaluation.add_parser("lmms-task", help="an lmms-eval task folder for a POPE question file (offline)")
    p.add_argument("--questions", required=True, help="POPE question file or shipped split")
    p.add_argument("--images", required=True, help="folder of the images the questions name")
    p.add_argument("--out", required=True, help="task folder (pass it to lmms-eval --include_path)")
    p.add_argument("--name", default="pope_local", help="task name for lmms-eval --tasks")
    p.add_argument("--lmms-prompt", action="store_true",
                   help="append lmms-eval's POPE post-prompt (default: the question alone, as `eval pope`)")
    p.add_argument("--max-image-side", type=nonnegative_int, default=2048,
                   help="decode photos at no more than this many pixels on the longer side (0: full size)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--limit", type=positive_int, default=None, help="first N questions only")
    p.add_argument("--overwrite", action="store_true", help="replace the task files of the same --name in --out")
    p.set_defaults(func=_cmd_lmms_task)
