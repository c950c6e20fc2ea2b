"""A service may run in a subset of the production regions (value.py `regions`): render writes the others' reason,
and their CI jobs end at once, passed, so the region order holds for the rest. No cluster: nothing is deployed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from podserve.tooling import render

REPO = Path(__file__).resolve().parents[2]


def values(tmp_path: Path, regions: str) -> Path:
    path = tmp_path / "value.py"
    path.write_text((REPO / "value.py").read_text() + f"\nregions = {regions}\n")
    return path


def test_render_writes_only_the_chosen_regions_and_the_reason_for_the_others(tmp_path, capsys):
    out = tmp_path / "out"
    assert render.main(["--all", "--values", str(values(tmp_path, "['hk', 'na']")), "--out", str(out)]) == 0
    assert {p.parent.name for p in [*out.glob("*/deployment.yaml"), *out.glob("*/rollout.yaml")]} == {"grey", "ab", "hk", "na"}
    assert (out / "eu" / "not-deployed.txt").read_text() == \
        "not deployed here: value.py regions = ['hk', 'na'] leaves out eu\n"
    assert "out/eu: not deployed here" in capsys.readouterr().out


def test_a_left_out_region_s_deploy_job_ends_at_once_passed_without_a_cluster(tmp_path):
    out = tmp_path / "out"
    assert render.main(["--all", "--values", str(values(tmp_path, "['hk']")), "--out", str(out)]) == 0
    for stage in ("eu", "na"):  # CI's job line; no KUBECONFIG: it never reaches a cluster
        done = subprocess.run([sys.executable, "-m", "podserve.tooling.deploy", "apply", "--stage", stage,
                               "--manifests", str(out)], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
        assert done.returncode == 0, done.stderr
        assert f"{stage}: not deployed here: value.py regions = ['hk'] leaves out {stage}" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "podserve.tooling.deploy", "apply", "--stage", "hk",
                              "--manifests", str(out)], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")})
    assert refused.returncode == 2 and "no cluster credentials" in refused.stderr  # hk is deployed: it needs one


def test_an_unknown_or_empty_regions_list_is_refused_naming_the_field(tmp_path, capsys):
    for bad in ("['hk', 'mars']", "[]", "['hk', 'hk']"):
        assert render.main(["--all", "--values", str(values(tmp_path, bad)), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "regions: is " in err and "list the production regions to deploy to, each once, among ['eu', 'hk', " \
            "'na']" in err
