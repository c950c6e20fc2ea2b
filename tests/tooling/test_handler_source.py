"""render checks value.py's `handler` in the service's source, without importing it (CI has none of its packages)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from manifest_helpers import REPO
from podserve.tooling.handler_source import problem
from service_files import write_values


def make_render(values: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "render", f"VALUES={values}", f"OUT={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_misspelt_handler_class_fails_make_render_naming_the_class_and_the_module(tmp_path):
    (tmp_path / "src").mkdir()  # the repository's layout: value.py with the service's src/ beside it
    shutil.copy(REPO / "src" / "server.py", tmp_path / "src" / "server.py")
    out = tmp_path / "manifests"
    assert make_render(write_values(tmp_path), out).returncode == 0
    assert (out / "grey" / "deployment.yaml").is_file()
    done = make_render(write_values(tmp_path, handler="server:TextDirecton"), out)
    assert done.returncode == 2
    assert (f"handler: 'server:TextDirecton': module 'server' ({tmp_path}/src/server.py) defines no class "
            f"'TextDirecton'; did you mean 'TextDirection'?") in done.stderr
    # The manifests of the earlier render are gone: no later step can pick them up as if they were current.
    assert "were removed" in done.stderr and not list(out.rglob("*.yaml"))


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_handler_is_followed_through_the_services_own_modules_and_podserve(tmp_path):
    src = write(tmp_path, {
        "server.py": "from detection.base import Base\nimport podserve\n"
                     "class Detector(Base):\n    pass\n"
                     "class Direct(podserve.Handler):\n    pass\n",
        "detection/__init__.py": "",
        "detection/base.py": "from .onnx import Onnx as Base\n",
        "detection/onnx.py": "from podserve import OnnxHandler\nclass Onnx(OnnxHandler):\n    pass\n",
        "reexport.py": "from server import Detector\n",
    })
    assert problem("server:Detector", [src]) is None
    assert problem("server:Direct", [src]) is None
    assert problem("reexport:Detector", [src]) is None
    assert problem("detection.onnx:Onnx", [src]) is None


def test_what_is_not_a_handler_is_named_with_the_fix(tmp_path):
    src = write(tmp_path, {
        "server.py": "import teamlib\nclass Plain:\n    pass\nclass Mixed(Plain, object):\n    pass\n"
                     "class FromTheirPackage(teamlib.DetectorBase):\n    pass\n",
        "broken.py": "class Handler(\n",
    })
    assert "no module 'servr' (no servr.py in" in problem("servr:Plain", [src])
    assert "defines no class 'Missing'; classes there: FromTheirPackage, Mixed, Plain" in problem("server:Missing", [src])
    for name in ("Plain", "Mixed"):
        message = problem(f"server:{name}", [src])
        assert f"class {name!r} in module 'server'" in message and "does not derive from podserve's Handler" in message
        assert "subclass OnnxHandler" in message
    assert "broken.py is not valid Python" in problem("broken:Handler", [src])
    # A base from a package the service installs (requirements/service.txt) cannot be read here: not refused.
    assert problem("server:FromTheirPackage", [src]) is None


def test_render_says_when_there_is_no_source_to_check_the_handler_in(tmp_path, monkeypatch, capsys):
    from podserve.tooling import render

    monkeypatch.chdir(tmp_path)  # no src/ beside value.py: e.g. the tooling image given value.py alone
    assert render.main(["--all", "--values", str(write_values(tmp_path, handler="server:Anything")),
                        "--out", "out"]) == 0
    assert "handler 'server:Anything' was not checked" in capsys.readouterr().err
