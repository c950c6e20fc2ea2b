"""Grey's verdict as an AnalysisRun (podserve.tooling.deploy.analysis), offline: the run the job creates from the
golden manifests, and what each of Argo's phases means. Argo running it against a real Prometheus and the mesh:
tests/mesh/test_verdict_live.py; the statistic itself: tests/deploy/test_analysis_template.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from podserve.tooling import analysis_template as at
from podserve.tooling.conf import load_conf, load_deploy_policy
from podserve.tooling.deploy import analysis
from podserve.tooling.deploy.target import from_manifests

GOLDEN = Path(__file__).resolve().parents[1] / "tooling" / "golden"


def _plan(window: int | None = None) -> analysis.Plan:
    conf = load_conf()
    grey, hk = (from_manifests(GOLDEN, conf.stages[name]) for name in ("grey", "hk"))
    return analysis.plan_for(grey, hk, conf, load_deploy_policy(), window)


def test_grey_s_run_is_the_canary_s_statistic_on_grey_s_mirrored_requests_against_stable_by_its_track():
    plan, conf = _plan(), load_conf()
    grey = from_manifests(GOLDEN, conf.stages["grey"]).deployment()
    run = analysis.analysis_run(plan, "text-direction-grey-1", grey)
    assert run["kind"] == "AnalysisRun" and run["metadata"]["namespace"] == plan.candidate_namespace
    assert run["metadata"]["labels"][analysis.VERDICT_OF_LABEL] == plan.service
    # what admission asks of every object in a team's namespace: the owner label and the project annotation
    assert run["metadata"]["labels"]["team"] == grey["metadata"]["labels"]["team"]
    project = grey["metadata"]["annotations"]["podserve.io/project"]
    assert run["metadata"]["annotations"] == {"podserve.io/project": project}
    metrics = run["spec"]["metrics"]
    assert [m["name"] for m in metrics] == list(at.CHECKS)
    for metric in metrics:
        query = metric["provider"]["prometheus"]["query"]
        assert metric["provider"]["prometheus"]["address"] == conf.platform.monitoring.prometheus_address
        assert "{{args." not in query  # nothing for the job to resolve: the preview account reads no production object
        assert f'namespace="{plan.candidate_namespace}"' in query and f'namespace="{plan.stable_namespace}"' in query
    errors = metrics[0]["provider"]["prometheus"]["query"]
    assert 'origin="mirror"' in errors and 'origin="live"' in errors and 'track="stable"' in errors
    # hk's canary steps judge by the very same conditions and schedule: one statistic
    template = yaml.safe_load((GOLDEN / "hk" / "analysistemplate.yaml").read_text())
    for ours, canary in zip(metrics, template["spec"]["metrics"], strict=True):
        for field in ("successCondition", "interval", "initialDelay", "count", "failureLimit", "inconclusiveLimit",
                      "consecutiveErrorLimit", "consecutiveSuccessLimit"):
            assert ours[field] == canary[field], field
        # but a sample that never passes: the canary's step fails (Argo must end it), grey's run ends Inconclusive
        assert "seconds >=" in canary["failureCondition"] and "seconds >=" not in ours["failureCondition"]


def test_a_window_may_only_be_longer():
    plan = _plan()
    longer = _plan(plan.policy.window_seconds * 2)
    assert longer.metrics[0]["interval"] == f"{plan.policy.window_seconds * 2}s"
    assert longer.seconds() > plan.seconds()
    try:
        _plan(plan.policy.window_seconds - 1)
    except analysis.BadInput as exc:
        assert "may only be longer" in str(exc)
    else:
        raise AssertionError("a shorter window was taken")


def test_each_phase_of_argo_is_a_verdict_and_an_unended_run_is_inconclusive():
    def run(phase, message="", value="[30,600,1,1200,150]"):
        status = {"phase": phase, "metricResults": [{"name": "errors", "phase": phase,
                                                     "measurements": [{"value": value, "message": message}]}]}
        return {"metadata": {"name": "r"}, "spec": {}, "status": status}

    assert analysis.outcome(run("Successful")) == ("pass", "")
    result, why = analysis.outcome(run("Failed"))
    assert result == "fail" and "errors: Failed" in why and "candidate_judged" in why
    result, why = analysis.outcome(run("Error", "dial tcp 10.0.0.1:9090: connection refused"))
    assert result == "inconclusive" and "connection refused" in why
    assert analysis.outcome(run("Inconclusive", value="[0,0,0,0,45]"))[0] == "inconclusive"  # an idle grey
    result, why = analysis.outcome(run("Running"))
    assert result == "inconclusive" and "did not end in time" in why
    assert [analysis.EXIT_BY_RESULT[r] for r in ("pass", "fail", "inconclusive")] == [0, 1, 4]


def test_the_run_s_name_is_the_job_s_and_fits_kubernetes():
    assert analysis.run_name("text-direction", {"CI_JOB_ID": "1234"}) == "text-direction-grey-1234"
    long = analysis.run_name("x" * 63, {"CI_JOB_ID": "99999999"})
    assert len(long) <= 63 and long.endswith("-grey-99999999")
    assert analysis.run_name("s", {}, now=lambda: 1700000000.5) == "s-grey-1700000000"
    assert analysis.run_name("s", {"CI_JOB_ID": "1; rm"}, now=lambda: 5) == "s-grey-5"  # not a job id: not taken
