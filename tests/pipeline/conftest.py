"""Fixtures for the pipeline tests: the `manifests` job's artifacts, made by running its script for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ci_pipeline import REPO, make_manifests_artifact


@pytest.fixture(scope="session")
def manifests_artifact(tmp_path_factory) -> Path:
    """A folder holding what the `manifests` job leaves as artifacts (build/...) for the example value.py."""
    return make_manifests_artifact(tmp_path_factory.mktemp("manifests-job"), (REPO / "value.py").read_text())


@pytest.fixture(scope="session")
def build_stage(tmp_path_factory):
    """The registry (htpasswd), the wheel index and the stand-in bases, on free ports, for the whole session."""
    from image_stage import INDEX_PORT, registry_storage
    from podserve.testbed.image import pipeline

    storage, lock = registry_storage()
    try:
        with pipeline.BuildStage.start(tmp_path_factory.mktemp("image-stage"), storage=storage,
                                       index_port=INDEX_PORT) as stage:
            yield stage
    finally:
        if lock is not None:
            os.close(lock)


@pytest.fixture(scope="session")
def cpu_build(build_stage, tmp_path_factory):
    """value.py with gpu_num = 0: the manifests and service-image jobs run as written (once per session)."""
    from image_stage import BuiltFlavor

    return BuiltFlavor(build_stage, tmp_path_factory.mktemp("cpu"), "cpu")


@pytest.fixture(scope="session")
def cpu_rootfs(cpu_build, tmp_path_factory):
    """The CPU service image pulled from the registry (hk's name) and unpacked: (rootfs, its ImageFacts)."""
    repo, tag = cpu_build.repo_and_tag(cpu_build.images[0])
    rootfs = tmp_path_factory.mktemp("cpu-image") / "rootfs"
    return rootfs, cpu_build.stage.registry.pull(repo, tag, rootfs)


@pytest.fixture(scope="session")
def tooling_rootfs(cpu_build, tmp_path_factory):
    """The tooling-image job run as written in the CPU checkout, as the platform's pipeline of its release tag runs it,
    its image pulled: (image name, rootfs, facts)."""
    from ci_pipeline import variables
    from podserve.testbed.image.pipeline import release_variables

    stage = cpu_build.stage
    release = release_variables(variables({}, {})["PLATFORM_RELEASE"])
    done = stage.run_job("tooling-image", cpu_build.checkout, extra=release)
    assert done.returncode == 0, f"the tooling-image job failed:\n{done.stderr[-4000:]}"
    image = stage.job_env("tooling-image", cpu_build.checkout, extra=release)["RELEASE_IMAGE"]
    repo, tag = cpu_build.repo_and_tag(image)
    rootfs = tmp_path_factory.mktemp("tooling-image") / "rootfs"
    return image, rootfs, stage.registry.pull(repo, tag, rootfs)


@pytest.fixture(scope="session")
def gpu_build(build_stage, tmp_path_factory):
    """value.py with gpu_num = 1: the manifests, model and service-image jobs as written (the GPU flavor)."""
    from image_stage import BuiltFlavor

    return BuiltFlavor(build_stage, tmp_path_factory.mktemp("gpu"), "gpu")


@pytest.fixture(scope="session")
def grey_service(build_stage, control_plane, real_node, tmp_path_factory):
    """The real-node tests' one service (real_node_service.py), its image built once with every recipe, pullable by
    the real node in grey and hk."""
    from real_node_service import COMMIT, EXTRA_SRC, NAME, RealNodeService

    service = RealNodeService(build_stage, control_plane, real_node, tmp_path_factory.mktemp("real-node"), NAME,
                              COMMIT, extra_src=EXTRA_SRC)
    service.build()
    service.let_the_node_pull()
    return service
