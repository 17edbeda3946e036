# The two commands: `make demo` and `make test`. Both set up .venv first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test postgres chromium venv clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "blipserver needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# Twisted finds the twistd plugin by scanning sys.path for twisted/plugins.
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "blipserver-source.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $@

venv: $(STAMP)

# PostgreSQL's server programs: present on the machines blipserver targets;
# elsewhere installed from Debian's packages when possible.
postgres:
	@./tools/need-postgres

# Chromium, for the tests of the page in a real browser.
chromium:
	@./tools/need-chromium

demo: venv postgres
	$(BIN)/twistd --nodaemon --pidfile= blip --simulate

test: venv postgres chromium
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var
