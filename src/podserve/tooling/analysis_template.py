"""The verdict as Argo Rollouts runs it: AnalysisTemplate metrics that judge a candidate against stable.

One statistic for grey and every canary step, rendered per service and stage (value.py's tighter thresholds are
numbers in it). Argo compares two sides only inside one query, so each check is one PromQL query over both sides'
series, told apart by the pod template hash Argo passes as arguments (`canary-hash`, `stable-hash`; the PodMonitor
copies the pod label rollouts-pod-template-hash onto every series as rollouts_pod_template_hash), and returns the
counts in a fixed order ([x_c, n_c, x_s, n_s, seconds, ...]: a chain of `or`, which keeps its left side first); the
statistic is the metric's success and failure conditions, Argo's own expression language, and the counts are the
measurement's value in the AnalysisRun (what a notification quotes). Why not Argo's web provider, a Job or an
Experiment: a web or Job provider runs code of the template's choosing with the controller's reach (the admission
policies refuse both for teams), and an Experiment starts a baseline copy of stable, pods and GPUs the quota must
hold for nothing: stable is the baseline.

- The window grows: each measurement counts both sides over the same moments, the last `span` seconds in which the
  candidate had a scraped pod (a subquery at the scrape interval, masked by the candidate's `up`), so a measurement
  after an inconclusive one judges the grown sample, never a fresh window. Once that sample spans the whole `span`
  (1 + max_extensions windows) and a check is still not a pass, it fails: an extension cannot grow it any more. A
  step's analysis passes at its first passing measurement (consecutiveSuccessLimit 1) and fails at its first failing
  one (failureLimit 0).
- Margins are relative to stable with an absolute floor: the candidate's share may exceed stable's share p by
  max(floor, relative_margin x p). With d the difference of the two shares (one success and one failure added to
  each side, Agresti and Caffo) and s its standard error: fail when (d - margin) / s > z(1 - alpha); pass when
  d + z(1 - alpha) s <= margin and both sides counted at least min_requests; else inconclusive.
- Checks: errors (the 5xx share; and a candidate whose 5xx share is surely above error_ceiling fails whatever stable
  does), latency (the share of 2xx answers above B, the bucket where stable reaches latency_quantile of its own; and
  a candidate surely worse above M, the bucket where stable reaches half of its answers, fails too: the buckets
  double, so a build 20 ms slower whose tail stays inside B's bucket, stable's p90 at 30 ms and B at 50 ms, still
  moves most of its answers past M), queue wait (the same on the queue-wait histogram, judged only while the two
  sides' per-pod rates are within comparable_rate_ratio of each other: waits grow with load, not only with the build).
- Only callers' requests count: `origin="live"` on both sides of a canary (there is no header route into a canary; the
  server knows no origin for smoke yet, so a smoke job's requests to production count as a caller's), `origin="mirror"`
  on grey's side (copies of hk's callers' requests: grey's smoke and direct /grey/ requests out). Every selector names
  the namespace, the team and the service.
- Prometheus unreachable or failing is a measurement Error, apart from inconclusive: Argo retries it every 10 s and
  the run errors (the Rollout aborts) after consecutiveErrorLimit errors in a row, its message naming the address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from podserve import metric_names as m
from podserve.tooling import release

#: The pod label Argo gives a Rollout's pods, and the series label the PodMonitor copies it to.
HASH_POD_LABEL = "rollouts-pod-template-hash"
HASH_SERIES_LABEL = "rollouts_pod_template_hash"
#: The template's arguments: the pod template hashes Argo resolves (valueFrom.podTemplateHashValue).
CANARY_HASH_ARG, STABLE_HASH_ARG = "canary-hash", "stable-hash"
#: The checks, each an Argo metric of the template, and what each measurement's value lists, in order.
CHECKS = ("errors", "latency", "queue-wait")
COUNTS = ("candidate_judged", "candidate_all", "stable_judged", "stable_all", "seconds")
LATENCY_COUNTS = (*COUNTS, "candidate_above_median", "stable_above_median")
QUEUE_COUNTS = (*COUNTS, "candidate_pod_rate", "stable_pod_rate")
#: What each check's measurement lists, in order.
COUNTS_OF = {"errors": COUNTS, "latency": LATENCY_COUNTS, "queue-wait": QUEUE_COUNTS}
#: M: the latency check's second bound, the bucket where stable reaches this share of its 2xx answers.
MEDIAN = 0.5
#: A Prometheus error retried this many times in a row before the run errors, ERROR_RETRY_SECONDS apart (Argo's own
#: interval for a measurement in error, not configurable).
CONSECUTIVE_ERROR_LIMIT = 4
ERROR_RETRY_SECONDS = 10
PROMETHEUS_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class Side:
    """The series of one side: their labels (a PromQL matcher list, without braces), the origin its requests count
    with, and its scrape targets' labels (for `up`)."""

    labels: str
    origin: str
    targets: str

    def requests(self, status: str = "") -> str:
        extra = f', status=~"{status}"' if status else ""
        return f'{{{self.labels}, {m.ORIGIN_LABEL}="{self.origin}", route!="{m.OTHER_ROUTE}"{extra}}}'

    def stage(self) -> str:
        return f"{{{self.labels}}}"


@dataclass(frozen=True)
class Thresholds:
    """What the checks hold a candidate to (conf/deploy.yaml `verdict`, value.py's tighter fields)."""

    alpha: float
    relative_margin: float
    error_floor: float
    error_ceiling: float
    latency_quantile: float
    latency_floor: float
    queue_floor: float
    comparable_rate_ratio: float
    min_requests: int
    window_seconds: int
    max_extensions: int

    @classmethod
    def of(cls, policy) -> "Thresholds":
        """From a VerdictPolicy (release.verdict_policy: the platform's with value.py's tighter ones; value.py's
        verdict_error_margin and verdict_latency_margin lower the floors when below them)."""
        found = {f: getattr(policy, f) for f in cls.__dataclass_fields__}
        found["error_floor"] = min(policy.error_floor, policy.error_margin)
        found["latency_floor"] = min(policy.latency_floor, policy.latency_margin)
        return cls(**found)

    @property
    def span_seconds(self) -> int:
        """The longest sample one step judges: its first window and every extension."""
        return self.window_seconds * (1 + self.max_extensions)

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1 - self.alpha)


# --- the counts: both sides over the moments the candidate was scraped -----------------------------------------

@dataclass(frozen=True)
class Comparison:
    """A candidate and a stable side, the thresholds, the scrape interval (the subqueries' resolution), and the
    moment (Unix seconds) before which nothing counts, if any (grey's run: its pod ran before it was judged)."""

    candidate: Side
    stable: Side
    thresholds: Thresholds
    scrape_seconds: int
    since: int | None = None

    @property
    def mask(self) -> str:
        """1 at the moments a candidate pod was scraped (and, with `since`, from then on: time() inside a subquery is
        each step's own moment)."""
        scraped = f"(count(up{{{self.candidate.targets}}} == 1) > 0)"
        if self.since is None:
            return scraped
        # a moment counts the increase over the scrape interval before it: the first is one interval after `since`
        return f"({scraped} and on() (vector(time()) >= {self.since + self.scrape_seconds}))"

    def _over_window(self, vector_expr: str, by: str = "") -> str:
        span, step = self.thresholds.span_seconds, self.scrape_seconds
        if by:
            return (f"(sum by ({by}) (sum_over_time((sum by ({by}) ({vector_expr}) and on() {self.mask})"
                    f"[{span}s:{step}s])) * {step})")
        return (f"(sum_over_time(((sum({vector_expr}) or on() vector(0)) and on() {self.mask})[{span}s:{step}s])"
                f" * {step})")

    def increase(self, series: str) -> str:
        """A counter's per-second increase over the last scrape interval: its sample minus the one an interval before
        (a counter reset counts as nothing). Summed over the judged moments these telescope to exactly the counter's
        increase over them; a rate over a fixed range would divide a young pod's first samples by the whole range
        (its first minute counted at a fraction: on the real node, a step's canary at 1/20 of its requests)."""
        step = self.scrape_seconds
        return f"(clamp_min({series} - {series} offset {step}s, 0) / {step})"

    def count(self, metric: str, selector: str) -> str:
        """A counter's increase over the judged moments, a scalar."""
        return f"scalar({self._over_window(self.increase(metric + selector))} or vector(0))"

    def seconds(self) -> str:
        """How long the sample is: the judged moments at which the candidate answered callers. Not every moment it was
        scraped: a canary pod is ready (and scraped) before Argo's weight reaches it, and counting that idle time made
        the first measurement a full sample, judged without an extension on its first seconds of traffic."""
        span, step = self.thresholds.span_seconds, self.scrape_seconds
        serving = f"(sum({self.increase(m.REQUESTS_TOTAL + self.candidate.requests())}) > 0)"
        return f"scalar(count_over_time(({self.mask} and on() {serving})[{span}s:{step}s]) * {step} or vector(0))"

    def above(self, metric: str, candidate_sel: str, stable_sel: str, quantiles: tuple[float, ...]
              ) -> tuple[str, str, list[tuple[str, str]]]:
        """(n_c, n_s, [(x_c, x_s) for each quantile]): each side's count in all and above the bucket where stable's
        cumulative share first reaches that quantile (scalars)."""
        cand = self._over_window(self.increase(f"{metric}_bucket{candidate_sel}"), by="le")
        stab = self._over_window(self.increase(f"{metric}_bucket{stable_sel}"), by="le")
        inf = 'label_replace(vector(1), "le", "+Inf", "", "")'
        n_c, n_s = (f"scalar(sum({side} and on(le) {inf}) or vector(0))" for side in (cand, stab))
        found = []
        for quantile in quantiles:
            # (less a hair: the counts are sums of rates, and a share of exactly the quantile must count as reaching it)
            eligible = f"({stab} / {n_s} >= {quantile - 1e-9!r})"
            below_c, below_s = (f"scalar(min({side} and on(le) {eligible}) or vector(0))" for side in (cand, stab))
            found.append((f"({n_c} - {below_c})", f"({n_s} - {below_s})"))
        return n_c, n_s, found

    def pod_rate(self, side: Side) -> str:
        span, step = self.thresholds.span_seconds, self.scrape_seconds
        pods = f"scalar(max_over_time((count(up{{{side.targets}}} == 1))[{span}s:{step}s]) or vector(1))"
        return f"({self.count(m.REQUESTS_TOTAL, side.requests())} / {pods} / {span})"

    # -- the queries: counts in a fixed order --

    def errors_query(self) -> str:
        return ordered([self.count(m.REQUESTS_TOTAL, self.candidate.requests("5..")),
                        self.count(m.REQUESTS_TOTAL, self.candidate.requests()),
                        self.count(m.REQUESTS_TOTAL, self.stable.requests("5..")),
                        self.count(m.REQUESTS_TOTAL, self.stable.requests()), self.seconds()])

    def latency_query(self) -> str:
        n_c, n_s, ((x_c, x_s), (m_c, m_s)) = self.above(m.REQUEST_SECONDS, self.candidate.requests("2.."),
                                                        self.stable.requests("2.."),
                                                        (self.thresholds.latency_quantile, MEDIAN))
        return ordered([x_c, n_c, x_s, n_s, self.seconds(), m_c, m_s])

    def queue_query(self) -> str:
        n_c, n_s, ((x_c, x_s),) = self.above(m.QUEUE_WAIT_SECONDS, self.candidate.stage(), self.stable.stage(),
                                             (self.thresholds.latency_quantile,))
        return ordered([x_c, n_c, x_s, n_s, self.seconds(), self.pod_rate(self.candidate),
                        self.pod_rate(self.stable)])


def ordered(scalars: list[str]) -> str:
    """One instant vector of the scalars in this order (distinct `i` labels; `or` keeps its left side first)."""
    return " or ".join(f'label_replace(vector({expr}), "i", "{index}", "", "")' for index, expr in enumerate(scalars))


# --- the statistic: Argo's conditions on a measurement's counts ----------------------------------------------------

def _bindings(t: Thresholds, floor: float, names=COUNTS) -> str:
    lets = "".join(f"let {name} = result[{index}]; " for index, name in enumerate(names))
    return (lets + "let pc = (candidate_judged + 1) / (candidate_all + 2); "
            "let ps = (stable_judged + 1) / (stable_all + 2); let d = pc - ps; "
            "let se = (pc * (1 - pc) / (candidate_all + 2) + ps * (1 - ps) / (stable_all + 2)) ** 0.5; "
            f"let margin = max({floor!r}, {t.relative_margin!r} * ps); "
            f"let enough = candidate_all >= {t.min_requests} && stable_all >= {t.min_requests}; "
            f"let passes = enough && d + {t.z!r} * se <= margin; "
            f"let worse = (d - margin) / se > {t.z!r}; ")


def _worse_at_median(t: Thresholds, floor: float) -> str:
    """The latency check's second bound M: `worse_at_median`, the candidate's share above M surely past its margin
    (the same statistic as _bindings', on the counts above M)."""
    return ("let pcm = (candidate_above_median + 1) / (candidate_all + 2); "
            "let psm = (stable_above_median + 1) / (stable_all + 2); "
            "let sem = (pcm * (1 - pcm) / (candidate_all + 2) + psm * (1 - psm) / (stable_all + 2)) ** 0.5; "
            f"let worse_at_median = (pcm - psm - max({floor!r}, {t.relative_margin!r} * psm)) / sem > {t.z!r}; ")


#: The judged sample counts as full this many scrapes short of `span` (the subquery's edges).
SUBQUERY_EDGE_SCRAPES = 2


def conditions(check: str, t: Thresholds, scrape_seconds: int, full_sample_fails: bool = True) -> tuple[str, str]:
    """(successCondition, failureCondition) of one check. With `full_sample_fails` (a canary step, which must end)
    a sample that spans every extension and still does not pass fails; without (grey's run: nothing to abort) the
    run ends Inconclusive once its measurements are all taken."""
    full_at = t.span_seconds - SUBQUERY_EDGE_SCRAPES * scrape_seconds
    full = f" || (seconds >= {full_at} && !passes)" if full_sample_fails else ""
    if check == "errors":
        lets = _bindings(t, t.error_floor)
        ceiling = (f"let share = candidate_judged / max(candidate_all, 1); "
                   f"let over = candidate_all > 0 && share - {t.z!r} * (share * (1 - share) / max(candidate_all, 1)) "
                   f"** 0.5 > {t.error_ceiling!r}; ")
        size = len(COUNTS)
        return (f"len(result) == {size} && ({lets}{ceiling}passes && !over)",
                f"len(result) == {size} && ({lets}{ceiling}worse || over{full})")
    if check == "latency":
        lets = _bindings(t, t.latency_floor, LATENCY_COUNTS) + _worse_at_median(t, t.latency_floor)
        size = len(LATENCY_COUNTS)
        return (f"len(result) == {size} && ({lets}passes && !worse_at_median)",
                f"len(result) == {size} && ({lets}worse || worse_at_median{full})")
    if check == "queue-wait":
        lets = _bindings(t, t.queue_floor, QUEUE_COUNTS)
        ratio = t.comparable_rate_ratio
        comparable = (f"let comparable = candidate_pod_rate > 0 && stable_pod_rate > 0 && "
                      f"candidate_pod_rate <= {ratio!r} * stable_pod_rate && "
                      f"stable_pod_rate <= {ratio!r} * candidate_pod_rate; ")
        size = len(QUEUE_COUNTS)
        return (f"len(result) == {size} && ({lets}{comparable}!comparable || passes)",
                f"len(result) == {size} && ({lets}{comparable}comparable && "
                f"(worse{full}))")
    raise KeyError(check)


# --- the AnalysisTemplate's metrics --------------------------------------------------------------------------------

def metrics(comparison: Comparison, prometheus_address: str, slow_start_seconds: float,
            full_sample_fails: bool = True) -> list[dict]:
    """Argo metrics, one per check: the first measurement once slow start is over and one window counted, then one
    a window until the sample is full, and once more (an inconclusive on the full sample fails, with
    `full_sample_fails`; else the run ends Inconclusive)."""
    t = comparison.thresholds
    count = math.ceil(t.span_seconds / t.window_seconds) + 1
    common = {"interval": f"{t.window_seconds}s", "initialDelay": f"{int(slow_start_seconds) + t.window_seconds}s",
              "count": count, "failureLimit": 0, "inconclusiveLimit": count, "consecutiveSuccessLimit": 1,
              "consecutiveErrorLimit": CONSECUTIVE_ERROR_LIMIT}
    queries = {"errors": comparison.errors_query(), "latency": comparison.latency_query(),
               "queue-wait": comparison.queue_query()}
    found = []
    for check in CHECKS:
        success, failure = conditions(check, t, comparison.scrape_seconds, full_sample_fails)
        found.append(dict(common, name=check, successCondition=success, failureCondition=failure,
                          provider={"prometheus": {"address": prometheus_address, "query": queries[check],
                                                   "timeout": PROMETHEUS_TIMEOUT_SECONDS}}))
    return found


# --- the two comparisons the platform makes ------------------------------------------------------------------------

def _labels(namespace: str, team: str, service: str, stage: str, extra: str = "") -> str:
    return f'namespace="{namespace}", team="{team}", service="{service}", stage="{stage}"{extra}'


def _targets(namespace: str, service: str, stage: str, extra: str = "") -> str:
    return f'namespace="{namespace}", job="{namespace}/{service}", stage="{stage}"{extra}'


def canary(namespace: str, team: str, service: str, stage: str, thresholds: Thresholds, scrape_seconds: int
           ) -> Comparison:
    """A production stage's canary against its stable pods: callers' requests (origin live) on each, the pods told
    apart by the hashes Argo passes ({{args.canary-hash}}, {{args.stable-hash}})."""
    def side(arg: str) -> Side:
        hashed = f', {HASH_SERIES_LABEL}="{{{{args.{arg}}}}}"'
        return Side(_labels(namespace, team, service, stage, hashed), m.ORIGIN_LIVE,
                    _targets(namespace, service, stage, hashed))

    return Comparison(side(CANARY_HASH_ARG), side(STABLE_HASH_ARG), thresholds, scrape_seconds)


def grey(grey_namespace: str, namespace: str, team: str, service: str, stage: str, thresholds: Thresholds,
         scrape_seconds: int, since: int | None = None) -> Comparison:
    """Grey's pods on the copies hk mirrors to them (origin mirror) against `stage`'s stable pods on its callers'
    requests (origin live), counted from `since` on (the run's start: grey served, and was scraped, before). Stable's
    pods are told by `track="stable"`, the label Argo stamps on its stable ReplicaSet's pods (stableMetadata): grey's
    job runs as the preview account, which cannot read production's Rollout for its stable hash; the namespace keeps
    any other team's pods out."""
    tracked = f', {release.TRACK_LABEL}="{release.STABLE}"'
    candidate = Side(_labels(grey_namespace, team, service, "grey"), m.ORIGIN_MIRROR,
                     _targets(grey_namespace, service, "grey"))
    stable = Side(_labels(namespace, team, service, stage, tracked), m.ORIGIN_LIVE,
                  _targets(namespace, service, stage, tracked))
    return Comparison(candidate, stable, thresholds, scrape_seconds, since)
