"""The repo keeps its rules: the pod's runtime imports down its layers and never CI's tooling or the test bed, and its
modules stay small; CI's tooling never imports the runtime; README stays a short read whose links stay in the repo and
whose figures live in docs/ and bench/results/."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "podserve"
#: What CI's tooling may not pull in: requirements/tooling.txt does not install these, and the tooling image holds
#: none of them (tests/pipeline). confluent_kafka is both the server's and the tooling's: the offline smoke reads a
#: consumer group's offsets with it (podserve.tooling.offline_smoke).
SERVER_ONLY = ("uvloop", "httptools", "onnxruntime", "prometheus_client", "PIL", "numpy", "pybase64")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


#: What the pod's code (the runtime and the service surface, podserve/*.py) never imports: its image holds neither.
NOT_IN_THE_POD = {"podserve.tooling": "CI's tooling", "podserve.testbed": "the test bed"}
#: The most lines a runtime module may have; past it, it has more than one job: split it along a seam.
MAX_MODULE_LINES = 400
#: A string naming a podserve module (to import_module, or to `python -m`): an import too.
MODULE_NAME = re.compile(r"podserve(\.\w+)+")


def _module(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str, runtime: Path) -> str | None:
    """The layer of a podserve module: `surface` (podserve/*.py), the runtime's (runtime/__init__.py's LAYERS: its
    folder, `transport` for processes/transport/, `entry` at runtime/'s top), or None (tooling, the test bed)."""
    parts = module.split(".")[1:]
    if not parts or len(parts) == 1 and parts[0] not in ("runtime", *(n.split(".")[1] for n in NOT_IN_THE_POD)):
        return "surface"
    if parts[0] != "runtime":
        return None
    if len(parts) == 1 or not (runtime / parts[1]).is_dir():
        return "entry"
    return "transport" if parts[1:3] == ["processes", "transport"] else parts[1]


def _imported(path: Path, module: str, modules: set[str]) -> list[tuple[int, str]]:
    """(line, module) for each podserve module `path` imports: import statements anywhere in it (in a function
    too, relative ones resolved), and strings that name one (importlib.import_module's, `python -m`'s)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
                      for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name == "podserve" or name.startswith("podserve.")]


def layout_problems(src: Path) -> list[str]:
    """What breaks the pod's layout rules under `src` (holding podserve/), each naming the file, the line and the fix:
    an import from a lower runtime layer up (or across, or into a layer not listed for it in runtime/__init__.py's
    LAYERS), from the service surface into the runtime, or from either into CI's tooling or the test bed; a runtime
    module over MAX_MODULE_LINES; a runtime folder in no layer. Reads the files; imports nothing."""
    package, runtime = src / "podserve", src / "podserve" / "runtime"
    tree = ast.parse((runtime / "__init__.py").read_text(encoding="utf-8"))
    layers = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(isinstance(target, ast.Name) and target.id == "LAYERS" for target in node.targets))
    files = sorted(package.glob("*.py")) + sorted(runtime.rglob("*.py"))
    modules = {_module(path, src) for path in files}
    problems = [f"runtime/{folder.name}/ is in no layer: add it to LAYERS in runtime/__init__.py"
                for folder in sorted(runtime.iterdir()) if folder.is_dir() and folder.name != "__pycache__"
                and folder.name not in layers]
    for path in files:
        name, where = _module(path, src), path.relative_to(package).as_posix()
        layer = _layer(name, runtime)
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if layer != "surface" and lines > MAX_MODULE_LINES:
            problems.append(f"{where} has {lines} lines, over {MAX_MODULE_LINES}: split it along a seam")
        for line, target in _imported(path, name, modules):
            other = _layer(target, runtime)
            outside = next((what for prefix, what in NOT_IN_THE_POD.items()
                            if target == prefix or target.startswith(prefix + ".")), None)
            if outside:
                problems.append(f"{where}:{line} imports {target}, {outside}, which the pod's image does not hold: "
                                f"move what the pod needs beside the pod's code (runtime/ or podserve/*.py)")
            elif layer == "surface" and other != "surface":
                problems.append(f"{where}:{line} imports {target}: the service surface imports no runtime module "
                                f"(the runtime imports it)")
            elif layer in layers and other not in ("surface", layer, *layers[layer]):
                allowed = ", ".join(layers[layer]) or "no other layer"
                problems.append(f"{where}:{line}: {layer} imports {target} ({other}); {layer} may import {allowed} "
                                f"(runtime/__init__.py's LAYERS): move the shared piece down, or pass it in")
    return problems


def test_the_pods_code_imports_down_its_layers_never_ci_tooling_or_the_test_bed_and_stays_small():
    assert layout_problems(REPO / "src") == []


#: fault: (file under podserve/, what it holds, what the one problem says)
LAYOUT_FAULTS = {
    "a lower layer up": ("runtime/core/planted.py", "from podserve.runtime.http.server import HttpServer\n",
                         "core/planted.py:1: core imports podserve.runtime.http.server (http); core may import no"),
    "across, between siblings": ("runtime/batching/planted.py", "from podserve.runtime.http import admission\n",
                                 "batching imports podserve.runtime.http.admission (http); batching may import core"),
    "a relative import up": ("runtime/http/planted.py", "from ..protocols import api\n",
                             "http imports podserve.runtime.protocols.api (protocols)"),
    "up, inside a function": ("runtime/processes/transport/planted.py",
                              "def later():\n    from podserve.runtime.processes import layout\n",
                              "transport imports podserve.runtime.processes.layout (processes)"),
    "the entry point from below": ("runtime/processes/planted.py", "from podserve.runtime.main import main\n",
                                   "processes imports podserve.runtime.main (entry)"),
    "the runtime into CI's tooling": ("runtime/protocols/planted.py", "from podserve.tooling.render import main\n",
                                      "protocols/planted.py:1 imports podserve.tooling.render, CI's tooling"),
    "a tooling module by its name": ("runtime/offline/planted.py",
                                     "import importlib\nimportlib.import_module('podserve.tooling.deploy')\n",
                                     "offline/planted.py:2 imports podserve.tooling.deploy, CI's tooling"),
    "the surface into the test bed": ("planted.py", "import podserve.testbed.processes\n",
                                      "planted.py:1 imports podserve.testbed.processes, the test bed"),
    "the surface into the runtime": ("planted.py", "from podserve.runtime.core import logs\n",
                                     "planted.py:1 imports podserve.runtime.core.logs: the service surface imports no"),
    "a module too long": ("runtime/batching/planted.py", "x = 1\n" * (MAX_MODULE_LINES + 1),
                          f"batching/planted.py has {MAX_MODULE_LINES + 1} lines, over {MAX_MODULE_LINES}"),
    "a folder in no layer": ("runtime/plugins/__init__.py", "", "runtime/plugins/ is in no layer"),
}


@pytest.fixture(scope="module")
def pods_code(tmp_path_factory) -> Path:
    """A copy of the pod's code (src/podserve without tooling/ and testbed/), which passes the check."""
    src = tmp_path_factory.mktemp("layout") / "src"
    shutil.copytree(PACKAGE, src / "podserve", ignore=shutil.ignore_patterns("tooling", "testbed", "__pycache__"))
    assert layout_problems(src) == []
    return src


@pytest.mark.parametrize("fault", list(LAYOUT_FAULTS))
def test_the_layout_check_catches_each_fault(pods_code, fault):
    """With one planted file in the pod's code, the check names exactly that one problem."""
    relative, text, expected = LAYOUT_FAULTS[fault]
    planted = pods_code / "podserve" / relative
    new_folder = not planted.parent.exists()
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(text)
    try:
        problems = layout_problems(pods_code)
    finally:
        shutil.rmtree(planted.parent) if new_folder else planted.unlink()
    assert len(problems) == 1 and expected in problems[0], problems


def test_tooling_never_imports_the_runtime():
    offenders = {f"{p.name}: {n}" for p in (PACKAGE / "tooling").rglob("*.py") for n in _imports(p)
                 if n.startswith("podserve.runtime")}
    assert offenders == set()


def test_every_tooling_module_imports_without_the_servers_dependencies():
    # A fresh interpreter in which the server's packages cannot be imported, as in CI's render job.
    tooling = PACKAGE / "tooling"
    modules = sorted("podserve.tooling." + ".".join(p.relative_to(tooling).with_suffix("").parts)
                     for p in tooling.rglob("*.py") if p.stem not in ("__main__", "__init__"))
    script = f"""
import importlib, importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError(f"{{name}} is a server-only dependency")
sys.meta_path.insert(0, Refuse())
for module in {modules!r}:
    importlib.import_module(module)
print("imported", len({modules!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported")


README = REPO / "README.md"
#: README is read in five minutes: at this many lines it is too long (move a section's detail to its docs/ page).
README_LINES = 200
#: A measured figure: a number with ms, req/s or % beside it, or x just after it (1.2x; not 3840x2160).
FIGURE = re.compile(r"\d[\d.,]*(?:\s?(?:ms|req/s)\b|\s?%|x\b)")
#: Markdown links: [text](target), <scheme://...>, and reference definitions `[name]: target`.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<([a-z][a-z0-9+.-]*://[^>]+)>|^\s*\[[^\]]+\]:\s*(\S+)",
                  re.I | re.M)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose(path.read_text(encoding="utf-8")) if line.startswith("#")}


def _prose(text: str) -> list[str]:
    """`text`'s lines, those inside fenced code blocks blanked (their `#` lines are comments, not headings)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def readme_problems(readme: Path, repo: Path) -> list[str]:
    """What keeps `readme` from being a five-minute read a fork can follow: too many lines, a link outside `repo` or
    to nothing, a measured figure. Each problem names its line and the fix."""
    text = readme.read_text(encoding="utf-8")
    lines = text.splitlines()
    problems = []
    if len(lines) >= README_LINES:
        problems.append(f"{readme.name} has {len(lines)} lines, {README_LINES} or more: move detail to the docs/ page "
                        f"of its topic and link it")
    for number, line in enumerate(lines, 1):
        if FIGURE.search(line):
            problems.append(f"{readme.name}:{number}: a measured figure ({FIGURE.search(line).group(0)!r}): move it to "
                            f"the docs/ page of its topic, or bench/results/ with the command that produced it")
    for number, line in enumerate(_prose(text), 1):
        targets = [next(group for group in match.groups() if group)
                   for match in LINK.finditer(re.sub(r"`[^`]*`", "", line))]
        targets += re.findall(r"`(\.\./[^`\s]*)`", line)  # a path named in code: `../shared/PRODUCT.md`
        for target in targets:
            problem = _link_problem(target, readme, repo)
            if problem:
                problems.append(f"{readme.name}:{number}: links {target}, {problem}")
    return problems


def _link_problem(target: str, readme: Path, repo: Path) -> str | None:
    """Why `target`, a link in `readme`, is not a page of `repo` that is there; None when it is."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
        return "outside the repo: a fork reads it offline, at its own commit; link a page in the repo, or name it"
    page, _, anchor = target.partition("#")
    path = (readme.parent / page).resolve() if page else readme.resolve()
    if not path.is_relative_to(repo.resolve()):
        return "outside the repo (a fork has nothing there): link a page in the repo, or say it in words"
    if not path.exists():
        return "which does not exist: fix the path, or drop the link"
    if anchor and path.suffix == ".md" and anchor not in _anchors(path):
        return f"whose page has no heading #{anchor}: link one it has"
    return None


def test_readme_is_short_its_links_stay_in_the_repo_and_its_figures_live_elsewhere():
    assert readme_problems(README, REPO) == []


def test_readme_names_every_docs_page_where_to_read_on():
    """README's last section holds one line per docs/ page, so a page added is a page a reader can find."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Where to read on"):]
    listed = re.findall(r"^- \[docs/([\w.-]+\.md)\]\(docs/\1\): \S", section, flags=re.M)
    assert sorted(listed) == sorted(p.name for p in (REPO / "docs").glob("*.md")), listed


FAULTS = {
    "200 lines": ("# x\n" + "line\n" * (README_LINES - 1), f"has {README_LINES} lines"),
    "a dead link": ("See [the server](docs/sever.md).\n", "links docs/sever.md, which does not exist"),
    "a dead anchor": ("See [the server](docs/server.md#nowhere).\n", "has no heading #nowhere"),
    "a link outside the repo": ("Why: [the product](../shared/PRODUCT.md).\n", "links ../shared/PRODUCT.md, outside"),
    "a path outside the repo": ("No Gunicorn: see `../shared/PRODUCT.md` for why.\n",
                                "links ../shared/PRODUCT.md, outside"),
    "a web link": ("See <https://example.com/podserve>.\n", "links https://example.com/podserve, outside"),
    "a figure": ("One process answers 1.09-1.24x what Gunicorn does.\n", "a measured figure ('1.24x')"),
    "a latency": ("Its p99 is 54 ms.\n", "a measured figure ('54 ms')"),
    "a share": ("Decoding held the GIL 22-45% of the time.\n", "a measured figure ('45%')"),
    "a rate": ("The pod answered 1,300 req/s.\n", "a measured figure ('1,300 req/s')"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_readme_checks_catch_each_fault(tmp_path, fault):
    text, expected = FAULTS[fault]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "server.md").write_text("# The server\n\n## Errors\n")
    readme = tmp_path / "README.md"
    readme.write_text("# podserve\n\nRead [errors](docs/server.md#errors), 3840x2160 frames, `[not](a-link)`.\n")
    assert readme_problems(readme, tmp_path) == []
    readme.write_text(text)
    problems = readme_problems(readme, tmp_path)
    assert len(problems) == 1 and expected in problems[0], problems
