# retinassl: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install the CPU build of torch with the project in one pip command.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: demo test setup bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/retinassl demo

test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --durations=15

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
