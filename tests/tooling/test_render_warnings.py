"""render warns (never refuses) for a production stage with one replica: any node drain takes it down."""

from __future__ import annotations

from pathlib import Path

from podserve.tooling import render

REPO = Path(__file__).resolve().parents[2]


def test_a_production_stage_with_one_replica_is_warned_about(tmp_path, capsys):
    values = tmp_path / "value.py"
    values.write_text((REPO / "value.py").read_text().replace("hk_replicas = 2 ", "hk_replicas = 1 ", 1))
    assert render.main(["--all", "--values", str(values), "--out", str(tmp_path / "out"), "--image-tag", "t"]) == 0
    err = capsys.readouterr().err
    assert "Warning: hk runs one replica (hk_replicas = 1 in value.py): any node drain or eviction takes the " \
           "service down in hk; set hk_replicas to 2 or more" in err
    assert "grey runs" not in err and "ab runs" not in err  # preview stages: one pod is the point
    assert (tmp_path / "out" / "hk" / "rollout.yaml").is_file()


def test_the_example_is_warned_about_exactly_where_it_runs_one_pod(tmp_path, capsys):
    assert render.main(["--all", "--out", str(tmp_path / "out"), "--image-tag", "t"]) == 0
    warned = [line.split()[1] for line in capsys.readouterr().err.splitlines() if line.startswith("Warning:")]
    assert warned == ["eu", "na"]  # value.py: hk_replicas = 2, eu_replicas = na_replicas = 1


def test_a_warning_says_where_the_value_came_from_a_default_being_called_one(tmp_path, capsys):
    """eu_replicas left out takes `replicas`; `replicas` left out is the default (1): neither is blamed on value.py."""
    values = tmp_path / "value.py"
    text = "".join(line for line in (REPO / "value.py").read_text().splitlines(keepends=True)
                   if not line.startswith(("replicas =", "eu_replicas =", "na_replicas =")))
    values.write_text(text)
    assert render.main(["--all", "--values", str(values), "--out", str(tmp_path / "out"), "--image-tag", "t"]) == 0
    err = capsys.readouterr().err
    assert "Warning: eu runs one replica (eu_replicas left out, so replicas = 1, the default): " in err, err
    assert "= 1 in value.py" not in err, err
