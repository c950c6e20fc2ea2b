"""Fixtures for the dashboards' and alert rules' tests: the generated files, the real promtool and helm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podserve.tooling.conf import load_conf, load_observability
from podserve.tooling.observability import dashboards
from podserve.tooling.observability.__main__ import CHART, generated
from podserve.tooling.observability.queries import Selectors

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def obs():
    return load_observability()


@pytest.fixture(scope="session")
def selectors(obs):
    return Selectors.from_conf(obs, load_conf())


@pytest.fixture(scope="session")
def models(obs, selectors) -> dict[str, dict]:
    return dashboards.build(obs, selectors)


@pytest.fixture(scope="session")
def generated_files() -> dict[str, str]:
    return generated()


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: Debian's prometheus package provides it; run `make prometheus` (make test does)"
    return path


@pytest.fixture(scope="session")
def chart_rules(tmp_path_factory) -> Path:
    """The rule file as the platform chart renders it (real `helm template`), written where promtool can read it."""
    assert HELM.is_file(), f"{HELM} is missing: run `make tools` (make test does it first)"
    tmp = tmp_path_factory.mktemp("chart-rules")
    env = {"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin", "HOME": str(tmp), "XDG_CACHE_HOME": str(tmp / "c"),
           "XDG_CONFIG_HOME": str(tmp / "cfg"), "XDG_DATA_HOME": str(tmp / "d")}
    result = subprocess.run([str(HELM), "template", "podserve-platform", str(CHART)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    (rule,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "PrometheusRule"
               and d["metadata"]["name"] == "podserve-serving"]
    path = tmp / "serving.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path
