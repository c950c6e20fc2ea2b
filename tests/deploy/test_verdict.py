"""The verdict's statistics on synthetic counts (podserve.tooling.deploy.verdict): each decision, and how often an
identical build fails, computed and drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from podserve.metric_names import LATENCY_BUCKETS
from podserve.tooling.conf import load_deploy_policy
from podserve.tooling.deploy import verdict

POLICY = load_deploy_policy().verdict
BOUNDS = (*LATENCY_BUCKETS, math.inf)
#: A stable build's latency over the buckets (share of requests under each bound, not cumulative): most between
#: 2.5 and 10 ms, as the affine model through the server takes here.
FAST = (0.0, 0.05, 0.55, 0.32, 0.06, 0.015, 0.005, 0, 0, 0, 0, 0, 0, 0, 0)


def histogram(rng, n: int, shares=FAST) -> dict[float, float]:
    """A cumulative latency histogram of n requests drawn from `shares`, as Prometheus' le buckets hold it."""
    drawn = rng.multinomial(n, np.array(shares) / sum(shares))
    return dict(zip(BOUNDS, np.cumsum(drawn).astype(float)))


def side(rng, n: int, errors: float = 0.002, shares=FAST, pods: int = 2, seconds: float = 120) -> verdict.Counts:
    failed = rng.binomial(n, errors)
    ok = n - failed
    return verdict.Counts({"200": ok, "500": failed}, histogram(rng, ok, shares), histogram(rng, ok, shares),
                          pods, seconds)


def slower(shares, buckets: int) -> tuple:
    """The same latencies `buckets` bucket bounds later (20 ms later, from 2.5-10 ms, is two or three)."""
    return (0.0,) * buckets + tuple(shares[:len(shares) - buckets])


def test_an_identical_build_passes_and_its_false_fail_probability_is_what_drawing_it_gives():
    rng = np.random.default_rng(57)
    n, windows = 4000, 2000  # a 20% copy to one grey pod, 80% to two stable pods
    results = [verdict.judge(side(rng, n // 4, pods=1), side(rng, n), POLICY) for _ in range(windows)]
    failed = sum(r.result == verdict.FAIL for r in results)
    passed = sum(r.result == verdict.PASS for r in results)
    computed = max(r.false_fail_probability for r in results)
    print(f"\nidentical build, {n // 4} candidate and {n} stable requests: {passed}/{windows} pass, {failed} fail "
          f"(computed false-fail probability at most {computed:.2e})")
    assert computed < 0.001
    assert failed <= max(3, 3 * computed * windows)  # what drawing gives stays within the computed bound
    assert passed >= 0.9 * windows
    few = verdict.judge(side(rng, 375, pods=1), side(rng, 1500), POLICY)  # a quarter as many: rarely sure enough
    assert few.false_fail_probability > computed


def test_the_computed_false_fail_probability_bounds_what_drawing_gives_where_fails_are_common_enough_to_count():
    """With margins tightened until identical builds fail now and then, the computed probability (a union bound,
    normal approximation) is above what 3000 drawn windows give, and within 10 times of it."""
    import dataclasses

    tight = dataclasses.replace(POLICY, latency_margin=0.005, queue_margin=0.005, error_margin=0.001)
    rng = np.random.default_rng(9)
    results = [verdict.judge(side(rng, 1000, pods=1), side(rng, 4000), tight) for _ in range(3000)]
    drawn = sum(r.result == verdict.FAIL for r in results) / len(results)
    computed = float(np.mean([r.false_fail_probability for r in results]))
    print(f"\ntight margins: {drawn:.4f} of identical builds drawn fail; computed {computed:.4f}")
    assert 0 < drawn <= computed <= 10 * drawn


def test_a_build_failing_a_tenth_of_its_decodes_fails_on_errors_with_its_numbers():
    rng = np.random.default_rng(1)
    found = verdict.judge(side(rng, 400, errors=0.1), side(rng, 1500), POLICY)
    errors = found.check("errors")
    assert found.result == verdict.FAIL and errors.result == verdict.FAIL
    assert errors.p_value < 1e-6 and 0.07 < errors.candidate < 0.13 and errors.stable < 0.01
    assert found.check("error_ceiling").result == verdict.FAIL  # 10% is surely above the 5% ceiling
    assert found.reasons[0].startswith("errors: fail: candidate 0.")


def test_a_build_20_ms_slower_fails_on_latency_not_on_errors():
    rng = np.random.default_rng(2)
    found = verdict.judge(side(rng, 400, shares=slower(FAST, 2)), side(rng, 1500), POLICY)
    assert found.result == verdict.FAIL
    assert found.check("latency").result == verdict.FAIL and found.check("errors").result != verdict.FAIL
    assert found.latency_bucket == 0.01  # where stable reaches 90%
    assert found.check("latency").candidate > 0.9 > 0.2 > found.check("latency").stable


#: A loaded stable's latency: its p90 past 50 ms, so B is the 100 ms bucket and M (half its answers) the 25 ms one.
LOADED = (0.0, 0.0, 0.10, 0.30, 0.30, 0.18, 0.10, 0.02, 0, 0, 0, 0, 0, 0, 0)
#: LOADED 20 ms later: above B 5% against stable's 2%, above M 90% against 30%.
LOADED_20_MS_LATER = (0.0, 0.0, 0.0, 0.0, 0.10, 0.65, 0.20, 0.05, 0, 0, 0, 0, 0, 0, 0)


def test_a_build_20_ms_slower_than_a_loaded_stable_fails_at_m_where_b_s_bucket_hides_it():
    rng = np.random.default_rng(6)
    found = verdict.judge(side(rng, 400, shares=LOADED_20_MS_LATER), side(rng, 1500, shares=LOADED), POLICY)
    assert (found.latency_bucket, found.median_bucket) == (0.1, 0.025)
    assert found.check("latency").result != verdict.FAIL  # 5% against 2%: within B's margin
    median = found.check("latency_at_median")
    assert found.result == verdict.FAIL and median.result == verdict.FAIL
    assert median.candidate > 0.85 and median.stable < 0.35
    assert any(reason.startswith("latency_at_median: fail") for reason in found.reasons)
    same = verdict.judge(side(rng, 400, shares=LOADED), side(rng, 1500, shares=LOADED), POLICY)
    assert same.check("latency_at_median").result == verdict.PASS  # the guard passes what it cannot fail


def test_too_few_requests_are_inconclusive_whatever_they_say():
    rng = np.random.default_rng(3)
    idle = verdict.judge(verdict.Counts({"200": 0}), side(rng, 1500), POLICY)
    assert idle.result == verdict.INCONCLUSIVE
    assert any("fewer than" in reason for reason in idle.reasons)
    few = verdict.judge(side(rng, POLICY.min_requests - 1), side(rng, 1500), POLICY)
    assert few.result == verdict.INCONCLUSIVE


def test_a_difference_near_the_margin_is_neither_pass_nor_fail():
    check = verdict.compare_shares("errors", 15, 1000, 5, 1000, POLICY.error_margin, POLICY.alpha)  # 1.5% vs 0.5%
    assert check.result == verdict.INCONCLUSIVE and check.upper_bound > POLICY.error_margin and check.p_value > 0.01
    assert verdict.compare_shares("errors", 60, 1000, 5, 1000, 0.01, 0.01).result == verdict.FAIL
    assert verdict.compare_shares("errors", 5, 5000, 5, 5000, 0.01, 0.01).result == verdict.PASS


def test_queue_wait_is_judged_only_at_comparable_per_pod_rates():
    rng = np.random.default_rng(4)
    stable = side(rng, 1500, pods=2)  # 6.25 requests a second a pod
    busy = side(rng, 400, pods=1, shares=slower(FAST, 3))  # 3.3 a second a pod: within 2x
    judged = verdict.judge(busy, stable, POLICY).check("queue_wait")
    assert judged.result == verdict.FAIL
    quiet = side(rng, 400, pods=4, shares=slower(FAST, 3))  # 0.83 a second a pod: 7.5x fewer
    assert verdict.judge(quiet, stable, POLICY).check("queue_wait").result == verdict.NOT_JUDGED


def test_a_candidate_as_bad_as_stable_still_fails_over_the_ceiling():
    rng = np.random.default_rng(5)
    found = verdict.judge(side(rng, 2000, errors=0.08), side(rng, 2000, errors=0.08), POLICY)
    assert found.check("errors").result != verdict.FAIL
    assert found.check("error_ceiling").result == verdict.FAIL and found.result == verdict.FAIL


def test_bucket_b_is_where_stable_reaches_its_quantile():
    cumulative = {0.005: 50.0, 0.01: 89.0, 0.025: 90.0, 0.05: 100.0, math.inf: 100.0}
    assert verdict.bucket_at(cumulative, 0.9) == 0.025
    assert verdict.above(cumulative, 0.025) == (10.0, 100.0)
    assert verdict.bucket_at({}, 0.9) is None and verdict.bucket_at({math.inf: 0.0}, 0.9) is None


@pytest.mark.parametrize("n", [500, 2000])
def test_the_false_fail_probability_falls_with_more_requests(n):
    small = verdict.false_fail_probability(n, n, 0.002, 0.1, POLICY)
    large = verdict.false_fail_probability(4 * n, 4 * n, 0.002, 0.1, POLICY)
    assert 0 <= large < small < 0.05
