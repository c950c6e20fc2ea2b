"""Grafana JSON pieces: panels, targets, variables and the dashboard around them (schema of Grafana 11.6)."""

from __future__ import annotations

from dataclasses import dataclass, field

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 41
WIDTH = 24


@dataclass
class Target:
    """One Prometheus query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"

    def to_json(self, ref_id: str) -> dict:
        target = {"datasource": DATASOURCE, "editorMode": "code", "expr": self.expr, "format": self.format,
                  "legendFormat": self.legend or "__auto", "range": not self.instant, "instant": self.instant,
                  "refId": ref_id}
        return target


@dataclass
class Panel:
    """A panel: kind (timeseries, stat, bargauge), title, unit, queries and its width and height on the grid."""

    kind: str
    title: str
    unit: str
    targets: list[Target]
    description: str = ""
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    thresholds: list[tuple[str, float | None]] = field(default_factory=lambda: [("green", None)])

    def options(self) -> dict:
        legend = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
        reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
        if self.kind == "timeseries":
            return {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
        if self.kind == "stat":
            return {"graphMode": "area", "colorMode": "value", "justifyMode": "auto", "textMode": "auto",
                    "wideLayout": True, "showPercentChange": False, "reduceOptions": reduce,
                    "percentChangeColorMode": "standard", "orientation": "auto"}
        if self.kind == "bargauge":
            return {"displayMode": "gradient", "valueMode": "color", "namePlacement": "auto", "showUnfilled": True,
                    "sizing": "auto", "minVizWidth": 8, "minVizHeight": 16, "maxVizHeight": 300,
                    "legend": {**legend, "showLegend": False}, "reduceOptions": reduce, "orientation": "horizontal"}
        raise ValueError(f"panel kind {self.kind!r} is not one of timeseries, stat, bargauge")

    def custom(self) -> dict:
        if self.kind == "timeseries":
            return {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                    "spanNulls": False, "axisSoftMin": 0}
        return {}

    def to_json(self, panel_id: int, x: int, y: int) -> dict:
        defaults: dict = {"unit": self.unit, "thresholds": {"mode": "absolute", "steps": [
            {"color": color, "value": value} for color, value in self.thresholds]}}
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        custom = self.custom()
        if custom:
            defaults["custom"] = custom
        return {"type": self.kind, "id": panel_id, "title": self.title, "description": self.description,
                "datasource": DATASOURCE, "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
                "targets": [t.to_json(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
                "fieldConfig": {"defaults": defaults, "overrides": []}, "options": self.options()}


@dataclass
class Row:
    title: str
    panels: list[Panel]


def datasource_variable() -> dict:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "prometheus"}, "hide": 0, "regex": "", "options": []}


def query_variable(name: str, label: str, query: str, *, multi: bool, include_all: bool,
                   all_value: str | None = None, hide: int = 0) -> dict:
    """A variable filled from `label_values(...)`; with `all_value` None, "All" means every listed value."""
    variable = {"type": "query", "name": name, "label": label, "datasource": DATASOURCE,
                "query": query, "definition": query, "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all,
                "hide": hide, "regex": "", "options": [],
                "current": {"text": "All", "value": "$__all"} if include_all else {"text": "", "value": ""}}
    if all_value is not None:
        variable["allValue"] = all_value
    return variable


def dashboard(uid: str, title: str, description: str, rows: list[Row], variables: list[dict],
              annotations: list[dict] = (), tags=("podserve",), links: list[dict] = ()) -> dict:
    """Lay the rows out top to bottom (panels left to right, wrapping at 24 columns) and wrap them in a dashboard."""
    panels, y, next_id = [], 0, 1
    for row in rows:
        panels.append({"type": "row", "id": next_id, "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        next_id, y, x, row_height = next_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            panels.append(panel.to_json(next_id, x, y))
            next_id, x, row_height = next_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}
    return {"uid": uid, "title": title, "description": description, "tags": list(tags), "timezone": "browser",
            "editable": False, "graphTooltip": 1, "time": {"from": "now-3h", "to": "now"}, "refresh": "1m",
            "schemaVersion": SCHEMA_VERSION, "version": 1, "links": list(links), "panels": panels,
            "templating": {"list": variables}, "annotations": {"list": [builtin, *annotations]}}
