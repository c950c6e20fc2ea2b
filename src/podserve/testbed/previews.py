"""`make dashboards`' previews: real servers under load, a real Prometheus scraping them, one PNG per dashboard.

    python -m podserve.testbed.previews docs/dashboards

Starts three "pods" of value.py's service (two in stage hk, the grey canary), Prometheus with
the chart's rule file, sends a steady load, an overload and a quiet spell (bounded: about 80 s),
then draws each dashboard of `podserve.tooling.observability.dashboards` from range queries.
What is simulated is said in `served_pods` and `prometheus`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from podserve.testbed.prometheus import Prometheus
from podserve.testbed.served_pods import REPO, send_traffic, start_pods, stop_pods
from podserve.tooling.conf import load_conf, load_observability
from podserve.tooling.observability import dashboards, preview
from podserve.tooling.observability.queries import Selectors, expand

RULES = REPO / "charts" / "podserve-platform" / "files" / "alerts" / "serving.yaml"
LAYOUT = {"hk": 2, "grey": 1}
SCRAPE_SECONDS = 1.0
#: (seconds, clients): steady load, overload (503s), steady again.
PHASES = ((30, 3), (20, 24), (20, 3))


def dashboard_variables(prom: Prometheus) -> dict[str, str]:
    """Every variable at "All", the service at the first one Prometheus knows."""
    services = sorted({r["metric"]["service"] for r in prom.query("podserve_max_batch_size")})
    if not services:
        raise RuntimeError("Prometheus has no podserve_max_batch_size: no server was scraped")
    return {"cluster": ".*", "stage": ".*", "namespace": ".*", "pod": ".*", "service": services[0],
            "datasource": "prometheus"}


#: Bar gauges and stats are instant queries at the end; they rate over the last 16 s, as Grafana would with a 15 s $__interval.
INSTANT_INTERVAL_SECONDS = 15.0


def make_fetch(prom: Prometheus, variables: dict, start: float, end: float, step: float):
    def fetch(expr: str, instant: bool):
        if instant:
            query = expand(expr, variables, INSTANT_INTERVAL_SECONDS, SCRAPE_SECONDS, end - start)
            return [(r["metric"], [end], [float(r["value"][1])]) for r in prom.query(query, at=end)]
        query = expand(expr, variables, step, SCRAPE_SECONDS, end - start)
        return [(r["metric"], [float(t) for t, _ in r["values"]], [float(v) for _, v in r["values"]])
                for r in prom.query_range(query, start, end, step)]
    return fetch


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/dashboards")
    obs = load_observability()
    models = dashboards.build(obs, Selectors.from_conf(obs, load_conf()))
    with tempfile.TemporaryDirectory(prefix="podserve-previews-") as tmp:
        workdir = Path(tmp)
        pods = start_pods(workdir, LAYOUT)
        prom = None
        try:
            prom = Prometheus(workdir / "prometheus", [p.target for p in pods], [RULES],
                              scrape_interval=f"{int(SCRAPE_SECONDS)}s").start()
            prom.wait_for("podserve_max_batch_size")
            start = time.time()
            for seconds, clients in PHASES:
                counts = send_traffic(pods, seconds, clients)
                print(f"{seconds}s with {clients} clients: {dict(sorted(counts.items()))}")
            end = time.time()
            time.sleep(3)  # the last scrapes and rule evaluations
            variables = dashboard_variables(prom)
            fetch = make_fetch(prom, variables, start, end, 2.0)
            for name, model in models.items():
                path = out / f"{name}.png"
                found = preview.draw(model, fetch, path, f"{len(pods)} local servers under load, "
                                     f"{int(end - start)} s, real Prometheus data")
                empty = sorted(title for title, n in found.items() if n == 0)
                print(f"wrote {path}: {sum(1 for n in found.values() if n)} of {len(found)} panels with data"
                      + (f"; empty (no such exporter here): {', '.join(empty)}" if empty else ""))
        finally:
            if prom is not None:
                prom.stop()
            stop_pods(pods)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
