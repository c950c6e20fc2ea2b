"""The pipeline (.gitlab-ci.yml): valid for GitLab, and every job renders or deploys a stage that exists."""

from __future__ import annotations

import json
import re
import shlex

import jsonschema
import yaml

from kube_schemas import shared_schemas
from manifest_helpers import REPO
from podserve.tooling import render

PIPELINE = yaml.safe_load((REPO / ".gitlab-ci.yml").read_text())
JOBS = {name: job for name, job in PIPELINE.items() if isinstance(job, dict) and name not in ("variables", "default")}


def resolved(name: str) -> dict:
    """Return a job with what it `extends` merged in (one level of keys, as GitLab merges them)."""
    job = JOBS[name]
    parents = job.get("extends", [])
    merged = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged.update(resolved(parent))
    return {**merged, **job, "variables": {**merged.get("variables", {}), **job.get("variables", {})}}


def test_the_pipeline_meets_gitlabs_schema():
    schema = json.loads((shared_schemas() / "gitlab-ci.json").read_text())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(PIPELINE)]
    assert errors == []


def test_the_stages_are_the_products():
    assert PIPELINE["stages"] == ["build", "grey", "stop_grey", "ab_test", "deploy-hk", "deploy-eu", "deploy-na"]
    for name, job in JOBS.items():
        if not name.startswith("."):
            assert resolved(name)["stage"] in PIPELINE["stages"], name


def test_render_calls_parse_as_the_cli_and_deploys_name_real_stages(conf):
    calls = [line for job in JOBS.values() for line in job.get("script", []) if "podserve.tooling.render" in line]
    assert len(calls) == 2
    for line in calls:
        argv = shlex.split(line.split(">")[0])[3:]
        assert render._parser().parse_args(argv).all
    for name in JOBS:
        if name.startswith("."):
            continue
        job = resolved(name)
        stage = job["variables"].get("STAGE")
        if stage:
            region = conf.stages[stage].region
            assert job["variables"]["KUBECONFIG"] == f"$KUBECONFIG_{region.upper()}", name


def test_production_and_ab_wait_for_a_person_and_grey_does_not():
    for name in ("ab_test", "deploy-hk", "deploy-eu", "deploy-na", "stop_grey"):
        assert all(rule.get("when") == "manual" for rule in resolved(name)["rules"]), name
    assert "rules" not in resolved("grey") and "when" not in resolved("grey")


def test_no_credential_is_written_in_the_pipeline():
    text = (REPO / ".gitlab-ci.yml").read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*\S", text)
    assert "--server-side" in text
