"""An overloaded pod stays honest: closed-loop callers at 4x and 16x the concurrency where throughput stops growing.

    python -m bench.overload [--out bench/results]

Our server with value.py's settings on the fast workload. First the capacity: closed-loop
windows at 4, 8, 16, 32 and 64 callers, the sweep run twice, one after the other; the knee
(where throughput stops growing) is the smallest concurrency whose better window reaches the
worse window of the best concurrency: one the two sweeps' own spread cannot tell from the
best. Then closed-loop callers at 4x and 16x the knee, each
sending its next request the moment an answer (200 or 503) arrives, ignoring Retry-After (the
worst case), then the same with callers that wait the Retry-After of a 503 (as Envoy's retry
policy does), and at 2x and 4x what the pod holds (queue_size per instance), where it must
refuse. Then the same server holding less (queue_size = the knee, or the concurrency below
it where the knee is what the pod holds), at 4x and 16x that: what holding less buys. Reported: answered (200) and refused
(503) rates and latencies, 503s without Retry-After, socket errors, and the answered p99
against the p99 at the knee. The client is `closedloop.py` (one Python thread; its CPU per
request is reported). Bounded: 21 windows of 4 s. Writes overload.json and overload.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

from podserve.metric_names import REFUSAL_RATE
from podserve.runtime.http.refusals import (BURST_SECONDS, MIN_REFUSALS_PER_SECOND, REFUSAL_CPU_SHARE,
                                            REFUSALS_PER_SECOND)

from bench.closedloop import Outcome, run_closed_loop, send_burst
from bench.loadgen import request_wires
from bench.run import machine
from bench.systems import start_ours
from bench.workloads import FAST, REPO
from podserve.tooling.serve_local import local_environment

CAPACITY_CONCURRENCIES = (4, 8, 16, 32, 64)
FACTORS = (4, 16)
WINDOW_S = 4.0
SWEEPS = 2  # capacity sweeps, one after the other: their spread is the noise the knee allows
BURST = 2000  # requests sent at once, each on its own connection


def summary(concurrency: int, outcome: Outcome, server_cpu_s: float) -> dict:
    return {"c": concurrency, "ok_rps": round(outcome.rate(200), 1), "refused_rps": round(outcome.rate(503), 1),
            "ok_p50_ms": outcome.percentile_ms(200, 50), "ok_p99_ms": outcome.percentile_ms(200, 99),
            "refused_p50_ms": outcome.percentile_ms(503, 50), "refused_p99_ms": outcome.percentile_ms(503, 99),
            "other_statuses": {str(s): outcome.count(s) for s in outcome.latencies if s not in (200, 503)},
            "socket_errors": outcome.socket_errors, "refused_without_retry_after": outcome.missing_retry_after,
            "server_cpu_ms_per_answer": round(1000 * server_cpu_s / max(1, outcome.answers), 3),
            "client_cpu_us_per_answer": round(1e6 * outcome.client_cpu_s / max(1, outcome.answers), 1)}


def measure(server, concurrency: int, honour_retry_after: bool = False) -> tuple[Outcome, float]:
    """One closed-loop window against `server`, once it holds no request from the previous one and the door's
    refusal allowance has refilled (runtime/http/refusals.py): what the callers saw, and the server's CPU seconds."""
    server.wait_idle()
    time.sleep(BURST_SECONDS)
    wires = request_wires(server.path, f"127.0.0.1:{server.port}", FAST.images())
    cpu = server.cpu_seconds()
    outcome = run_closed_loop("127.0.0.1", server.port, wires, concurrency, WINDOW_S,
                              honour_retry_after=honour_retry_after)
    return outcome, server.cpu_seconds() - cpu


def window(server, concurrency: int, honour_retry_after: bool = False) -> dict:
    """One measured window, summarised, with the refusal rate the door had come to by its end."""
    row = summary(concurrency, *measure(server, concurrency, honour_retry_after))
    row["door_refusal_rate"] = server.gauge(REFUSAL_RATE)
    print(json.dumps(row), flush=True)
    return row


def pooled(outcomes: list[Outcome]) -> Outcome:
    """The answers of several windows as one: rates over their summed time, percentiles over all latencies."""
    total = Outcome()
    for outcome in outcomes:
        total.seconds += outcome.seconds
        for status, latencies in outcome.latencies.items():
            total.latencies.setdefault(status, []).extend(latencies)
        total.socket_errors += outcome.socket_errors
        total.missing_retry_after += outcome.missing_retry_after
        total.client_cpu_s += outcome.client_cpu_s
    return total


def capacity(server) -> list[dict]:
    """The capacity sweep, run SWEEPS times one after the other: per concurrency, the windows pooled, with each
    window's answered rate (`window_rps`)."""
    windows: dict[int, list[tuple[Outcome, float]]] = {c: [] for c in CAPACITY_CONCURRENCIES}
    for _ in range(SWEEPS):
        for c in CAPACITY_CONCURRENCIES:
            windows[c].append(measure(server, c))
            print(json.dumps({"c": c, "window_rps": round(windows[c][-1][0].rate(200), 1)}), flush=True)
    rows = []
    for c, measured in windows.items():
        row = summary(c, pooled([outcome for outcome, _ in measured]), sum(cpu for _, cpu in measured))
        row["window_rps"] = [round(outcome.rate(200), 1) for outcome, _ in measured]
        rows.append(row)
    return rows


def knee_of(rows: list[dict]) -> dict:
    """Where throughput stops growing: the smallest concurrency whose better window reaches the worse window of
    the concurrency with the best pooled rate (the sweeps' own spread cannot tell it from the best)."""
    best = max(rows, key=lambda row: row["ok_rps"])
    return next(row for row in rows if max(row["window_rps"]) >= min(best["window_rps"]))


def overload_row(row: dict, knee: dict, load: str) -> dict:
    row["load"] = load
    row["ok_p99_over_knee_p99"] = round(row["ok_p99_ms"] / knee["ok_p99_ms"], 2) if row["ok_p99_ms"] else None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {"command": os.environ.get("BENCH_COMMAND", "python -m bench.overload"),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(len(os.sched_getaffinity(0))), "capacity": [], "overload": []}
    env = local_environment(str(REPO / "value.py"), {})
    holds = int(env["PODSERVE_QUEUE_SIZE"]) * int(env["PODSERVE_INS_NUM_PER_GPU"])
    results["holds"] = holds
    results["instances"] = int(env["PODSERVE_INS_NUM_PER_GPU"])
    server = start_ours("ours", FAST, out / "logs")
    try:
        server.wait_ready()
        results["setup"] = server.setup
        window(server, 8)  # warm-up, not recorded
        results["capacity"] = capacity(server)
        knee = results["knee"] = knee_of(results["capacity"])
        for factor in FACTORS:
            results["overload"].append(overload_row(window(server, factor * knee["c"]), knee, f"{factor}x knee"))
        for factor in FACTORS:
            results["overload"].append(overload_row(window(server, factor * knee["c"], honour_retry_after=True), knee,
                                                    f"{factor}x knee, callers wait Retry-After"))
        for factor in (2, 4):
            results["overload"].append(overload_row(window(server, factor * holds), knee, f"{factor}x what it holds"))
        server.wait_idle()
        time.sleep(BURST_SECONDS)
        burst = send_burst("127.0.0.1", server.port,
                           request_wires(server.path, f"127.0.0.1:{server.port}", FAST.images()), BURST)
        results["burst"] = {"requests": BURST, "answered": burst.count(200), "refused": burst.count(503),
                            "other": burst.answers - burst.count(200) - burst.count(503),
                            "socket_errors": burst.socket_errors, "refused_without_retry_after": burst.missing_retry_after,
                            "last_answer_s": round(max(max(v) for v in burst.latencies.values()), 3),
                            "last_503_s": round(max(burst.latencies.get(503, [0])), 3),
                            "client_send_s": round(burst.send_seconds, 3)}
        print(json.dumps(results["burst"]), flush=True)
    finally:
        results["exit_code"] = server.stop()
    smaller = knee["c"] if knee["c"] < holds else max((c for c in CAPACITY_CONCURRENCIES if c < holds), default=holds)
    results["smaller_hold"] = {"queue_size": smaller, "rows": []}
    server = start_ours("ours, queue_size = knee", FAST, out / "logs", {"PODSERVE_QUEUE_SIZE": str(smaller)})
    try:
        server.wait_ready()
        window(server, 8)  # warm-up, not recorded
        own_knee = window(server, smaller)
        results["smaller_hold"]["knee"] = own_knee
        for factor in FACTORS:
            results["smaller_hold"]["rows"].append(
                overload_row(window(server, factor * smaller), own_knee, f"{factor}x {smaller}"))
    finally:
        server.stop()
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    (out / "overload.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "overload.md").write_text(markdown(results))
    print(f"wrote {out / 'overload.json'} and {out / 'overload.md'} in {results['wall_seconds']:.0f}s")
    return 0


HEADER = ("| c | load | answered req/s | answered p50 ms | answered p99 ms | p99 / knee p99 | refused (503) req/s | "
          "503 p50 ms | 503 p99 ms | 503 without Retry-After | socket errors | server CPU ms/answer | door's rate /s |")
RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"


def _row(row: dict) -> str:
    windows = " and ".join(f"{rps}" for rps in row.get("window_rps", []))
    load = row.get("load") or ("capacity, windows " + windows if windows else "capacity")
    return (f"| {row['c']} | {load} | {row['ok_rps']} | {row['ok_p50_ms']} | {row['ok_p99_ms']} | "
            f"{row.get('ok_p99_over_knee_p99', '')} | {row['refused_rps']} | {row['refused_p50_ms']} | "
            f"{row['refused_p99_ms']} | {row['refused_without_retry_after']} | {row['socket_errors']} | "
            f"{row['server_cpu_ms_per_answer']} | {row.get('door_refusal_rate') or ''} |")


def markdown(results: dict) -> str:
    m, knee, holds = results["machine"], results["knee"], results["holds"]
    smaller = results["smaller_hold"]
    lines = ["# Overload: closed-loop callers at 4x and 16x the pod's capacity", "",
             f"- Command: `{results['command']}` (wall time {results['wall_seconds']:.0f} s); date {results['date']}",
             f"- Machine: {m['cpu']}, {m['cores']} cores; load average at start {m['load_average_at_start']} "
             f"(a shared machine: other jobs ran beside it)",
             f"- Server: ours, value.py's settings ({results['setup']}; it holds queue_size x instances = {holds} "
             f"requests), fast workload ({FAST.title}); client: bench/closedloop.py, closed loop; each caller "
             f"retries at once, ignoring Retry-After (the worst case), except in the rows marked 'callers wait "
             f"Retry-After', where a caller answered 503 waits the 1 s it asks before its next request", "",
             f"Capacity: throughput stops growing at **c={knee['c']}** ({knee['ok_rps']} req/s, p99 "
             f"{knee['ok_p99_ms']} ms; the capacity sweep ran {SWEEPS} times one after the other, each row pools its "
             f"windows, and the knee is the smallest concurrency whose better window reaches the worse window of "
             f"the best: one the sweeps' own spread cannot tell from the best). Where 4x and 16x the knee are no more than the {holds} requests the pod "
             f"holds, nothing is refused and the answered latency grows as Little's law says (callers / throughput); "
             f"beyond what it holds, the pod refuses at the door.", "",
             HEADER, RULE]
    lines += [_row(row) for row in results["capacity"] + results["overload"]]
    lines += ["", "The goal (issue 13): at 4x and 16x the knee, the answered p99 within 2x the knee's p99. "
              + "; ".join(f"{row['load']}: {row['ok_p99_over_knee_p99']}x "
                          f"({'met' if (row['ok_p99_over_knee_p99'] or 99) <= 2.0 else 'missed'})"
                          for row in results["overload"] if "knee" in row["load"]) + "."]
    below = [row for row in results["capacity"] if row["c"] < knee["c"]]
    if below:
        lower = below[-1]
        lines += ["", f"Against the p99 at c={lower['c']} instead ({lower['ok_p99_ms']} ms, where throughput was "
                  f"{lower['ok_rps'] / knee['ok_rps']:.2f}x the knee's and still growing): "
                  + "; ".join(f"{row['load']}: {row['ok_p99_over_knee_p99'] * knee['ok_p99_ms'] / lower['ok_p99_ms']:.2f}x"
                              for row in results["overload"] if "knee" in row["load"] and row["ok_p99_ms"])
                  + f". Holding {holds}, an answered request waits by Little's law about {holds / lower['c']:.1f}x "
                  f"what it waits with {lower['c']} callers; the section below measures holding less."]
    b = results.get("burst")
    if b:
        lines += ["", f"A burst of {b['requests']} requests at once, each on its own connection: {b['answered']} "
                  f"answered (200), {b['refused']} refused (503, the last after {b['last_503_s']} s), {b['other']} other, "
                  f"{b['socket_errors']} socket errors, {b['refused_without_retry_after']} 503s without Retry-After; "
                  f"the whole burst answered after {b['last_answer_s']} s (before issue 13: all 2,000 answered, the "
                  f"last after 3.4 s, queued where no deadline ran). The client sent them all in "
                  f"{b.get('client_send_s', '?')} s; the pod's event loop, sharing one GIL with the request threads "
                  f"that serve the admitted requests, reads and refuses them one by one, and those it reads after "
                  f"room has freed up are admitted, so the split varies from run to run (64 answered and the last "
                  f"503 after about 0.2 s on a good pass, several hundred answered on others)."]
    what = "the knee" if smaller["queue_size"] == knee["c"] else "the concurrency below the knee"
    lines += ["", f"The same server holding less: queue_size = {smaller['queue_size']} ({what}), against the p99 at "
              f"c={smaller['queue_size']} measured on it:", "", HEADER, RULE]
    lines += [_row(row) for row in [smaller["knee"]] + smaller["rows"]]
    lines += ["", f"Holding {smaller['queue_size']} instead of {holds} shortens the answered latency under "
                  f"overload, but such a pod refuses callers at any concurrency above {smaller['queue_size']}, the "
                  f"benchmark's c=64 included; value.py keeps queue_size = {holds // max(1, results.get('instances', 1))} "
                  f"so that a pod answers 64 concurrent callers in full."]
    lines += ["", "What bounds the answered p99 under overload, measured in the rows above: the pod holds a fixed "
              "number of requests, so an answered one waits (held requests) / (answered per second) by Little's "
              f"law: holding {holds} requests where the knee is {knee['c']} callers, it waits about "
              f"{holds / knee['c']:.1f}x what it waits at the knee, the tail with it. Callers retrying at once, "
              "ignoring Retry-After, would turn every CPU cycle the model leaves free into refusals, each read, "
              "parsed and answered by the event loop holding the GIL (bench/optimisations.json, before the pacing: "
              "14,000-17,000 refusals/s, "
              "the answered rate down to 0.14-0.26x the knee's, answered p99 6-11x); the door sends refusals at "
              f"once within {REFUSAL_CPU_SHARE} of a core by the CPU it measures one to cost its event loop "
              f"({MIN_REFUSALS_PER_SECOND:.0f}-{REFUSALS_PER_SECOND:.0f} a second; the rate it had come to at the "
              "end of each window is the table's last column) and holds the rest back in order "
              "(runtime/http/refusals.py), so they take a bounded share of the CPU:"]
    lines += [f"- {line}" for line in refusal_costs(knee, results["overload"])]
    return "\n".join(lines) + "\n"


def refusal_costs(knee: dict, rows: list[dict]) -> list[str]:
    """Per overload row: the server CPU one refusal cost (its CPU beyond what the answered requests cost at the
    knee), the cores refusals and the client took, and the answered rate left."""
    lines = []
    for row in rows:
        answered, refused = row["ok_rps"], row["refused_rps"]
        if not refused:
            continue
        server_cores = row["server_cpu_ms_per_answer"] * (answered + refused) / 1000
        refusal_cores = max(0.0, server_cores - answered * knee["server_cpu_ms_per_answer"] / 1000)
        client_cores = row["client_cpu_us_per_answer"] * (answered + refused) / 1e6
        lines.append(f"c={row['c']}: {refused:.0f} refusals/s at {1e6 * refusal_cores / refused:.0f} us of server "
                     f"CPU each took {refusal_cores:.2f} cores, the client {client_cores:.2f}; {answered:.0f} "
                     f"answered/s remained ({answered / knee['ok_rps']:.2f}x the knee's rate)")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
