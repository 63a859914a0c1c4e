# cam-auditor: one command per check, the same for people and CI.
#   make demo   set-up + audit the synthetic demo → runs/demo/report.{html,pdf}
#   make test   set-up + the whole test suite
#   make lint   ruff + mypy
#   make examples  re-render the committed worked example example_audits/demo/ from the package
#   make bench  benchmarks (needs the `bench` extra; installed here); the detection benchmark
#               runs its quick grid: `make bench DETECTION_GRID=full` for the full grid (hours)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.stamp-install
TEST_STAMP := $(VENV)/.stamp-test
# axe-core (accessibility rules) for the browser tests, from npm into the ignored venv folder:
# installed once, then `make test` works offline.
AXE    := $(VENV)/node/node_modules/axe-core/axe.min.js
DETECTION_GRID ?= quick

.PHONY: venv test-venv system-deps test-system-deps test-js-deps demo examples test lint bench wheel-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch pinned to this machine's local wheels (exactly these versions) and the project, in one
# resolver pass. (--no-compile was tried: the set-up got faster, but the tests then compiled what
# they imported, in many processes, and the whole `make test` took as long.)
PIP_INSTALL := $(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
$(STAMP): pyproject.toml | $(PY)
	$(PIP_INSTALL) -e .
	touch $(STAMP)

# the test tools (pytest, playwright's client, pypdf, ...) too: `make test`/`lint`, not `demo`
$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP) $(TEST_STAMP)

venv: $(STAMP)
test-venv: $(TEST_STAMP)

# What the demo needs: Pango + HarfBuzz for WeasyPrint's PDF and a font. Installed only when
# missing. The browser and the PDF tools are the tests' (test-system-deps), not the demo's.
system-deps:
	@missing=""; \
	for lib in libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core; do \
	  dpkg -s $$lib >/dev/null 2>&1 || missing="$$missing $$lib"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: system-deps venv
	$(VENV)/bin/auditor demo --out runs/demo

# The committed worked example (example_audits/demo/: both demo models, HTML + PDF, and their
# comparison), re-rendered with the commands of its README. It records a hash of its inputs
# (templates, auditor/report/**, demo module, weights, gates) in generated.json; `make test` fails with "run make
# examples" when they changed (tests/test_example_audits.py).
examples: system-deps venv
	$(PY) scripts/make_example_audits.py

# system packages only the tests need: Chromium (browser tests), poppler (pdftoppm, pdftotext),
# qpdf (qpdf --check of the PDF report), npm (axe-core). Installed only when missing.
test-system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v pdftoppm >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	command -v qpdf >/dev/null 2>&1 || missing="$$missing qpdf"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Two xdist workers, one file per worker at a time (module fixtures built once); PYTEST_ARGS
# adds options, e.g. `make test PYTEST_ARGS='-k groups'`.
PYTEST_ARGS ?=
$(AXE): | $(PY) test-system-deps
	npm install --prefix $(VENV)/node --no-audit --no-fund --silent axe-core@4

test-js-deps: $(AXE)

test: system-deps test-system-deps test-venv test-js-deps
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $(PYTEST_ARGS)

lint: test-venv
	$(VENV)/bin/ruff check auditor tests benchmarks scripts
	$(VENV)/bin/mypy auditor

bench: system-deps test-system-deps test-venv
	$(PIP) install --quiet -e '.[test,bench]'
	$(PY) benchmarks/run_all.py --detection-grid $(DETECTION_GRID)

clean:
	rm -rf runs build dist *.egg-info test-artifacts
