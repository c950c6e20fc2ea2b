"""Serve a service locally exactly as its pod would: value.py -> environment -> the in-pod server.

    python -m podserve.tooling.serve_local [value.py]

Reads and checks value.py, turns it into the same PODSERVE_* variables the Deployment
sets, listens on 127.0.0.1 (PODSERVE_HOST and PODSERVE_PORT in the environment override
the address), serves a GPU service on the CPU where no GPU is usable (its pod would not be ready: PODSERVE_REQUIRE_GPU),
and replaces this process with `python -m podserve.runtime`, or, for an
offline service (`mode = "offline"`), with the Kafka worker `python -m podserve.runtime.offline`
reading from PODSERVE_KAFKA_BOOTSTRAP (default: the broker `make kafka` runs) as the principal of
PODSERVE_KAFKA_USERNAME (default: value.py's team's, from the credentials `make kafka` wrote).
"""

from __future__ import annotations

import os
import sys

from podserve import kafka_access
from podserve.offline_settings import BOOTSTRAP_ENV, LOCAL_KAFKA_BOOTSTRAP
from podserve.tooling.valuefile import ValueFileError
from podserve.tooling.values import load_values


#: Settings a local run changes, which the caller's environment may override (e.g. `PODSERVE_PORT=18080 make serve`):
#: loopback, and a GPU service on a machine without a usable GPU serving on the CPU (with a warning) where its pod
#: would not be ready (`PODSERVE_REQUIRE_GPU=1 make serve` behaves as the pod).
LOCAL_DEFAULTS = {"host": "127.0.0.1", "port": None, "require_gpu": "0"}
#: The module `python -m` runs for each mode of value.py.
ENTRY_POINTS = {"online": "podserve.runtime", "offline": "podserve.runtime.offline"}


def local_environment(values_path: str, environ: dict[str, str]) -> dict[str, str]:
    """Return the environment a local server gets: the pod's settings, bound to loopback."""
    values = load_values(values_path)
    settings = values.serving_settings()
    env = {**environ, **settings.to_env()}
    if values.offline:
        env = {**kafka_access.with_local_credentials(values["username"], env), **values.worker_settings().to_env()}
        env[BOOTSTRAP_ENV] = environ.get(BOOTSTRAP_ENV) or LOCAL_KAFKA_BOOTSTRAP
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
        entry_point = ENTRY_POINTS[load_values(values_path)["mode"]]
    except ValueFileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    os.execvpe(sys.executable, [sys.executable, "-m", entry_point], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
