"""The verdict Argo Rollouts runs (podserve.tooling.analysis_template): its statistic judged by Argo's own code, its
counts by a real Prometheus.

Real: Argo's evaluation of a metric's success and failure conditions (argo-evaluate: evaluate.EvaluateResult from the
argo-rollouts module `make argo-rollouts` builds); Prometheus (Debian's) answering the rendered queries over series
written into its storage with promtool (tsdb create-blocks-from openmetrics). Given: the counts in the first part,
and in the second the series a PodMonitor's scrapes would have stored.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from podserve.testbed.prometheus import Prometheus
from podserve.testbed.rollouts import build
from podserve.tooling import analysis_template as at
from podserve.tooling.conf import load_deploy_policy

POLICY = load_deploy_policy().verdict
T = at.Thresholds.of(POLICY)
SCRAPE = 15
FULL = T.span_seconds  # a sample that spans the whole of span


@pytest.fixture(scope="module")
def evaluate():
    binary = build.ENGINE.binaries_dir() / build.EVALUATE
    assert binary.is_file(), f"{binary} is missing: run `make argo-rollouts` (make test does it first)"

    def judge(check: str, result: list[float]) -> str:
        success, failure = at.conditions(check, T, SCRAPE)
        line = json.dumps({"result": result, "successCondition": success, "failureCondition": failure})
        done = subprocess.run([binary], input=line + "\n", capture_output=True, text=True, timeout=30, check=True)
        found = json.loads(done.stdout)
        assert not found.get("message"), found["message"]
        return found["phase"]

    return judge


# --- the statistic, on given counts --------------------------------------------------------------------------------

@pytest.mark.parametrize("counts, phase, why", [
    ([600, 60000, 60, 60000, 150], "Failed", "1.0% of 5xx against stable's 0.1% at 60k requests each"),
    ([300, 60000, 60, 60000, 150], "Failed", "0.5% against 0.1%: five times stable's, past the relative margin"),
    ([66, 60000, 60, 60000, 150], "Successful", "0.11% against 0.1%: within the margin, surely"),
    ([1, 100, 0, 100, 150], "Inconclusive", "100 requests a side: fewer than min_requests"),
    ([1, 100, 0, 100, FULL], "Failed", "still not a pass once the sample spans every extension"),
    ([4000, 60000, 3900, 60000, 150], "Failed", "6.7% of 5xx is surely above the 5% ceiling, whatever stable does"),
])
def test_errors_are_judged_relative_to_stable(evaluate, counts, phase, why):
    assert evaluate("errors", counts) == phase, why


def test_the_review_s_case_fails_on_the_relative_margin_where_the_absolute_one_passed_it(evaluate):
    """The review's case: 1.0% against 0.1% at 60k requests each, a difference of 0.9 points, within the absolute
    1-point margin our own statistic had (a pass), is ten times stable's share: a fail."""
    assert 0.01 - 0.001 < POLICY.error_margin
    assert evaluate("errors", [600, 60000, 60, 60000, 150]) == "Failed"


def test_an_extended_step_judges_the_grown_sample(evaluate):
    """0.6% against 0.1%: inconclusive on the first window's 1000 requests a side and on 3000, a fail once the
    sample has grown to 6000 (the same build, more of its requests: the margin never restarts)."""
    assert [evaluate("errors", counts) for counts in ([6, 1000, 1, 1000, 150], [18, 3000, 3, 3000, 270],
                                                       [36, 6000, 6, 6000, 300])] == \
        ["Inconclusive", "Inconclusive", "Failed"]


@pytest.mark.parametrize("check, counts, phase", [
    ("latency", [1000, 10000, 1000, 10000, 150, 5000, 5000], "Successful"),
    ("latency", [3000, 10000, 1000, 10000, 150, 5000, 5000], "Failed"),
    # the tail above B as stable's, most answers past M where stable has half: slower, whatever B's bucket hides
    ("latency", [1000, 10000, 1000, 10000, 150, 9000, 5000], "Failed"),
    ("latency", [1000, 10000, 1000, 10000, 150, 5200, 5000], "Successful"),  # within M's relative margin
    ("latency", [1000, 10000, 1000, 10000, 150], "Inconclusive"),  # the shape before M: never a pass
    ("queue-wait", [3000, 10000, 1000, 10000, 150, 10.0, 10.0], "Failed"),
    ("queue-wait", [3000, 10000, 1000, 10000, 150, 10.0, 50.0], "Successful"),  # rates 5x apart: not judged
])
def test_latency_and_queue_wait(evaluate, check, counts, phase):
    assert evaluate(check, counts) == phase


def test_a_result_of_another_shape_is_never_a_pass(evaluate):
    assert evaluate("errors", [600, 60000, 60, 60000]) == "Inconclusive"


# --- the counts, by a real Prometheus ------------------------------------------------------------------------------

NS, GREY_NS, OTHER_NS = "podserve-like", "podserve-like-grey", "podserve-bigolive"
LATENCY = "podserve_request_duration_seconds_bucket"
SERVICE, TEAM = "text-direction", "like"
STABLE_HASH, CANARY_HASH = "5d8f7c", "7b9c6d"
#: A second release in the same stage: stable loaded (its p90 in the 50-100 ms bucket), the canary 20 ms slower.
LOADED_STABLE_HASH, LOADED_CANARY_HASH = "6c4e2a", "8f1b3d"
#: The canary's pods start this long after the series begin; the queries run at these moments after that.
CANARY_AT, FIRST, SECOND = 600, 150, 270
#: A canary pod scraped this long before it got callers (ready before Argo's weight reached it).
IDLE_CANARY_HASH, IDLE_SECONDS = "4e2d0c", 120


def _series(start: float, seconds: int) -> dict[str, list[tuple[float, float]]]:
    """Counters (+n every scrape) and up series, keyed by their OpenMetrics name{labels}."""
    series: dict[str, list[tuple[float, float]]] = {}

    def counter(labels: dict, per_scrape: float, since: int = 0) -> None:
        key = "podserve_requests_total{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        series[key] = [(start + t, per_scrape * (t - since) / SCRAPE) for t in range(since, seconds + 1, SCRAPE)]

    def up(labels: dict, since: int = 0) -> None:
        key = "up{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        series[key] = [(start + t, 1.0) for t in range(since, seconds + 1, SCRAPE)]

    def pod(namespace: str, stage: str, track: str, pod_hash: str | None, name: str, since: int,
            counts: dict[tuple[str, str], float], team: str = TEAM) -> None:
        target = {"namespace": namespace, "job": f"{namespace}/{SERVICE}", "stage": stage, "track": track,
                  "pod": name, "team": team}
        if pod_hash:
            target[at.HASH_SERIES_LABEL] = pod_hash
        up(target, since)
        for (origin, status), per_scrape in counts.items():
            counter(dict(target, service=SERVICE, route=SERVICE, status=status, origin=origin), per_scrape, since)

    def latency(namespace: str, stage: str, track: str, pod_hash: str, name: str, since: int,
                cumulative: dict[str, float]) -> None:
        labels = {"namespace": namespace, "job": f"{namespace}/{SERVICE}", "stage": stage, "track": track,
                  "pod": name, "team": TEAM, at.HASH_SERIES_LABEL: pod_hash, "service": SERVICE, "route": SERVICE,
                  "status": "200", "origin": "live"}
        for le, per_scrape in cumulative.items():
            key = f"{LATENCY}{{" + ",".join(f'{k}="{v}"' for k, v in sorted(dict(labels, le=le).items())) + "}"
            series[key] = [(start + t, per_scrape * (t - since) / SCRAPE) for t in range(since, seconds + 1, SCRAPE)]

    pod(NS, "hk", "stable", STABLE_HASH, "stable-0", 0, {("live", "200"): 100, ("live", "500"): 1})
    # 2xx latency, cumulative per scrape: stable reaches 90% at 10 ms (B); the canary, 20 ms slower, has 90% above B
    latency(NS, "hk", "stable", STABLE_HASH, "stable-0", 0,
            {"0.005": 50, "0.01": 90, "0.025": 99, "0.05": 100, "+Inf": 100})
    latency(NS, "hk", "canary", CANARY_HASH, "canary-0", CANARY_AT,
            {"0.005": 0, "0.01": 10, "0.025": 60, "0.05": 99, "+Inf": 100})
    # loaded: stable's p90 past 50 ms (B = 100 ms, M = 25 ms); the canary is stable 20 ms later, so above B it
    # has 5% against stable's 2%, above M 90% against 30%
    latency(NS, "hk", "stable", LOADED_STABLE_HASH, "loaded-stable-0", 0,
            {"0.005": 10, "0.01": 40, "0.025": 70, "0.05": 88, "0.1": 98, "0.25": 100, "+Inf": 100})
    latency(NS, "hk", "canary", LOADED_CANARY_HASH, "loaded-canary-0", CANARY_AT,
            {"0.005": 0, "0.01": 0, "0.025": 10, "0.05": 75, "0.1": 95, "0.25": 100, "+Inf": 100})
    for track, pod_hash, since in (("stable", LOADED_STABLE_HASH, 0), ("canary", LOADED_CANARY_HASH, CANARY_AT)):
        up({"namespace": NS, "job": f"{NS}/{SERVICE}", "stage": "hk", "track": track, "pod": f"loaded-{track}-0",
            "team": TEAM, at.HASH_SERIES_LABEL: pod_hash}, since)
    pod(NS, "hk", "canary", CANARY_HASH, "canary-0", CANARY_AT,
        {("live", "200"): 100, ("live", "500"): 10, ("smoke", "500"): 50, ("mirror", "500"): 50})
    # a canary ready and scraped IDLE_SECONDS before Argo's weight sent it callers
    up({"namespace": NS, "job": f"{NS}/{SERVICE}", "stage": "hk", "track": "canary", "pod": "idle-canary-0",
        "team": TEAM, at.HASH_SERIES_LABEL: IDLE_CANARY_HASH}, CANARY_AT - IDLE_SECONDS)
    counter({"namespace": NS, "job": f"{NS}/{SERVICE}", "stage": "hk", "track": "canary", "pod": "idle-canary-0",
             "team": TEAM, at.HASH_SERIES_LABEL: IDLE_CANARY_HASH, "service": SERVICE, "route": SERVICE,
             "status": "200", "origin": "live"}, 100, CANARY_AT)
    # another team's pod wearing the victim's labels and hash, in its own namespace: never counted
    pod(OTHER_NS, "hk", "canary", CANARY_HASH, "impostor-0", 0, {("live", "500"): 500})
    pod(GREY_NS, "grey", "grey", None, "grey-0", CANARY_AT,
        {("mirror", "200"): 40, ("mirror", "500"): 2, ("live", "500"): 100, ("smoke", "200"): 30})
    return series


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A real Prometheus over series written into its storage: stable since the start, the canary and grey from
    CANARY_AT on; returns (prometheus, the moment the canary started)."""
    work = tmp_path_factory.mktemp("analysis-prometheus")
    start = (int(time.time()) - 3 * 3600) // SCRAPE * SCRAPE
    seconds = CANARY_AT + SECOND + 60
    lines = []
    for name in ("podserve_requests_total", "up", LATENCY):
        lines.append(f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge' if name == 'up' else 'unknown'}")
        for key, points in _series(start, seconds).items():
            if key.startswith(name + "{"):
                lines += [f"{key} {value} {moment}" for moment, value in points]
    lines.append("# EOF")
    (work / "series.om").write_text("\n".join(lines) + "\n")
    data = work / "prometheus" / "data"
    data.mkdir(parents=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "series.om"), str(data)],
                   check=True, capture_output=True, timeout=120)
    prometheus = Prometheus(work / "prometheus", []).start()
    yield prometheus, start + CANARY_AT
    prometheus.stop()


def _values(prometheus, query: str, moment: float) -> list[float]:
    """The measurement Argo would take: the vector's values in the order Prometheus returns them (its `result`),
    after checking that order is the query's (the `i` labels 0, 1, ...)."""
    result = prometheus.query(query, at=moment)
    assert [int(r["metric"]["i"]) for r in result] == list(range(len(result))), "the counts came back out of order"
    return [float(r["value"][1]) for r in result]


def _canary(hash_canary=CANARY_HASH, hash_stable=STABLE_HASH) -> str:
    query = at.canary(NS, TEAM, SERVICE, "hk", T, SCRAPE).errors_query()
    return query.replace("{{args.canary-hash}}", hash_canary).replace("{{args.stable-hash}}", hash_stable)


def test_a_canary_counts_its_callers_requests_in_its_own_namespace_only(stored):
    prometheus, canary_start = stored
    judged, counted, stable_judged, stable_counted, seconds = _values(prometheus, _canary(), canary_start + FIRST)
    assert abs(judged / counted - 10 / 110) < 0.002, "smoke, mirrored copies or another namespace's pod counted"
    assert abs(stable_judged / stable_counted - 1 / 101) < 0.002
    # a new pod's requests count in full from its first scrape on (a rate over a fixed range counted its first
    # minute at a fraction): every request it answered since it started, 110 a scrape
    assert abs(counted - 110 * FIRST / SCRAPE) <= 0.02 * 110 * FIRST / SCRAPE, (counted, seconds)


def test_the_window_grows_and_stable_is_counted_over_the_same_moments(stored):
    prometheus, canary_start = stored
    first = _values(prometheus, _canary(), canary_start + FIRST)
    second = _values(prometheus, _canary(), canary_start + SECOND)
    assert FIRST - 2 * SCRAPE <= first[4] <= FIRST + SCRAPE and SECOND - 2 * SCRAPE <= second[4] <= SECOND + SCRAPE
    assert second[1] > 1.5 * first[1], "an extension judges the grown sample, not a fresh window"
    for counts in (first, second):  # stable only while the canary was scraped, not over the whole span before it
        assert abs(counts[3] / counts[4] - 101 / SCRAPE) < 0.1 * 101 / SCRAPE


def test_the_sample_s_length_counts_the_moments_the_canary_served_not_its_idle_ready_ones(stored):
    """A canary pod is ready (scraped) before the weight reaches it: its first measurement's sample is as long as its
    traffic, so it is not full (judged on its first seconds without an extension) while the span would hold both."""
    prometheus, canary_start = stored
    assert FIRST + IDLE_SECONDS <= FULL  # the span holds the idle time: counted in, the sample would read longer
    counts = _values(prometheus, _canary(IDLE_CANARY_HASH), canary_start + FIRST)
    assert FIRST - 2 * SCRAPE <= counts[4] <= FIRST + SCRAPE, counts
    assert abs(counts[1] - 100 * FIRST / SCRAPE) <= 100 * 2, counts


def test_grey_is_judged_on_its_mirrored_requests_only(stored):
    prometheus, canary_start = stored
    query = at.grey(GREY_NS, NS, TEAM, SERVICE, "hk", T, SCRAPE).errors_query()
    assert "{{args." not in query  # grey's run has no arguments: the preview account cannot read stable's hash
    judged, counted, stable_judged, stable_counted, _ = _values(prometheus, query, canary_start + FIRST)
    assert abs(judged / counted - 2 / 42) < 0.002, "grey's smoke or direct requests counted"
    # stable by its track: the stable pod's requests, not the canary's (track canary) in the same namespace
    assert abs(stable_judged / stable_counted - 1 / 101) < 0.002


def test_grey_counts_from_its_run_s_start_only(stored):
    """Grey served (and was scraped) before its job started the run: with `since`, its requests before then and
    stable's at those moments are out of the sample, which then grows from the run's start as a canary's does."""
    prometheus, canary_start = stored
    moment = canary_start + FIRST

    def counts(since):
        return _values(prometheus, at.grey(GREY_NS, NS, TEAM, SERVICE, "hk", T, SCRAPE, since).errors_query(), moment)

    whole, recent = counts(None), counts(int(moment) - 60)
    assert abs(whole[1] - 42 * FIRST / SCRAPE) <= 42 * 2, whole  # every scrape of grey's since it started
    assert 42 * 60 / SCRAPE - 42 * 2 <= recent[1] <= 42 * 60 / SCRAPE + 42, recent  # the last 60 s only
    assert recent[4] <= 60 + SCRAPE and recent[3] < whole[3]  # its seconds, and stable over the same moments


def test_an_impostor_namespace_with_the_victims_labels_is_not_counted(stored):
    """The impostor answers 500 on every request, in its own namespace, with the victim's team, service, stage,
    track and hash: it must change nothing."""
    prometheus, canary_start = stored
    assert prometheus.query(f'sum(podserve_requests_total{{namespace="{OTHER_NS}", team="{TEAM}"}})',
                            at=canary_start + FIRST), "the impostor's series are in Prometheus"
    judged, counted, *_ = _values(prometheus, _canary(), canary_start + FIRST)
    assert judged / counted < 0.1


def _latency_counts(prometheus, moment: float, canary: str, stable: str) -> list[float]:
    query = at.canary(NS, TEAM, SERVICE, "hk", T, SCRAPE).latency_query() \
        .replace("{{args.canary-hash}}", canary).replace("{{args.stable-hash}}", stable)
    return _values(prometheus, query, moment)


def test_a_build_20ms_slower_fails_on_latency(stored, evaluate):
    """Stable answers 90% of its requests within 10 ms (B); the canary, 20 ms slower, has 90% above B: the rendered
    latency query counts that and Argo's conditions fail it."""
    prometheus, canary_start = stored
    counts = _latency_counts(prometheus, canary_start + FIRST, CANARY_HASH, STABLE_HASH)
    above_c, all_c, above_s, all_s, _, median_c, median_s = counts
    assert abs(above_c / all_c - 0.9) < 0.02 and abs(above_s / all_s - 0.1) < 0.02, counts
    # M is stable's 5 ms bucket (half of its answers): the canary has every answer above it
    assert abs(median_c / all_c - 1.0) < 0.02 and abs(median_s / all_s - 0.5) < 0.02, counts
    assert evaluate("latency", counts) == "Failed"


def test_a_build_20ms_slower_beside_a_loaded_stable_fails_at_the_median_where_the_tail_s_bucket_hides_it(
        stored, evaluate):
    """Stable loaded, its p90 past 50 ms: B is the 100 ms bucket, and 20 ms more moves few answers past it (the
    fresh-clone run's case on the real node: the slower build promoted). Above M, stable's 25 ms bucket, the canary
    has 90% against 30%: a fail; the tail's counts alone do not fail it."""
    prometheus, canary_start = stored
    counts = _latency_counts(prometheus, canary_start + FIRST, LOADED_CANARY_HASH, LOADED_STABLE_HASH)
    above_c, all_c, above_s, all_s, seconds, median_c, median_s = counts
    assert abs(above_c / all_c - 0.05) < 0.02 and abs(above_s / all_s - 0.02) < 0.02, counts
    assert abs(median_c / all_c - 0.9) < 0.02 and abs(median_s / all_s - 0.3) < 0.02, counts
    assert evaluate("latency", counts) == "Failed"
    as_stable_at_median = [above_c, all_c, above_s, all_s, seconds, median_s * all_c / all_s, median_s]
    assert evaluate("latency", as_stable_at_median) != "Failed"


def test_the_queue_wait_is_judged_at_each_side_s_per_pod_rate(stored):
    """The queue-wait query's last two counts are each side's callers' requests a second per pod over the judged
    moments: what decides whether the waits are comparable."""
    prometheus, canary_start = stored
    query = at.canary(NS, TEAM, SERVICE, "hk", T, SCRAPE).queue_query() \
        .replace("{{args.canary-hash}}", CANARY_HASH).replace("{{args.stable-hash}}", STABLE_HASH)
    *_, canary_rate, stable_rate = _values(prometheus, query, canary_start + SECOND)
    # both over the same judged moments (so comparable), a second of the span: one pod each, 110 and 101 a scrape
    assert 0.5 < canary_rate / stable_rate < 2 and 0 < stable_rate <= 101 / SCRAPE
