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

.PHONY: serve test model tools render bench clean

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
	touch $@ $(VENV)/.tooling-deps

$(VENV)/.test-deps: requirements/*.txt | $(VENV)/bin/python
	$(PIP) install -r requirements/test.txt
	touch $@ $(VENV)/.serve-deps $(VENV)/.tooling-deps

clean:
	rm -rf $(VENV) build .pytest_cache

tools: $(VENV)/bin/python ## Real helm and kubectl (pinned by sha256) in .tools/bin for the manifest checks.
	$(PY) -m podserve.tooling.fetch_tools .tools/bin

render: $(VENV)/.tooling-deps ## Render every stage of VALUES into OUT/<stage>/; exit 2 and write nothing if invalid.
	$(PY) -m podserve.tooling.render --all --values $(VALUES) --out $(OUT)

$(VENV)/.tooling-deps: requirements/tooling.txt | $(VENV)/bin/python
	$(PIP) install -r requirements/tooling.txt
	touch $@

bench: $(VENV)/bin/python ## Our server vs the onnxruntime ceiling vs Gunicorn: bench/results/latest.{json,md} (< 10 min).
	@test -f $(VENV)/.bench-deps -a -z "$$(find requirements -newer $(VENV)/.bench-deps)" || \
		{ $(PIP) install -r requirements/bench.txt && touch $(VENV)/.bench-deps; }
	@test "$$(dpkg-query -W -f='$${Version}' wrk 2>/dev/null)" = "4.1.0-3+b2" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk=4.1.0-3+b2; }
	$(PY) -m podserve.tooling.example_models model cls det
	BENCH_COMMAND="make bench" $(PY) -m bench.run
