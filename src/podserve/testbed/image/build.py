"""Build BuildKit (buildctl, buildkitd) and the registry from their pinned Go modules into the shared cache.

    python -m podserve.testbed.image.build [--tools DIR]      (make image-tools; default ~/.cache/podserve)

Each goes to <DIR>/<name>-<version>-<digest of its go.mod and go.sum>/, reused by every checkout on the machine.

buildctl and buildkitd come from tests/pipeline/buildctl/go.mod (BuildKit v0.29.0, the version of
CI's moby/buildkit image), the registry from tests/pipeline/registry/go.mod; upstream's
buildctl-daemonless.sh, which CI's build jobs call, is copied from BuildKit's module beside them.
GOTOOLCHAIN=local, CGO_ENABLED=0, go.sum as committed. Cold: about 3 min on 2 cores; warm: nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from podserve.testbed.cluster.build import BuildError, _go, go_env, run_cli
from podserve.testbed.image import versions


def _module_dir(module_dir: Path, module: str, env: dict[str, str]) -> Path:
    """Where `module` (at the version module_dir's go.mod selects) lies in the module cache."""
    done = subprocess.run(["go", "list", "-m", "-json", module], cwd=module_dir, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise BuildError(f"go list -m {module} failed: {done.stderr.strip()}")
    return Path(json.loads(done.stdout)["Dir"])


def build(tools: Path | None = None, out=sys.stdout) -> dict[str, Path]:
    """Build whatever is missing; return {name: path} of buildctl, buildkitd, buildctl-daemonless.sh, registry."""
    kit, registry = versions.buildkit_dir(tools), versions.registry_binary(tools)
    wanted = {"buildctl": kit / "buildctl", "buildkitd": kit / "buildkitd",
              versions.DAEMONLESS_SCRIPT: kit / versions.DAEMONLESS_SCRIPT, "registry": registry}
    todo = [name for name, path in wanted.items() if not path.is_file()]
    if not todo:
        print(f"BuildKit {versions.buildkit_version()} and registry {versions.registry_version()} up to date "
              f"in {kit.parent}", file=out)
        return wanted
    env = go_env()
    for path in wanted.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=kit.parent, prefix=".build-image-") as tmp:
        staging = Path(tmp)
        for name in todo:
            step = time.monotonic()
            if name == versions.DAEMONLESS_SCRIPT:
                source = _module_dir(versions.BUILDKIT_MODULE, "github.com/moby/buildkit", env)
                shutil.copyfile(source / "examples/buildctl-daemonless" / name, staging / name)
                os.chmod(staging / name, 0o755)
            else:
                module, package = ((versions.REGISTRY_MODULE, "github.com/distribution/distribution/v3/cmd/registry")
                                   if name == "registry" else
                                   (versions.BUILDKIT_MODULE, f"github.com/moby/buildkit/cmd/{name}"))
                print(f"building {name} ...", file=out, flush=True)
                _go(["build", "-ldflags", "-s -w", "-o", str(staging / name), package], name, env, module)
            os.replace(staging / name, wanted[name])  # moved in only once built
            print(f"  {name} ready in {time.monotonic() - step:.0f}s (total {time.monotonic() - started:.0f}s)",
                  file=out, flush=True)
    return wanted


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
