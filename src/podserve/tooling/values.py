"""The fields of a service's `value.py`: their types, defaults, and checks.

`load_values` is the only way the tooling reads a value.py: it parses it without running
it (see `valuefile`), checks every field, and reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from podserve.settings import ServingSettings
from podserve.tooling.valuefile import Problem, ValueFileError, read_assignments

_SERVING_DEFAULTS = ServingSettings()

#: name -> (accepted types, default or REQUIRED). Serving defaults come from ServingSettings.
REQUIRED = object()
FIELDS: dict[str, tuple[tuple[type, ...], object]] = {
    "service_name": ((str,), REQUIRED),
    "username": ((str,), REQUIRED),
    "handler": ((str,), _SERVING_DEFAULTS.handler),
    "model_path": ((str,), _SERVING_DEFAULTS.model_path),
    "cpu": ((int, float), 4),
    "memory": ((str,), "8Gi"),
    "replicas": ((int,), 1),
    "ab_replicas": ((int,), 1),
    "hk_replicas": ((int,), 0),
    "eu_replicas": ((int,), 0),
    "na_replicas": ((int,), 0),
    "gpu_num": ((int,), 1),
    "ins_num_per_gpu": ((int,), _SERVING_DEFAULTS.ins_num_per_gpu),
    "gpu_memory": ((int,), 10),
    "init_delay_second": ((int,), 120),
    "use_decode_sidecar": ((bool,), False),
    "use_srv": ((bool,), False),
    "host_port": ((int,), 0),
    "max_batch_size": ((int,), _SERVING_DEFAULTS.max_batch_size),
    "max_batch_delay_ms": ((int, float), _SERVING_DEFAULTS.max_batch_delay_ms),
    "queue_size": ((int,), _SERVING_DEFAULTS.queue_size),
    "request_timeout_ms": ((int,), _SERVING_DEFAULTS.request_timeout_ms),
    "drain_seconds": ((int, float), _SERVING_DEFAULTS.drain_seconds),
    "http_threads": ((int,), _SERVING_DEFAULTS.http_threads),
    "max_body_bytes": ((int,), _SERVING_DEFAULTS.max_body_bytes),
}


@dataclass(frozen=True)
class ServiceValues:
    """A checked value.py: every field present, defaults filled in."""

    fields: dict

    def __getitem__(self, name: str):
        return self.fields[name]

    def serving_settings(self) -> ServingSettings:
        """Return the settings the in-pod server gets for this service."""
        shared = set(ServingSettings.names()) & set(self.fields)
        return ServingSettings(**{name: self.fields[name] for name in shared})


def load_values(path: str | Path) -> ServiceValues:
    """Read and check a value.py; raise ValueFileError listing every problem."""
    assigned = read_assignments(path)
    problems: list[Problem] = []
    values: dict = {}
    for name, (value, line) in assigned.items():
        if name not in FIELDS:
            problems.append(Problem(name, f"is not a known field; known fields: {', '.join(sorted(FIELDS))}", line))
            continue
        kinds, _ = FIELDS[name]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            problems.append(Problem(name, f"is {value!r} ({type(value).__name__}); it must be {wanted}", line))
            continue
        values[name] = value
    for name, (_, default) in FIELDS.items():
        if name in assigned:
            continue
        if default is REQUIRED:
            problems.append(Problem(name, "is required; add it to value.py"))
        else:
            values[name] = default
    if problems:
        raise ValueFileError(path, problems)
    return ServiceValues(values)
