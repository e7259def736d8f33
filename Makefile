# The two Quickstart commands: `make serve` and `make test`. Each sets up its own virtual environment.
# Python: the first of these that is >= 3.11 (3.11 is what CI runs), unless given: make PYTHON=/path/to/python
PYTHON_CANDIDATES := python3.11 python3.12 python3.13 python3.14 python3 python
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(shell command -v $(p) >/dev/null 2>&1 && \
	$(p) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $(p))))
endif
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 50051
METRICS_PORT ?= 9090
UI_PORT ?= 8080
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# pytest-xdist workers: most tests wait on a server, so two per core keep the box busy.
TEST_WORKERS ?= 4

.PHONY: cluster-ha store-faults serve test lint setup-serve setup-dev setup-browser export train-all evaluate-all bench bench-quick bench-train soak clean proto cluster cluster-faults

$(VENV)/bin/activate:
	@test -n "$(PYTHON)" || { echo "need Python >= 3.11: none of $(PYTHON_CANDIDATES) is (or run make PYTHON=...)"; \
		exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PYTHON) is older than 3.11"; exit 1; }
	@echo "using $(PYTHON): $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Serving needs no torch: the server, the demo client (its pictures) and the inspector page, no training or export.
$(VENV)/.serve-installed: pyproject.toml $(VENV)/bin/activate
	$(PY) -m pip install -q -e ".[server,demo,ui]"
	@touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/bin/activate
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@ $(VENV)/.serve-installed

setup-serve: $(VENV)/.serve-installed
setup-dev: $(VENV)/.dev-installed

# The inspector page's browser tests drive Debian's Chromium (Playwright's own browser download cannot work here).
setup-browser:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium fonts-noto-core; }

## Quickstart 1: serve the bundled models (gRPC on $(PORT), metrics on $(METRICS_PORT), the inspector page on
## http://localhost:$(UI_PORT)).
serve: setup-serve
	$(VENV)/bin/ntm-serve --models models --port $(PORT) --metrics-port $(METRICS_PORT) --ui-port $(UI_PORT)

## Quickstart 2: lint and run every test.
test: setup-dev setup-browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS)

lint: setup-dev
	$(VENV)/bin/ruff check .

## Re-export every shipped model to ONNX (byte-identical for the same checkpoint).
export: setup-dev
	$(PY) -m ntm_serve.export $$(ls -d models/*/ | grep -v _lstm_baseline)

## Re-run the exact training command of every shipped model (long: hours on 2 cores).
train-all: setup-dev
	for f in models/*/command.txt; do grep -v '^#' $$f | sed 's|^python|$(PY)|' | sh || exit 1; done

evaluate-all: setup-dev
	for d in models/*/; do $(PY) -m ntm_serve.training.evaluate $$d || exit 1; done

## Regenerate the committed generated code: gRPC stubs (ntm_serve/api/proto_gen) and the state-pool helper graphs.
proto: setup-dev
	$(PY) protos/generate.py
	$(PY) -m ntm_serve.runtime.graphs.build

bench-quick: setup-dev
	$(PY) -m benchmarks --quick

bench: setup-dev
	$(PY) -m benchmarks

## Training speed, ours against pytorch-ntm (docs/training.md#training-speed): PYTORCH_NTM=<a checkout outside the repo>
bench-train: setup-dev
	$(PY) -m benchmarks.train_speed $(if $(PYTORCH_NTM),--pytorch-ntm $(PYTORCH_NTM))

## Soak: 200 sessions x 2000 steps through a real server with disconnects and restarts, every output checked
## (a few minutes; docs/reliability.md). The CI runs a short one (tests/test_service_soak.py).
soak: setup-dev
	$(PY) -m tests.soak

## Scale-out on loopback: Valkey + 3 replicas + Envoy (docs/scale-out.md); one JSON line, Ctrl-C stops all.
cluster: setup-dev
	$(PY) -m ntm_serve.cluster up --replicas 3 --models models

## The same with a replicated store: a Valkey primary, 2 replicas and 3 Sentinels (automatic failover).
cluster-ha: setup-dev
	$(PY) -m ntm_serve.cluster up --replicas 3 --store-replicas 2 --models models

## Sessions through the proxy while the store primary is killed -9, stalled (SIGSTOP) and killed with a replica.
store-faults: setup-dev
	$(PY) -m tests.store_faults

## 64 sessions streaming through kill -9, SIGTERM drain + restart and a store restart; every output checked.
cluster-faults: setup-dev
	$(PY) -m tests.cluster_faults

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
