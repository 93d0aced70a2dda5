# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   — the main job (a small real sweep on the offline models and the vendored data)
#   make test   — the test suite
# Set-up: a virtualenv in .venv with torch pinned to the CPU wheel (constraints.txt).
# If ../shared/hf-home/hub exists (this project's development machines), it is used as an
# offline Hugging Face cache; elsewhere models come from the hub as usual.

PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ifneq ($(wildcard $(SHARED)/hf-home/hub),)
HF_HUB_CACHE ?= $(abspath $(SHARED)/hf-home/hub)
HF_HUB_OFFLINE ?= 1
export HF_HUB_CACHE HF_HUB_OFFLINE
export MTBERT_SHARED ?= $(abspath $(SHARED))
endif
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mtbert_ray.sweep --space tune_spaces/demo.yaml --name demo-$$(date +%Y%m%d-%H%M%S)

test: lint
	$(BIN)/python -m pytest -q --durations=25

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

# benchmarks/: each script prints its figure last (see benchmarks/README.md); ~45 min in all on 2 cores.
# quality.py (~4 h, needs MPNet from the shared seeding script) runs only when named: make bench BENCHMARKS=quality
BENCHMARKS ?= student_speed peer_textbrewer ray_overhead teacher_cache sweep_reuse sweep_overhead scale
bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	cd benchmarks && for b in $(BENCHMARKS); do ../$(BIN)/python $$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
