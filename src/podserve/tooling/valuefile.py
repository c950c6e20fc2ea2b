"""Read `value.py` without running it: only `name = <literal>` assignments are accepted."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a value.py: where, what, and how to fix it."""

    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field}: {self.message}"


class ValueFileError(Exception):
    """value.py cannot be used; carries every problem found, not just the first."""

    def __init__(self, path: str | Path, problems: list[Problem]):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.path} has {len(problems)} problem(s):\n{lines}")


def read_assignments(path: str | Path) -> dict[str, tuple[object, int]]:
    """Return {name: (value, line)} for every top-level literal assignment in the file.

    Anything else at the top level (imports, calls, expressions, loops, functions) is a
    problem reported with its line number, because value.py must be data, not a program.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueFileError(path, [Problem("value.py", f"no file at {path}; pass the path of your value.py")])
    except IsADirectoryError:
        raise ValueFileError(path, [Problem("value.py", f"{path} is a folder, not a file; pass the path of your "
                                             f"value.py, e.g. {path / 'value.py'}")])
    except OSError as exc:
        raise ValueFileError(path, [Problem("value.py", f"cannot be read ({exc.strerror}); pass the path of a "
                                             "value.py you can read")])
    except UnicodeDecodeError as exc:
        raise ValueFileError(path, [Problem("value.py", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")])
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ValueFileError(path, [Problem("value.py", f"is not valid Python: {exc.msg}; correct that line "
                                             "(value.py holds only `name = value` lines)", exc.lineno)])
    except (RecursionError, MemoryError):  # the parser's own limits, reached by an expression thousands deep
        raise ValueFileError(path, [Problem("value.py", "is too deeply nested to read (an expression of thousands "
                                             "of operators or brackets); write each value as a plain literal, "
                                             "e.g. `replicas = 3`")])

    found: dict[str, tuple[object, int]] = {}
    problems: list[Problem] = []
    for node in tree.body:
        if _is_docstring(node):
            continue
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            problems.append(Problem(type(node).__name__.lower(), "only `name = value` assignments of literal "
                                    "values are allowed in value.py; remove this statement", node.lineno))
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if len(targets) != 1 or not isinstance(targets[0], ast.Name):
            problems.append(Problem("assignment", "assign one plain name at a time, e.g. `replicas = 2`",
                                    node.lineno))
            continue
        name = targets[0].id
        if node.value is None:
            problems.append(Problem(name, "has a type but no value; write `name = value`", node.lineno))
            continue
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            problems.append(Problem(name, "must be a literal (number, string, bool, list, dict, None), not an "
                                    "expression or a call", node.lineno))
            continue
        if name in found:
            problems.append(Problem(name, f"is assigned twice (first on line {found[name][1]}); keep one",
                                    node.lineno))
            continue
        found[name] = (value, node.lineno)
    if problems:
        raise ValueFileError(path, problems)
    return found


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
