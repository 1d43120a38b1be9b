# Two commands do everything: `make run` (the demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
INBOUND_PORT ?= 2525
REPLY_DOMAIN ?= reply.localhost

.PHONY: run test check lint bench soak clean

$(VENV)/.base: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The demo (AM_DEMO=1): its host pages, login links and secrets kept in var/demo.env. Both
# commands get the address served, so that printed and emailed links point at it. Alerts wait
# 15 s instead of the production default of 120 s, so that one shows up in var/mail/ soon
# after a reply. Replies to those alerts go to the receiver on INBOUND_PORT, in the same
# process (SMTP: `swaks --server localhost:2525 ...`).
run: $(VENV)/.base
	$(BIN)/agency-messaging migrate
	AM_DEMO=1 AM_REPLY_DOMAIN=$(REPLY_DOMAIN) $(BIN)/agency-messaging demo --host $(HOST) --port $(PORT) --inbound-port $(INBOUND_PORT)
	AM_DEMO=1 AM_REPLY_DOMAIN=$(REPLY_DOMAIN) AM_EMAIL_DELAY_SECONDS=$${AM_EMAIL_DELAY_SECONDS:-15} $(BIN)/agency-messaging serve --host $(HOST) --port $(PORT) --inbound-port $(INBOUND_PORT)

# The whole suite, in parallel workers (each starts its own PostgreSQL and Redis), with
# line coverage of the server's packages.
WORKERS ?= 4
test: $(VENV)/.dev
	./tools/install-system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(WORKERS) --dist loadgroup --cov --cov-report=term-missing:skip-covered

# The fast layer, in well under a minute: lint, types, and the unit tests (no database
# server, no server process, no browser; SQLite files at most).
check: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q tests/unit

# Benchmarks, never part of `make test`: `make bench` (full) or `make bench QUICK=1`.
# It installs what it needs: PostgreSQL and Redis (Debian packages), matplotlib, and each
# peer in its own environment under bench/peers/ (PyPI, npm).
bench: $(VENV)/.dev
	./tools/install-system-deps.sh
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)

# Minutes of load with a rolling restart, then an audit: zero lost, zero duplicated, memory
# flat. SOAK_SECONDS=600 for a longer run.
soak: $(VENV)/.dev
	./tools/install-system-deps.sh
	$(BIN)/python bench/soak.py --seconds $${SOAK_SECONDS:-180}

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
