"""Serve a service locally exactly as its pod would: value.py -> environment -> the in-pod server.

    python -m podserve.tooling.serve_local [value.py]

Reads and checks value.py, turns it into the same PODSERVE_* variables the Deployment
sets, listens on 127.0.0.1 (PODSERVE_HOST and PODSERVE_PORT in the environment override
the address), and replaces this process with `python -m podserve.runtime`.
"""

from __future__ import annotations

import os
import sys

from podserve.tooling.valuefile import ValueFileError
from podserve.tooling.values import load_values


#: Settings the caller's environment may override locally (e.g. `PODSERVE_PORT=18080 make serve`).
LOCAL_DEFAULTS = {"host": "127.0.0.1", "port": None}


def local_environment(values_path: str, environ: dict[str, str]) -> dict[str, str]:
    """Return the environment a local server gets: the pod's settings, bound to loopback."""
    settings = load_values(values_path).serving_settings()
    env = {**environ, **settings.to_env()}
    for name, local_default in LOCAL_DEFAULTS.items():
        variable = settings.env_name(name)
        chosen = environ.get(variable) or local_default
        if chosen is not None:
            env[variable] = chosen
    return env


def main(argv: list[str]) -> int:
    values_path = argv[0] if argv else "value.py"
    try:
        env = local_environment(values_path, dict(os.environ))
    except ValueFileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    os.execvpe(sys.executable, [sys.executable, "-m", "podserve.runtime"], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
