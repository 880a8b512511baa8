# make test / make bench set everything up on a fresh machine: a .venv with the
# pinned requirements, the compiled library, then the job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
NATIVE_SOURCES := $(shell find csrc cmake -type f) CMakeLists.txt setup.py
BENCH_ARGS ?= --quick

.PHONY: setup system-deps build test bench bench-full plot lint format clean

setup: $(DEPS_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

# The XLA lowerings need two header-only Debian packages that TF's wheel lacks;
# without them the build goes on and Python uses the pure-TF formula under XLA.
XLA_HEADERS := /usr/include/farmhash.h /usr/include/highwayhash/sip_hash.h

system-deps:
	@if ! ls $(XLA_HEADERS) >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq libfarmhash-dev libhighwayhash-dev; \
	  else \
	    echo "note: libfarmhash-dev/libhighwayhash-dev missing: building without XLA lowerings"; \
	  fi; \
	fi

$(BUILD_STAMP): $(DEPS_STAMP) $(NATIVE_SOURCES) $(wildcard $(XLA_HEADERS))
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build: system-deps
	$(MAKE) $(BUILD_STAMP)

test: build
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest tests

bench: build
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m masked_ops.benchmark $(BENCH_ARGS)

bench-full: BENCH_ARGS = --full
bench-full: bench

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	git ls-files 'csrc/*.h' 'csrc/*.cc' 'csrc/*.cu' 'csrc/*.cuh' 'csrc/*.cpp' \
	  | xargs $(VENV)/bin/clang-format --dry-run --Werror

format: setup
	$(PY) -m ruff format .

clean:
	rm -rf build *.egg-info masked_ops/*.so masked_ops/_build_info.json $(BUILD_STAMP)
plot: setup
	$(PY) benchmarks/plot.py
