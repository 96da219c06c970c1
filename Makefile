# Two entry points for a fresh machine:
#   make reports   install, then render every report with its default parameters
#   make test      install, then run unit tests + nbval over the ci-profile notebooks
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= default
NOTEBOOKS ?= all

.PHONY: install reports test test-slow lint golden clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

reports: install
	$(BIN)/traitlab render $(NOTEBOOKS) --profile $(PROFILE)

test: install
	$(BIN)/ruff check lib tests notebooks benchmarks
	$(BIN)/python -m pytest -q tests --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env -p no:cacheprovider

# Slow tier (not in CI): re-execute the committed default-profile reports under nbval.
test-slow: install
	$(BIN)/python -m pytest -q --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env reports/*.ipynb

# Regenerate the ci-profile golden notebooks guarded by `make test`.
golden: install
	$(BIN)/traitlab render $(NOTEBOOKS) --profile ci --out tests/golden --no-html --suffix ''

lint: install
	$(BIN)/ruff check lib tests notebooks benchmarks

clean:
	rm -rf build .pytest_cache
