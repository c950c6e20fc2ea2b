"""A smoke request through a stage's public route, as callers reach it: CI's gate between grey and production.

    python -m podserve.tooling.smoke --stage grey [--manifests build/manifests] [--base-url URL]

It reads the stage's VirtualService from render's output (its host and exact route) and sends
GET <base-url><route>/v2/health/ready, which the mesh rewrites to the pod's
/api/<service>/v2/health/ready: answered 200 only by a pod of this service whose model is
loaded and warm (docs/open-inference.md). The base URL is https://<the route's host> unless
given. The mesh takes a few seconds to serve a new route, so it tries up to --attempts times,
--every seconds apart. Exit 0 answered 200; 1 never answered 200 (the last answer printed);
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

READY_SUFFIX = "/v2/health/ready"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class SmokeError(Exception):
    """Bad input: the message names what and how to fix it."""


def route_of(manifests: Path, stage: str) -> tuple[str, str]:
    """Return (host, exact public path) of the stage's VirtualService in render's output."""
    path = manifests / stage / "virtualservice.yaml"
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise SmokeError(f"{path} cannot be read ({exc}); pass render's output with --manifests") from None
    for doc in docs:
        for route in (doc.get("spec") or {}).get("http") or []:
            for match in route.get("match") or []:
                exact = (match.get("uri") or {}).get("exact")
                if exact:
                    return doc["spec"]["hosts"][0], exact
    raise SmokeError(f"{path} has no VirtualService with an exact route; render the stage again")


def ask(url: str, host: str, timeout: float) -> tuple[int, str]:
    """GET `url` with `host` as the Host header; return (status, first bytes of the body); status 0 unreachable."""
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(300).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podserve.tooling.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True, help="the stage whose route to ask (grey, ab, hk, ...)")
    parser.add_argument("--manifests", default="build/manifests", type=Path, help="render's output")
    parser.add_argument("--base-url", default=None, help="where to send it (default: https://<the route's host>)")
    parser.add_argument("--attempts", type=int, default=12, help="tries before giving up (default 12)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between tries (default 5)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    args = parser.parse_args(argv)
    try:
        if args.attempts < 1 or args.every < 0:
            raise SmokeError("--attempts must be at least 1 and --every not negative")
        host, path = route_of(args.manifests, args.stage)
    except SmokeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    url = f"{(args.base_url or f'https://{host}').rstrip('/')}{path}{READY_SUFFIX}"
    for attempt in range(1, args.attempts + 1):
        status, body = ask(url, host, args.timeout)
        if status == 200:
            print(f"smoke: {url} (Host {host}) answered 200 on try {attempt}: {body.strip()}")
            return EXIT_OK
        print(f"smoke: try {attempt}/{args.attempts}: {url} answered {status or 'nothing'}: {body.strip()[:200]}",
              flush=True)
        if attempt < args.attempts:
            time.sleep(args.every)
    print(f"Error: {args.stage}'s route never answered 200 at {url}: the stage does not serve through the mesh; "
          f"see `python -m podserve.tooling.deploy status --stage {args.stage}`", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
