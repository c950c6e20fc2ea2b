"""Lint rules in the spirit of grafana/dashboard-linter, re-implemented (its binary cannot be installed here).

Each rule returns problems as "<panel title>: <what is wrong>"; an empty list passes.
"""

from __future__ import annotations

import re

#: A metric selector: name{matchers}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}")
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\(\s*[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^{}]*\})?\[([^\]]+)\]")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
DATASOURCE_UID = "${datasource}"


def panels(model: dict) -> list[dict]:
    return [p for p in model["panels"] if p["type"] != "row"]


def datasource_variable(model: dict) -> list[str]:
    variables = model["templating"]["list"]
    found = [v for v in variables if v["type"] == "datasource" and v.get("query") == "prometheus"]
    problems = [] if found else ["dashboard: no `datasource` variable of type datasource (prometheus)"]
    for v in variables:
        if v["type"] == "query" and v.get("datasource", {}).get("uid") != DATASOURCE_UID:
            problems.append(f"variable {v['name']}: does not query through ${{datasource}}")
    return problems


def titles_units_datasources(model: dict) -> list[str]:
    problems, seen = [], set()
    for p in panels(model):
        title = p.get("title", "").strip()
        if not title:
            problems.append(f"panel {p['id']}: no title")
        if title in seen:
            problems.append(f"{title}: the title is used twice")
        seen.add(title)
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{title}: no unit")
        if p.get("datasource", {}).get("uid") != DATASOURCE_UID:
            problems.append(f"{title}: the panel's datasource is not ${{datasource}}")
        if not p.get("targets"):
            problems.append(f"{title}: no query")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != DATASOURCE_UID:
                problems.append(f"{title}: target {t.get('refId')} does not use ${{datasource}}")
            if not t.get("refId"):
                problems.append(f"{title}: a target has no refId")
    return problems


def rate_intervals(model: dict) -> list[str]:
    """rate(), irate() and increase() over $__rate_interval, never a fixed window."""
    return [f"{p['title']}: {fn}() over [{window}] instead of [$__rate_interval]"
            for p in panels(model) for t in p["targets"] for fn, window in RANGE_FUNCTION.findall(t["expr"])
            if window != "$__rate_interval"]


def counters_rated(model: dict) -> list[str]:
    """Every counter (…_total, histogram …_bucket/_sum/_count) goes through rate() or increase() first."""
    problems = []
    for p in panels(model):
        for t in p["targets"]:
            expr = t["expr"]
            for match in SELECTOR.finditer(expr):
                name = match.group(1)
                if ":" in name or not name.endswith(COUNTER_SUFFIXES):
                    continue
                before = expr[:match.start()].rstrip()
                after = expr[match.end():]
                if not re.search(r"\b(rate|irate|increase)\($", before) or not after.startswith("["):
                    problems.append(f"{p['title']}: counter {name} is used without rate() first")
    return problems


def filtered_by(model: dict, everywhere: tuple[str, ...], one_of: tuple[str, ...] = ()) -> list[str]:
    """Every selector filters by each variable in `everywhere` and by at least one in `one_of`."""
    problems = []
    exprs = [(p["title"], t["expr"]) for p in panels(model) for t in p["targets"]]
    exprs += [(f"annotation {a['name']}", a["expr"]) for a in model["annotations"]["list"] if "expr" in a]
    for title, expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            missing = [v for v in everywhere if f"${v}" not in matchers]
            if missing or (one_of and not any(f"${v}" in matchers for v in one_of)):
                problems.append(f"{title}: {name}{{{matchers}}} is not filtered by "
                                f"{', '.join('$' + v for v in missing) or ' or '.join('$' + v for v in one_of)}")
    return problems
