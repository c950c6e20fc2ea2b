"""Check value.py's `handler` in the service's source without importing it (CI has none of its packages).

`problem("server:TextDirection", [Path("src")])` reads `src/server.py` with `ast` and answers
None when the module is there, defines (or imports from another module of the same folders)
a class of that name, and the class derives from podserve's `Handler`, directly or through
`OnnxHandler` or a class of the service's own; otherwise it answers what is wrong and the fix.
A base class from a package outside these folders (one the service installs) cannot be followed
here: such a class passes, and the server checks it when it imports it.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import podserve

#: The class every handler derives from, as (module, class).
ROOT = ("podserve.handler", "Handler")
#: The folder podserve itself is read from, for a service's source that does not hold it.
PLATFORM_SOURCE = Path(podserve.__file__).resolve().parent.parent


@dataclass
class _Module:
    """What one module's top level defines: classes, names imported from modules, modules imported."""

    path: Path
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    imported: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    modules: dict[str, str] = field(default_factory=dict)  # local name -> module


class _Source:
    """The service's modules under `paths`, parsed on demand."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self._parsed: dict[str, _Module | None] = {}

    def find(self, module: str) -> Path | None:
        relative = Path(*module.split("."))
        for folder in self.paths + ([PLATFORM_SOURCE] if module.split(".")[0] == "podserve" else []):
            for candidate in (folder / relative.with_suffix(".py"), folder / relative / "__init__.py"):
                if candidate.is_file():
                    return candidate
        return None

    def module(self, name: str) -> _Module | None:
        if name not in self._parsed:
            path = self.find(name)
            self._parsed[name] = None if path is None else _parse(name, path)
        return self._parsed[name]

    def is_handler(self, module: str, name: str, seen: set) -> bool | None:
        """Whether `module`'s `name` is a class deriving from ROOT, following bases and imports in these folders;
        None when that cannot be told here (a base from a package outside them, e.g. one of the service's own)."""
        if (module, name) == ROOT:
            return True
        if (module, name) in seen:
            return False
        seen.add((module, name))
        if module == "podserve" and name in podserve._EXPORTS:  # `from podserve import X`: loaded lazily there
            return self.is_handler(podserve._EXPORTS[name], name, seen)
        parsed = self.module(module)
        if parsed is None:
            return None
        if name in parsed.classes:
            found = [self._base_is_handler(parsed, module, base, seen) for base in parsed.classes[name].bases]
            return True if True in found else None if None in found else False
        if name in parsed.imported:
            return self.is_handler(*parsed.imported[name], seen)
        return False

    def _base_is_handler(self, parsed: _Module, module: str, base: ast.expr, seen: set) -> bool | None:
        if isinstance(base, ast.Name):
            return self.is_handler(module, base.id, seen)
        if isinstance(base, ast.Attribute):  # e.g. podserve.OnnxHandler after `import podserve`
            dotted = ast.unparse(base.value)
            owner = parsed.modules.get(dotted.split(".")[0])
            if owner is not None:
                return self.is_handler(owner + dotted[len(dotted.split(".")[0]):], base.attr, seen)
        return None  # an expression render cannot follow


class SourceError(ValueError):
    """A module of the service's source is not valid Python."""


def _parse(name: str, path: Path) -> _Module:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise SourceError(f"{path} is not valid Python ({getattr(exc, 'msg', exc)}"
                          f"{f' on line {line}' if line else ''}); correct it") from None
    parsed = _Module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            parsed.classes[node.name] = node
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                source = ".".join([*anchor, *([source] if source else [])])
            for alias in node.names:
                parsed.imported[alias.asname or alias.name] = (source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parsed.modules[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
    return parsed


def problem(spec: str, paths: Sequence[Path]) -> str | None:
    """Return what is wrong with the handler 'module:Class' in the source folders `paths` (and the fix), or None."""
    module_name, _, class_name = spec.partition(":")
    source = _Source(paths)
    where = " or ".join(str(p) for p in source.paths)
    try:
        parsed = source.module(module_name)
    except SourceError as exc:
        return f"{spec!r}: {exc}"
    if parsed is None:
        file = Path(*module_name.split(".")).with_suffix(".py")
        return f"{spec!r}: no module {module_name!r} (no {file} in {where}); write it there or fix `handler`"
    if class_name not in parsed.classes and class_name not in parsed.imported:
        known = sorted(parsed.classes)
        close = difflib.get_close_matches(class_name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"classes there: {', '.join(known) or 'none'}"
        return f"{spec!r}: module {module_name!r} ({parsed.path}) defines no class {class_name!r}; {hint}"
    try:
        if source.is_handler(module_name, class_name, set()) is not False:  # True, or a base it cannot follow
            return None
    except SourceError as exc:
        return f"{spec!r}: {exc}"
    return (f"{spec!r}: class {class_name!r} in module {module_name!r} ({parsed.path}) does not derive from "
            f"podserve's Handler; subclass OnnxHandler (an ONNX model) or Handler: "
            f"`from podserve import OnnxHandler` ... `class {class_name}(OnnxHandler):`")


def default_paths(values_path: Path) -> list[Path]:
    """The folder a service's handler is looked for in: `src/` beside its value.py (the repository's layout), when
    there is one."""
    source = values_path.parent / "src"
    return [source] if source.is_dir() else []
