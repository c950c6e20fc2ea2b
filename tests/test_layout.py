"""The repo keeps its rules: the pod's runtime and CI's tooling never import each other; README stays a short read
whose links stay in the repo and whose figures live in docs/ and bench/results/."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "podserve"
#: What CI's tooling may not pull in: requirements/tooling.txt does not install these.
SERVER_ONLY = ("uvloop", "httptools", "onnxruntime", "prometheus_client", "PIL", "numpy")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_never_imports_tooling():
    offenders = {f"{p.name}: {n}" for p in (PACKAGE / "runtime").rglob("*.py") for n in _imports(p)
                 if n.startswith("podserve.tooling")}
    assert offenders == set()


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
