# Set-up makes its own virtual environment (.venv/, or the one already active), so it works where the system
# Python is externally managed (PEP 668). It installs the small CPU wheel of torch first: plain `torch`
# pulls a multi-GB CUDA build.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
SYSTEM_PYTHON ?= python3

.PHONY: setup demo test bench

$(PYTHON):
	@# Debian/Ubuntu ship venv's pip bootstrap separately (python3-venv): install it once if it is missing
	@$(SYSTEM_PYTHON) -m venv "$(VENV)" 2>/dev/null || { rm -rf "$(VENV)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv) >/dev/null 2>&1; \
		$(SYSTEM_PYTHON) -m venv "$(VENV)"; } || { \
		echo "could not create $(VENV): install Python's venv module (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }

setup: $(PYTHON)
	@echo "lsr: using the virtual environment $(VENV) (activate it with: . $(VENV)/bin/activate)"
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	@# the search-page test drives Debian's chromium with Playwright (never `playwright install`)
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium) >/dev/null \
		|| echo "warning: could not install chromium; tests/test_page.py will be skipped"; }

demo: setup
	$(VENV)/bin/lsr demo --serve

test: setup
	$(PYTHON) -m pytest -q tests
