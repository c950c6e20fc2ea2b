"""The command line without a cluster: bad input exits 2 with the fix, and the tool imports without the server's deps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def deploy(*args, env=None, cwd=REPO):
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "podserve.tooling.deploy", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, env, says", [
    (["apply", "--stage", "grey"], {}, "no cluster credentials: set KUBECONFIG"),
    (["apply", "--stage", "gray"], {}, "'gray' is not a stage; use one of grey, ab, hk, eu, na"),
    (["apply", "--stage", "grey", "--manifests", "/nonexistent"], {}, "no grey/*.yaml there"),
    (["apply", "--stage", "grey", "--values", "/nonexistent/value.py"], {}, "--values /nonexistent/value.py does not exist"),
    (["status", "--stage", "grey"], {"KUBECONFIG": "/nonexistent"}, "the cluster credentials cannot be used"),
    (["apply", "--stage", "grey", "--reason", "x"], {}, "--reason goes with --force"),
])
def test_bad_input_exits_2_with_the_fix(args, env, says):
    done = deploy(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: ") and says in done.stderr


def test_a_bad_value_py_is_refused_with_every_problem(tmp_path):
    bad = tmp_path / "value.py"
    bad.write_text('service_name = "Bad_Name"\nusername = "nobody"\n')
    done = deploy("apply", "--stage", "grey", "--values", str(bad))
    assert done.returncode == 2
    assert "service_name" in done.stderr and "username" in done.stderr


def test_manifests_of_another_stage_are_refused(tmp_path):
    out = tmp_path / "manifests"
    subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--stage", "hk", "--out", str(out)], cwd=REPO,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")}, check=True, capture_output=True)
    done = deploy("apply", "--stage", "grey", "--manifests", str(out / "hk"))
    assert done.returncode == 2 and "is for stage 'hk'" in done.stderr


def test_manifests_not_written_by_render_are_refused(tmp_path):
    (tmp_path / "grey").mkdir()
    (tmp_path / "grey" / "x.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service",
                                                              "metadata": {"name": "x", "namespace": "podserve-grey"}}))
    done = deploy("apply", "--stage", "grey", "--manifests", str(tmp_path))
    assert done.returncode == 2 and "lacks render's labels" in done.stderr


def test_production_stages_cannot_be_deleted():
    from podserve.tooling.conf import load_conf
    from podserve.tooling.deploy import commands
    from podserve.tooling.deploy.errors import BadInput
    from podserve.tooling.deploy.target import Target

    with pytest.raises(BadInput, match="delete stops grey and A/B copies only"):
        commands.delete(None, Target("svc", load_conf().stages["hk"], "like"), commands.Options())


def test_dry_run_differences_name_the_changed_paths():
    from podserve.tooling.deploy.commands import differences

    before = {"spec": {"replicas": 1, "template": {"containers": [{"image": "a"}]}}, "metadata": {"labels": {}}}
    after = {"spec": {"replicas": 2, "template": {"containers": [{"image": "b"}]}}, "metadata": {"labels": {}}}
    assert differences(before, after) == ["spec.replicas", "spec.template.containers[0].image"]
    assert differences(before, before) == []
