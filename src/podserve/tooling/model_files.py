"""Put the model value.py's `model_path` names in place, or record the files of a model put there by hand.

    python -m podserve.tooling.model_files prepare [--values value.py]
    python -m podserve.tooling.model_files record [--values value.py]

`prepare` (what `make model`, `make serve` and CI's model job run) takes the first that applies:
1. `model-parts/*.parts.json` exist: each is merged, verified, into model_path's folder;
2. model_path names one of the example models (podserve.tooling.example_models): it is
   fetched unless already there, and checked against its pinned SHA-256;
3. the file at model_path is there (a team's model committed under model/): it is kept, and
   checked against the committed `MODEL.sha256` beside it, which is never rewritten;
otherwise it exits 2 naming model_path and what to do. `record` writes `MODEL.sha256` afresh
for the model's files: every file in model_path's folder (or under model_path, when it is a
folder) except this folder's README.md, the record itself, hidden and half-written files, and
the example models value.py does not name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from podserve import model_record
from podserve.tooling import example_models, model_parts, platform_rules
from podserve.tooling.valuefile import ValueFileError
from podserve.tooling.values import load_values

EXIT_INVALID = 2
#: Where a model too big for the git host is committed in parts (model_parts split --out model-parts).
PARTS_FOLDER = "model-parts"
#: Files of the model folder that are never part of the model.
NOT_MODEL_FILES = frozenset({"README.md", model_record.RECORD_NAME})


class ModelFilesError(ValueError):
    """The model cannot be put in place or recorded; the message names model_path and the fix."""


def model_folder(model_path: Path) -> Path:
    """The folder that holds the model and its record: model_path itself when it is a folder, else its parent."""
    return model_record.record_folder(model_path)


def example_named(model_path: Path) -> str | None:
    """The example model (a key of example_models.MODELS) that model_path names, or None."""
    for name, model in example_models.MODELS.items():
        if model_path.name == model.filename:
            return name
    return None


def files_of_model(folder: Path, model_path: Path | None = None) -> list[Path]:
    """The files `record` lists: every file under `folder` but README.md, the record, hidden and half-written
    files, and the example models other than the one `model_path` names."""
    examples = {m.filename for m in example_models.MODELS.values()} - {model_path.name if model_path else None}
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() not in NOT_MODEL_FILES
                  and p.name not in examples and not p.name.endswith(".partial")
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def record(model_path: Path) -> Path:
    """Write model_path's record afresh, listing only the model's files; return its path."""
    folder = model_folder(model_path)
    if not model_path.exists():
        raise ModelFilesError(f"model_path {model_path.as_posix()!r}: no such file; put the model there (or fix "
                              f"model_path in value.py), then run `{model_record.RECORD_COMMAND}`")
    files = files_of_model(folder, model_path)
    (folder / model_record.RECORD_NAME).unlink(missing_ok=True)
    return model_record.record(folder, files)


def prepare(model_path: Path, parts: Path = Path(PARTS_FOLDER)) -> str:
    """Put the model at model_path in place (see the module's docstring); return a line saying what was done."""
    folder = model_folder(model_path)
    manifests = sorted(parts.glob(f"*{model_parts.MANIFEST_SUFFIX}"))
    if manifests:
        merged = [model_parts.merge(manifest, folder) for manifest in manifests]
        if not model_path.exists():
            raise ModelFilesError(f"model_path {model_path.as_posix()!r}: {parts}/ merged into "
                                  f"{', '.join(p.as_posix() for p in merged)}, not model_path; point model_path in "
                                  f"value.py at the merged file")
        return f"{model_path.as_posix()}: merged from {len(manifests)} manifest(s) in {parts}/ and verified"
    example = example_named(model_path)
    if example is not None:  # fetched only when missing or changed; checked against its pinned hash either way
        example_models.fetch([example], folder)
        return f"{model_path.as_posix()}: the example model {example!r}, in place and checked"
    if model_path.exists():
        return f"{model_path.as_posix()}: {_check_kept(model_path)}"
    examples = ", ".join(f"model/{m.filename}" for m in example_models.MODELS.values())
    raise ModelFilesError(f"model_path {model_path.as_posix()!r}: no such file, no {parts}/*"
                          f"{model_parts.MANIFEST_SUFFIX} to merge, and not an example model ({examples}); put your "
                          f"model there and run `{model_record.RECORD_COMMAND}` (or split a big one into {parts}/), or fix "
                          f"model_path in value.py")


def _check_kept(model_path: Path) -> str:
    """Check a model already in place against its record, as the server will; the record is never rewritten here."""
    folder = model_folder(model_path)
    try:
        problems = model_record.model_problems(model_path)
    except model_record.RecordError as exc:
        raise ModelFilesError(str(exc)) from None
    if problems is None:
        raise ModelFilesError(f"model_path {model_path.as_posix()!r}: there is no {folder.as_posix()}/"
                              f"{model_record.RECORD_NAME}; run `{model_record.RECORD_COMMAND}` and commit it with "
                              f"the model")
    if problems:
        raise ModelFilesError(f"model_path {model_path.as_posix()!r} does not match {folder.as_posix()}/"
                              f"{model_record.RECORD_NAME}: {'; '.join(problems)}; if you meant to change the model, "
                              f"run `{model_record.RECORD_COMMAND}` and commit the record with it")
    return f"in place and matching {folder.as_posix()}/{model_record.RECORD_NAME}"


def _model_path(values_path: str) -> Path:
    return Path(load_values(values_path)["model_path"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m podserve.tooling.model_files", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("prepare", "merge model-parts/, keep a committed model, or fetch the example"),
                       ("record", f"write {model_record.RECORD_NAME} for the model's files only")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--values", default="value.py", help="the service's value.py (default: value.py)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return 0, 2 when value.py or the model is wrong (the message says what to do), 1 when
    the example could not be downloaded."""
    args = _parser().parse_args(argv)
    refused = platform_rules.run_refusal()
    if refused:
        print(f"Error: {refused}", file=sys.stderr)
        return EXIT_INVALID
    try:
        model_path = _model_path(args.values)
        if args.command == "prepare":
            print(prepare(model_path))
        else:
            written = record(model_path)
            print(f"{written.as_posix()}: {len(model_record.read_record(written.parent) or {})} file(s) recorded; "
                  f"commit it with the model")
    except ValueFileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (ModelFilesError, model_parts.PartsError) as exc:
        print(f"Error: {args.values}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except example_models.FetchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
