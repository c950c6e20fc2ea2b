"""Every value.py the repo ships renders, and so does every test fixture's that is meant to be valid.

A memory plan that counts every byte must not refuse the repo's own services (issue 69: the real-node example
stopped rendering and no test noticed). What is rendered: the value.py files git holds (but the broken ones, which
tests/tooling/test_broken_values.py expects refused), and the valid services the suites write at run time: the
tooling's, the real node's (its service and each failure case), the deploy suite's and the mesh's (their model path
swapped for the example's, which exists here: the plan counts a model's bytes, 0.6 MB against a few hundred bytes).
The docs' command blocks that name these files run in tests/tooling/test_docs_values.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from manifest_helpers import REPO
from podserve.tooling import render
from service_files import VALID

EXAMPLE_MODEL = "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"


def _shipped() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*value.py", "value.py"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    return sorted(path for path in listed if "broken_values" not in path)


def _module(relative: str):
    """A test module of another suite, loaded from its file (its folder on sys.path while it loads)."""
    path = REPO / relative
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"shipped_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def _fixtures() -> dict[str, str]:
    """Each suite's valid value.py texts, by name."""
    texts = {"tooling: service_files.VALID": "".join(f"{k} = {v!r}\n" for k, v in VALID.items())}
    node = _module("tests/pipeline/real_node_service.py")
    texts["pipeline: the real node's service"] = node.values("on-real-node")
    cases = _module("tests/pipeline/test_real_node_deploy.py")
    for case, (fields, *_rest) in cases.CASES.items():
        texts[f"pipeline: real-node case {case}"] = node.values(f"on-real-node-{case}", cpu=node.POD_CPU, **fields)
    texts["pipeline: the real node's 2Gi memory case"] = node.values("on-real-node", **cases.MEMORY_CASE)
    for relative in ("tests/pipeline/test_real_node_scaling.py", "tests/pipeline/test_real_node_offline_scaling.py"):
        scaled = _module(relative)
        texts[f"pipeline: {Path(relative).stem}.VALUES"] = node.values("on-real-node", **scaled.VALUES)
    live = _module("tests/deploy/live.py")
    texts["deploy: live.VALUES"] = live.VALUES.format(name="svc", team="like", max_replicas=0)
    tenancy = _module("tests/deploy/test_tenancy.py")
    texts["deploy: test_tenancy.OFFLINE"] = tenancy.OFFLINE.format(name="svc")
    texts["deploy: test_tenancy's GPU service"] = tenancy.gpu_text(texts["deploy: live.VALUES"])
    mesh = _module("tests/mesh/mesh_setup.py")
    texts["mesh: mesh_setup.VALUES"] = "".join(f"{k} = {v!r}\n" for k, v in
                                               dict(mesh.VALUES, model_path=EXAMPLE_MODEL).items())
    return texts


@pytest.mark.parametrize("path", _shipped())
def test_every_value_py_the_repo_ships_renders(path, tmp_path, capsys):
    assert render.main(["--all", "--values", str(REPO / path), "--out", str(tmp_path)]) == 0, capsys.readouterr().err


FIXTURES = _fixtures()


@pytest.mark.parametrize("name", FIXTURES)
def test_every_valid_fixture_value_py_renders(name, tmp_path, capsys):
    path = tmp_path / "value.py"
    path.write_text(FIXTURES[name])
    assert render.main(["--all", "--values", str(path), "--out", str(tmp_path / "out")]) == 0, \
        capsys.readouterr().err


def test_the_files_found_are_the_repos_services():
    assert {"value.py", "examples/real-node/value.py", "examples/offline/value.py"} <= set(_shipped())
    assert len(FIXTURES) >= 9
