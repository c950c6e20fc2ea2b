"""Every job of .gitlab-ci.yml runs the real tools as a person would; the deploy jobs are gated as issue 9 asks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ci_pipeline import (EXEC, PYTHON, REPO, TOOL, concrete_jobs, dry_parse, is_tool_line, resolved, run_job_lines,
                         script_lines, tool_argv, variables)
from podserve.testbed.image import tooling
from podserve.testbed.image.ci_jobs import PIPELINE, PREDEFINED
from podserve.tooling import tenancy
from podserve.tooling.conf import load_conf, load_deploy_policy

JOBS = concrete_jobs()
CONF = load_conf()
DEPLOY_JOBS = {name: job for name, job in JOBS.items() if "STAGE" in job.get("variables", {})}
#: The manual jobs that promote or abort the release Argo Rollouts runs in a region: a status patch, no image needed.
CANARY_JOBS = {name: job for name, job in DEPLOY_JOBS.items() if name.startswith("canary-")}
#: The jobs that apply or delete a stage's objects.
APPLYING_JOBS = {name: job for name, job in DEPLOY_JOBS.items() if name not in CANARY_JOBS}
MANIFESTS = "build/manifests"
IMAGE_METADATA = "build/image-metadata.json"
FLAVOR_LINE = next(line for line in script_lines(JOBS["manifests"]) if "--print-flavor" in line)
#: Lines that are neither a podserve tool nor the builder: the registry login of the build jobs. Nothing is installed:
#: every job but the builds runs in the platform's tooling image.
SETUP_LINES = {"mkdir -p ~/.docker", 'cp "$BUILD_AUTH_CONFIG" ~/.docker/config.json'}


def tool_calls() -> list[tuple[str, str, list[str]]]:
    """(job, module, argv) for every `python -m podserve.tooling.*` line of every job."""
    return [(name, *tool_argv(line, job)) for name, job in JOBS.items() for line in script_lines(job)
            if is_tool_line(line)]


def test_every_line_of_every_job_is_a_tool_the_builder_or_a_known_setup_step():
    unknown = [f"{name}: {line}" for name, job in JOBS.items() for line in script_lines(job)
               if not is_tool_line(line) and not line.startswith("buildctl-daemonless.sh build ")
               and line not in SETUP_LINES]
    assert unknown == []
    assert {name for name, _, _ in tool_calls()} | {"service-image", "tooling-image"} == set(JOBS)


@pytest.mark.parametrize("job,module,argv", tool_calls(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_each_tool_call_parses_with_the_real_cli(job, module, argv):
    parsed = dry_parse(module, argv)
    if module == "podserve.tooling.render":
        assert parsed["all"] and parsed["image_tag"] == variables(JOBS[job])["CI_COMMIT_SHORT_SHA"]
    if module == "podserve.tooling.deploy" and argv[0] == "analyze":  # verdict-grey: judges grey, deploys nothing
        assert (parsed.get("stage"), parsed.get("against")) == ("grey", "hk") and parsed.get("manifests") == MANIFESTS
    elif module == "podserve.tooling.deploy":
        assert parsed.get("stage") == JOBS[job]["variables"]["STAGE"]
        assert parsed.get("manifests") == MANIFESTS
        if argv[0] == "apply":  # by digest: the file service-image's BuildKit wrote (docs/tenancy.md)
            assert parsed.get("image_metadata") == IMAGE_METADATA, job


def test_the_flavor_line_prints_the_flavor_of_the_example(tmp_path):
    (tmp_path / "value.py").write_text((REPO / "value.py").read_text())
    job = resolved("manifests")
    done = run_job_lines([FLAVOR_LINE.replace(" > build/flavor.txt", "")], job, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gpu"  # the example's gpu_num = 1
    (tmp_path / "value.py").write_text((REPO / "value.py").read_text().replace("gpu_num = 1", "gpu_num = 0")
                                       .replace("gpu_memory = 2", "gpu_memory = 0"))
    assert run_job_lines([FLAVOR_LINE.replace(" > build/flavor.txt", "")], job, tmp_path).stdout.strip() == "cpu"


def test_a_checkout_s_own_modules_and_the_job_s_variables_never_stand_in_for_the_tooling_image_s(tmp_path):
    """A job runs in its checkout: with a plain `python -m`, the current folder comes first on the path, and a CI/CD
    variable PYTHONPATH (or PATH) would bring a fork's own `yaml.py` or `podserve/` in place of the image's render and
    deploy tool (and skip what only they enforce). Every job runs the image's interpreter by its path, isolated
    (`-I`); decoys in the checkout and a PYTHONPATH pointing at them leave the job as it is."""
    decoy = "raise SystemExit('DECOY: the checkout replaced the platform tooling')\n"
    (tmp_path / "yaml.py").write_text(decoy)
    (tmp_path / "podserve" / "tooling").mkdir(parents=True)
    for module in ("podserve/__init__.py", "podserve/tooling/__init__.py", "podserve/tooling/render.py"):
        (tmp_path / module).write_text(decoy)
    (tmp_path / "value.py").write_text((REPO / "value.py").read_text())
    job = resolved("manifests")
    lines = [f"export PYTHONPATH={tmp_path}", *script_lines(job)]  # a team's CI/CD variable, as the runner exports it
    done = run_job_lines(lines, job, tmp_path)
    assert done.returncode == 0 and "DECOY" not in done.stdout + done.stderr, done.stderr[-2000:]
    assert list((tmp_path / "build/manifests").glob("*/deployment.yaml")) and (tmp_path / "build/flavor.txt").read_text()
    python_lines = [line for job in JOBS.values() for line in script_lines(job) if "python" in line]
    assert python_lines and all(line.removeprefix(EXEC).startswith(f"{PYTHON} -m ") for line in python_lines)
    assert f"COPY --from=build /opt/venv /opt/venv" in (REPO / "Dockerfile.tooling").read_text()
    assert PYTHON.split()[0] == tooling.IMAGE_PYTHON


def test_in_ci_the_tools_refuse_to_run_other_than_as_the_image_s_own(tmp_path):
    """The tools run as a fork would rewrite the job's line: a plain `python -m` with PYTHONPATH, or an isolated
    interpreter loading the checkout's own src/: in CI (GITLAB_CI) each refuses, exit 2, before it reads anything."""
    (tmp_path / "value.py").write_text((REPO / "value.py").read_text())
    shutil.copytree(REPO / "src" / "podserve", tmp_path / "src" / "podserve",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "run.py").write_text("import runpy, sys\nsys.path.insert(0, sys.argv.pop(1))\n"
                                     "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n")
    env = {"PATH": f"{sys.prefix}/bin:/usr/bin:/bin", "GITLAB_CI": "true", "CI_PROJECT_DIR": str(tmp_path)}
    says = {"not isolated": "it was started without -I", "the checkout's": f"it was loaded from {tmp_path}"}
    for tool, argv in (("render", ["--all", "--out", "build/manifests"]), ("deploy", ["status", "--stage", "grey"]),
                       ("smoke", ["--stage", "grey"]), ("model_files", ["prepare", "--values", "value.py"])):
        module = f"podserve.tooling.{tool}"
        for how, command, extra in (
                ("not isolated", [sys.executable, "-m", module, *argv], {"PYTHONPATH": str(REPO / "src")}),
                ("the checkout's", [sys.executable, "-I", "run.py", str(tmp_path / "src"), module, *argv], {})):
            done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**env, **extra})
            assert done.returncode == 2, (how, command, done.stdout, done.stderr)
            assert "in CI the platform's tools run only as the tooling image's own" in done.stderr, done.stderr
            assert says[how] in done.stderr, done.stderr
    assert not (tmp_path / "build").exists()


def test_render_runs_once_and_every_deploy_job_gets_its_output_as_artifacts():
    renders = [(name, argv) for name, module, argv in tool_calls() if module == "podserve.tooling.render"]
    writers = [(name, argv) for name, argv in renders if "--out" in argv]
    assert [name for name, _ in writers] == ["manifests"]
    argv = writers[0][1]
    out = argv[argv.index("--out") + 1]
    assert out == MANIFESTS and f"{MANIFESTS}/" in JOBS["manifests"]["artifacts"]["paths"]
    assert JOBS["manifests"]["stage"] == "build"
    for name, job in DEPLOY_JOBS.items():
        assert "manifests" in job["needs"], name


def test_each_deploy_job_deploys_its_stage_with_that_regions_credentials():
    deployed = {}
    for name, module, argv in tool_calls():
        if module == "podserve.tooling.deploy":
            stage = argv[argv.index("--stage") + 1]
            assert stage == JOBS[name]["variables"].get("STAGE", "grey" if argv[0] == "analyze" else None), name
            region = CONF.stages[stage].region
            # grey and ab hold the preview account's variable, never production's (docs/tenancy.md).
            prefix = "KUBECONFIG_PREVIEW_" if tenancy.tier(CONF.stages[stage]) == "preview" else "KUBECONFIG_"
            assert JOBS[name]["variables"]["KUBECONFIG"] == f"${prefix}{region.upper()}", name
            if prefix == "KUBECONFIG_":  # the variable's environment scope, production/<region>, matches this job only
                assert JOBS[name]["environment"]["name"] == f"production/{region}", name
            deployed.setdefault(argv[0], set()).add(stage)
    production = {name for name in CONF.stages if CONF.stages[name].production}
    # verdict-grey's analyze; canary promote|abort in each production stage
    assert deployed == {"apply": set(CONF.stages), "delete": {"grey", "ab"}, "analyze": {"grey"}, "canary": production}


def _needed(job: dict) -> dict[str, bool]:
    """{job it needs: whether optional}."""
    return {n if isinstance(n, str) else n["job"]: not isinstance(n, str) and n.get("optional", False)
            for n in job.get("needs", [])}


def test_deploy_jobs_run_in_the_tooling_image_after_both_images_are_built():
    for name, job in APPLYING_JOBS.items():
        assert job["image"] == "$TOOLING_IMAGE", name
        if not name.startswith("stop_"):
            # tooling-image runs in the platform's project only: elsewhere the pinned release is already there.
            assert {"manifests": False, "service-image": False, "tooling-image": True}.items() <= \
                _needed(job).items(), name


def test_every_job_but_the_image_builds_runs_the_platform_s_pinned_tooling_and_rules():
    """Rules (conf/, templates/) and tools come from the pinned release, never from the checkout (docs/tenancy.md)."""
    pipeline_vars = variables({}, {"CI_REGISTRY": "r"})
    assert pipeline_vars["TOOLING_IMAGE"] == f"r/{pipeline_vars['PLATFORM_PROJECT']}/podserve-tooling:" \
        f"{pipeline_vars['PLATFORM_RELEASE']}@{pipeline_vars['PLATFORM_RELEASE_DIGEST']}"
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", pipeline_vars["PLATFORM_RELEASE"])  # a release, not a branch or latest
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pipeline_vars["PLATFORM_RELEASE_DIGEST"])  # pinned: a tag can move
    for name, job in JOBS.items():
        if name in ("service-image", "tooling-image"):
            continue
        assert job.get("image", PIPELINE["default"]["image"]) == "$TOOLING_IMAGE", name
        assert "PYTHONPATH" not in variables(job) and not any("pip install" in line for line in script_lines(job)), name
    assert [rule["if"] for rule in JOBS["tooling-image"]["rules"]] == [
        '$CI_PROJECT_PATH == $PLATFORM_PROJECT && $CI_COMMIT_TAG && $CI_COMMIT_REF_PROTECTED == "true"']


def test_the_service_image_job_records_its_digest_and_every_apply_job_deploys_by_it():
    """BuildKit's --metadata-file (containerimage.digest) is service-image's artifact; each apply passes it on."""
    (line,) = [line for line in script_lines(JOBS["service-image"]) if line.startswith("buildctl-daemonless.sh ")]
    assert line.split("--metadata-file ")[1].split()[0] == IMAGE_METADATA
    assert IMAGE_METADATA in JOBS["service-image"]["artifacts"]["paths"]
    applies = [name for name, module, argv in tool_calls() if module == "podserve.tooling.deploy" and argv[0] == "apply"]
    assert set(applies) == {name for name in APPLYING_JOBS if not name.startswith("stop_")}
    for name in applies:
        assert "service-image" in JOBS[name]["needs"], name  # GitLab hands a job the artifacts of what it needs
        (_, argv) = next((m, a) for n, m, a in tool_calls() if n == name)
        assert argv[argv.index("--image-metadata") + 1] == IMAGE_METADATA, name


def test_each_region_has_manual_canary_promote_and_abort_jobs_that_need_a_reason_and_wait_on_nothing():
    """canary-promote|abort-<region>: manual on the default branch, never blocking (allow_failure), the region's
    production credential by its environment, no resource_group (the region's deploy job holds it while it waits on
    the release they end), only the manifests (the service's name), PODSERVE_CANARY_REASON passed as --reason."""
    regions = {CONF.stages[name].region for name in CONF.stages if CONF.stages[name].production}
    assert set(CANARY_JOBS) == {f"canary-{action}-{region}" for action in ("promote", "abort") for region in regions}
    for name, job in CANARY_JOBS.items():
        action, region = name.split("-")[1:]
        assert job["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual",
                                 "allow_failure": True}], name
        assert job["environment"] == {"name": f"production/{region}", "action": "access"}, name
        assert "resource_group" not in job and job["needs"] == ["manifests"] and job["timeout"] == "10m", name
        assert job["stage"] == f"deploy-{region}", name
        module, argv = tool_argv(script_lines(job)[-1], job)
        assert module == "podserve.tooling.deploy" and argv[:2] == ["canary", action], name
        assert argv[argv.index("--reason") + 1] == "$PODSERVE_CANARY_REASON", name


def test_ab_and_every_region_hold_a_resource_group_of_their_own():
    gated = ("ab_test", "deploy-hk", "deploy-eu", "deploy-na")
    groups = {name: DEPLOY_JOBS[name].get("resource_group") for name in gated}
    assert None not in groups.values(), groups
    assert len(set(groups.values())) == len(groups)
    assert DEPLOY_JOBS["grey"]["resource_group"] == DEPLOY_JOBS["stop_grey"]["resource_group"]
    assert DEPLOY_JOBS["ab_test"]["resource_group"] == DEPLOY_JOBS["stop_ab"]["resource_group"]


def _manual() -> dict[str, bool]:
    """{manual job: its allow_failure} (GitLab: a manual job in rules defaults to allow_failure false)."""
    manual = {}
    for name, job in JOBS.items():
        for rule in job.get("rules", []):
            if rule.get("when") == "manual":
                manual[name] = rule.get("allow_failure", job.get("allow_failure", False))
    return manual


def test_the_preview_gates_never_block_the_pipeline_and_production_s_do():
    """stop_grey, ab_test, stop_ab may wait forever; a region's gate blocks, so that a failed region keeps the next
    closed: GitLab counts a failed job with allow_failure: true as passed for `needs` (issue 26)."""
    manual = _manual()
    assert manual == {"stop_grey": True, "ab_test": True, "stop_ab": True,
                      "deploy-hk": False, "deploy-eu": False, "deploy-na": False, **{name: True for name in CANARY_JOBS}}
    assert "rules" not in JOBS["grey"] and "when" not in JOBS["grey"] and "rules" not in JOBS["smoke-grey"]


def test_a_failed_region_keeps_the_next_one_closed():
    for before, after in (("deploy-hk", "deploy-eu"), ("deploy-eu", "deploy-na")):
        assert before in JOBS[after]["needs"] and _manual()[before] is False, after  # needs a success, not a pass
        assert "allow_failure" not in JOBS[before], before


def test_production_needs_grey_deployed_and_answering_through_its_route():
    needs = JOBS["deploy-hk"]["needs"]
    assert "grey" in needs and "smoke-grey" in needs  # plain names: neither optional
    smoke = JOBS["smoke-grey"]
    assert smoke["needs"] == ["manifests", "service-image", "grey"] and smoke["stage"] == "smoke"
    assert PIPELINE["stages"].index("smoke") == PIPELINE["stages"].index("grey") + 1
    (line,) = script_lines(smoke)
    module, argv = tool_argv(line, smoke)
    assert module == "podserve.tooling.smoke" and argv[argv.index("--stage") + 1] == "grey"
    assert argv[argv.index("--manifests") + 1] == MANIFESTS
    # this pipeline's build, by digest (service-image's artifact); the pods and the brokers with grey's credential
    assert argv[argv.index("--image-metadata") + 1] == IMAGE_METADATA
    assert smoke["variables"]["KUBECONFIG"] == JOBS["grey"]["variables"]["KUBECONFIG"]


def test_the_tool_is_exec_ed_so_the_runner_s_sigterm_reaches_it():
    """A cancelled job's SIGTERM goes to the job's shell; `exec` makes the tool that shell (issue 26)."""
    for name, job in JOBS.items():
        lines = script_lines(job)
        if any(is_tool_line(line) for line in lines) and name not in ("manifests", "model"):
            assert lines[-1].startswith(EXEC + TOOL), name
            assert all(not line.startswith(EXEC) for line in lines[:-1]), name  # nothing after an exec would run


def test_ab_is_an_environment_that_stops_itself_like_grey():
    ab, stop = JOBS["ab_test"]["environment"], JOBS["stop_ab"]["environment"]
    assert ab["on_stop"] == "stop_ab" and ab["auto_stop_in"]
    assert stop == {"name": ab["name"], "action": "stop"}
    assert JOBS["stop_ab"]["variables"]["GIT_STRATEGY"] == "none" and JOBS["stop_ab"]["needs"] == ["manifests"]
    assert JOBS["stop_ab"]["variables"]["KUBECONFIG"] == JOBS["ab_test"]["variables"]["KUBECONFIG"]


def test_production_goes_region_after_region_on_the_default_branch_only():
    assert "deploy-hk" in JOBS["deploy-eu"]["needs"] and "deploy-eu" in JOBS["deploy-na"]["needs"]
    for name in ("deploy-hk", "deploy-eu", "deploy-na"):
        assert [rule["if"] for rule in JOBS[name]["rules"]] == ["$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"]


def test_grey_is_an_environment_that_stops_itself():
    """One grey per service in GitLab as in the cluster: a branch's push replaces it, its auto-stop deletes it."""
    grey, stop = JOBS["grey"]["environment"], JOBS["stop_grey"]["environment"]
    assert grey["name"] == "grey" and "$" not in JOBS["grey"]["resource_group"]
    assert grey["on_stop"] == "stop_grey" and grey["auto_stop_in"]
    assert stop == {"name": grey["name"], "action": "stop"}
    assert JOBS["stop_grey"]["variables"]["GIT_STRATEGY"] == "none"
    assert JOBS["stop_grey"]["needs"] == ["manifests"]  # the artifact it deletes by; nothing from a checkout


MODEL_LINE = TOOL + "model_files prepare --values value.py"


def test_one_model_job_prepares_the_model_value_py_names_before_the_service_image():
    job = JOBS["model"]
    assert script_lines(job) == [MODEL_LINE]
    assert job["stage"] == "build" and job["artifacts"]["paths"] == ["model/"] and "rules" not in job
    assert set(JOBS["service-image"]["needs"]) == {"manifests", "model"}


def _model_job(checkout: Path) -> subprocess.CompletedProcess:
    """The model job's own script line (the tooling image laid out from this tree)."""
    job = JOBS["model"]
    return run_job_lines(script_lines(job), job, checkout)


def _checkout_naming(tmp_path: Path, model_path: str) -> Path:
    checkout = tmp_path / "checkout"
    checkout.mkdir(parents=True, exist_ok=True)
    value = re.sub(r'^model_path = "[^"]*"', f'model_path = "{model_path}"', (REPO / "value.py").read_text(),
                   flags=re.MULTILINE)
    assert f'model_path = "{model_path}"' in value
    (checkout / "value.py").write_text(value)
    return checkout


def test_the_model_job_line_rebuilds_committed_parts_into_model(tmp_path):
    from podserve.model_record import read_record
    from podserve.tooling.model_parts import split

    original = tmp_path / "original.onnx"
    original.write_bytes(bytes(range(256)) * 4096)
    checkout = _checkout_naming(tmp_path, "model/original.onnx")
    split(original, 100_000, checkout / "model-parts")
    done = _model_job(checkout)
    assert done.returncode == 0, done.stderr
    merged = checkout / "model" / "original.onnx"
    assert merged.read_bytes() == original.read_bytes()
    assert set(read_record(merged.parent)) == {"original.onnx"}


def test_the_model_job_keeps_a_committed_team_model_and_never_fetches_the_example(tmp_path):
    from podserve.model_record import record

    checkout = _checkout_naming(tmp_path, "model/team.onnx")
    (checkout / "model").mkdir()
    (checkout / "model" / "team.onnx").write_bytes(b"team weights" * 100)
    record(checkout / "model", [checkout / "model" / "team.onnx"])
    done = _model_job(checkout)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (checkout / "model").iterdir()) == ["MODEL.sha256", "team.onnx"]


def test_the_model_job_fails_naming_model_path_when_the_model_is_missing(tmp_path):
    checkout = _checkout_naming(tmp_path, "model/team.onnx")
    done = _model_job(checkout)
    assert done.returncode == 2 and "model/team.onnx" in done.stderr
    assert not (checkout / "model" / "team.onnx").exists()


def test_no_credential_is_written_in_the_pipeline():
    text = (REPO / ".gitlab-ci.yml").read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*\S", text)
    for name in ("KUBECONFIG_PREVIEW_HK", "KUBECONFIG_HK", "KUBECONFIG_EU", "KUBECONFIG_NA", "REGISTRY_AUTH_CONFIG"):
        assert f"${name}" in text
    assert "kubectl" not in text and "kaniko" not in text


def test_the_deploy_jobs_timeout_holds_the_example_s_rollout_and_rollback():
    """The tool refuses a deploy whose waits could outlast $CI_JOB_TIMEOUT; the example fits in the jobs' timeout,
    which conf/deploy.yaml's ci_job_timeout_seconds (render's limit: GitLab expands no variable in `timeout:`) is."""
    from podserve.tooling.deploy import commands
    from podserve.tooling.deploy.target import from_values

    timeouts = {JOBS[name].get("timeout") for name in APPLYING_JOBS if not name.startswith("stop_")}
    assert timeouts == {"1h"} and load_deploy_policy().ci_job_timeout_seconds == 3600
    for name in CONF.stages:
        target = from_values(REPO / "value.py", CONF, CONF.stages[name], "t")
        objects = list(target.objects)
        commands.check_job_timeout(target, CONF, commands.Options(), objects, objects, None,
                                   {commands.JOB_TIMEOUT_VARIABLE: "3600"})
