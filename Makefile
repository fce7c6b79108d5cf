# proxyd — the two commands that matter: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PKI    ?= certs-dev
PYTEST_ARGS ?=

.PHONY: run test lint typecheck setup pki bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

pki: setup
	$(BIN)/proxyd dev-pki --out $(PKI)

run: pki
	$(BIN)/proxyd serve --config $(PKI)/proxyd.toml

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src/voms_ext

typecheck: setup
	$(BIN)/mypy --strict src/voms_ext

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/.build
