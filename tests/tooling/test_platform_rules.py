"""A fork's checkout that edits the platform's rules (conf/, templates/) is refused by render, naming each file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from podserve.tooling import platform_rules

REPO = Path(__file__).resolve().parents[2]


def checkout(tmp_path: Path) -> Path:
    """A fork's checkout as CI clones it: value.py, src/, and its copies of conf/ and templates/."""
    fork = tmp_path / "fork"
    for folder in ("conf", "templates", "src"):
        shutil.copytree(REPO / folder, fork / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "value.py", fork / "value.py")
    return fork


def render_in(fork: Path) -> subprocess.CompletedProcess:
    """The manifests job's render line in the fork, with the platform's tooling (this tree's src/, as in the image)."""
    return subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--all", "--out", "build/manifests"],
                          cwd=fork, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})


def test_an_unchanged_checkout_renders(tmp_path):
    fork = checkout(tmp_path)
    assert platform_rules.differences(fork) == []
    done = render_in(fork)
    assert done.returncode == 0, done.stderr


def test_a_fork_that_widens_a_limit_or_a_template_is_refused_naming_each_file(tmp_path):
    fork = checkout(tmp_path)
    stages = fork / "conf" / "stages.yaml"
    stages.write_text(stages.read_text().replace("route: /api/{user}/{service}", "route: /api/{service}", 1))
    (fork / "conf" / "deploy.yaml").write_text((fork / "conf" / "deploy.yaml").read_text() + "\n# no freeze for us\n")
    (fork / "templates" / "extra.yaml.j2").write_text("kind: ClusterRoleBinding\n")
    done = render_in(fork)
    assert done.returncode == 2, done.stdout
    assert "changes the platform's rules, which a service cannot change" in done.stderr
    for line in ("conf/deploy.yaml: edited", "conf/stages.yaml: edited", "templates/extra.yaml.j2: added"):
        assert f"  - {line}" in done.stderr, done.stderr
    assert "merge the platform's release into your fork" in done.stderr and "Nothing was written." in done.stderr
    assert not (fork / "build").exists()


def test_a_checkout_without_the_platform_s_files_is_not_refused(tmp_path):
    (tmp_path / "value.py").write_text((REPO / "value.py").read_text())
    assert platform_rules.differences(tmp_path) == []
