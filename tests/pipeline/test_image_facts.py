"""What the pushed images hold, read from the images pulled from the registry (tests/pipeline/conftest.py).

Sizes are what a pull moves (config + compressed layers). Budgets are the measured size + 10%
(image_stage.SIZE_BUDGET, measured 2026-11-23 on the stand-in bases; docs/image.md).
"""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

from image_stage import SIZE_BUDGET
from podserve.testbed.image.pipeline import built_steps
from test_layout import SERVER_ONLY  # the server's packages the tooling image must not hold

COMPILERS = re.compile(r"^(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|x86_64-linux-gnu-(gcc|g\+\+)(-\d+)?|gcc-\d+|tcc)$")
#: A PEM private key: the header and a line of base64 (a library's header string alone is not one).
MODEL_CHECK = "RUN cd /app/model && test -f MODEL.sha256 && sha256sum --check --strict MODEL.sha256"
PRIVATE_KEY = re.compile(rb"-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40,}")


def image_problems(rootfs: Path, config: dict, secrets: tuple[str, ...]) -> list[str]:
    """Compilers, pip caches, .git folders, private keys or the registry's secrets found in an image."""
    problems = []
    needles = [s.encode() for s in secrets]
    for path in rootfs.rglob("*"):
        relative = "/" + path.relative_to(rootfs).as_posix()
        if path.is_symlink():
            continue
        if path.name == ".git" or (path.is_dir() and relative.endswith("/.cache/pip")):
            problems.append(f"{relative}: {'a .git folder' if path.name == '.git' else 'a pip cache'}")
        if path.is_file() and COMPILERS.match(path.name) and path.stat().st_mode & 0o111:
            problems.append(f"{relative}: a compiler")
        if path.is_file() and path.stat().st_size < 5_000_000 and not relative.startswith(("/proc", "/sys")):
            data = path.read_bytes()
            # ELF libraries carry self-test keys (GnuTLS does): keys are looked for in other files
            if (PRIVATE_KEY.search(data) and not data.startswith(b"\x7fELF")) or any(n in data for n in needles):
                problems.append(f"{relative}: a private key or the registry's credentials")
    text = str(config)
    problems += [f"the image config holds {s[:4]}...: a secret" for s in secrets if s in text]
    return problems


def readable_by(rootfs: Path, relative: str, uid: int, gid: int) -> bool:
    """Whether uid:gid may read `relative` (and enter every folder above it), by owner, group and mode bits."""
    def allowed(path: Path, bit: int) -> bool:
        st = path.stat()
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        return bool(st.st_mode >> shift & bit)

    path = rootfs / relative.lstrip("/")
    folders = [rootfs / Path(*path.relative_to(rootfs).parts[:i]) for i in range(1, len(path.relative_to(rootfs).parts))]
    return allowed(path, 4) and all(allowed(folder, 1) for folder in folders)


def test_the_cpu_service_image_holds_the_server_the_model_and_nothing_else(cpu_rootfs, cpu_build):
    rootfs, facts = cpu_rootfs
    assert facts.size <= SIZE_BUDGET["service-cpu"], f"{facts.size / 1e6:.1f} MB: over budget, say why in image_stage.py"
    assert image_problems(rootfs, facts.config, cpu_build.stage.registry.secrets()) == []
    index_url = cpu_build.stage.index.url
    assert index_url not in str(facts.config)  # PIP_INDEX_URL reached the build stage only
    model = sorted(p.name for p in (rootfs / "app/model").iterdir())
    assert "MODEL.sha256" in model and "ch_ppocr_mobile_v2.0_cls_mobile.onnx" in model
    for name in model:
        assert readable_by(rootfs, f"/app/model/{name}", 10001, 10001), name
    assert not (rootfs / "app/src/podserve/testbed").exists()  # what runs in the pod only
    assert not (rootfs / "app/src/podserve/tooling").exists()  # CI's tooling has its own image
    assert (rootfs / "app/src/podserve/runtime").is_dir() and (rootfs / "app/src/server.py").is_file()
    site = next((rootfs / "opt/venv/lib").glob("python3*/site-packages"))
    assert (site / "onnxruntime").is_dir() and not (site / "kubernetes").exists()  # the runtime's deps only
    assert facts.config["config"]["User"] == "10001"


def test_the_tooling_image_holds_the_tooling_without_the_servers_packages(tooling_rootfs, cpu_build):
    image, rootfs, facts = tooling_rootfs
    assert facts.size <= SIZE_BUDGET["tooling"], f"{facts.size / 1e6:.1f} MB: over budget, say why in image_stage.py"
    assert image_problems(rootfs, facts.config, cpu_build.stage.registry.secrets()) == []
    assert cpu_build.stage.index.url not in str(facts.config)
    site = next((rootfs / "opt/venv/lib").glob("python3*/site-packages"))
    assert (site / "kubernetes").is_dir() and (site / "podserve.pth").is_file()
    assert [name for name in SERVER_ONLY if (site / name).exists()] == []
    assert (site / "confluent_kafka").is_dir()  # the offline smoke's client
    assert (rootfs / "opt/podserve/src/podserve/tooling/render.py").is_file()
    assert not (rootfs / "opt/podserve/src/podserve/runtime").exists()
    # A checkout's own podserve/ or yaml.py is never put before the image's code (test_jobs.py runs such decoys).
    assert "PYTHONSAFEPATH=1" in facts.config["config"]["Env"]


def test_a_one_line_change_in_src_rebuilds_only_the_last_layer(cpu_build, cpu_rootfs, tmp_path):
    """The service-image job again, after a one-line change in src/: the dependency and model layers are reused."""
    stage, before = cpu_build.stage, cpu_rootfs[1]
    checkout = tmp_path / "checkout"
    shutil.copytree(cpu_build.checkout, checkout, symlinks=True)
    server = checkout / "src/server.py"
    server.write_text(server.read_text() + "# a one-line change\n")
    for job in ("manifests", "service-image"):  # a new commit: its own tags
        done = stage.run_job(job, checkout, commit="changed1")
        assert done.returncode == 0, f"{job}: {done.stderr[-3000:]}"
    rebuilt = {step for step, cached in built_steps(done.stderr).items() if not cached}
    # the model's checksum check may run again (it leaves no layer: nothing of it is in the registry's cache)
    assert "COPY src/ /app/src/" in rebuilt and rebuilt <= {"COPY src/ /app/src/", MODEL_CHECK}, rebuilt
    after = stage.registry.describe(*cpu_build.repo_and_tag((checkout / "build/images.txt").read_text().split()[0]))
    assert after.name.endswith(":changed1")
    assert [layer["digest"] for layer in after.layers[:-1]] == [layer["digest"] for layer in before.layers[:-1]]
    assert after.layers[-1]["digest"] != before.layers[-1]["digest"]


def test_a_model_that_does_not_match_its_record_fails_the_build_naming_the_file(cpu_build, tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(cpu_build.checkout, checkout, symlinks=True)
    model = checkout / "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"
    model.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    model.write_bytes(model.read_bytes() + b"\0")
    done = cpu_build.stage.run_job("service-image", checkout, commit="badmodel")
    assert done.returncode != 0
    assert "ch_ppocr_mobile_v2.0_cls_mobile.onnx: FAILED" in done.stderr


def test_a_team_model_committed_under_model_is_what_lands_in_the_image(cpu_build, tmp_path):
    """A checkout whose model/ holds the team's own model and record: the model and service-image jobs as written."""
    from podserve.model_record import record

    stage = cpu_build.stage
    team = tmp_path / "team-model"
    team.mkdir()
    (team / "team.onnx").write_bytes((cpu_build.checkout / "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx").read_bytes())
    record(team, [team / "team.onnx"])
    value = re.sub(r'^model_path = "[^"]*"', 'model_path = "model/team.onnx"',
                   (cpu_build.checkout / "value.py").read_text(), flags=re.MULTILINE)
    checkout = stage.checkout(tmp_path / "checkout", value, model=team)
    for job in ("manifests", "model", "service-image"):
        done = stage.run_job(job, checkout, commit="team1")
        assert done.returncode == 0, f"{job}: {done.stderr[-3000:]}"
    image = (checkout / "build/images.txt").read_text().split()[0]
    rootfs = tmp_path / "rootfs"
    stage.registry.pull(*cpu_build.repo_and_tag(image), rootfs)
    assert sorted(p.name for p in (rootfs / "app/model").iterdir()) == ["MODEL.sha256", "team.onnx"]


def test_the_registry_wants_credentials_and_forgets_them_when_stopped(tmp_path):
    """htpasswd on: no credentials, 401; the generated ones, 200; once stopped, no htpasswd is left behind."""
    from podserve.testbed.image.registry import Registry
    from podserve.testbed.processes import free_port

    registry = Registry.start(tmp_path / "registry", free_port())
    try:
        assert registry.status_without_credentials() == 401
        assert registry.catalog() == []  # answered with the generated credentials
        config = registry.docker_config(tmp_path / "config.json")
        assert oct(config.stat().st_mode & 0o777) == "0o600"
    finally:
        registry.stop()
    assert not (tmp_path / "registry" / "htpasswd").exists()


def test_the_stand_in_python_base_is_labelled_so_and_has_python_and_pip_on_path_without_the_marker(build_stage,
                                                                                                     tmp_path):
    """The STAND-IN served as python:3.11.7-slim-bookworm: Debian's 3.11.2, `python` and `pip` on PATH, pip allowed."""
    rootfs = tmp_path / "rootfs"
    facts = build_stage.registry.pull("library/python", "3.11.7-slim-bookworm", rootfs)
    assert "STAND-IN" in facts.config["config"]["Labels"]["org.opencontainers.image.description"]
    path = next(e for e in facts.config["config"]["Env"] if e.startswith("PATH=")).removeprefix("PATH=").split(":")
    for command in ("python", "pip"):
        assert any((rootfs / folder.lstrip("/") / command).exists() or (rootfs / folder.lstrip("/") / command)
                   .is_symlink() for folder in path), command
    assert list(rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED")) == []
    assert (rootfs / "usr/lib/python3.11").is_dir()  # Debian bookworm's 3.11.2 standing in for 3.11.7
