# Two commands on a fresh machine: `make quickstart` and `make test` (see README.md).
# Both create .venv when it is absent. torch==2.13.0 is installed before anything else:
# on the project machines it resolves to a local CPU build; any other torch spec would
# pull several GB of CUDA packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv quickstart test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

quickstart: venv
	$(BIN)/rl-lib baselines --days 10

test: venv lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/rl-lib bench env

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
