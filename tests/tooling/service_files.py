"""Write value.py files for tests: a valid service, changed field by field."""

from __future__ import annotations

from pathlib import Path

#: A complete, valid service (every field the tooling knows, at ordinary values).
VALID = {
    "service_name": "text-direction",
    "username": "like",
    "handler": "server:TextDirection",
    "model_path": "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "cpu": 4,
    "memory": "8Gi",
    "gpu_num": 1,
    "ins_num_per_gpu": 1,
    "gpu_memory": 2,
    "replicas": 2,
    "ab_replicas": 1,
    "hk_replicas": 2,
    "eu_replicas": 1,
    "na_replicas": 1,
    "init_delay_second": 60,
    "use_decode_sidecar": False,
    "use_srv": False,
    "host_port": 0,
    "max_batch_size": 16,
    "max_batch_delay_ms": 5,
    "queue_size": 64,
    "request_timeout_ms": 10000,
    "drain_seconds": 5,
}


def value_text(fields: dict) -> str:
    """Return value.py text assigning each field its literal."""
    return '"""A test service."""\n' + "".join(f"{name} = {value!r}\n" for name, value in fields.items())


def write_values(folder: Path, name: str = "value.py", remove: tuple[str, ...] = (), **changes) -> Path:
    """Write VALID with `changes` applied and `remove` left out; return the file's path."""
    fields = {k: v for k, v in {**VALID, **changes}.items() if k not in remove}
    path = folder / name
    path.write_text(value_text(fields), encoding="utf-8")
    return path
