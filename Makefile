# The two commands: `make demo` and `make test`. Both set up .venv first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

# The daemon and its dependencies (what `make demo` needs) ...
$(RUN_STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "blipserver needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@# Only the dependencies (setup.cfg's install_requires): the daemon runs
	@# from this folder, with no package to build first.
	$(BIN)/python -c 'import configparser; c = configparser.RawConfigParser(); c.read("setup.cfg"); print(c["options"]["install_requires"].strip())' > $(VENV)/requirements-run.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r $(VENV)/requirements-run.txt
	@# Twisted finds the twistd plugin by scanning sys.path for twisted/plugins.
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "blipserver-source.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $@

# ... and what the tests and benchmarks need too.
$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(STAMP)

# PostgreSQL's server programs: present on the machines blipserver targets;
# elsewhere installed from Debian's packages when possible.
postgres:
	@./tools/need postgres

# The Mosquitto MQTT broker, for the tests of MQTT publishing: installed from
# Debian's package when missing and possible.
mosquitto:
	@./tools/need mosquitto

# ser2net, which relays a pty over TCP for the tests of a serial line
# relayed over the network: installed from Debian's package the same way.
ser2net:
	@./tools/need ser2net

# Chromium, for the tests of the page in a real browser.
chromium:
	@./tools/need chromium

# What the tests of contrib/ check the deployment files with (nginx,
# Apache, systemd-analyze, udevadm).
proxies:
	@./tools/need proxies

# ESLint for the page's scripts, at the versions package.json and
# package-lock.json pin, installed by npm into node_modules.
NODE_STAMP := node_modules/.installed

$(NODE_STAMP): package.json package-lock.json
	@./tools/need npm
	npm ci --no-audit --no-fund
	touch $@

lint-js: $(NODE_STAMP)
	node_modules/.bin/eslint --max-warnings=0 static

demo: $(RUN_STAMP) postgres
	$(BIN)/twistd --nodaemon --pidfile= blip --simulate

# The tests run in parallel workers (pytest-xdist), each with its own
# cluster, daemons and folders: most of the suite's time is spent waiting,
# so three overlap well on two cores. --dist loadgroup hands out one test
# at a time, so that the long ones, run first, overlap the rest. The tests
# marked `alone` time the daemon under a load of their own: they run
# afterwards, one at a time, as they would on an idle machine.
# TEST_WORKERS=0 runs the rest in one process too.
TEST_WORKERS ?= 3

test: venv postgres mosquitto ser2net chromium proxies lint-js
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not alone"; \
		status=$$?; $(BIN)/pytest -m alone && exit $$status

# Benchmarks: each prints one JSON object (see bench/README.md).
# QUICK=1 runs each in under a minute; BENCH_ARGS passes more options.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_RUN = $(BIN)/python -m bench.$(1) $(if $(QUICK),--quick) $(BENCH_ARGS)

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	@$(BIN)/pip install --quiet -r bench/requirements.txt
	@touch $@

bench-ingest: venv postgres $(BENCH_STAMP)
	@$(call BENCH_RUN,ingest)

bench-fanout: venv postgres $(BENCH_STAMP)
	@$(call BENCH_RUN,fanout)

bench-queries: venv postgres $(BENCH_STAMP)
	@$(call BENCH_RUN,queries)

bench-disk: venv postgres $(BENCH_STAMP)
	@$(call BENCH_RUN,disk)

bench-forward: venv postgres $(BENCH_STAMP)
	@$(call BENCH_RUN,forward)

bench-retention: venv postgres $(BENCH_STAMP)
	@$(call BENCH_RUN,retention)

bench: bench-ingest bench-fanout bench-queries bench-disk bench-forward bench-retention

clean:
	rm -rf $(VENV) var node_modules
