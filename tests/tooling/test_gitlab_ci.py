"""The pipeline (.gitlab-ci.yml) is valid for GitLab: its schema as check-jsonschema ships it and as shared/ holds it.

What each job runs is tested in tests/pipeline/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from kube_schemas import shared_schemas
from manifest_helpers import REPO

CI_FILE = REPO / ".gitlab-ci.yml"
PIPELINE = yaml.safe_load(CI_FILE.read_text())
CHECK = [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci",
         "--data-transform", "gitlab-ci"]


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    """The issue's command, run as written (check-jsonschema is pinned in requirements/test.txt)."""
    return subprocess.run([*CHECK, str(path)], capture_output=True, text=True, timeout=120)


def test_the_pipeline_passes_check_jsonschemas_gitlab_schema():
    done = check_jsonschema(CI_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout


def test_the_schema_check_catches_a_misspelt_key(tmp_path):
    # The same pipeline with one job key misspelt must fail: the check can fail.
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(CI_FILE.read_text().replace("  resource_group: production/hk", "  resource_grup: production/hk"))
    assert broken.read_text() != CI_FILE.read_text()
    done = check_jsonschema(broken)
    assert done.returncode == 1 and "deploy-hk" in done.stdout + done.stderr


def test_the_pipeline_meets_the_shared_gitlab_schema():
    schema = json.loads((shared_schemas() / "gitlab-ci.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(PIPELINE)]
    assert errors == []


def test_the_stages_are_the_products():
    assert PIPELINE["stages"] == ["build", "grey", "smoke", "stop_grey", "ab_test", "stop_ab", "deploy-hk",
                                  "deploy-eu", "deploy-na"]
    for name, job in PIPELINE.items():
        if isinstance(job, dict) and "stage" in job:
            assert job["stage"] in PIPELINE["stages"], name
