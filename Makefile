# Set-up installs the small CPU wheel of torch first: plain `torch` pulls a multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test bench

setup:
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	@# the search-page test drives Debian's chromium with Playwright (never `playwright install`)
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium) >/dev/null \
		|| echo "warning: could not install chromium; tests/test_page.py will be skipped"; }

demo: setup
	lsr demo --serve

test: setup
	$(PYTHON) -m pytest -q tests
