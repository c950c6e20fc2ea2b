"""`make image`: both flavors of the service image and the tooling image, built and pushed by the CI jobs' own lines.

    python -m podserve.testbed.image [--port 5000] [--workdir build/image] [--values value.py]

Starts the registry on 127.0.0.1:<port> (storage in <workdir>/registry-storage, kept: a second run
is mostly cache hits), the wheel index on <port + 1> and the stand-in bases (bases.py), then for value.py's
flavor and the other one: a checkout (pipeline.py), the `manifests` job, the `service-image` job;
then the `tooling-image` job. value.py's own flavor is tagged <commit>, as CI tags it and as `make deploy`
renders it (tooling/image_tag.py), the other flavor <commit>-<flavor>, so both stay listed. Prints each image's name, digest and size, and stops everything.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from podserve.testbed.image import pipeline
from podserve.testbed.image.bases import StandInError
from podserve.testbed.image.registry import RegistryError
from podserve.testbed.image.runner import RunnerError
from podserve.testbed.image.versions import REPO
from podserve.testbed.image.wheels import WheelError
from podserve.tooling.image_tag import default_image_tag
from podserve.tooling.values import load_values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000, help="the registry's port on 127.0.0.1 (5000)")
    parser.add_argument("--index-port", type=int, default=None, help="the wheel index's port (default: port + 1)")
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "image")
    parser.add_argument("--values", type=Path, default=REPO / "value.py")
    args = parser.parse_args(argv)
    started = time.monotonic()
    own = "gpu" if load_values(args.values)["gpu_num"] else "cpu"
    sha = default_image_tag(args.values)  # the tag make deploy names for these values
    shutil.rmtree(args.workdir / "run", ignore_errors=True)  # what a killed run left (its processes died with it)
    try:
        with pipeline.BuildStage.start(args.workdir / "run", args.port, args.workdir / "registry-storage",
                                       index_port=args.index_port or args.port + 1) as stage:
            built: list[str] = []
            for flavor in (own, "cpu" if own == "gpu" else "gpu"):
                checkout = args.workdir / f"checkout-{flavor}"
                shutil.rmtree(checkout, ignore_errors=True)
                stage.checkout(checkout, pipeline.flavored_value(args.values.read_text(), flavor))
                jobs = ["manifests", "service-image"] + (["tooling-image"] if flavor == own else [])
                for job in jobs:
                    tag = sha if job == "tooling-image" or flavor == own else f"{sha}-{flavor}"
                    release = pipeline.release_variables(tag) if job == "tooling-image" else None
                    done = stage.run_job(job, checkout, tag, extra=release)
                    if done.returncode != 0:
                        print(f"Error: the {job} job failed ({flavor}):\n{done.stderr[-4000:]}", file=sys.stderr)
                        return 1
                    if job.endswith("-image"):
                        built += ((checkout / "build/images.txt").read_text().split() if job == "service-image" else
                                  [stage.job_env(job, checkout, sha, release)["RELEASE_IMAGE"]])
                        cached, total = pipeline.cache_use(done.stderr)
                        what = job if job == "tooling-image" else f"{job} ({flavor})"
                        print(f"  {what}: {cached} of {total} Dockerfile steps from the cache")
            print(f"\nPushed by this run (the registry's API, {stage.registry.host}):")
            for image in built:
                facts = stage.registry.describe(*image.removeprefix(f"{stage.registry.host}/").rsplit(":", 1))
                print(f"  {facts.name}  {facts.digest}  {facts.size / 1e6:.1f} MB")
            print(f"The registry lists {len(stage.registry.catalog())} repositories.")
    except (subprocess.TimeoutExpired, RegistryError, RunnerError, StandInError, WheelError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"make image took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
