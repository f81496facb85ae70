# forkserve: the two set-up commands are `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use as real peers: command:package pairs. tcpserver comes
# from ucspi-tcp-ipv6 (the same tcpserver plus IPv6, which exec mode's environment is
# compared against); a machine that has plain ucspi-tcp keeps it and the IPv6
# comparison is skipped (the two packages conflict). unixserver (ucspi-unix) is what
# exec mode's environment on a Unix socket is compared against.
DEBIAN_PEERS := socat:socat tcpserver:ucspi-tcp-ipv6 unixserver:ucspi-unix ncat:ncat curl:curl haproxy:haproxy openssl:openssl ab:apache2-utils

# promtool lints /metrics (tests/integration/test_metrics.py). Only its binary is taken
# from Debian's prometheus package, into the venv: installing the package brings 12
# packages (22 MB to download, 324 MB installed, 218 MB of it a timezone database for
# the web UI) and, where systemd runs, enables and starts a Prometheus server on port
# 9090. The binary alone is 19 MB to download, 48 MB on disk, a few seconds.
PROMTOOL := $(VENV)/bin/promtool

.PHONY: serve test lint typecheck unit integration debian-deps promtool bench soak clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "forkserve needs Python 3.11 or newer; set PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamps make re-runs cheap; pyproject.toml changes reinstall.
$(VENV)/.stamp-base: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

serve: $(VENV)/.stamp-base
	$(VENV)/bin/forkserve serve 127.0.0.1:9000

debian-deps:
	@missing=""; for pair in $(DEBIAN_PEERS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

promtool: | $(PY)
	@command -v promtool >/dev/null 2>&1 || [ -x $(PROMTOOL) ] || { \
		echo "fetching promtool from Debian's prometheus package"; \
		tmp=$$(mktemp -d); get="apt-get download -qq -o APT::Sandbox::User=root prometheus"; \
		{ (cd $$tmp && $$get 2>/dev/null) || \
		  { $(SUDO) apt-get update -qq && (cd $$tmp && $$get); }; } && \
		dpkg-deb --fsys-tarfile $$tmp/prometheus_*.deb | tar -xO ./usr/bin/promtool > $$tmp/promtool && \
		chmod 755 $$tmp/promtool && mv $$tmp/promtool $(PROMTOOL); \
		status=$$?; rm -rf $$tmp; exit $$status; }

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check src tests examples
	$(VENV)/bin/ruff format --check src tests examples

typecheck: $(VENV)/.stamp-test
	$(VENV)/bin/mypy

unit: $(VENV)/.stamp-test
	$(VENV)/bin/pytest tests/unit

integration: $(VENV)/.stamp-test debian-deps promtool
	$(VENV)/bin/pytest tests/integration

test: $(VENV)/.stamp-test debian-deps promtool lint typecheck
	$(VENV)/bin/pytest

# The reliability soak (docs/reliability.md), at most 30 minutes; rewrites its table.
soak: $(VENV)/.stamp-test debian-deps
	$(PY) -m tests.soak.run

# Writes docs/benchmarks.md and its plots; longer runs: make bench BENCH_ARGS='--hold 5000'.
bench: $(VENV)/.stamp-test debian-deps
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
