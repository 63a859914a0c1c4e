# cam-auditor: one command per check, the same for people and CI.
#   make demo   set-up + audit the synthetic demo → runs/demo/report.{html,pdf}
#   make test   set-up + the whole test suite
#   make lint   ruff + mypy
#   make bench  benchmarks (needs the `bench` extra; installed here)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.stamp-install
# axe-core (accessibility rules) for the browser tests, from npm into the ignored venv folder:
# installed once, then `make test` works offline.
AXE    := $(VENV)/node/node_modules/axe-core/axe.min.js

.PHONY: venv system-deps test-system-deps test-js-deps demo test lint bench wheel-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch from this machine's local wheels first (exactly these versions), then the project.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Pango (WeasyPrint), Chromium (browser tests), poppler (pdftoppm). Installed only when missing.
system-deps:
	@missing=""; \
	for lib in libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core; do \
	  dpkg -s $$lib >/dev/null 2>&1 || missing="$$missing $$lib"; done; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v pdftoppm >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: system-deps venv
	$(VENV)/bin/auditor demo --out runs/demo

# system packages only the tests need (qpdf --check of the PDF report, npm for axe-core)
test-system-deps:
	@missing=""; \
	command -v qpdf >/dev/null 2>&1 || missing="$$missing qpdf"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(AXE): | $(PY) test-system-deps
	npm install --prefix $(VENV)/node --no-audit --no-fund --silent axe-core@4

test-js-deps: $(AXE)

test: system-deps test-system-deps venv test-js-deps
	$(PY) -m pytest -q -p no:cacheprovider

lint: venv
	$(VENV)/bin/ruff check auditor tests benchmarks scripts
	$(VENV)/bin/mypy auditor

bench: system-deps venv
	$(PIP) install --quiet -e '.[test,bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs build dist *.egg-info test-artifacts
