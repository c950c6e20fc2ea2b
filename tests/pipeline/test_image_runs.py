"""The CPU service image for real: built by the service-image job's own line, pushed, pulled, run with runc.

The container runs under the rendered hk Deployment's constraints (its env, uid/gid 10001, its memory
limit, read-only root with a tmpfs at /tmp, no capabilities) in its own network namespace holding
only loopback; the test reaches port 8080 through a forwarder on the host's 127.0.0.1 (container.py).
The base image under it is a stand-in (Debian's python3 3.11.2 for python:3.11.7-slim-bookworm,
podserve.testbed.image.bases); every layer above it is what the Dockerfile builds.
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from podserve.testbed.image.container import CGROUP_PARENT, MEMORY_CGROUP, Container, clean_up, runc
from podserve.testbed.processes import poll_until
from ci_pipeline import REPO
from image_stage import SIZE_BUDGET
from readme_blocks import blocks

#: The README's curl lines (its `# needs: make serve` block), as written but for the port.
README_CURLS = [line for block in blocks() if block.needs == "make serve" for line in block.commands]


def env_of(deployment: dict) -> dict[str, str]:
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in server["env"]}


def healthcheck_argv(image_config: dict) -> list[str]:
    """The image's own HEALTHCHECK command (its CMD form), as Docker runs it in the container."""
    kind, *argv = image_config["config"]["Healthcheck"]["Test"]
    assert kind == "CMD" and argv, image_config["config"]["Healthcheck"]
    return argv


@pytest.fixture
def container(cpu_build, cpu_rootfs, tmp_path):
    rootfs, facts = cpu_rootfs
    box = Container.start(rootfs, facts.config, cpu_build.deployment, tmp_path)
    yield box
    box.remove()


def test_the_service_image_is_pushed_under_every_regions_name_with_one_digest(cpu_build):
    registry = cpu_build.stage.registry
    assert registry.status_without_credentials() == 401  # authentication is on: the job's config.json was used
    digests = {registry.describe(*cpu_build.repo_and_tag(image)).digest for image in cpu_build.images}
    assert len(cpu_build.images) == 3 and len(digests) == 1
    assert sorted(image.split("/")[1] for image in cpu_build.images) == ["eu", "hk", "na"]  # conf/regions.yaml
    # The job's --metadata-file (its artifact, which the deploy jobs apply by) names that one digest.
    metadata = json.loads((cpu_build.checkout / "build/image-metadata.json").read_text())
    assert metadata["containerimage.digest"] == digests.pop()


def serves_the_readme(box: Container, image_config: dict) -> None:
    """The image's HEALTHCHECK exits 0 once ready, the process runs as 10001, README's curls answer as README says."""
    argv = healthcheck_argv(image_config)
    assert argv == ["python", "-m", "podserve.runtime.healthcheck"]
    poll_until(lambda: box.exec(argv, timeout=10).returncode == 0, "the image's HEALTHCHECK exiting 0", 180, every=1)
    status = open(f"/proc/{box.init_pid()}/status").read()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["10001"] * 4
    assert len(README_CURLS) == 4
    answers = []
    for line in README_CURLS:
        done = subprocess.run(["bash", "-c", line.replace("localhost:8080", f"127.0.0.1:{box.port}")],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    ping, upright, upside_down, video = answers
    assert ping["results"]["ready"] is True
    assert upright["results"]["angle"] == 0 and upright["postid"] == "1"
    assert upside_down["results"]["angle"] == 180 and upside_down["postid"] == "2"
    # the video: decoded in the image by its own PyAV wheel, one frame a second, upright for 3 s then upside down
    assert [(f["timestamp"], f["angle"]) for f in video["results"]["frames"]] == \
        [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 180), (4.0, 180), (5.0, 180)] and video["postid"] == "3"


def test_the_pulled_image_serves_the_readmes_curls_as_uid_10001_and_its_healthcheck_passes(container, cpu_rootfs):
    serves_the_readme(container, cpu_rootfs[1].config)
    # read-only root, writable /tmp (the template's emptyDir), as the Deployment says
    assert container.exec(["sh", "-c", "touch /app/x"]).returncode != 0
    assert container.exec(["sh", "-c", "touch /tmp/x"]).returncode == 0


@pytest.fixture(scope="module")
def gpu_rootfs(gpu_build, tmp_path_factory):
    """The GPU service image pulled (hk's name) and unpacked: (rootfs, its ImageFacts)."""
    rootfs = tmp_path_factory.mktemp("gpu-image") / "rootfs"
    return rootfs, gpu_build.stage.registry.pull(*gpu_build.repo_and_tag(gpu_build.images[0]), rootfs)


def test_the_gpu_flavor_builds_on_its_stand_in_base_with_onnxruntime_gpu_and_its_pod_requires_the_gpu(gpu_build,
                                                                                                    gpu_rootfs):
    """value.py with gpu_num = 1: the jobs as written build the GPU Dockerfile stage (its own apt-get included) on the
    nvidia/cuda stand-in (Debian, no CUDA), with onnxruntime-gpu; the rendered pod says it is a GPU pod."""
    registry = gpu_build.stage.registry
    digests = {registry.describe(*gpu_build.repo_and_tag(image)).digest for image in gpu_build.images}
    assert len(gpu_build.images) == 3 and len(digests) == 1
    assert env_of(gpu_build.deployment)["PODSERVE_GPU_NUM"] == "1"
    assert env_of(gpu_build.deployment)["PODSERVE_REQUIRE_GPU"] == "1"  # make serve's environment says 0
    rootfs, facts = gpu_rootfs
    assert facts.size <= SIZE_BUDGET["service-gpu"], f"{facts.size / 1e6:.1f} MB: over budget, say why in image_stage.py"
    site = next((rootfs / "opt/venv/lib").glob("python3*/site-packages"))
    assert (site / "onnxruntime/capi").is_dir() and any(site.glob("onnxruntime_gpu-*.dist-info"))


#: The stand-in GPU pod's three causes (issue 69): which image runs under the GPU Deployment, what the pod's env gets
#: beside it, and the words /api/ping and the log must hold. No stand-in has a /dev/nvidia* (its node mounted none),
#: so every case names that too, and the GPU image's CUDA libraries that do not load. Each case is what
#: docs/pipeline.md's real-node walkthrough shows of examples/real-node/value.py's GPU image, on this flavor's image
#: (tests/tooling/test_docs_values.py).
GPU_CAUSES = {
    "the CPU package": ("cpu", {}, ["onnxruntime here is the CPU package, without the CUDA provider",
                                    "install onnxruntime-gpu"]),
    "no visible device": ("gpu", {}, ["no GPU device is visible (no /dev/nvidia[0-9]*",
                                      "these CUDA and cuDNN libraries do not load here: libcudart.so.13, libcudnn.so.9",
                                      "libcuda.so.1"]),
    "an empty CUDA_VISIBLE_DEVICES": ("gpu", {"CUDA_VISIBLE_DEVICES": ""},
                                      ["CUDA_VISIBLE_DEVICES='' shows 0 GPU(s), fewer than gpu_num"]),
}


@pytest.mark.parametrize("cause", GPU_CAUSES)
def test_the_stand_in_gpu_pod_is_not_ready_and_names_why_it_cannot_use_its_gpu(gpu_build, gpu_rootfs, cpu_rootfs,
                                                                              tmp_path, cause):
    """The GPU Deployment (PODSERVE_REQUIRE_GPU=1) on the stand-in: no instance loads, /api/ping answers 503 naming
    the cause and the fix, the log says the same, the image's HEALTHCHECK fails, /api/live stays 200 (no restart
    loop: the startup probe and the deploy tool's diagnosis report it), and SIGTERM still exits 0."""
    flavor, env, words = GPU_CAUSES[cause]
    rootfs, facts = gpu_rootfs if flavor == "gpu" else cpu_rootfs
    deployment = copy.deepcopy(gpu_build.deployment)
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    server["env"] += [{"name": name, "value": value} for name, value in env.items()]
    with Container.start(rootfs, facts.config, deployment, tmp_path / "run") as box:
        status, body = poll_until(lambda: _settled_ping(box), "/api/ping saying why the instance did not load", 180,
                                  every=1)
        assert status == 503 and body["error"] == "not_ready", body
        message = body["msg"]
        print(f"/api/ping on the stand-in GPU pod, {cause}: {status} {message}")
        assert message.startswith("not ready: instance cuda0-0 failed to load: CudaUnavailable: asked for 1 GPU(s) "
                                  "(gpu_num = 1) and will not serve on the CPU, but "), message
        for named in [*words, "set gpu_num = 0 in value.py"]:
            assert named in message and named in box.log(), (named, message)
        assert box.exec(healthcheck_argv(facts.config), timeout=10).returncode == 1
        assert requests.get(f"{box.url}/api/live", timeout=5).status_code == 200
        box.kill(signal.SIGTERM)
        assert box.wait(float(env_of(gpu_build.deployment)["PODSERVE_DRAIN_SECONDS"]) + 5) == 0


def _settled_ping(box: Container) -> tuple[int, dict] | None:
    """/api/ping's status and body once loading is over, ready or failed (None while the server starts or loads)."""
    try:
        reply = requests.get(f"{box.url}/api/ping", timeout=2)
    except requests.RequestException:
        return None
    return (reply.status_code, reply.json()) if reply.status_code == 200 or "failed to load" in reply.text else None


def test_sigterm_stops_the_container_with_exit_0_within_drain_seconds_plus_5(container, cpu_build):
    drain = float(env_of(cpu_build.deployment)["PODSERVE_DRAIN_SECONDS"])
    poll_until(lambda: _ping(container), "the server answering /api/ping", 180, every=0.5)
    started = time.monotonic()
    container.kill(signal.SIGTERM)
    status = container.wait(drain + 5)
    assert status == 0, container.log()[-2000:]
    assert time.monotonic() - started <= drain + 5
    assert container.termination_reason() == "Completed"


def test_with_a_64mib_limit_the_container_is_oom_killed_and_reported_so(cpu_build, cpu_rootfs, tmp_path):
    """At 64 MiB the server starts (about 59 MB in use once warm) and the first large image's decode is OOM-killed."""
    rootfs, facts = cpu_rootfs
    with Container.start(rootfs, facts.config, cpu_build.deployment, tmp_path, memory_limit="64Mi") as box:
        poll_until(lambda: box.process.poll() is not None or _ping(box), "the server up, or dead", 180, every=0.5)
        if box.process.poll() is None:
            try:  # a 12-megapixel RGB image (within the default max_image_pixels) decodes to 49 MB: more than is left
                requests.post(f"{box.url}/api/text-direction?postid=big", data=_large_png(),
                              headers={"Content-Type": "application/octet-stream"}, timeout=60)
            except requests.RequestException:
                pass  # the connection dies with the process
        status = box.wait(60)
        reason = box.termination_reason()
        assert (status, reason) == (137, "OOMKilled"), f"exit {status} ({reason}):\n{box.log()[-2000:]}"
        assert box.memory_counters()["oom_kill"] >= 1


def _large_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3500, 3500), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _ping(box: Container) -> bool:
    try:
        return requests.get(f"{box.url}/api/ping", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_container_left_by_a_killed_run_is_deleted_by_the_next_start(cpu_build, cpu_rootfs, tmp_path):
    """A test process killed with SIGKILL leaves its container running; the next Container.start deletes it."""
    rootfs, facts = cpu_rootfs
    (tmp_path / "config.json").write_text(json.dumps(facts.config))
    (tmp_path / "deployment.json").write_text(json.dumps(cpu_build.deployment))
    script = (f"import json, pathlib, time; from podserve.testbed.image.container import Container\n"
              f"t = pathlib.Path({str(tmp_path)!r})\n"
              f"box = Container.start(pathlib.Path({str(rootfs)!r}), json.loads((t / 'config.json').read_text()), "
              f"json.loads((t / 'deployment.json').read_text()), t / 'run')\n"
              f"print(box.name, flush=True); time.sleep(300)\n")
    crashed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        name = crashed.stdout.readline().strip()
        assert name.startswith("podserve-")
    finally:
        crashed.kill()
        crashed.wait(10)
    assert runc("state", name, check=False).returncode == 0  # still there: nothing cleaned up after the kill
    assert name in clean_up()
    assert runc("state", name, check=False).returncode != 0
    assert not (MEMORY_CGROUP / CGROUP_PARENT / name).exists()
