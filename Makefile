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

.PHONY: fuzz sanitize

# The property-based suites (tests/test_fuzz*.py) with the "fuzz" Hypothesis
# profile: many more examples than the bounded "ci" profile `make test` runs.
fuzz: build
	TF_CPP_MIN_LOG_LEVEL=2 HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest \
	  tests/test_fuzz.py tests/test_fuzz_binding.py --hypothesis-show-statistics

# The CPU kernels and the binding built with ASan and UBSan in their own
# directory (never over masked_ops/*.so), then the TensorFlow-free fuzz suite
# of the binding against that module (TensorFlow does not run under ASan). The
# sanitizer runtimes are preloaded into Python; CPython's deliberate leaks are
# not reported. The row-loss tests run too, but for their Keras comparison.
SANITIZE_DIR := build/sanitize
SANITIZE_CXX ?= g++
SANITIZE_ENV = LD_PRELOAD="$$($(SANITIZE_CXX) -print-file-name=libasan.so) \
	$$($(SANITIZE_CXX) -print-file-name=libubsan.so)" ASAN_OPTIONS=detect_leaks=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=$(SANITIZE_DIR)/module

sanitize: setup
	$(VENV)/bin/cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_CXX_COMPILER=$(SANITIZE_CXX) -DPython3_EXECUTABLE=$(abspath $(PY)) \
	  -DMASKED_OPS_BINDING_ONLY=ON -DMASKED_OPS_SANITIZE=ON -DMASKED_OPS_CUDA=OFF \
	  -DMASKED_OPS_OUTPUT_DIR=$(abspath $(SANITIZE_DIR))/module
	$(VENV)/bin/cmake --build $(SANITIZE_DIR) --parallel
	$(SANITIZE_ENV) $(PY) -c "import _kernels; print('instrumented binding:', _kernels.__file__)"
	$(SANITIZE_ENV) $(PY) -m pytest tests/test_fuzz_binding.py tests/test_row_kernels.py -k "not keras"

bench: build
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) benchmarks/bench.py $(BENCH_ARGS)
	$(PY) benchmarks/plot.py
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) benchmarks/bench_rows.py $(BENCH_ROWS_ARGS)
	$(PY) benchmarks/plot_rows.py

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
	$(PY) benchmarks/plot_rows.py
