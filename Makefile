# proxyd — the two commands that matter: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PKI    ?= certs-dev
PYTEST_ARGS ?=

.PHONY: run test lint typecheck setup pki bench clean lock test-latest

LOCK := requirements.lock

setup: $(STAMP)

# Installs exactly what requirements.lock names, each file checked against its hash:
# a new upstream release reaches us only through `make lock` and a commit.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Refresh the lock from pyproject.toml with uv (keeps the pinned versions that still
# fit; `make lock UPGRADE=--upgrade` moves everything to the newest allowed release).
UPGRADE ?=
lock:
	@test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(BIN)/python -m pip install --quiet uv; }
	$(BIN)/uv pip compile pyproject.toml --extra test --group pyproject.toml:tools \
		--universal --python-version 3.11 --generate-hashes --quiet \
		--custom-compile-command "make lock" $(UPGRADE) -o $(LOCK)

# The newest releases pyproject.toml allows, ignoring the lock, in a venv of their own:
# how we learn of an upstream change before a user does.
LATEST_VENV ?= .venv-latest
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade -e '.[test]'
	$(LATEST_VENV)/bin/python -m pip list --format=freeze
	@set -e; for tool in proxyd proxy-init proxy-info proxy-destroy proxyd-audit proxyd-pilot; do \
		err=$$($(LATEST_VENV)/bin/$$tool --help 2>&1 >/dev/null); \
		if [ -n "$$err" ]; then echo "$$tool --help wrote to stderr:"; echo "$$err"; exit 1; fi; \
	done
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

pki: setup
	$(BIN)/proxyd dev-pki --out $(PKI)

# Before serving, how to open the dashboard: the auditor's PKCS#12 (passphrase proxyd-dev)
# in the browser, the dev CA trusted for websites (docs/tutorial.md, step by step).
run: pki
	@echo ""
	@echo "Dashboard: https://localhost:8443/ui/ (as the auditor, once the browser has:)"
	@echo "  - your certificate: import $(PKI)/users/auditor/usercred.p12, passphrase proxyd-dev"
	@echo "  - an authority:     import $(PKI)/ca/ca.pem, trusted to identify websites"
	@echo "  (docs/tutorial.md: the walk-through, with the steps for Firefox and Chromium)"
	@echo ""
	$(BIN)/proxyd serve --config $(PKI)/proxyd.toml

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy --strict src

clean:
	rm -rf $(VENV) $(LATEST_VENV) .pytest_cache .mypy_cache .ruff_cache tests/.build

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
