# The two entry points: `make demo` runs the system end to end, `make test` checks everything.
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := pqlink wire servicekit testbed gateway device_emulators aggregator demo

.PHONY: demo test lint typecheck pytest bench mutation chaos setup clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) -m demo

lint: setup
	$(VENV)/bin/ruff check $(PACKAGES) tests bench tools
	$(VENV)/bin/ruff format --check $(PACKAGES) tests bench tools

typecheck: setup
	$(VENV)/bin/mypy $(PACKAGES) tests bench tools

pytest: setup
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: setup
	$(PY) -m bench.run_all

# Mutation testing of the security, policy and aggregation modules; not part of `make test`.
mutation: setup
	$(PY) -m tools.mutation

clean:
	rm -rf build *.egg-info pqlink/*.so .mypy_cache .ruff_cache .pytest_cache

# Fault injection through real brokers, daemons and the aggregator, then a 10-minute soak
# (about 45 minutes): not part of `make test`.
chaos: setup
	$(PY) -m bench.chaos
