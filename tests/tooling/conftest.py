"""Fixtures for the tooling tests: conf/, the real helm and kubectl, the rendered example."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifest_helpers import REPO, tool
from podserve.tooling import render
from podserve.tooling.conf import load_conf


@pytest.fixture(scope="session")
def conf():
    return load_conf()


@pytest.fixture(scope="session")
def helm() -> Path:
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return tool("kubectl")


@pytest.fixture(scope="session")
def example(conf) -> render.Rendered:
    """The example value.py, every stage rendered and checked."""
    return render.render(REPO / "value.py", conf=conf, image_tag="golden")
