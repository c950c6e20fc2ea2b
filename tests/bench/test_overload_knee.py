"""The overload benchmark's knee: where the capacity sweeps' own spread cannot tell throughput from the best."""

from bench.closedloop import Outcome
from bench.overload import knee_of, pooled


def _row(c: int, *window_rps: float) -> dict:
    return {"c": c, "ok_rps": sum(window_rps) / len(window_rps), "window_rps": list(window_rps)}


def test_a_concurrency_still_growing_beyond_the_spread_is_not_the_knee():
    rows = [_row(16, 970, 975), _row(32, 1180, 1190), _row(64, 1270, 1280)]
    assert knee_of(rows)["c"] == 64


def test_the_smallest_concurrency_within_the_spread_of_the_best_is_the_knee():
    rows = [_row(16, 970, 975), _row(32, 1180, 1275), _row(64, 1270, 1280)]
    assert knee_of(rows)["c"] == 32


def test_the_best_rate_need_not_be_at_the_largest_concurrency():
    rows = [_row(32, 1300, 1310), _row(64, 1250, 1260)]
    assert knee_of(rows)["c"] == 32


def test_pooled_windows_give_rates_over_their_summed_time_and_percentiles_over_all_answers():
    first = Outcome(seconds=4.0, latencies={200: [0.01] * 99, 503: [0.001]}, socket_errors=1)
    second = Outcome(seconds=4.0, latencies={200: [0.05] * 100}, missing_retry_after=2)
    total = pooled([first, second])
    assert total.rate(200) == 199 / 8.0 and total.count(503) == 1
    assert total.percentile_ms(200, 99) == 50.0 and total.percentile_ms(200, 25) == 10.0
    assert (total.socket_errors, total.missing_retry_after) == (1, 2)
