"""What an image's COPY lines put where, read with BuildKit's own Dockerfile parser, honouring its .dockerignore.

An image's files laid out in a folder by following the Dockerfile's COPY instructions, for the quick
checks (a stand-in for the build: RUN lines are not executed). The real images are built, pulled and
read in test_image_runs.py and test_image_facts.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dockerfile

from ci_pipeline import REPO

#: A sitecustomize that makes the server's dependencies unimportable, as in the tooling image.
REFUSE_SERVER_DEPS = """
import importlib.abc, sys
SERVER_ONLY = {names!r}
class RefuseServerDeps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER_ONLY:
            raise ImportError(f"{{name}} is a server-only dependency: the tooling image does not have it")
sys.meta_path.insert(0, RefuseServerDeps())
"""


def commands(name: str) -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(REPO / name)))


def final_stage(name: str) -> list[dockerfile.Command]:
    """The instructions of the last stage (from its FROM on)."""
    cmds = commands(name)
    start = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return cmds[start:]


def _pattern(line: str) -> re.Pattern:
    regex = ""
    for token in re.split(r"(\*\*/?|\*|\?)", line.strip().strip("/")):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(regex + "$")


def dockerignore(name: str = "Dockerfile") -> list[re.Pattern]:
    """The patterns BuildKit leaves out of `name`'s build context: `<name>.dockerignore`'s when there is one (BuildKit
    reads it in place of .dockerignore), else .dockerignore's."""
    own = REPO / f"{name}.dockerignore"
    lines = [line.strip() for line in (own if own.is_file() else REPO / ".dockerignore").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert not any(line.startswith("!") for line in lines), "image_layout does not model .dockerignore exceptions (!)"
    return [_pattern(line) for line in lines]


def ignored(relative: str, patterns: list[re.Pattern]) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    return any(p.match("/".join(parts[:i])) for p in patterns for i in range(1, len(parts) + 1))


def context_files(source: str, patterns: list[re.Pattern]) -> list[Path]:
    """The context files a COPY source names (globs expanded), less what .dockerignore leaves out."""
    matches = sorted(REPO.glob(source.strip("/"))) if any(c in source for c in "*?[") else [REPO / source.strip("/")]
    files = []
    for match in matches:
        for path in ([match] if match.is_file() else sorted(p for p in match.rglob("*") if p.is_file())):
            relative = path.relative_to(REPO).as_posix()
            if not ignored(relative, patterns):
                files.append(path)
    return files


def lay_out(name: str, root: Path, skip_sources: tuple[str, ...] = ()) -> Path:
    """Copy what the final stage's COPY lines take from the context into `root`, as the image would hold it."""
    patterns = dockerignore(name)
    for cmd in final_stage(name):
        if cmd.cmd != "COPY" or any(flag.startswith("--from") for flag in cmd.flags) or cmd.value[0] in skip_sources:
            continue
        *sources, dest = cmd.value
        for source in sources:
            base = REPO / source.strip("/")
            for path in context_files(source, patterns):
                if base.is_dir():
                    target = root / dest.lstrip("/") / path.relative_to(base)
                elif dest.endswith("/") or len(sources) > 1 or path != base:
                    target = root / dest.lstrip("/") / path.name
                else:
                    target = root / dest.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return root
