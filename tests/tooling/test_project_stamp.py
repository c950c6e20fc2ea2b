"""render stamps the GitLab project (CI_PROJECT_PATH) on every object and refuses one outside its team's group."""

from __future__ import annotations

from pathlib import Path

from podserve.tooling import render, tenancy

REPO = Path(__file__).resolve().parents[2]


def test_every_object_carries_ci_project_path(tmp_path, monkeypatch):
    monkeypatch.setenv(tenancy.PROJECT_VARIABLE, "models/like/ocr-direction")
    rendered = render.render(REPO / "value.py", image_tag="t")
    docs = [doc for stage in rendered.stages.values() for doc in stage]
    assert docs and {d["metadata"]["annotations"][tenancy.PROJECT_ANNOTATION] for d in docs} == {
        "models/like/ocr-direction"}


def test_outside_ci_the_project_is_the_one_the_team_s_group_would_hold(monkeypatch):
    monkeypatch.delenv(tenancy.PROJECT_VARIABLE, raising=False)
    rendered = render.render(REPO / "value.py", stages=["grey"], image_tag="t")
    assert {d["metadata"]["annotations"][tenancy.PROJECT_ANNOTATION] for d in rendered.stages["grey"]} == {
        "models/like/text-direction"}


def test_a_project_of_another_team_s_group_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(tenancy.PROJECT_VARIABLE, "models/imo/text-direction")
    assert render.main(["--all", "--out", str(tmp_path / "out"), "--image-tag", "t"]) == 2
    err = capsys.readouterr().err
    assert "models/imo/text-direction (CI_PROJECT_PATH) is not in team like's group models/like" in err
    assert "conf/teams.yaml gitlab_group" in err and not (tmp_path / "out").exists()
