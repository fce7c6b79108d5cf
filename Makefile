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

# Benchmarks (bench/): each prints ratios measured within one run; see docs/performance.md.
# bench.myproxy_vs_real starts the Debian /usr/sbin/myproxy-server, so it runs as root.
bench: setup
	$(BIN)/python -m bench.myproxy_vs_real --quick
	$(BIN)/python -m bench.issuance --quick
	$(BIN)/python -m bench.profile_hot_paths --quick
	$(BIN)/python -m bench.scale --quick

# Fuzzing, apart from `make test`: the atheris harnesses of tests/fuzz, FUZZ_RUNS inputs each,
# from a seed corpus built on a fresh dev PKI. Crashes land in $(FUZZ_DIR)/crashes; reported
# bugs are tolerated (tests/fuzz/targets.py KNOWN_BUGS; FUZZ_STRICT=1 makes them crash too).
# Without an atheris wheel the harnesses run their hypothesis versions instead.
FUZZ_RUNS ?= 1000000
FUZZ_DIR ?= tests/.build/fuzz
FUZZ_HARNESSES ?= myproxy_codec voms_ext config renewal

.PHONY: fuzz
fuzz: setup
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install --quiet atheris \
		|| echo "atheris cannot be installed here: falling back to hypothesis"
	$(BIN)/python -m tests.fuzz.seeds $(FUZZ_DIR)
	@mkdir -p $(FUZZ_DIR)/crashes
	@set -e; for h in $(FUZZ_HARNESSES); do \
		mkdir -p $(FUZZ_DIR)/corpus/$$h; \
		echo "== fuzz_$$h: $(FUZZ_RUNS) runs"; \
		FUZZ_PKI=$(FUZZ_DIR)/pki $(BIN)/python -m tests.fuzz.fuzz_$$h -runs=$(FUZZ_RUNS) \
			-max_len=65536 -timeout=30 -dict=$(FUZZ_DIR)/dict/$$h.dict \
			-artifact_prefix=$(FUZZ_DIR)/crashes/$$h- $(FUZZ_DIR)/corpus/$$h $(FUZZ_DIR)/seeds/$$h; \
	done
