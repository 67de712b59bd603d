# Set-up installs the small CPU wheel of torch first: plain `torch` pulls a multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test bench

setup:
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"

demo: setup
	lsr demo

test: setup
	$(PYTHON) -m pytest -q tests
