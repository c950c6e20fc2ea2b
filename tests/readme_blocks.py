"""README's command blocks, and the convention that says where each one runs.

Every ```bash block of README.md runs, as written, in a test, in a fresh copy of the repo
(tests/fresh_copy.py). A block whose first line is `# needs: <what>` runs where <what> is there:

- `# needs: make serve` (or `make serve VALUES=<file>`): while that command runs in the copy
  (tests/runtime/test_readme.py);
- `# needs: cluster`: with $KUBECONFIG holding the CI account's credentials for the test control plane
  (tests/deploy/test_readme_deploy.py, the deploy suite).

Any other block runs in tests/runtime/test_readme.py, in README's order, line by line, each line exiting 0,
but a `make serve ...` line, which is started in the background (the one before it stopped, as Ctrl-C
would) for the blocks that need it. The first block is the two commands: `make serve` is started there;
`make test` is the run itself (.ci/run calls exactly it). A ```python block whose first line is
`# <path>.py` is a file README has you write: the test writes it there, whole, when its turn comes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
NEEDS = re.compile(r"^# needs: (make serve(?: VALUES=\S+)?|cluster)(?=\s|$)")
#: The first line of a ```python block that is a file to write: `# src/line_angle.py`.
FILE = re.compile(r"^# (\S+\.py)$")
#: The two commands README opens with.
FIRST_BLOCK = ["make serve", "make test"]


@dataclass(frozen=True)
class Block:
    """One ```bash block: the text after `# needs:` (None when it has none) and its command lines; or one ```python
    block: `file`, the path its first line names (None when it names none), and its whole `text`."""

    needs: str | None
    commands: list[str]
    first_line: str
    kind: str = "bash"
    file: str | None = None
    text: str = ""


def blocks(path: Path = README) -> list[Block]:
    """Every ```bash block of `path`, in order."""
    return [block for block in all_blocks(path) if block.kind == "bash"]


def all_blocks(path: Path = README) -> list[Block]:
    """Every ```bash and ```python block of `path`, in order."""
    found = []
    for kind, body in re.findall(r"^```(bash|python)\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.M | re.S):
        lines = body.splitlines()
        first = lines[0] if lines else ""
        if kind == "python":
            file = FILE.match(first)
            found.append(Block(None, [], first, kind, file.group(1) if file else None, body))
            continue
        needs = NEEDS.match(first)
        commands = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        found.append(Block(needs.group(1) if needs else None, commands, first))
    return found


def starts_a_server(line: str) -> bool:
    """Whether a command line is `make serve ...`: a server that runs until Ctrl-C, not a command that exits."""
    return command_word(line).split()[:2] == ["make", "serve"]


def command_word(line: str) -> str:
    """The command a line runs, without its trailing comment: `make record   # ...` -> `make record`."""
    return line.split("  #", 1)[0].strip()
