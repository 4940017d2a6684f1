# looplab: `make run` trains the default experiment, `make test` runs the test suite.
# Both set up .venv first (idempotent); `make setup` does only that. `make test` also installs
# the optional engines the suite tries (Optuna, submitit, the server's psycopg and auth app).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TEST_EXTRAS := dev,search,slurm,server
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup setup-test setup-ray run test test-fast test-ray ui bench lint lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

# The ray extra (hydra/launcher=ray) in .venv. hydra-ray-launcher 1.2.2 needs cloudpickle<3,
# which joblib 1.6.0 (pinned) refuses: joblib 1.5.3 and cloudpickle 2.2.1 replace them here,
# every other pin stays. `rm .venv/.installed* && make setup-test` puts the pinned pair back.
setup-ray: setup-test
	grep -vE '^(cloudpickle|joblib)==' constraints.txt > $(VENV)/constraints-ray.txt
	PIP_CONSTRAINT=$(abspath $(VENV))/constraints-ray.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(TEST_EXTRAS),ray]' cloudpickle==2.2.1 joblib==1.5.3

run: setup
	$(BIN)/looplab-train $(ARGS)

# The suite runs on pytest-xdist's workers, one a core (at most 4); the SLURM tests share one
# worker, since a host runs one cluster. `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup

test: setup-test
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup-test
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The Ray launcher's tests, after `make setup-ray` (its own joblib/cloudpickle pair).
test-ray: setup-ray
	$(BIN)/python -m pytest -p no:cacheprovider -q -k ray tests/test_cluster.py tests/test_config.py

ui: setup
	$(BIN)/looplab ui $(ARGS)

bench: setup
	$(BIN)/python -c 'import lightning, optuna' 2>/dev/null || PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]' || echo 'make bench: the bench extra did not install; the peers and pruning rows will say skipped'
	PYTHONPATH=$(CURDIR)/scripts $(BIN)/python -m bench $(ARGS)

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports --no-cache

# Re-pin every dependency from the current environment (after changing pyproject.toml).
lock: setup
	{ head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } | sed 's/+cpu$$//' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build dist
