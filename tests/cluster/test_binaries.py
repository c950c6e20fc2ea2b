"""The control plane's binaries are the pinned versions, built from Go modules, and say so."""

from __future__ import annotations

import subprocess

from podserve.testbed.cluster import versions


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
    assert versions.binaries_dir().name == f"k8s-{kubernetes}_etcd-{versions.etcd_version()}_kwok-{versions.KWOK_VERSION}"


def test_the_apiserver_tells_clients_its_real_version(api):
    from kubernetes import client

    info = client.VersionApi(api).get_code()
    assert (info.git_version, info.major, info.minor) == (versions.kubernetes_version(), "1", "35")
