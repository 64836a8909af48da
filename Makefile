# bluesky-recorders: the two commands of the README, and a few helpers.
#   make demo   install everything into .venv and run the demo on the simulated beamline
#   make test   install everything into .venv and run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian packages the tests and the demo need (installed only when missing; root with apt):
# h5ls and nxtraverse read our NeXus files in the tests; g++ builds PyMca5's fisx;
# chromium (/usr/bin/chromium) runs the live page's browser tests and benchmark.
APT_PACKAGES := hdf5-tools nexus-tools g++ chromium

.PHONY: all install apt web demo test lint bench bench-venv clean

all: test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,benchmarks]"
	touch $(STAMP)

install: apt web $(STAMP)

# The live page's plotting library: the npm package pinned in web/package-lock.json,
# installed by `npm ci` (again only when web/package*.json change) and copied into the
# package data, so the page never needs the internet. Without npm, Debian's nodejs and
# npm are installed first (root with apt).
WEB_STAMP  := web/node_modules/.ci-stamp
WEB_VENDOR := src/bluesky_recorders/web/static/vendor
PLOTLY_DIR := web/node_modules/plotly.js-cartesian-dist-min
UPLOT_DIR  := web/node_modules/uplot

$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { \
		echo "installing Debian packages: nodejs npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

$(WEB_VENDOR)/plotly-cartesian.min.js: $(WEB_STAMP)
	mkdir -p $(WEB_VENDOR)
	cp $(PLOTLY_DIR)/plotly-cartesian.min.js $@
	cp $(PLOTLY_DIR)/LICENSE $(WEB_VENDOR)/plotly-LICENSE.txt

$(WEB_VENDOR)/uPlot.iife.min.js: $(WEB_STAMP)
	mkdir -p $(WEB_VENDOR)
	cp $(UPLOT_DIR)/dist/uPlot.iife.min.js $(UPLOT_DIR)/dist/uPlot.min.css $(WEB_VENDOR)/
	cp $(UPLOT_DIR)/LICENSE $(WEB_VENDOR)/uplot-LICENSE.txt

web: $(WEB_VENDOR)/plotly-cartesian.min.js $(WEB_VENDOR)/uPlot.iife.min.js

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: install
	$(BIN)/bsrec demo --data-root demo-data

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

# apstools >= 1.6 (NXWriter, the anchor of bench_nexus.py) pins databroker < 2: it gets
# an environment of its own, which bench_nexus.py runs its side in.
ANCHORS      := .venv-anchors
ANCHOR_STAMP := $(ANCHORS)/.installed-stamp

$(ANCHOR_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(ANCHORS)
	$(ANCHORS)/bin/pip install --quiet --upgrade pip
	$(ANCHORS)/bin/pip install --quiet "apstools>=1.6" h5py
	touch $(ANCHOR_STAMP)

bench-venv: $(ANCHOR_STAMP)

bench: install bench-venv
	$(BIN)/python benchmarks/bench_framework.py
	$(BIN)/python benchmarks/bench_nexus.py
	$(BIN)/python benchmarks/bench_spec.py
	$(BIN)/python benchmarks/bench_shm.py
	$(BIN)/python benchmarks/bench_plots.py
	$(BIN)/python benchmarks/bench_feed.py

clean:
	rm -rf demo-data .pytest_cache .ruff_cache build dist src/*.egg-info
