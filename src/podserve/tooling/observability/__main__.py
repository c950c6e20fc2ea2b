"""Write the dashboards and rules into the platform chart, or check that the committed ones are current.

    python -m podserve.tooling.observability [--check] [--chart charts/podserve-platform]

Exit 0 when written (or current), 1 with --check when a committed file differs, 2 on bad conf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from podserve.tooling.conf import ConfError, load_conf, load_observability
from podserve.tooling.observability import dashboards, rules
from podserve.tooling.observability.queries import Selectors

REPO = Path(__file__).resolve().parents[4]
CHART = REPO / "charts" / "podserve-platform"


def generated(conf_dir: Path | None = None) -> dict[str, str]:
    """Every generated file's path inside the chart -> its text."""
    obs = load_observability(conf_dir)
    sel = Selectors.from_conf(obs, load_conf(conf_dir))
    files = {f"files/dashboards/{name}.json": dashboards.render(model)
             for name, model in dashboards.build(obs, sel).items()}
    files["files/alerts/serving.yaml"] = rules.render(obs, sel)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podserve.tooling.observability", description=__doc__.split("\n")[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    try:
        files = generated()
    except ConfError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    stale = []
    for relative, text in files.items():
        path = args.chart / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(relative)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if stale:
        print(f"Error: out of date in {args.chart}: {', '.join(stale)}; run `make dashboards` and commit",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
