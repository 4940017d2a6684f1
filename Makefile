# looplab: `make run` trains the default experiment, `make test` runs the test suite.
# Both set up .venv first (idempotent); `make setup` does only that.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup run test test-fast ui bench lint lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/looplab-train $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: setup
	$(BIN)/looplab ui $(ARGS)

bench: setup
	$(BIN)/python -c 'import lightning' 2>/dev/null || PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]' || echo 'make bench: the bench extra did not install; the peers rows will say skipped'
	PYTHONPATH=$(CURDIR)/scripts $(BIN)/python -m bench $(ARGS)

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

# Re-pin every dependency from the current environment (after changing pyproject.toml).
lock: setup
	{ head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } | sed 's/+cpu$$//' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build dist
