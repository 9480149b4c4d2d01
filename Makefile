# orchd: `make run` (quick start) and `make test` (the whole suite) work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench bench-scale chaos lint clean venv

venv: $(STAMP)

# Installs the newest allowed version of every dependency, so a release that breaks us shows up here.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "make: cannot create a virtualenv: install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools' note that an editable install is one is not news to someone who asked for one
	PYTHONWARNINGS="ignore:Editable installation" \
	  $(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	@touch $@

run: $(STAMP)
	@mkdir -p .state
	$(BIN)/orchd up --config etc/orchd/quickstart.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Speed and memory figures (tests/bench): a table on stdout, tests/bench/results/latest.json.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

# A fleet of simulated worker hosts (network namespaces: root) on one PostgreSQL behind PgBouncer,
# under load, a tenth of them SIGKILLed, then audited (tests/bench/scale.py; SCALE_ARGS to resize).
SCALE_ARGS ?=
bench-scale: $(STAMP)
	$(BIN)/python -m tests.bench.scale $(SCALE_ARGS)

# Kill daemons at random for CHAOS_SECONDS, then check nothing was lost or doubled (tests/chaos).
CHAOS_SECONDS ?= 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.harness --seconds $(CHAOS_SECONDS)

lint: $(STAMP)
	$(BIN)/ruff check orchd tests
	$(BIN)/ruff format --check orchd tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .state build dist *.egg-info

# The Debian package (dist/orchd_VERSION_ARCH.deb), built by debhelper from packaging/debian.
.PHONY: deb
deb:
	packaging/build-deb
