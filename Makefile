# make test / make bench set everything up on a fresh machine: a .venv with the
# pinned requirements, the compiled library, then the job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
NATIVE_SOURCES := $(shell find csrc cmake -type f) CMakeLists.txt setup.py
BENCH_ARGS ?= --quick

.PHONY: setup build test bench bench-full plot lint format clean

setup: $(DEPS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(NATIVE_SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILD_STAMP)

test: build
	$(PY) -m pytest tests

bench: build
	$(PY) -m masked_ops.benchmark $(BENCH_ARGS)

bench-full: BENCH_ARGS = --full
bench-full: bench

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .

clean:
	rm -rf build *.egg-info masked_ops/*.so masked_ops/_build_info.json $(BUILD_STAMP)
plot: setup
	$(PY) benchmarks/plot.py
