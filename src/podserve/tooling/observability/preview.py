"""Draw a PNG preview of a dashboard from query results: one simple chart per panel, laid out as the dashboard is.

Not Grafana: lines for time series, horizontal bars for bar gauges, a number for stats, so a person
can see what each panel will show. `draw(dashboard, fetch, path)` asks `fetch(expr, instant)` for
each target (variables already expanded by the caller) and writes the PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: fetch(expr, instant) -> [(legend labels, [times], [values])]; an instant query gives one value each.
Fetch = Callable[[str, bool], list[tuple[dict, list[float], list[float]]]]
UNIT_LABELS = {"reqps": "req/s", "percentunit": "share", "s": "seconds", "bytes": "bytes", "percent": "%",
               "short": "", "none": ""}


def legend_of(fmt: str, labels: dict) -> str:
    """Fill a Grafana legend format ({{label}}) from a series' labels."""
    if fmt in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def per_bucket(series):
    """Cumulative histogram buckets (one series per `le`) -> one series per bucket, smallest first."""
    ordered = sorted(series, key=lambda s: float(s[0].get("le", "inf")))
    out, previous = [], None
    for labels, times, values in ordered:
        own = values if previous is None else [v - p for v, p in zip(values, previous)]
        out.append(({**labels, "le": "<= " + labels.get("le", "")}, times, own))
        previous = values
    return out


def draw(model: dict, fetch: Fetch, path: Path, subtitle: str = "") -> dict[str, int]:
    """Write the preview PNG; return, per panel title, how many series had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = model["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.75, 0.42
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 0.8), dpi=60)
    fig.suptitle(f"{model['title']} (preview{': ' + subtitle if subtitle else ''})", fontsize=14, x=0.01, ha="left")
    top = 1 - 0.8 / (rows * unit_h + 0.8)
    found: dict[str, int] = {}
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        bottom = top * (1 - (g["y"] + g["h"]) / rows)
        height = top * g["h"] / rows
        if panel["type"] == "row":
            fig.text(0.005, bottom + height / 2, panel["title"], fontsize=12, weight="bold", va="center")
            continue
        ax = fig.add_axes((left + 0.012 + 0.02 * width, bottom + 0.12 * height, 0.95 * width - 0.02, 0.7 * height))
        ax.set_title(panel["title"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        series = []
        for target in panel["targets"]:
            found_series = fetch(target["expr"], target.get("instant", False))
            if target.get("format") == "heatmap":
                found_series = per_bucket(found_series)
            for labels, times, values in found_series:
                series.append((legend_of(target.get("legendFormat", ""), labels), times, values))
        found[panel["title"]] = len(series)
        if not series:
            ax.text(0.5, 0.5, "no data here\n(not exported by this stand-in)", ha="center", va="center",
                    fontsize=8, color="grey", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if panel["type"] == "timeseries":
            start = min(t[0] for _, t, _ in series if t)
            for name, times, values in series[:12]:
                ax.plot([t - start for t in times], values, linewidth=1, label=name)
            ax.set_xlabel("seconds", fontsize=7)
            ax.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=7)
            ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.5)
        elif panel["type"] == "bargauge":
            names = [name for name, _, _ in series][:10][::-1]
            values = [v[-1] if v else 0 for _, _, v in series][:10][::-1]
            ax.barh(range(len(values)), values, color="tab:green", alpha=0.6)
            for i, (name, value) in enumerate(zip(names, values)):
                ax.text(0, i, f" {name}: {value:.3g}", va="center", fontsize=7, transform=ax.transData)
            ax.set_yticks([])
            ax.set_xlabel(UNIT_LABELS.get(unit, unit), fontsize=7)
        else:  # stat
            text = "  ".join(f"{name}: {v[-1]:g}" for name, _, v in series if v)
            ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=16, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return found
