"""The Dockerfile keeps its promises. No Docker engine runs here, so the file itself is checked."""

from __future__ import annotations

import re

from serving import REPO

from podserve.settings import HTTP_PORT


def test_dockerfile_builds_cpu_and_gpu_flavours_without_root_or_secrets():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    assert ("python-${FLAVOR}", "runtime") in stages and ("python-${FLAVOR}", "build") in stages
    for flavor in ("cpu", "gpu"):
        assert (REPO / "requirements" / f"{flavor}.txt").is_file()
        assert any(name == f"python-{flavor}" for _, name in stages)
    runtime = text[text.index("AS runtime"):]
    assert re.search(r"^USER 10001$", runtime, re.M), "the final stage must not run as root"
    assert "HEALTHCHECK" in runtime and "podserve.runtime.healthcheck" in runtime
    assert f"EXPOSE {HTTP_PORT}" in runtime and "PYTHONUNBUFFERED=1" in runtime
    assert not re.search(r"(?i)(password|token|secret|api[_-]?key)\s*=", text)
    gpu, cpu = (_requirements(REPO / "requirements" / f"{flavor}.txt") for flavor in ("gpu", "cpu"))
    assert "onnxruntime-gpu==" in gpu and "onnxruntime==" not in gpu
    assert "onnxruntime==" in cpu and "onnxruntime-gpu" not in cpu


def _requirements(path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
