"""The verdict on a candidate (grey, a canary) against stable: pure statistics on one window's counts.

Each check compares a share of the candidate's requests with stable's, one-sided (only worse matters), with a
margin: the errors (the 5xx share), the latency (the share above B, the latency bucket where stable reaches
`latency_quantile` of its requests; and, as a guard that only fails, the share above M, the bucket where stable
reaches half of them: the buckets double, so a slower build whose tail stays inside B's wide bucket still moves most
of its answers past M) and, only where the two sides' per-pod rates are within `comparable_rate_ratio`
of each other, the queue wait (the same, on podserve_queue_wait_seconds). For a difference d = p_candidate -
p_stable, estimated as Agresti and Caffo do (one success and one failure added to each side, which keeps a share of 0
from claiming certainty), with its standard error s:

| result | when |
|---|---|
| fail | worse by more than the margin at significance alpha: z = (d - margin) / s > z(1 - alpha), p = 1 - Phi(z) |
| pass | the upper (1 - alpha) bound d + z(1 - alpha) s is within the margin |
| inconclusive | neither |

The candidate also fails when its 5xx share is surely above `error_ceiling` (the lower bound of its Wilson interval
is above it), whatever stable does. The whole verdict: fail if any check fails; inconclusive when either side has
fewer than `min_requests` or a check is inconclusive; pass when every judged check passes.

`false_fail_probability` is the chance that an identical build, whose true shares equal stable's, fails at these
counts: for each check P(Z > z(1 - alpha) + margin / s) (normal approximation), their sum bounding the union, plus
the ceiling's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist

from podserve.tooling.analysis_template import MEDIAN

PASS, FAIL, INCONCLUSIVE, NOT_JUDGED = "pass", "fail", "inconclusive", "not judged"
#: The statuses printed apart (the 5xx the platform's own pods answer: a handler's error, shedding, a deadline).
STATUSES_APART = ("500", "503", "504")
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Counts:
    """One side's requests in the window: by status, the latency and queue-wait histograms (cumulative counts by
    bucket bound, +Inf as math.inf), its pods and the window's seconds."""

    statuses: dict[str, float]
    latency: dict[float, float] = field(default_factory=dict)
    queue_wait: dict[float, float] = field(default_factory=dict)
    pods: int = 1
    seconds: float = 1.0

    @property
    def requests(self) -> int:
        return round(sum(self.statuses.values()))

    @property
    def errors(self) -> int:
        return round(sum(v for k, v in self.statuses.items() if k.startswith("5")))

    def per_pod_rate(self) -> float:
        """Requests a second per pod."""
        return self.requests / max(self.pods, 1) / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class Check:
    """One comparison: the two shares, their difference, its upper bound, the p-value of "worse by more than the
    margin", and the result."""

    name: str
    result: str
    candidate: float = 0.0
    stable: float = 0.0
    difference: float = 0.0
    upper_bound: float = 0.0
    p_value: float = 1.0
    margin: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """The result (pass, fail, inconclusive) with every check, the latency bucket B, and why."""

    result: str
    checks: list[Check]
    reasons: list[str]
    candidate: Counts | None = None
    stable: Counts | None = None
    latency_bucket: float | None = None
    false_fail_probability: float | None = None
    median_bucket: float | None = None

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_dict(self) -> dict:
        def side(counts: Counts | None) -> dict | None:
            if counts is None:
                return None
            return {"requests": counts.requests, "errors": counts.errors, "pods": counts.pods,
                    "statuses": {k: round(v) for k, v in sorted(counts.statuses.items())},
                    "per_pod_rate": round(counts.per_pod_rate(), 3)}

        bucket = self.latency_bucket if self.latency_bucket is not None and math.isfinite(self.latency_bucket) else None
        median = self.median_bucket if self.median_bucket is not None and math.isfinite(self.median_bucket) else None
        return {"result": self.result, "reasons": self.reasons, "latency_bucket_seconds": bucket,
                "median_bucket_seconds": median,
                "false_fail_probability": self.false_fail_probability, "candidate": side(self.candidate),
                "stable": side(self.stable), "checks": [asdict(c) for c in self.checks]}


def z_of(alpha: float) -> float:
    """Return z(1 - alpha), the one-sided critical value."""
    return _NORMAL.inv_cdf(1 - alpha)


def upper_tail(z: float) -> float:
    """Return P(Z > z) for a standard normal Z, exact far into the tail (erfc: no 1 - cdf cancellation)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare_shares(name: str, x_candidate: float, n_candidate: float, x_stable: float, n_stable: float,
                   margin: float, alpha: float) -> Check:
    """Compare the candidate's share x/n with stable's: fail, pass or inconclusive as the module says."""
    pc, ps = (x_candidate + 1) / (n_candidate + 2), (x_stable + 1) / (n_stable + 2)
    difference = pc - ps
    error = math.sqrt(pc * (1 - pc) / (n_candidate + 2) + ps * (1 - ps) / (n_stable + 2))
    critical = z_of(alpha)
    z = (difference - margin) / error
    p_value = upper_tail(z)
    upper = difference + critical * error
    result = FAIL if p_value < alpha else PASS if upper <= margin else INCONCLUSIVE
    share = lambda x, n: x / n if n else 0.0  # noqa: E731
    return Check(name, result, share(x_candidate, n_candidate), share(x_stable, n_stable), difference, upper,
                 p_value, margin)


def wilson_lower(x: float, n: float, alpha: float) -> float:
    """Return the lower one-sided (1 - alpha) Wilson bound of a share x/n."""
    if n <= 0:
        return 0.0
    z, p = z_of(alpha), x / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def bucket_at(histogram: dict[float, float], quantile: float) -> float | None:
    """Return the smallest bucket bound under which at least `quantile` of the histogram's requests fall."""
    if not histogram:
        return None
    total = histogram.get(math.inf, max(histogram.values()))
    if total <= 0:
        return None
    for bound in sorted(histogram):
        if histogram[bound] >= quantile * total:
            return bound
    return math.inf


def above(histogram: dict[float, float], bound: float) -> tuple[float, float]:
    """Return (requests above `bound`, all requests) of a cumulative histogram."""
    total = histogram.get(math.inf, max(histogram.values(), default=0.0))
    return max(0.0, total - histogram.get(bound, 0.0)), total


def judge(candidate: Counts, stable: Counts, policy) -> Verdict:
    """Return the verdict on `candidate` against `stable` under `policy` (a VerdictPolicy, release.verdict_policy)."""
    reasons = []
    for name, side in (("the candidate", candidate), ("stable", stable)):
        if side.requests < policy.min_requests:
            reasons.append(f"{name} answered {side.requests} requests in the window, fewer than "
                           f"{policy.min_requests} (min_requests)")
    checks = [compare_shares("errors", candidate.errors, candidate.requests, stable.errors, stable.requests,
                             policy.error_margin, policy.alpha)]
    lower = wilson_lower(candidate.errors, candidate.requests, policy.alpha)
    checks.append(Check("error_ceiling", FAIL if lower > policy.error_ceiling else PASS,
                        _share(candidate.errors, candidate.requests), upper_bound=lower, margin=policy.error_ceiling))
    bucket = bucket_at(stable.latency, policy.latency_quantile)
    median = bucket_at(stable.latency, MEDIAN)
    if bucket is None or not candidate.latency:
        checks.append(Check("latency", INCONCLUSIVE, detail="no latency histogram of 2xx answers on one side"))
    else:
        xc, nc = above(candidate.latency, bucket)
        xs, ns = above(stable.latency, bucket)
        checks.append(compare_shares("latency", xc, nc, xs, ns, policy.latency_margin, policy.alpha))
        at_median = compare_shares("latency_at_median", *above(candidate.latency, median),
                                   *above(stable.latency, median), policy.latency_margin, policy.alpha)
        # a guard: surely worse above M fails; anything else leaves the latency to B's check
        checks.append(at_median if at_median.result == FAIL else replace(at_median, result=PASS))
    checks.append(_queue_check(candidate, stable, policy))
    failed = [c for c in checks if c.result == FAIL]
    if failed:
        result = FAIL
    elif reasons or any(c.result == INCONCLUSIVE for c in checks):
        result = INCONCLUSIVE
        reasons += [f"{c.name}: neither worse nor surely within the margin" for c in checks
                    if c.result == INCONCLUSIVE and not c.detail] + [f"{c.name}: {c.detail}" for c in checks
                                                                    if c.result == INCONCLUSIVE and c.detail]
    else:
        result = PASS
    reasons = [f"{c.name}: {describe(c)}" for c in failed] + reasons
    latency_share = _share(*above(stable.latency, bucket)) if bucket is not None else None
    median_share = _share(*above(stable.latency, median)) if median is not None else None
    queue = _queue_share(stable, policy) if checks[-1].result != NOT_JUDGED else None
    return Verdict(result, checks, reasons, candidate, stable, bucket,
                   false_fail_probability(candidate.requests, stable.requests, _share(stable.errors, stable.requests),
                                          latency_share, policy, queue, median_share), median)


def _share(x: float, n: float) -> float:
    return x / n if n else 0.0


def _queue_share(stable: Counts, policy) -> float | None:
    bucket = bucket_at(stable.queue_wait, policy.latency_quantile)
    return _share(*above(stable.queue_wait, bucket)) if bucket is not None else None


def _queue_check(candidate: Counts, stable: Counts, policy) -> Check:
    """The queue wait, judged only at comparable per-pod rates: waits grow with load, not only with the build."""
    rates = candidate.per_pod_rate(), stable.per_pod_rate()
    if min(rates) <= 0 or max(rates) / min(rates) > policy.comparable_rate_ratio:
        return Check("queue_wait", NOT_JUDGED, detail=f"per-pod rates {rates[0]:.2f}/s and {rates[1]:.2f}/s are not "
                                                      f"within {policy.comparable_rate_ratio:g}x of each other")
    bucket = bucket_at(stable.queue_wait, policy.latency_quantile)
    if bucket is None or not candidate.queue_wait:
        return Check("queue_wait", NOT_JUDGED, detail="no queue-wait histogram on one side")
    xc, nc = above(candidate.queue_wait, bucket)
    xs, ns = above(stable.queue_wait, bucket)
    return compare_shares("queue_wait", xc, nc, xs, ns, policy.queue_margin, policy.alpha)


def describe(check: Check) -> str:
    """One line of a check's numbers."""
    if check.name == "error_ceiling":
        return (f"{check.result}: 5xx share {check.candidate:.4f}, at least {check.upper_bound:.4f} at confidence "
                f"1 - alpha, against the ceiling {check.margin:g}")
    if check.detail:
        return f"{check.result}: {check.detail}"
    return (f"{check.result}: candidate {check.candidate:.4f}, stable {check.stable:.4f}, difference "
            f"{check.difference:+.4f} (upper bound {check.upper_bound:+.4f}, margin {check.margin:g}), "
            f"p-value {check.p_value:.3g}")


def false_fail_probability(n_candidate: int, n_stable: int, error_share: float, latency_share: float | None,
                           policy, queue_share: float | None = None, median_share: float | None = None) -> float:
    """Return the probability that an identical build fails at these counts: for each check whose shares are equal
    on both sides, P(Z > z(1 - alpha) + margin / s), summed (a bound on their union), with the ceiling's."""
    if n_candidate <= 0 or n_stable <= 0:
        return 0.0
    critical = z_of(policy.alpha)

    def one(share: float, margin: float) -> float:
        # at the counts an identical build expects, adjusted as compare_shares adjusts them
        pc, ps = ((share * n + 1) / (n + 2) for n in (n_candidate, n_stable))
        error = math.sqrt(pc * (1 - pc) / (n_candidate + 2) + ps * (1 - ps) / (n_stable + 2))
        return upper_tail(critical + (margin - (pc - ps)) / error)

    total = one(error_share, policy.error_margin)
    for share in (latency_share, median_share):
        if share is not None:
            total += one(share, policy.latency_margin)
    if queue_share is not None:
        total += one(queue_share, policy.queue_margin)
    # the ceiling: the candidate's share, truly the stable's, bounded above the ceiling (normal approximation)
    error = math.sqrt(error_share * (1 - error_share) / n_candidate) or 1e-12
    total += upper_tail((policy.error_ceiling - error_share) / error + critical)
    return min(1.0, total)
