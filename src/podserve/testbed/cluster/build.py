"""Build the control plane's binaries from Go modules into the shared cache, reusing what is there.

    python -m podserve.testbed.cluster.build [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

They go to <DIR>/cluster/<versions>_<digest of cluster/'s go.mod, go.sum, tools.go and cmd/>/: every
checkout on the machine reuses them, and a change to our module's sources builds a new set.

kube-apiserver, kube-controller-manager, kube-scheduler and the real node's kubelet come from k8s.io/kubernetes and
etcd from go.etcd.io/etcd/server/v3, both at the versions cluster/go.mod pins (built inside
that module, with the version stamped as upstream's hack/lib/version.sh does), and so are the node's
fake-gpu-plugin and pause (cluster/cmd/); kwok is
`go install`ed by module path at KWOK_VERSION. GOTOOLCHAIN=local, CGO_ENABLED=0: only Go
modules are downloaded. A cold build takes minutes (1,077 CPU-s: about 10 on 2 idle cores), so each step prints
what it builds and how long it took; a warm run with every binary present does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from podserve.testbed.cluster import versions

#: Stamped into the binaries' version packages, as upstream's release builds do.
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
BUILD_DATE = "2026-01-01T00:00:00Z"


class BuildError(RuntimeError):
    """A binary did not build; the message names it and quotes the end of go's output."""


def version_ldflags(version: str) -> str:
    """-ldflags that make /version report `version` (e.g. v1.35.4: major 1, minor 35)."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in VERSION_PACKAGES:
        flags += [f"-X {package}.{name}={value}" for name, value in (
            ("gitVersion", version), ("gitMajor", major), ("gitMinor", minor), ("gitTreeState", "clean"),
            ("buildDate", BUILD_DATE))]
    return " ".join(flags)


#: The flags of every go build and install of the testbed, through GOFLAGS (one set: a package two builds share at the
#: same version is compiled once, GOCACHE keys on the flags). The compiler writes no DWARF: the linker's -s -w dropped
#: it anyway, so the machine code is the same and a cold compile costs 16% less CPU (etcd: 104 against 124 CPU-s).
#: No VCS stamp: the cache keys on our module's files, not on the checkout's commit or dirtiness.
BUILD_FLAGS = ("-trimpath", "-buildvcs=false", "-gcflags=all=-dwarf=false")


def go_env() -> dict[str, str]:
    """The environment of every go command: this Go only, no cgo, go.mod and go.sum as committed, BUILD_FLAGS."""
    return dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS=" ".join(("-mod=readonly", *BUILD_FLAGS)))


def install_env(gobin: Path) -> dict[str, str]:
    """go_env() for `go install package@version` into `gobin` (outside any module: that go.mod and go.sum decide, and
    go refuses -mod there)."""
    return dict(go_env(), GOBIN=str(gobin), GOFLAGS=" ".join(BUILD_FLAGS))


def _go(args: list[str], what: str, env: dict[str, str], cwd: Path) -> None:
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        raise BuildError(f"{what}: the `go` command is not on PATH (Go >= 1.25 is needed to build the control plane)")
    done = subprocess.run([go, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise BuildError(f"building {what} failed (go {' '.join(args[:2])} ... exited {done.returncode}):\n{tail}")


def module_folder(module: str, version: str, cwd: Path, env: dict[str, str]) -> Path:
    """A module's folder in the Go module cache (downloaded by `go mod download` if a build has not yet)."""
    done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"go mod download {module}@{version} failed:\n{done.stdout}{done.stderr}")
    return Path(json.loads(done.stdout)["Dir"])


def staged_build(target: Path, what: str, fill: Callable[[Path], list[str]], out=sys.stdout) -> Path:
    """Build `what` into `target` through a staging folder beside it: fill(staging) builds there and returns the
    paths it made, moved into `target` in that order (the last one's presence means the folder is complete)."""
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        staging = Path(tmp)
        for name in fill(staging):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target / name)
    print(f"  built {what} in {time.monotonic() - started:.0f}s", file=out, flush=True)
    return target


def missing(target: Path) -> list[str]:
    return [name for name in versions.BINARIES if not (target / name).is_file()]


def build(tools: Path | None = None, out=sys.stdout) -> Path:
    """Build whatever binary is missing under <tools>/cluster/<key>/ (the shared cache's) and return that folder."""
    target = versions.binaries_dir(tools)
    todo = missing(target)
    if not todo:
        print(f"control plane binaries up to date in {target}", file=out)
        return target
    target.mkdir(parents=True, exist_ok=True)
    env = go_env()
    k8s = versions.kubernetes_version()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        staging = Path(tmp)
        steps = []
        kube = [name for name in (*versions.KUBE_BINARIES, "kubelet") if name in todo]
        if kube:
            steps.append((f"{', '.join(kube)} {k8s}", ["build", "-ldflags", version_ldflags(k8s), "-o",
                                            f"{staging}/", *[f"k8s.io/kubernetes/cmd/{n}" for n in kube]],
                          versions.GO_MODULE, env, kube))
        if "etcd" in todo:
            steps.append((f"etcd {versions.etcd_version()}", ["build", "-ldflags", "-s -w", "-o", str(staging / "etcd"),
                                                               "./cmd/etcd"],
                          versions.GO_MODULE, env, ["etcd"]))
        ours = [name for name in ("fake-gpu-plugin", "pause") if name in todo]
        if ours:
            steps.append((", ".join(ours), ["build", "-ldflags", "-s -w", "-o", f"{staging}/",
                                            *[f"./cmd/{n}" for n in ours]], versions.GO_MODULE, env, ours))
        if "kwok" in todo:
            steps.append((f"kwok {versions.KWOK_VERSION}", ["install", "-ldflags", "-s -w",
                                                            f"{versions.KWOK_PACKAGE}@{versions.KWOK_VERSION}"],
                          staging, install_env(staging), ["kwok"]))
        for what, args, cwd, step_env, names in steps:
            step_start = time.monotonic()
            print(f"building {what} ...", file=out, flush=True)
            _go(args, what, step_env, cwd)
            for name in names:  # move in only once built: a half-built binary never sits in the cache
                os.replace(staging / name, target / name)
            print(f"  built {what} in {time.monotonic() - step_start:.0f}s "
                  f"(total {time.monotonic() - started:.0f}s)", file=out, flush=True)
    return target


def run_cli(build_into, description: str, argv: list[str] | None = None) -> int:
    """`--tools DIR`, then build_into(DIR); exit 2 with the error's message when a build fails."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tools", type=Path, default=None,
                        help="where the binaries go (default: the machine's shared cache, ~/.cache/podserve)")
    args = parser.parse_args(argv)
    try:
        build_into(args.tools)
    except (BuildError, LookupError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
