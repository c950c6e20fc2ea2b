"""The image tag render and deploy name by default: CI's commit, else the checkout's (what make image tags), else dev."""

from __future__ import annotations

import subprocess

from podserve.tooling.image_tag import default_image_tag


def _git(folder, *args) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=30,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}).stdout.strip()


def test_outside_ci_the_tag_is_the_commit_of_value_py_s_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("CI_COMMIT_SHORT_SHA", raising=False)
    service = tmp_path / "service"
    (service / "examples").mkdir(parents=True)
    (service / "examples" / "value.py").write_text("service_name = 'x'\n")
    _git(service, "init", "-q")
    _git(service, "add", ".")
    _git(service, "commit", "-q", "-m", "one")
    first = _git(service, "rev-parse", "HEAD")
    assert default_image_tag(service / "examples" / "value.py") == first[:8]
    _git(service, "commit", "-q", "--allow-empty", "-m", "two")
    assert default_image_tag(service / "examples" / "value.py") == _git(service, "rev-parse", "HEAD")[:8] != first[:8]


def test_ci_s_commit_wins_and_outside_git_it_is_dev(tmp_path, monkeypatch):
    (tmp_path / "value.py").write_text("service_name = 'x'\n")
    monkeypatch.setenv("CI_COMMIT_SHORT_SHA", "0123abcd")
    assert default_image_tag(tmp_path / "value.py") == "0123abcd"
    monkeypatch.delenv("CI_COMMIT_SHORT_SHA")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # a tmp folder inside no checkout
    assert default_image_tag(tmp_path / "value.py") == "dev"
