"""smoke-grey tests this pipeline's grey, not whatever grey runs by then (issue 56, It must show 3).

GitLab locks one job of the `grey` resource group at a time, not a pipeline: another branch's push can deploy grey
between this pipeline's grey job and its smoke-grey job. Real: the grey job's line (the deploy tool, the preview
account, the apiserver) run twice, this pipeline's then another branch's, each with its own BuildKit metadata; the
server process that answers grey's route behind a real Envoy (podserve.testbed.mesh), started with the environment
the live Deployment gives its pod, so it names the digest the deploy tool gave it; smoke-grey's line. Simulated: the
kubelet (kwok starts nothing: the mesh's process plays the Deployment's pod) and the two digests (made up: no image is pulled).
"""

from __future__ import annotations

import json
import re
import sys
import time

from ci_pipeline import REPO, concrete_jobs, make_manifests_artifact, run_job_lines, script_lines
from podserve.image_identity import IMAGE_DIGEST_ENV
from podserve.testbed.mesh.mesh import Mesh
from podserve.tooling.deploy.kube import MANAGED, PODS, Kube

sys.path.insert(0, str(REPO / "tests" / "deploy"))
from ci_account import ci_kubeconfig  # noqa: E402 - the deploy tests' way to get an account's credentials

JOBS = concrete_jobs()
SERVICE = "smoke-digest"
OURS, THEIRS = "sha256:" + "0a" * 32, "sha256:" + "0b" * 32


def pipeline_checkout(tmp_path, name: str, digest: str):
    """A pipeline's job folder: the manifests job run as written, and service-image's metadata naming `digest`."""
    value = re.sub(r'^service_name = "[^"]+"', f'service_name = "{SERVICE}"', (REPO / "value.py").read_text(),
                   count=1, flags=re.M)
    checkout = make_manifests_artifact(tmp_path / name, value)
    (checkout / "build/image-metadata.json").write_text(json.dumps({"containerimage.digest": digest}))
    return checkout


def grey_job(checkout, kubeconfig):
    job = JOBS["grey"]
    done = run_job_lines(script_lines(job), job, checkout, {"KUBECONFIG_PREVIEW_HK": str(kubeconfig)}, timeout=300)
    assert done.returncode == 0, f"grey's job failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def smoke_job(checkout, kubeconfig, base_url: str):
    """smoke-grey's line as written, pointed at the stand-in gateway (on a runner: the route's https://<host>)."""
    job = JOBS["smoke-grey"]
    (line,) = script_lines(job)
    return run_job_lines([f"{line} --base-url {base_url} --every 1"], job, checkout,
                         {"KUBECONFIG_PREVIEW_HK": str(kubeconfig)}, timeout=180)


def serving_pod(checkout, work, digest_env: dict, plane, istiod, admin: Kube):
    """grey's route behind a real Envoy fed by istiod, answered by a server started with the live Deployment's
    digest env as the process of the Deployment's own (kwok's) pod."""
    pods = [p["metadata"]["name"] for p in admin.list(PODS, "podserve-like-grey", f"service={SERVICE}")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, pods
    return Mesh([checkout / "value.py"], work, plane=plane, istiod=istiod, region="hk", stages=["grey"],
                replicas={"grey": 1}, pod_env={(SERVICE, "grey", 0): digest_env},
                adopt={(SERVICE, "grey"): pods}).start()


def test_a_grey_of_another_branch_deployed_before_the_smoke_fails_it_naming_both_digests(control_plane, istiod, tmp_path):
    kubeconfig = ci_kubeconfig(control_plane, tmp_path / "preview.kubeconfig", "like", "preview")
    ours, theirs = pipeline_checkout(tmp_path, "ours", OURS), pipeline_checkout(tmp_path, "theirs", THEIRS)
    admin = Kube(control_plane.api_client())

    def live_digest() -> dict:
        deployment = admin.get(MANAGED["Deployment"], "podserve-like-grey", SERVICE)
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return {IMAGE_DIGEST_ENV: env[IMAGE_DIGEST_ENV]}

    mesh = None
    try:
        grey_job(ours, kubeconfig)  # this pipeline's grey
        grey_job(theirs, kubeconfig)  # another branch's push, before this pipeline's smoke-grey ran
        assert live_digest() == {IMAGE_DIGEST_ENV: THEIRS}
        mesh = serving_pod(ours, tmp_path / "mesh-theirs", live_digest(), control_plane, istiod, admin)
        started = time.monotonic()
        done = smoke_job(ours, kubeconfig, mesh.url)
        print(f"smoke-grey after another branch's grey: exit {done.returncode} in {time.monotonic() - started:.1f} s")
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"grey serves the image {THEIRS}, not this pipeline's {OURS}: another pipeline" in done.stderr
        mesh.stop()

        grey_job(ours, kubeconfig)  # this pipeline's grey again: now the smoke passes
        mesh = serving_pod(ours, tmp_path / "mesh-ours", live_digest(), control_plane, istiod, admin)
        done = smoke_job(ours, kubeconfig, mesh.url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "answered 200 on try" in done.stdout and f"from {OURS}" in done.stdout
    finally:
        if mesh is not None:
            mesh.stop()
        job = JOBS["stop_grey"]
        run_job_lines(script_lines(job), job, ours, {"KUBECONFIG_PREVIEW_HK": str(kubeconfig)}, timeout=300)
