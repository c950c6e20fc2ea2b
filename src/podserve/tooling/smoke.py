"""CI's gate between grey and production: grey really serves, and serves this pipeline's build.

    python -m podserve.tooling.smoke --stage grey [--manifests build/manifests] [--base-url URL]
                                     [--image-metadata build/image-metadata.json]

An online service: the stage's VirtualService in render's output gives its host and exact route;
GET <base-url><route>/v2/health/ready, which the mesh rewrites to the pod's
/api/<service>/v2/health/ready, is answered 200 only by a pod of this service whose model is
loaded and warm (docs/open-inference.md). The base URL is https://<the route's host> unless given.
The mesh takes a few seconds to serve a new route, so it tries up to --attempts times, --every
seconds apart. An offline service has no route (render writes none): its stage's worker pods must
be ready and its consumer group must make progress on the source topic (offline_smoke.py).

With --image-metadata (the service-image job's BuildKit metadata), what answered must be this
pipeline's build: the pod names its image digest on every answer (podserve.image_identity), an
offline worker's pods by their image. GitLab runs one job of a resource group at a time, not a
pipeline, so another branch's grey can be deployed between this pipeline's grey and its smoke:
that grey then fails the gate, naming both digests. Exit 0 passed; 1 failed (what was seen printed);
2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from podserve.image_identity import IMAGE_DIGEST_HEADER

READY_SUFFIX = "/v2/health/ready"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class SmokeError(Exception):
    """Bad input: the message names what and how to fix it."""


def stage_documents(manifests: Path, stage: str) -> dict[str, dict]:
    """Return render's documents of `stage`, by kind; SmokeError when the folder holds none."""
    folder = manifests / stage
    try:
        docs = [d for path in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise SmokeError(f"{folder} cannot be read ({exc}); pass render's output with --manifests") from None
    if not docs:
        raise SmokeError(f"{folder} holds no manifests; pass render's output with --manifests")
    return {doc.get("kind"): doc for doc in docs}


def route_of(manifests: Path, stage: str) -> tuple[str, str]:
    """Return (host, exact public path) of the stage's VirtualService in render's output."""
    doc = stage_documents(manifests, stage).get("VirtualService") or {}
    for route in (doc.get("spec") or {}).get("http") or []:
        for match in route.get("match") or []:
            exact = (match.get("uri") or {}).get("exact")
            if exact:
                return doc["spec"]["hosts"][0], exact
    raise SmokeError(f"{manifests / stage} has no VirtualService with an exact route; render the stage again")


def ask(url: str, host: str, timeout: float) -> tuple[int, str, str]:
    """GET `url` with `host` as the Host header; return (status, first bytes of the body, the image digest header);
    status 0 unreachable."""
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(300).decode("utf-8", "replace"), answer.headers.get(IMAGE_DIGEST_HEADER, "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode("utf-8", "replace"), exc.headers.get(IMAGE_DIGEST_HEADER, "")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc), ""


def other_build(stage: str, served: str, expected: str) -> str:
    """The failure of a stage serving another build than this pipeline's, naming both digests."""
    return (f"{stage} serves the image {served or '(one that names no digest)'}, not this pipeline's {expected}: "
            f"another pipeline (another branch's push) deployed {stage} after this one; run this pipeline's {stage} "
            "job again, then this smoke")


def smoke_route(args: argparse.Namespace, expected: str | None) -> int:
    """Ask the online stage's route until it answers 200 (from this pipeline's build when `expected`)."""
    host, path = route_of(args.manifests, args.stage)
    url = f"{(args.base_url or f'https://{host}').rstrip('/')}{path}{READY_SUFFIX}"
    for attempt in range(1, args.attempts + 1):
        status, body, served = ask(url, host, args.timeout)
        if status == 200 and expected and served != expected:
            print(f"Error: {other_build(args.stage, served, expected)} (asked {url})", file=sys.stderr)
            return EXIT_FAILED
        if status == 200:
            print(f"smoke: {url} (Host {host}) answered 200 on try {attempt}"
                  + (f" from {served}" if served else "") + f": {body.strip()}")
            return EXIT_OK
        print(f"smoke: try {attempt}/{args.attempts}: {url} answered {status or 'nothing'}: {body.strip()[:200]}",
              flush=True)
        if attempt < args.attempts:
            time.sleep(args.every)
    print(f"Error: {args.stage}'s route never answered 200 at {url}: the stage does not serve through the mesh; "
          f"see `python -m podserve.tooling.deploy status --stage {args.stage}`", file=sys.stderr)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podserve.tooling.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True, help="the stage to check (grey, ab, hk, ...)")
    parser.add_argument("--manifests", default="build/manifests", type=Path, help="render's output")
    parser.add_argument("--base-url", default=None, help="where to send it (default: https://<the route's host>)")
    parser.add_argument("--image-metadata", default=None,
                        help="the image job's BuildKit metadata: the stage must serve that digest")
    parser.add_argument("--attempts", type=int, default=12, help="tries before giving up (default 12)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between tries (default 5)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    args = parser.parse_args(argv)
    from podserve.tooling import offline_smoke, platform_rules
    from podserve.tooling.deploy.digest import from_metadata
    from podserve.tooling.deploy.errors import DeployError

    try:
        refused = platform_rules.run_refusal()
        if refused:
            raise SmokeError(refused)
        if args.attempts < 1 or args.every < 0:
            raise SmokeError("--attempts must be at least 1 and --every not negative")
        expected = from_metadata(args.image_metadata) if args.image_metadata else None
        docs = stage_documents(args.manifests, args.stage)
        if "VirtualService" not in docs and "ScaledObject" in docs:  # an offline worker: no route to ask
            return offline_smoke.check(args, docs, expected)
        return smoke_route(args, expected)
    except SmokeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DeployError as exc:  # the metadata file, the cluster's credentials or answers
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
