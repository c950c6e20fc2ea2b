"""Broken value.py files (tests/tooling/broken_values/): each exits 2, names its field, and writes nothing.

Each file's first line says the field its message must name and what is wrong:
`# expect: <field> -- <why>`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from manifest_helpers import REPO
from podserve.tooling import render
from podserve.tooling.valuefile import ValueFileError
from service_files import write_values

BROKEN = sorted((Path(__file__).resolve().parent / "broken_values").glob("*.py"))
#: Words a message uses to say what to do.
FIXES = ("set ", "write ", "use ", "remove", "add ", "choose", "lower", "must", "round", "raise", "give", "keep", "correct", "ask")


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <field> -- <why>'"
    return first.removeprefix("# expect: ").split(" -- ")[0]


def test_there_are_at_least_thirty():
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_each_broken_file_exits_2_names_its_field_and_writes_nothing(path, tmp_path, capsys):
    out = tmp_path / "out"
    assert render.main(["--all", "--values", str(path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    field = expected_field(path)
    named = [line for line in error.splitlines() if f"{field}: " in line]
    assert named, f"no problem names {field!r}:\n{error}"
    assert any(fix in line for line in named for fix in FIXES), f"no fix offered:\n{error}"
    assert "Nothing was written." in error
    assert not out.exists()


def test_the_process_itself_exits_2(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--all", "--values",
                             str(BROKEN[0]), "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and result.stdout == "" and not out.exists()


def test_every_problem_is_reported_at_once(tmp_path, conf):
    path = write_values(tmp_path, memory="24GB", username="ads", replicas=-1, colour="blue")
    with pytest.raises(ValueFileError) as caught:
        render.render(path, conf=conf)
    assert sorted(p.field for p in caught.value.problems) == ["colour", "memory", "replicas", "username"]
    assert all(p.line for p in caught.value.problems)


def test_a_message_names_the_value_why_and_the_fix(tmp_path, conf):
    path = write_values(tmp_path, memory="24GB")
    with pytest.raises(ValueFileError) as caught:
        render.render(path, conf=conf)
    (problem,) = caught.value.problems
    assert str(problem) == ("line 7: memory: '24GB' is not a Kubernetes quantity ('GB' is not a Kubernetes unit); "
                            "write \"24Gi\"")


def test_a_pod_no_node_can_hold_is_explained(tmp_path, conf):
    path = write_values(tmp_path, memory="128Gi")
    with pytest.raises(ValueFileError) as caught:
        render.render(path, conf=conf)
    messages = [str(p) for p in caught.value.problems]
    assert any("stay Pending" in m and "120Gi" in m and "region hk" in m for m in messages), messages


def test_an_unknown_stage_or_bad_tag_exits_2(tmp_path, capsys):
    assert render.main(["--stage", "moon", "--out", str(tmp_path / "a")]) == 2
    assert "'moon' is not a stage; use one of grey, ab, hk, eu, na" in capsys.readouterr().err
    assert render.main(["--all", "--image-tag=-bad", "--out", str(tmp_path / "b")]) == 2
    assert render.main(["--all", "--image-tag=t1\n", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("text", ["replicas = " + " + ".join(["1"] * 3000), "replicas = " + "-" * 200_000 + "1"],
                         ids=["3000-terms", "200000-signs"])
def test_a_value_py_nested_too_deeply_to_parse_exits_2(text, tmp_path, capsys):
    path = tmp_path / "value.py"
    path.write_text(text + "\n")
    assert render.main(["--all", "--values", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "value.py: is too deeply nested to read" in capsys.readouterr().err


def test_values_naming_a_folder_exits_2(tmp_path, capsys):
    assert render.main(["--all", "--values", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"value.py: {tmp_path} is a folder, not a file" in capsys.readouterr().err


def rendered(tmp_path) -> Path:
    """Render the valid service into out/ as an earlier run did; return out/."""
    out = tmp_path / "out"
    assert render.main(["--all", "--values", str(write_values(tmp_path, "good.py")), "--out", str(out)]) == 0
    assert list(out.rglob("*.yaml"))
    return out


def test_a_failed_render_removes_the_manifests_of_an_earlier_one(tmp_path):
    out = rendered(tmp_path)
    broken = write_values(tmp_path, regions=[["hk", "eu"]])
    assert render.main(["--all", "--values", str(broken), "--out", str(out)]) == 2
    assert not list(out.rglob("*.yaml"))


def test_a_render_that_crashes_keeps_its_traceback_and_leaves_no_manifests(tmp_path, monkeypatch):
    def half_written(out, stages):
        (out / "grey" / "deployment.yaml").write_text("half\n")
        raise RuntimeError("a bug")
    out = rendered(tmp_path)
    monkeypatch.setattr(render.output, "write_stages", half_written)
    with pytest.raises(RuntimeError, match="a bug"):
        render.main(["--all", "--values", str(write_values(tmp_path)), "--out", str(out)])
    assert not list(out.rglob("*.yaml"))
