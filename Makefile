# Two commands for a newcomer: `make demo` (install + run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Prefect stays offline (no telemetry) and patient on a loaded machine; TensorFlow stays quiet.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export TF_CPP_MIN_LOG_LEVEL := 2
export MPLBACKEND := Agg

.PHONY: install demo retrain score test lint viewer stack stack-down browser-deps bench clean screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Main job on the embedded defaults: generates the demo data if data/sample_data is empty, then retrains.
demo: install
	$(BIN)/python -m flows.retrain

retrain: install
	$(BIN)/python -m flows.retrain $(ARGS)

## Score a folder: make score DIR=data/inbox/batch-1
score: install
	$(BIN)/python -m flows.score_batch $(DIR) $(ARGS)

## Debian's Chromium for the browser test (skipped with a reason when it cannot be installed).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: the browser test will be skipped"; fi; }

test: install browser-deps
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

## Regenerate the README's screenshots with the browser test's own code path.
screenshots: install browser-deps
	DFD_SCREENSHOT_DIR=docs/screenshots $(BIN)/python -m pytest -q tests/test_browser.py

lint: install
	$(BIN)/python -m ruff check .

viewer: install
	$(BIN)/python -m app

stack: install
	$(BIN)/python -m deployments.stack up

stack-down:
	$(BIN)/python -m deployments.stack down

bench: install
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/score_throughput.py
	$(BIN)/python bench/viewer_load.py

clean:
	rm -rf .dfd-work data/synthetic_data
