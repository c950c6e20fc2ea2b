"""The control plane's binaries are the pinned versions, built from Go modules, and say so."""

from __future__ import annotations

import subprocess

from podserve.testbed.cluster import build, versions


def version_of(binary: str) -> str:
    path = versions.binaries_dir() / binary
    assert path.is_file(), f"{path} is missing: run `make cluster-binaries` (make test does it first)"
    done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_each_binary_reports_the_version_go_mod_pins():
    kubernetes = versions.kubernetes_version()
    assert kubernetes.startswith("v1.35.")
    for binary in versions.KUBE_BINARIES:
        assert version_of(binary).strip() == f"Kubernetes {kubernetes}"
    assert f"etcd Version: {versions.etcd_version().lstrip('v')}" in version_of("etcd")
    assert version_of("kwok").startswith(f"kwok version {versions.KWOK_VERSION} ")
    assert versions.binaries_dir().name.startswith(
        f"k8s-{kubernetes}_etcd-{versions.etcd_version()}_kwok-{versions.KWOK_VERSION}_")


def test_a_change_to_our_module_s_sources_names_a_new_set_of_binaries(tmp_path, monkeypatch):
    """The cache key follows cluster/'s go.mod, go.sum and cmd/: an edited fake-gpu-plugin is never a stale hit."""
    import shutil

    module = tmp_path / "cluster"
    shutil.copytree(versions.GO_MODULE, module, ignore=shutil.ignore_patterns("kwok-crds", "simulated-logs"))
    monkeypatch.setattr(versions, "GO_MODULE", module)
    before = versions.cache_key()
    assert before == versions.binaries_dir().name
    plugin = next((module / "cmd" / "fake-gpu-plugin").glob("*.go"))
    plugin.write_text(plugin.read_text() + "\n// edited\n")
    assert versions.cache_key() != before


def test_every_go_build_and_install_compiles_without_dwarf_and_with_trimmed_paths(tmp_path):
    """The build modules' two environments carry the shared flags to each compile (go build -n: printed, not run)."""
    cache = {"GOCACHE": str(tmp_path / "gocache")}  # -n compiles nothing; the machine's cache is left alone
    for verb, env in (("build", build.go_env()), ("install", build.install_env(tmp_path / "bin"))):
        done = subprocess.run(["go", verb, "-n", "./cmd/pause"], cwd=versions.GO_MODULE, env=dict(env, **cache),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        compiles = [line for line in done.stderr.splitlines() if "/compile " in line]
        assert compiles, done.stderr
        assert [line for line in compiles if "-dwarf=false" not in line or " -trimpath " not in line] == []


def test_the_apiserver_tells_clients_its_real_version(api):
    from kubernetes import client

    info = client.VersionApi(api).get_code()
    assert (info.git_version, info.major, info.minor) == (versions.kubernetes_version(), "1", "35")
