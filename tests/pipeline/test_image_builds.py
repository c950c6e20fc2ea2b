"""The image builds: BuildKit rootless with a registry cache, the service image with the model and only the runtime's
dependencies, the tooling image with only the tooling's.

The quick checks, before any daemon: GitLab's schema (tests/tooling/test_gitlab_ci.py), BuildKit's own Dockerfile
parser, and each job's build line run through its own shell with BuildKit's real `buildctl` (make image-tools) where
`buildctl-daemonless.sh` would start the daemon first: buildctl parses every option, the output and cache specs and the
local folders, and stops at "failed to list workers". The builds themselves, for real (buildkitd, a registry, the
images pulled and run): test_image_runs.py and test_image_facts.py."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ci_pipeline import REPO, concrete_jobs, script_lines, variables
from image_layout import REFUSE_SERVER_DEPS, commands, context_files, dockerignore, final_stage, lay_out
from podserve.model_record import record
from podserve.testbed.image import versions
from podserve.testbed.image.ci_jobs import PREDEFINED, matching_rule
from podserve.testbed.image.pipeline import release_variables
from test_layout import SERVER_ONLY

JOBS = concrete_jobs()
BUILD_JOBS = {"service-image": "Dockerfile", "tooling-image": "Dockerfile.tooling"}
BUILDKIT_VERSION = versions.buildkit_version()
BUILDCTL = versions.buildkit_dir() / "buildctl"
NO_DAEMON = "failed to list workers"


#: The pipeline each build job runs in: a branch's for the service image, a protected release tag's for the tooling.
RELEASE = variables({}, {})["PLATFORM_RELEASE"]
PIPELINES = {"service-image": {}, "tooling-image": release_variables(RELEASE)}


def buildctl_argv(name: str, workdir: Path, pipeline: dict[str, str] | None = None) -> list[str]:
    """Run the job's build line with the real buildctl (no daemon); return the argv it got, once it parsed it all.
    `pipeline`: GitLab's variables where they differ from a branch's (default: PIPELINES')."""
    assert BUILDCTL.is_file(), f"{BUILDCTL} is missing: run `make image-tools` (make test does it first)"
    job = JOBS[name]
    seen = {**PREDEFINED, **(PIPELINES[name] if pipeline is None else pipeline)}
    (line,) = [line for line in script_lines(job) if line.startswith("buildctl-daemonless.sh ")]
    # buildctl-daemonless.sh starts a rootless buildkitd, then runs `buildctl --addr <its socket> "$@"`; here no daemon.
    stand_in = ('buildctl-daemonless.sh() { printf "%s\\0" "$@" > argv.bin; '
                f'"{BUILDCTL}" --addr "unix://$PWD/no-buildkitd.sock" "$@"; }}\n')
    done = subprocess.run(["bash", "-uo", "pipefail", "-c", stand_in + line], cwd=workdir, capture_output=True,
                          text=True, env={**os.environ, **variables(job, seen)}, timeout=60)
    errors = [text for text in done.stderr.splitlines() if text.strip()]
    assert done.returncode == 1 and len(errors) == 1 and NO_DAEMON in errors[0], (
        f"buildctl refused the {name} job's command line before reaching the daemon:\n{done.stderr}")
    return (workdir / "argv.bin").read_bytes().decode().split("\0")[:-1]


def options(argv: list[str]) -> dict[str, list[str]]:
    assert argv[0] == "build", argv
    found: dict[str, list[str]] = {}
    for flag, value in zip(argv[1::2], argv[2::2]):
        found.setdefault(flag, []).append(value)
    assert len(argv) % 2 == 1, f"an option without a value: {argv}"
    return found


def csv_fields(value: str) -> dict[str, str]:
    """BuildKit's key=value,... syntax, where a quoted field may hold commas (several image names)."""
    (row,) = csv.reader([value])
    return dict(field.split("=", 1) for field in row)


@pytest.mark.parametrize("job", sorted(BUILD_JOBS))
def test_each_image_is_built_by_buildkit_rootless_with_a_registry_cache(job, manifests_artifact):
    config = JOBS[job]
    assert config["image"]["name"] == f"moby/buildkit:{BUILDKIT_VERSION}-rootless"  # the buildctl tested here
    assert config["image"]["entrypoint"] == [""]
    assert config["variables"]["BUILDKITD_FLAGS"] == ""  # rootless, RUN steps in the process sandbox (test_build_isolation)
    opts = options(buildctl_argv(job, manifests_artifact))
    assert opts["--frontend"] == ["dockerfile.v0"]
    assert sorted(opts["--local"]) == ["context=.", "dockerfile=."]
    assert f"filename={BUILD_JOBS[job]}" in opts["--opt"]
    imported, exported = csv_fields(opts["--import-cache"][0]), csv_fields(opts["--export-cache"][0])
    assert imported["type"] == exported["type"] == "registry"
    assert imported["ref"] == exported["ref"] and exported["mode"] == "max"
    assert opts["--metadata-file"]  # what it pushed, by digest: what the deploy jobs (or a release) pin
    output = csv_fields(opts["--output"][0])
    assert output["type"] == "image" and output["push"] == "true"
    declared = {c.value[0].split("=")[0] for c in commands(BUILD_JOBS[job]) if c.cmd == "ARG"}
    build_args = dict(o.removeprefix("build-arg:").split("=", 1) for o in opts["--opt"] if o.startswith("build-arg:"))
    assert set(build_args) <= declared


def test_the_service_image_is_pushed_under_every_name_render_gives_in_its_flavor(manifests_artifact):
    opts = options(buildctl_argv("service-image", manifests_artifact))
    names = csv_fields(opts["--output"][0])["name"].split(",")
    assert names == (manifests_artifact / "build/images.txt").read_text().split()
    assert len(names) == 3  # one registry per region
    flavor = dict(o.removeprefix("build-arg:").split("=", 1) for o in opts["--opt"] if o.startswith("build-arg:"))
    stages = {c.value[2] for c in commands("Dockerfile") if c.cmd == "FROM" and len(c.value) == 3}
    assert flavor["FLAVOR"] in ("cpu", "gpu") and f"python-{flavor['FLAVOR']}" in stages
    assert {"python-cpu", "python-gpu"} <= stages


def test_the_tooling_image_is_the_release_the_deploy_jobs_and_stop_grey_pin_by_digest(manifests_artifact):
    """Built for a protected tag of the platform's project only, pushed under that tag; every job runs the release
    PLATFORM_RELEASE names, by its digest (a tag can be moved)."""
    opts = options(buildctl_argv("tooling-image", manifests_artifact))
    image = csv_fields(opts["--output"][0])["name"]
    pinned = variables(JOBS["stop_grey"])["TOOLING_IMAGE"]
    assert pinned == variables(JOBS["grey"])["TOOLING_IMAGE"] == f"{image}@{variables({})['PLATFORM_RELEASE_DIGEST']}"
    assert JOBS["tooling-image"]["needs"] == []  # built beside the service image, not after it
    job = JOBS["tooling-image"]
    # its digest, for the release to pin: in the job's own folder (it needs no job, so no build/ artifact folder)
    assert opts["--metadata-file"] == ["tooling-image-metadata.json"] == job["artifacts"]["paths"]
    for pipeline, runs in ((release_variables(RELEASE), True), ({**release_variables(RELEASE), "CI_COMMIT_TAG": ""},
                                                                False),  # a branch of the platform project
                           ({**release_variables(RELEASE), "CI_COMMIT_REF_PROTECTED": "false"}, False),
                           ({**release_variables(RELEASE), "CI_PROJECT_PATH": "models/like/x"}, False)):  # a fork
        assert (matching_rule(job, {**PREDEFINED, **variables({}), **pipeline}) is not None) == runs, pipeline


def test_each_ref_builds_with_its_own_cache_and_only_the_default_branch_writes_its_own(manifests_artifact):
    """A branch reads its own cache and the default branch's and writes its own; the default branch reads and writes
    only its own, pushing with the protected credential no branch holds (REGISTRY_AUTH_CONFIG_PROTECTED)."""
    default = {"CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_SLUG": "main", "CI_DEFAULT_BRANCH": "main"}
    job = JOBS["service-image"]
    caches = {}
    for name, pipeline in (("branch", {}), ("other branch", {"CI_COMMIT_BRANCH": "b2", "CI_COMMIT_REF_SLUG": "b2"}),
                           ("default", default)):
        opts = options(buildctl_argv("service-image", manifests_artifact, pipeline))
        caches[name] = ([csv_fields(v)["ref"] for v in opts["--import-cache"]],
                        csv_fields(opts["--export-cache"][0])["ref"],
                        variables(job, {**PREDEFINED, **pipeline})["BUILD_AUTH_CONFIG"])
    (branch_reads, branch_writes, branch_auth), (_, other_writes, _) = caches["branch"], caches["other branch"]
    default_reads, default_writes, default_auth = caches["default"]
    assert set(default_reads) == {default_writes} and branch_reads == [branch_writes, default_writes]
    assert len({branch_writes, other_writes, default_writes}) == 3  # each ref its own
    assert (branch_auth, default_auth) == ("$REGISTRY_AUTH_CONFIG", "$REGISTRY_AUTH_CONFIG_PROTECTED")
    assert not default_writes.startswith(variables(job)["CI_REGISTRY_IMAGE"])  # not where branches' jobs can push


def test_no_kaniko_and_no_docker_daemon_anywhere():
    text = (REPO / ".gitlab-ci.yml").read_text()
    assert "kaniko" not in text and "docker:dind" not in text and "services" not in text


@pytest.mark.parametrize("name", sorted(BUILD_JOBS.values()))
def test_every_copy_source_is_in_the_build_context(name):
    patterns = dockerignore(name)
    for cmd in commands(name):
        if cmd.cmd == "COPY" and not any(flag.startswith("--from") for flag in cmd.flags):
            for source in cmd.value[:-1]:
                if source == "model/":
                    continue  # made by the model job before the build; checked below
                assert context_files(source, patterns), f"{name}: COPY {source} finds nothing in the context"
    assert not any(p.match("model") for p in patterns), ".dockerignore must let model/ into the context"


def requirement_names(path: Path) -> set[str]:
    """The distribution names a requirements file installs, following -r includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(re.split(r"[=<>~!\[; ]", line)[0].lower().replace("_", "-"))
    return names


def pip_requirement_files(name: str) -> list[str]:
    """The requirements files the Dockerfile's RUN lines install (any stage)."""
    return [word for c in commands(name) if c.cmd == "RUN" for word in re.findall(r"-r\s+(\S+\.txt)", c.value[0])]


def test_the_service_image_installs_only_the_runtimes_dependencies():
    files = pip_requirement_files("Dockerfile")
    assert files == ["/tmp/requirements/${FLAVOR}.txt"]
    runtime = requirement_names(REPO / "requirements/cpu.txt") | requirement_names(REPO / "requirements/gpu.txt")
    tooling_only = requirement_names(REPO / "requirements/tooling.txt") - runtime
    assert {"kubernetes", "pyyaml"} <= tooling_only  # what would leak in if the split broke
    for flavor in ("cpu", "gpu"):
        assert not requirement_names(REPO / f"requirements/{flavor}.txt") & tooling_only


def test_the_tooling_image_installs_only_the_toolings_dependencies_and_no_runtime_code(tmp_path):
    assert pip_requirement_files("Dockerfile.tooling") == ["/opt/podserve/requirements/tooling.txt"]
    server = {n.lower() for n in SERVER_ONLY} | {"pillow", "onnxruntime-gpu", "prometheus-client"}
    assert not requirement_names(REPO / "requirements/tooling.txt") & server
    root = lay_out("Dockerfile.tooling", tmp_path / "image")
    package = root / "opt/podserve/src/podserve"
    assert (package / "tooling/render.py").is_file() and (root / "opt/podserve/conf/stages.yaml").is_file()
    assert not (package / "runtime").exists()


def test_the_service_image_holds_the_pods_code_and_neither_ci_tooling_nor_the_test_bed(tmp_path):
    """What the service image's COPY lines take through .dockerignore (the build itself: test_image_facts.py)."""
    package = lay_out("Dockerfile", tmp_path / "image", skip_sources=("model/",)) / "app/src/podserve"
    assert (package / "runtime/main.py").is_file() and (package / "settings.py").is_file()
    assert (package.parent / "server.py").is_file()
    assert not (package / "tooling").exists() and not (package / "testbed").exists()


def test_the_tooling_images_render_works_from_any_folder_without_the_servers_dependencies(tmp_path):
    """render, run as the deploy jobs run it, from the image's files only (laid out from its COPY lines)."""
    root = lay_out("Dockerfile.tooling", tmp_path / "image")
    (tmp_path / "site").mkdir()
    (tmp_path / "site/sitecustomize.py").write_text(REFUSE_SERVER_DEPS.format(names=tuple(SERVER_ONLY)))
    (tmp_path / "job").mkdir()
    shutil.copy(REPO / "value.py", tmp_path / "job/value.py")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "PYTHONPATH": f"{root / 'opt/podserve/src'}:{tmp_path / 'site'}"}
    done = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--all", "--out", "out"],
                          cwd=tmp_path / "job", env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "job/out/grey/deployment.yaml").is_file()


def test_the_service_image_refuses_to_build_with_a_model_that_does_not_match_its_record(tmp_path):
    """The Dockerfile's own check, run with the real sha256sum on a model folder like the model job's artifact."""
    (check,) = [c.value[0] for c in final_stage("Dockerfile") if c.cmd == "RUN" and "MODEL.sha256" in c.value[0]]
    copy_model = [i for i, c in enumerate(final_stage("Dockerfile")) if c.cmd == "COPY" and c.value[0] == "model/"]
    run_check = [i for i, c in enumerate(final_stage("Dockerfile")) if c.cmd == "RUN" and c.value[0] == check]
    assert copy_model and run_check and run_check[0] == copy_model[0] + 1
    model = tmp_path / "app/model"
    model.mkdir(parents=True)
    (model / "m.onnx").write_bytes(b"weights" * 1000)
    script = check.replace("/app/model", str(model))
    missing = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0  # no record: the image is not built
    record(model, [model / "m.onnx"])
    assert subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30).returncode == 0
    (model / "m.onnx").write_bytes(b"weightz" * 1000)
    changed = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert changed.returncode != 0 and "m.onnx: FAILED" in changed.stdout
