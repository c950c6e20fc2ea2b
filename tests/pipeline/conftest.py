"""Fixtures for the pipeline tests: the `manifests` job's artifacts, made by running its script for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_pipeline import REPO, make_manifests_artifact


@pytest.fixture(scope="session")
def manifests_artifact(tmp_path_factory) -> Path:
    """A folder holding what the `manifests` job leaves as artifacts (build/...) for the example value.py."""
    return make_manifests_artifact(tmp_path_factory.mktemp("manifests-job"), (REPO / "value.py").read_text())
