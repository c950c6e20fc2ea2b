"""stop_grey runs without a checkout: in an empty job folder holding only the `manifests` artifact, with only the
tooling image's files (laid out from Dockerfile.tooling's COPY lines), none of the server's dependencies importable."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

from ci_pipeline import (REPO, concrete_jobs, dry_parse, make_manifests_artifact, run_job_lines, script_lines,
                         tool_argv, variables)
from podserve.testbed.image import tooling
from image_layout import REFUSE_SERVER_DEPS, lay_out
from test_layout import SERVER_ONLY

STOP = concrete_jobs()["stop_grey"]
MANIFESTS = "build/manifests"


def no_checkout_job(tmp_path: Path, artifacts: Path) -> tuple[Path, dict[str, str], Path]:
    """(the job's folder, its environment, the image's interpreter) as the runner gives them to stop_grey after the
    branch is deleted: the `manifests` artifact and nothing else in the folder; the tooling image (laid out as
    Dockerfile.tooling's COPY lines hold it) with none of the server's packages importable."""
    python = tooling.lay_out(REPO, tmp_path / "image", preload=REFUSE_SERVER_DEPS.format(names=tuple(SERVER_ONLY)))
    image = python.parents[3]
    assert {p.relative_to(image).as_posix() for p in image.rglob("*") if p.is_file() and "venv" not in p.parts} == {
        p.relative_to(tmp_path / "layout").as_posix() for p in lay_out("Dockerfile.tooling", tmp_path / "layout").rglob("*")
        if p.is_file() and "requirements" not in p.parts}  # the stand-in holds what the Dockerfile copies
    job = tmp_path / "builds/team/service"
    job.mkdir(parents=True)
    assert STOP["needs"] == ["manifests"]
    shutil.copytree(artifacts / "build", job / "build")  # the artifacts GitLab downloads; no git clone
    env = {**variables(STOP), "CI_PROJECT_DIR": str(job), "HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return job, env, python


def test_stop_grey_needs_no_checkout_and_deletes_by_the_manifests_artifact(tmp_path, manifests_artifact):
    job, env, python = no_checkout_job(tmp_path, manifests_artifact)
    assert STOP["variables"]["GIT_STRATEGY"] == "none" and STOP["image"] == "$TOOLING_IMAGE"
    assert not (job / "src").exists() and not (job / "value.py").exists()
    (line,) = script_lines(STOP)
    module, argv = tool_argv(line, STOP)
    assert (module, argv[:3]) == ("podserve.tooling.deploy", ["delete", "--stage", "grey"])
    assert (job / argv[argv.index("--manifests") + 1] / "grey").is_dir()
    # The image's deploy tool, with no checkout and none of the server's packages, accepts the job's command line.
    parsed = dry_parse(module, argv, cwd=job, env={**env, "PYTHONPATH": str(python.parents[3] / "opt/podserve/src")})
    assert parsed.get("stage") == "grey" and parsed.get("manifests") == MANIFESTS


GREY_LABELS = "stage=grey,service={service}"


def grey_objects(api, namespace: str, service: str) -> dict[str, list[str]]:
    """Names of the grey stage's Deployment and Service of `service` still in the cluster, by kind.

    (Its ReplicaSets and pods follow by garbage collection; that every labelled object goes is the deploy tool's test.)
    """
    from kubernetes import client

    selector = GREY_LABELS.format(service=service)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    found = {
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "Service": core.list_namespaced_service(namespace, label_selector=selector).items,
    }
    return {kind: [o.metadata.name for o in items] for kind, items in found.items() if items}


def test_stop_grey_removes_a_deployed_grey_from_the_control_plane_without_a_checkout(control_plane, tmp_path):
    """grey's job line deploys a grey copy (with a checkout); stop_grey's line, with none, removes it (podserve-ci)."""
    import yaml


    service = "stop-grey-check"  # its own service, so no other test's grey is touched
    value_text = re.sub(r'^service_name = "[^"]+"', f'service_name = "{service}"', (REPO / "value.py").read_text(),
                        count=1, flags=re.M)
    checkout = make_manifests_artifact(tmp_path / "checkout", value_text)
    deployment = yaml.safe_load((checkout / MANIFESTS / "grey/deployment.yaml").read_text())
    namespace = deployment["metadata"]["namespace"]
    # As in CI, where KUBECONFIG_HK holds the platform chart's podserve-ci account: the chart's RBAC is proven too.
    sys.path.insert(0, str(REPO / "tests/deploy"))
    from ci_account import ci_kubeconfig  # the deploy tool's tests' way to get podserve-ci's credentials

    kube = {"KUBECONFIG": str(ci_kubeconfig(control_plane, tmp_path / "podserve-ci.kubeconfig")), "HOME": str(tmp_path),
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}

    # service-image's artifact, BuildKit's --metadata-file (simulated: a made-up digest; kwok pulls nothing).
    digest = "sha256:" + "5e" * 32
    (checkout / "build/image-metadata.json").write_text(json.dumps({"containerimage.digest": digest}))
    grey = concrete_jobs()["grey"]
    started = time.monotonic()
    deployed = run_job_lines(script_lines(grey), grey, checkout, kube, timeout=300)
    assert deployed.returncode == 0, f"grey's deploy failed:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}"
    api = control_plane.api_client()
    assert "Deployment" in grey_objects(api, namespace, service)
    from kubernetes import client

    image = client.AppsV1Api(api).read_namespaced_deployment(service, namespace).spec.template.spec.containers[0].image
    assert image.endswith(f"/{service}@{digest}"), image  # by the digest BuildKit recorded, not the tag
    deploy_seconds = time.monotonic() - started

    job, env, python = no_checkout_job(tmp_path, checkout)
    env.update(kube)
    started = time.monotonic()
    stopped = run_job_lines(script_lines(STOP), STOP, job, env, timeout=300, python=python)
    assert stopped.returncode == 0, f"stop_grey failed:\n{stopped.stdout[-3000:]}\n{stopped.stderr[-3000:]}"

    deadline = time.monotonic() + 60
    while (left := grey_objects(api, namespace, service)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == {}, f"stop_grey left grey objects behind: {left}"
    stop_seconds = time.monotonic() - started
    print(f"grey deployed in {deploy_seconds:.1f}s; stop_grey (no checkout) removed it in {stop_seconds:.1f}s")
