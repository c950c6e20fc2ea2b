"""The docs' command lines that name a value.py the repo ships run: `make render` ones here, as written (in a fresh
copy, OUT in a temporary folder); each other one in the test its block names below.

README's blocks run in tests/runtime/test_readme.py (tests/readme_blocks.py); docs/offline.md's in
tests/offline/test_offline_readme.py. docs/pipeline.md's real-node walkthrough needs `make cluster` (its registry on
127.0.0.1:5002 and its kubeconfig), so its image, deploy and delete lines do not run as written: what it shows, a
GPU service's pod not ready naming why, runs in tests/pipeline/test_image_runs.py on the GPU flavor's image (the
same Dockerfile and stand-in CUDA base, built from value.py with gpu_num = 1), and its render runs here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from fresh_copy import fresh_copy
from manifest_helpers import REPO

#: A command line naming a value.py: `... VALUES=<path> ...`.
VALUES_ARG = re.compile(r"\bVALUES=(\S+)")
#: Where each block's other lines run (the doc, a line of the block): the test that runs them.
RUN_ELSEWHERE = {
    ("docs/offline.md", "make serve VALUES=examples/offline/value.py"): "tests/offline/test_offline_readme.py",
    ("docs/pipeline.md", "make image VALUES=examples/real-node/value.py"): "tests/pipeline/test_image_runs.py",
}


def _command_lines() -> list[tuple[str, str]]:
    """(doc, line) for each line of a fenced block in README.md and docs/*.md that names a value.py the repo ships."""
    shipped = set(subprocess.run(["git", "ls-files", "*value.py", "value.py"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.split())
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.M | re.S):
            for line in block.splitlines():
                named = VALUES_ARG.search(line)
                if named and named.group(1) in shipped:
                    found.append((doc.relative_to(REPO).as_posix(), line.split("  #", 1)[0].strip()))
    return found


LINES = _command_lines()
RENDERS = [(doc, line) for doc, line in LINES if line.startswith("make render ")]


def test_the_docs_lines_naming_shipped_value_files_are_found_and_each_runs_somewhere():
    assert ("docs/pipeline.md", "make render VALUES=examples/real-node/value.py") in RENDERS
    assert set(RUN_ELSEWHERE) <= set(LINES), "a line RUN_ELSEWHERE names is no longer in its doc"
    for doc, line in LINES:
        if (doc, line) in RENDERS:
            continue  # run below
        tests = {test for (where, _), test in RUN_ELSEWHERE.items() if where == doc}
        assert tests, f"{doc}: `{line}` names a shipped value.py and no test runs it (add its block to RUN_ELSEWHERE)"
        for test in tests:
            assert doc in (REPO / test).read_text(), f"{test} does not read {doc}"


@pytest.mark.parametrize("doc, line", RENDERS, ids=[f"{d}: {l}" for d, l in RENDERS])
def test_each_make_render_line_runs_as_written(doc, line, tmp_path):
    copy = fresh_copy(tmp_path / "repo")
    model = REPO / "model" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"  # fetched once by make test's `make model`
    shutil.copy(model, copy / "model" / model.name)
    words = shlex.split(line) + [f"OUT={tmp_path / 'out'}"]
    done = subprocess.run(words, cwd=copy, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "grey" / "deployment.yaml").is_file()
