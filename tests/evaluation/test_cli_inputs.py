"""CLI input errors: one line naming the file, line, field or option and the fix - never a traceback, and
never after a model has loaded. The --model given here does not exist: an error about it would mean the
input was not checked first."""

import json

import pytest
import yaml

from eval.cli import build_parser, main
from eval.hallucination_cli import resolve_config

QUESTIONS = [{"question_id": i + 1, "image": "a.jpg", "text": f"Is there a {o} in the image?", "label": label}
             for i, (o, label) in enumerate((("dog", "yes"), ("cat", "no")))]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _error(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "images").mkdir()
    return {"questions": _write(tmp_path / "q.jsonl", QUESTIONS), "images": tmp_path / "images",
            "model": tmp_path / "no_model", "out": tmp_path / "out"}


def _pope(inputs, *extra):
    return ["eval", "pope", "--model", str(inputs["model"]), "--images", str(inputs["images"]), "--questions",
            str(inputs["questions"]), "--out", str(inputs["out"]), "--device", "cpu", *extra]


def test_config_yaml_is_parsed_and_typed_like_the_flags(inputs, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: x\nbatch_size: [1, 2\n")
    assert main(_pope(inputs, "--config", str(config))) == 2
    assert f"--config {config} line 3: not valid YAML" in _error(capsys)
    for text, message in (("- a\n- b\n", "expected option: value pairs, got a list"),
                          ("parser: offical\n",
                           "parser (--parser) must be one of official, strict, substring, got 'offical'"),
                          ("dtype: bf16\n", "dtype (--dtype) must be one of float32, bfloat16, float16"),
                          ("batch_size: 8.5\n", "batch_size (--batch-size) expected an integer, got 8.5"),
                          ("max_new_tokens: 0\n", "max_new_tokens (--max-new-tokens) must be >= 1, got 0"),
                          ("do_sample: 'yes'\n", "do_sample (--do-sample) must be true or false"),
                          ("modle: x\n", "unknown options ['modle']")):
        config.write_text(text)
        assert main(_pope(inputs, "--config", str(config))) == 2, text
        assert message in _error(capsys), text
    # a quoted number goes through the flag's type, as "--batch-size 16" does; flags still win over the file
    config.write_text(yaml.safe_dump({"batch_size": "16", "methods": ["baseline", "vcd"], "temperature": 1,
                                      "max_new_tokens": 9}))
    argv = _pope(inputs, "--config", str(config), "--max-new-tokens", "5")
    args = build_parser().parse_args(argv)
    args = resolve_config(args.parser_obj, args, {"--config", "--max-new-tokens"})
    assert args.batch_size == 16 and args.methods == "baseline,vcd" and args.temperature == 1.0
    assert args.max_new_tokens == 5
    with pytest.raises(SystemExit):  # no abbreviations: a shortened flag could not win over the file
        build_parser().parse_args(_pope(inputs, "--max-new", "5"))


def test_method_options_are_checked_before_any_model_loads(inputs, capsys):
    for options, message in (('{"highlight": {"alhpa": 0.4}}', "highlight: unknown option(s) 'alhpa'; it takes alpha"),
                             ('{"hihglight": {"alpha": 0.4}}', "method options for 'hihglight', which is not among"),
                             ('{"highlight": {"object_dino": {"kk": 2}}}',
                              "highlight.object_dino: unknown option(s) 'kk'"),
                             ('{"highlight": {"alpha": "0.4"}}', "highlight.alpha must be a number, got '0.4'"),
                             ('{"vcd": {"branches": "jiont"}}',
                              "vcd.branches must be one of 'auto', 'separate', 'joint'"),
                             ('{"baseline": {"alpha": 1}}', "baseline: unknown option(s) 'alpha'; it takes none"),
                             ('{"highlight": {"regions": "boxes"}}', "highlight.regions must be one of 'map', 'instances'"),
                             ('[1]', "--method-options must be a JSON object of method: {option: value}"),
                             ('{"highlight": 3}', "--method-options must be a JSON object of method: {option: value}"),
                             ('{"highlight": {', "--method-options: not valid JSON")):
        methods = "baseline,highlight,vcd"
        assert main(_pope(inputs, "--methods", methods, "--method-options", options)) == 2, options
        error = _error(capsys)
        assert message in error and "cannot load VLM" not in error, (options, error)
    assert main(_pope(inputs, "--methods", "baseline,hihglight")) == 2
    assert "unknown grounding method 'hihglight'" in _error(capsys)
    assert main(_pope(inputs, "--methods", "region-tokens")) == 2
    assert "region-tokens needs the adapter folder" in _error(capsys)
    # `regions` is a choice, not a folder: preflight only checks `adapter` for existence
    main(_pope(inputs, "--methods", "highlight", "--method-options", '{"highlight": {"regions": "instances"}}'))
    assert "no such folder" not in _error(capsys)


def test_nonsense_values_are_refused(inputs, tmp_path, capsys):
    for argv, message in ((_pope(inputs, "--max-new-tokens", "0"), "--max-new-tokens: must be >= 1, got 0"),
                          (_pope(inputs, "--limit", "0"), "--limit: must be >= 1, got 0"),
                          (_pope(inputs, "--limit", "-1"), "--limit: must be >= 1, got -1"),
                          (_pope(inputs, "--batch-size", "0"), "--batch-size: must be >= 1"),
                          (_pope(inputs, "--temperature", "0"), "--temperature: must be a finite number > 0"),
                          (["discover", "--model", "m", "--images", "i", "--out", "o", "--short-side", "0"],
                           "--short-side: must be >= 1, got 0"),
                          (["eval", "corloc", "--dataset", "coco", "--root", "r", "--model", "m", "--out", "o",
                            "--limit", "0"], "--limit: must be >= 1, got 0")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    assert main(_pope(inputs, "--images", str(tmp_path / "nowhere"))) == 2
    assert "--images" in _error(capsys)


def test_question_files_are_checked(inputs, tmp_path, capsys):
    cases = ((QUESTIONS + ['{"question_id": 3, "image": "a.jpg"'], "q.jsonl line 3: not valid JSON"),
             (QUESTIONS + [[1, 2]], "q.jsonl line 3: expected a JSON object, got list"),
             ([{**QUESTIONS[0], "label": "Yes"}], 'q.jsonl line 1: label must be "yes" or "no", got \'Yes\''),
             ([QUESTIONS[0], {**QUESTIONS[1], "question_id": "1"}], "q.jsonl line 2: question_id '1' again (line 1"),
             ([{**QUESTIONS[0], "text": None}], "q.jsonl line 1: text must be a non-empty string, got None"),
             ([{"question_id": 1, "image": "a.jpg"}], "q.jsonl line 1: question lacks ['text']"),
             ([{**QUESTIONS[0], "question_id": 1.5}], "the id must be an integer or a string, got 1.5"))
    for rows, message in cases:
        _write(inputs["questions"], rows)
        assert main(_pope(inputs)) == 2, rows
        assert message in _error(capsys), rows


def test_score_files_are_checked_line_by_line(tmp_path, capsys):
    questions = _write(tmp_path / "q.jsonl", QUESTIONS)
    answers = tmp_path / "a.jsonl"

    def score(rows, *extra):
        _write(answers, rows)
        return main(["eval", "score", "pope", "--questions", str(questions), "--answers", str(answers),
                     "--out", str(tmp_path / "s"), *extra])

    # string and integer ids name the same question
    assert score([{"question_id": "1", "text": "Yes"}, {"question_id": 2, "text": "No"}]) == 0
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["results"]["scored"]["accuracy"] == 100.0
    for rows, message in (([{"question_id": 1, "text": None}, {"question_id": 2, "text": "no"}],
                           "a.jsonl line 1: text must be a string (the model's answer), got None"),
                          ([{"question_id": 1, "text": "yes"}, {"text": "no"}], "a.jsonl line 2: no question_id"),
                          ([{"question_id": 1, "text": "yes"}, {"question_id": "1", "text": "no"}],
                           "a.jsonl line 2: question_id '1' answered again (line 1)"),
                          ([{"question_id": 1, "text": "yes"}, '{"question_id": 2, "text": "no"'],
                           "a.jsonl line 2: not valid JSON"),
                          ([{"question_id": 1, "text": "yes"}], "no answers for 1 of 2 questions (e.g. [2])"),
                          ([{"question_id": 1, "text": "y"}, {"question_id": 2, "text": "n"},
                            {"question_id": 9, "text": "n"}],
                           "answers for 1 question ids not in the question file"),
                          ([{"question_id": 1, "reply": "yes"}], "a.jsonl line 1: no answer field")):
        assert score(rows) == 2, rows
        assert message in _error(capsys), rows
    assert main(["eval", "score", "pope", "--questions", str(questions), "--out", str(tmp_path / "s")]) == 2
    assert "missing --answers FILE" in _error(capsys)

    captions = tmp_path / "c.jsonl"
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"1": ["dog"], "2": ["cat"]}))
    chair = ["eval", "score", "chair", "--captions", str(captions), "--out", str(tmp_path / "c")]
    _write(captions, [{"image_id": 1, "caption": "A dog."}, {"image_id": 2, "caption": "A cat and a dog."}])
    assert main(chair + ["--ground-truth", str(truth)]) == 0  # integer ids against the JSON's string keys
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["results"]["scored"]["chair_s"] == 50.0
    for rows, message in (([{"image_id": 1, "caption": None}], "c.jsonl line 1: caption must be a string, got None"),
                          ([{"image_id": 1}], "c.jsonl line 1: no caption"),
                          ([{"image_id": 1, "caption": "a"}, {"image_id": "1", "caption": "b"}],
                           "c.jsonl line 2: image_id '1' again (line 1)"),
                          ([{"image_id": 7, "caption": "a"}], "1 image ids have no ground truth")):
        _write(captions, rows)
        assert main(chair + ["--ground-truth", str(truth)]) == 2, rows
        assert message in _error(capsys), rows
    assert main(chair) == 2
    assert "chair needs --annotations DIR" in _error(capsys)
    truth.write_text('{"1": ["dog"],}')
    assert main(chair + ["--ground-truth", str(truth)]) == 2
    assert "truth.json line 1: not valid JSON" in _error(capsys)
    truth.write_text(json.dumps({"1": "dog"}))
    assert main(chair + ["--ground-truth", str(truth)]) == 2
    assert "image '1' must map to a list of object names" in _error(capsys)


def test_coco_files_and_run_folders_are_named_when_wrong(tmp_path, capsys):
    bad, partial = tmp_path / "bad.json", tmp_path / "partial.json"
    bad.write_text("{")
    partial.write_text(json.dumps({"images": []}))
    for argv, message in ((["eval", "build-pope", "--instances", str(bad), "--out", str(tmp_path / "o")],
                           "bad.json line 1: not valid JSON"),
                          (["eval", "build-pope", "--instances", str(partial), "--out", str(tmp_path / "o")],
                           "partial.json: not a COCO instances file (--instances): no 'annotations', 'categories'")):
        assert main(argv) == 2
        assert message in _error(capsys)
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "annotations.json").write_text("not json")
    assert main(["eval", "corloc", "--dataset", "coco", "--root", str(root), "--model", "m", "--out",
                 str(tmp_path / "c")]) == 2
    assert "annotations.json line 1: not valid JSON" in _error(capsys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{")
    assert main(["eval", "report", str(run)]) == 2
    assert "run/metrics.json line 1: not valid JSON" in _error(capsys)
    assert main(["discover", "--model", "m", "--images", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "bad.json is not a folder" in _error(capsys)
