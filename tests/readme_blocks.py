"""README's command blocks, and the convention that says where each one runs.

Every ```bash block of README.md runs, as written, in a test, in a fresh copy of the repo
(tests/fresh_copy.py). A block whose first line is `# needs: <what>` runs where <what> is there:

- `# needs: make serve`: while `make serve` runs in the copy (tests/runtime/test_readme.py);
- `# needs: cluster`: with $KUBECONFIG holding the CI account's credentials for the test control plane
  (tests/deploy/test_readme_deploy.py, the deploy suite).

Any other block runs in tests/runtime/test_readme.py, line by line, each line exiting 0. The first block
is the two commands: `make serve` is started there (and the `make serve` blocks run against it);
`make test` is the run itself (.ci/run calls exactly it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
NEEDS = re.compile(r"^# needs: (make serve|cluster)\b")
#: The two commands README opens with.
FIRST_BLOCK = ["make serve", "make test"]


@dataclass(frozen=True)
class Block:
    """One ```bash block: the text after `# needs:` (None when it has none) and its command lines."""

    needs: str | None
    commands: list[str]
    first_line: str


def blocks(path: Path = README) -> list[Block]:
    """Every ```bash block of `path`, in order."""
    found = []
    for body in re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.M | re.S):
        lines = body.splitlines()
        needs = NEEDS.match(lines[0]) if lines else None
        commands = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        found.append(Block(needs.group(1) if needs else None, commands, lines[0] if lines else ""))
    return found


def command_word(line: str) -> str:
    """The command a line runs, without its trailing comment: `make record   # ...` -> `make record`."""
    return line.split("  #", 1)[0].strip()
