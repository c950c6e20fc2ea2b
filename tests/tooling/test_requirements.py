"""The service's own packages (requirements/service.txt) install wherever the server does: make serve, the tests, the image."""

from __future__ import annotations

import re
from pathlib import Path

from manifest_helpers import REPO

REQUIREMENTS = REPO / "requirements"


def included(path: Path) -> set[Path]:
    """`path` and every file its `-r` lines pull in, recursively."""
    found = {path}
    for line in path.read_text().splitlines():
        match = re.match(r"^-r\s+(\S+)", line.strip())
        if match:
            found |= included(path.parent / match.group(1))
    return found


def test_every_install_of_the_server_installs_the_services_packages():
    service = REQUIREMENTS / "service.txt"
    for name in ("cpu.txt", "gpu.txt", "test.txt", "bench.txt", "bench-gpu.txt"):  # make serve/test/bench, images
        assert service in included(REQUIREMENTS / name), name
    assert service not in included(REQUIREMENTS / "tooling.txt")  # CI's tooling image never needs them
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements/ " in dockerfile and "-r /tmp/requirements/${FLAVOR}.txt" in dockerfile


def test_the_services_file_pins_every_package_it_names():
    lines = [line.strip() for line in (REQUIREMENTS / "service.txt").read_text().splitlines()]
    unpinned = [line for line in lines if line and not line.startswith("#") and "==" not in line]
    assert unpinned == [], f"pin each package with ==, e.g. more-itertools==11.2.1: {unpinned}"
