# scorestream — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets and what they do
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt setup.py $(wildcard workers/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,report]'
	touch $@

.PHONY: venv
venv: $(BIN)/.installed ## create .venv with scorestream and the dev tools (pinned by constraints.txt)

.PHONY: demo
demo: venv ## set up, start the local broker and run the demo
	$(BIN)/scorestream demo

.PHONY: lint
lint: venv ## ruff lint and format check
	$(BIN)/ruff check workers tests bench
	$(BIN)/ruff format --check workers tests bench

.PHONY: types
types: venv ## mypy --strict on the code and the tests
	$(BIN)/mypy workers tests $(wildcard bench/*.py)

.PHONY: test
test: venv ## unit and integration tests (starts its own Kafka unless SCORESTREAM_BOOTSTRAP_SERVERS is set)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: unit
unit: venv ## unit tests only (no broker)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

.PHONY: check
check: lint types test ## everything CI runs: lint, types, tests

.PHONY: bench
bench: venv ## throughput, latency and memory beside a passthrough and a naive loop (real broker)
	$(BIN)/scorestream bench

.PHONY: soak
soak: venv ## the chaos run, longer: 1M events over 10 min, 30 worker kills per guarantee, 3 broker kills
	$(BIN)/python -m tests.chaos --events 1000000 --feed-seconds 600 --worker-kills 30 \
		--monitor-kills 30 --broker-kills 3 --monitor-events 200000

.PHONY: bench-stages
bench-stages: venv ## the monitor in two stages beside one process: 1 and 2 join instances, the hop's cost
	$(BIN)/python bench/two_stage.py

.PHONY: bench-drift
bench-drift: venv ## drift-detection quality: 30 seeds per stream, default detector beside ADWIN
	$(BIN)/python bench/drift_quality.py

.PHONY: format
format: venv ## rewrite files with ruff's formatter and safe fixes
	$(BIN)/ruff check --fix workers tests bench
	$(BIN)/ruff format workers tests bench

.PHONY: broker-start
broker-start: venv ## start the local Kafka broker (see `scorestream broker start --help`)
	$(BIN)/scorestream broker start

.PHONY: broker-stop
broker-stop: venv ## stop the local Kafka broker
	$(BIN)/scorestream broker stop

.PHONY: docs
docs: venv ## regenerate the README's configuration reference from the CLI
	$(BIN)/python -m workers.reference

.PHONY: lock
lock: venv ## refresh constraints.txt from the current .venv
	{ echo '# Versions every check and image is run with; refresh with `make lock`.'; \
	  $(BIN)/pip freeze --exclude-editable; } > constraints.txt

.PHONY: clean
clean: ## remove the venv and caches (not the broker data or the jar cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info demo-out
