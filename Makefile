# The two commands: `make serve` (serve the example model on :8080) and `make test`.
# Every target installs what it needs, pinned, and reuses what is already there.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
VALUES ?= value.py
OUT ?= build/manifests
export PYTHONPATH := $(CURDIR)/src
export PYTHONUNBUFFERED := 1

.PHONY: serve test model render bench clean

serve: $(VENV)/.serve-deps model ## Serve the example model locally on port 8080.
	$(PY) -m podserve.tooling.serve_local $(VALUES)

test: $(VENV)/.test-deps model tools ## Install what the tests need and run them.
	$(PY) -m pytest tests

model: $(VENV)/bin/python ## Fetch the example model from the rapidocr wheel into model/.
	$(PY) -m podserve.tooling.example_models model cls

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-deps: requirements/runtime.txt requirements/cpu.txt requirements/tooling.txt | $(VENV)/bin/python
	$(PIP) install -r requirements/cpu.txt -r requirements/tooling.txt
	touch $@

$(VENV)/.test-deps: requirements/*.txt | $(VENV)/bin/python
	$(PIP) install -r requirements/test.txt
	touch $@ $(VENV)/.serve-deps

clean:
	rm -rf $(VENV) build .pytest_cache

tools: $(VENV)/bin/python ## Real helm and kubectl (pinned by sha256) in .tools/bin for the manifest checks.
	$(PY) -m podserve.tooling.fetch_tools .tools/bin

render: $(VENV)/bin/python ## Render every stage of VALUES into OUT/<stage>/; exit 2 and write nothing if invalid.
	$(PIP) install -r requirements/tooling.txt
	$(PY) -m podserve.tooling.render --all --values $(VALUES) --out $(OUT)
