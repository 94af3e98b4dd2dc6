# Two commands on a fresh Debian/Ubuntu machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps run test check lint typecheck bench bench-smoke bench-million clean

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: system-deps $(STAMP)

run: install
	$(BIN)/courierflow run examples/orders.csv --report-json .courierflow/last-run.json

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# check: lint, types, the import layers and the unit tests; no services, no sudo, a minute
check: $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider -n 2 -m unit tests/unit

# test: everything, two test files at a time (most tests wait on real services more than
# they compute; each worker starts its own RabbitMQ and moto)
test: install lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

bench: install
	$(BIN)/python -m bench.run

bench-smoke: install
	$(BIN)/python -m bench.run --smoke

# a million orders through `courierflow up` / `submit` (~20 minutes on 2 cores)
bench-million: install
	$(BIN)/python -m bench.million

clean:
	-$(BIN)/courierflow down
	rm -rf .courierflow .pytest_cache .mypy_cache .ruff_cache
