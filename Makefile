# Two entry points for a fresh machine:
#   make reports   install, then render every report with its default parameters
#   make test      install, then run unit tests + nbval over the ci-profile notebooks
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= default
NOTEBOOKS ?= all
# llama-cpp-python (a dev dependency: the judge's HTTP tests) builds llama.cpp from source.
# A portable AVX2 build: -march=native also emits AMX/AVX-512 code that traps ("invalid
# opcode") on VMs whose CPU advertises AMX without enabling it, and a cached native wheel
# would not run on another CPU. LLAVA_BUILD=OFF skips the multimodal library (the judge
# serves text only), which shortens the one-time build.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF

.PHONY: install install-runtime reports datasets test test-cold test-slow lint golden bench clean

# Two installs: the runtime one (what `make reports` needs: no llama.cpp build) and the dev one
# (tests, lint, llama-cpp-python built from source once). .installed marks the dev install.
install: $(VENV)/.installed
install-runtime: $(VENV)/.installed-runtime

$(VENV)/.installed-runtime: pyproject.toml constraints.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.installed-runtime

# Renders every notebook whose inputs exist (about 4.8 h on 2 CPU cores from cold caches: README); each
# notebook skipped for a missing public dataset is named with the fix (`make datasets`).
reports: install-runtime
	$(BIN)/traitlab render $(NOTEBOOKS) --profile $(PROFILE)

# The public datasets (sha256-pinned) into $TRAITLAB_DATA_ROOT (default ~/.cache/traitlab/datasets).
datasets: install-runtime
	$(BIN)/traitlab datasets fetch

# Two pytest workers, one thread each: most tests run small models whose time is Python
# overhead and kernel start-up, so two single-threaded workers beat one two-threaded one.
# --dist loadscope keeps each notebook's cells (and each test module) on one worker, in order.
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check lib tests notebooks benchmarks
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadscope \
		tests lib/traitlab --doctest-modules --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg \
		--nbval-current-env -p no:cacheprovider

# The first `make test` on a fresh machine, on this one: every traitlab cache empty (a new
# TRAITLAB_CACHE, removed afterwards; the public datasets and pip's cache as they are). 8-9
# minutes on 2 cores, against about 3 with the caches warm; with the install it must stay under 10.
test-cold: install
	@d=$$(mktemp -d "$${TMPDIR:-/tmp}/traitlab-cold.XXXXXX"); trap 'rm -rf "$$d"' EXIT; \
		TRAITLAB_DATA_ROOT="$${TRAITLAB_DATA_ROOT:-$${TRAITLAB_CACHE:-$$HOME/.cache/traitlab}/datasets}" \
		TRAITLAB_CACHE="$$d" $(MAKE) --no-print-directory test

# Slow tier (not in CI): re-execute the committed default-profile reports under nbval.
test-slow: install
	$(BIN)/python -m pytest -q --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env reports/*.ipynb

# Regenerate the ci-profile golden notebooks guarded by `make test`.
golden: install
	$(BIN)/traitlab render $(NOTEBOOKS) --profile ci --out tests/golden --no-html --suffix ''

# Benchmarks (not in CI; about an hour on 2 cores): run alone on the machine, one after the
# other, then render reports/performance.html from the results they write to reports/benchmarks/.
# The peer benchmark creates build/peer-venv (transformers 4, numpy 1) on first use.
BENCH_MODEL ?= smollm2-135m-instruct
bench: install
	$(BIN)/python benchmarks/extraction_throughput.py --model $(BENCH_MODEL)
	$(BIN)/python benchmarks/peers.py --model $(BENCH_MODEL)
	$(BIN)/python benchmarks/refusal_sweep.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/steered_eval.py
	$(BIN)/python benchmarks/prefill_groups.py
	$(BIN)/python benchmarks/decode_floor.py
	$(BIN)/traitlab render performance --profile default

lint: install
	$(BIN)/ruff check lib tests notebooks benchmarks

clean:
	rm -rf build .pytest_cache
