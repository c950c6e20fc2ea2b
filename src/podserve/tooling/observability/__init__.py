"""Grafana dashboards and Prometheus rules for every podserve service, built as code.

`queries` holds the selectors and PromQL both are made of (from conf/observability.yaml and
`podserve.metric_names`), `rules` the recording and alert rules, `panels` and `dashboards`
the Grafana JSON, `preview` the PNG drawings. `python -m podserve.tooling.observability`
writes them into the platform chart (`make dashboards`).
"""
