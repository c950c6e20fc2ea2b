"""Split a model file too big for the git host into parts with a checksum manifest; merge them back, verified.

    python -m podserve.tooling.model_parts split FILE --max-bytes N [--out DIR]
    python -m podserve.tooling.model_parts merge MANIFEST [MANIFEST ...] [--out DIR]

`split` writes FILE's bytes as `<name>.part-0000`, `<name>.part-0001`, ... (each at most N
bytes) and the manifest `<name>.parts.json` (the file's size and SHA-256, and each part's)
into DIR (default: beside FILE). `merge` rebuilds the file from the parts beside its
manifest into DIR (default: the manifest's folder), checking every part's size and SHA-256
and then the whole file's: a missing or corrupted part is refused by name (exit 2) and
nothing is written. Merged files are added to DIR's `MODEL.sha256`, the record the server
checks at start. `make split` and `make model` (podserve.tooling.model_files) run these for
value.py's model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from podserve import model_record

EXIT_REFUSED = 2
MANIFEST_SUFFIX = ".parts.json"
FORMAT = "podserve-model-parts/1"
_CHUNK = 1 << 20
_PART_NAME = re.compile(r"[^/\\]+\.part-\d{4,}")


class PartsError(ValueError):
    """The file, a part or the manifest is missing or wrong; the message names which and the fix."""


@dataclass(frozen=True)
class Part:
    """One part as the manifest lists it."""

    name: str
    size: int
    sha256: str


def split(file: Path, max_bytes: int, out: Path | None = None) -> Path:
    """Write `file` as parts of at most `max_bytes` plus its manifest into `out`; return the manifest's path."""
    if max_bytes < 1:
        raise PartsError(f"--max-bytes {max_bytes}: must be at least 1 (e.g. 900000000 under a 1 GB file limit)")
    if not file.is_file():
        raise PartsError(f"{file}: no such file; give the model file to split")
    out = out if out is not None else file.parent
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_glob_escape(file.name)}.part-*"):
        stale.unlink()
    whole = hashlib.sha256()
    parts: list[Part] = []
    with open(file, "rb") as source:
        while True:
            name = f"{file.name}.part-{len(parts):04d}"
            digest, size = hashlib.sha256(), 0
            with open(out / name, "wb") as target:
                while size < max_bytes:
                    chunk = source.read(min(_CHUNK, max_bytes - size))
                    if not chunk:
                        break
                    target.write(chunk)
                    digest.update(chunk)
                    whole.update(chunk)
                    size += len(chunk)
            if size == 0 and parts:
                (out / name).unlink()
                break
            parts.append(Part(name, size, digest.hexdigest()))
            if size < max_bytes:
                break
    manifest = out / f"{file.name}{MANIFEST_SUFFIX}"
    manifest.write_text(json.dumps({
        "format": FORMAT, "file": file.name, "size": sum(p.size for p in parts), "sha256": whole.hexdigest(),
        "max_bytes": max_bytes, "parts": [vars(p) for p in parts]}, indent=2) + "\n")
    return manifest


def merge(manifest: Path, out: Path | None = None) -> Path:
    """Rebuild the manifest's file into `out` from the parts beside it, verified; return its path."""
    listed = _read_manifest(manifest)
    out = out if out is not None else manifest.parent
    out.mkdir(parents=True, exist_ok=True)
    target = out / listed["file"]
    partial = target.with_name(target.name + ".partial")
    problems: list[str] = []
    whole = hashlib.sha256()
    try:
        with open(partial, "wb") as sink:
            for part in listed["parts"]:
                problem = _copy_part(manifest.parent / part.name, part, sink if not problems else None, whole)
                if problem:
                    problems.append(problem)
        if not problems and whole.hexdigest() != listed["sha256"]:
            problems.append(f"{listed['file']}: the merged file's sha256 {whole.hexdigest()} is not the manifest's "
                            f"{listed['sha256']}")
        if problems:
            raise PartsError(f"{manifest}: refused, nothing written: {'; '.join(problems)}. Fetch the parts again "
                             f"(git lfs pull / git checkout), or split the original file again")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    model_record.record(out, [target])
    return target


def _copy_part(path: Path, part: Part, sink, whole) -> str | None:
    """Hash one part (and append it to `sink` when given); return the problem with it, if any."""
    if not path.is_file():
        return f"{part.name}: missing (expected beside the manifest, {part.size} bytes)"
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            digest.update(chunk)
            whole.update(chunk)
            size += len(chunk)
            if sink is not None:
                sink.write(chunk)
    if size != part.size:
        return f"{part.name}: corrupted ({size} bytes, the manifest says {part.size})"
    if digest.hexdigest() != part.sha256:
        return f"{part.name}: corrupted (sha256 {digest.hexdigest()}, the manifest says {part.sha256})"
    return None


def _read_manifest(manifest: Path) -> dict:
    if not manifest.is_file():
        raise PartsError(f"{manifest}: no such manifest; give the {MANIFEST_SUFFIX} file that split wrote")
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        parts = [Part(str(p["name"]), int(p["size"]), str(p["sha256"])) for p in data["parts"]]
        bad = [p.name for p in parts if not _PART_NAME.fullmatch(p.name)]
        if bad or not parts or "/" in data["file"] or "\\" in data["file"]:
            raise ValueError(f"part or file names {bad or data['file']!r} are not plain names in this folder")
        return {"file": str(data["file"]), "sha256": str(data["sha256"]), "parts": parts}
    except (ValueError, KeyError, TypeError) as exc:
        raise PartsError(f"{manifest}: not a manifest written by `model_parts split` ({exc}); split the file "
                         f"again") from exc


def _glob_escape(name: str) -> str:
    """Escape glob metacharacters in a file name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m podserve.tooling.model_parts", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split_cmd = commands.add_parser("split", help="write FILE as parts of at most --max-bytes, plus a manifest")
    split_cmd.add_argument("file", type=Path)
    split_cmd.add_argument("--max-bytes", type=int, required=True, help="the largest part, in bytes")
    split_cmd.add_argument("--out", type=Path, help="where to write the parts and manifest (default: beside FILE)")
    merge_cmd = commands.add_parser("merge", help="rebuild each manifest's file from its parts, verified")
    merge_cmd.add_argument("manifests", type=Path, nargs="+", metavar="MANIFEST")
    merge_cmd.add_argument("--out", type=Path, help="where to write the file (default: the manifest's folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return 0, or 2 when anything is missing or wrong (nothing is then written)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "split":
            manifest = split(args.file, args.max_bytes, args.out)
            count = len(json.loads(manifest.read_text())["parts"])
            print(f"{manifest}: {count} part(s) of at most {args.max_bytes} bytes")
        else:
            for manifest in args.manifests:
                print(f"{merge(manifest, args.out)}: merged and verified")
    except PartsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
