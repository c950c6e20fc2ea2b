"""A real container registry on loopback (distribution's, htpasswd authentication on) and a small client of its API.

    with Registry.start(workdir, port) as registry:   # credentials generated into workdir, never kept
        registry.host                                  # "127.0.0.1:<port>"
        registry.docker_config(path)                   # a docker config.json that may push there
        registry.catalog(); registry.describe(repo, tag); registry.pull(repo, tag, rootfs)

Storage can outlive the process (`storage`): images and the build cache stay there between runs.
The client speaks the Distribution API v2 with basic authentication, as BuildKit and containerd do.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from podserve.testbed.image import versions
from podserve.testbed.processes import Program, port_open

USER = "podserve-ci"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


class RegistryError(RuntimeError):
    """The registry refused or lacks something; the message names the request and what to do."""


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """One pushed image: the digest its tag points at, and the bytes a pull moves (config + compressed layers)."""
    name: str
    digest: str
    size: int
    layers: tuple[dict, ...]
    config: dict


class Registry:
    """distribution's registry on 127.0.0.1:<port>, with an htpasswd user whose password exists only in this run."""

    def __init__(self, program: Program, port: int, password: str):
        self.program, self.port, self._password = program, port, password
        self.host = f"127.0.0.1:{port}"

    @classmethod
    def start(cls, workdir: Path, port: int, storage: Path | None = None, binary: Path | None = None) -> "Registry":
        """Start the registry; its config and htpasswd go into workdir (storage defaults to workdir/storage)."""
        workdir.mkdir(parents=True, exist_ok=True)
        binary = binary or versions.registry_binary()
        if not binary.is_file():
            raise RegistryError(f"{binary} is missing: run `make image-tools` (make test and make image do it)")
        storage = storage or workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        htpasswd = subprocess.run(["htpasswd", "-iBn", USER], input=password, capture_output=True, text=True,
                                  timeout=60)
        if htpasswd.returncode != 0:
            raise RegistryError(f"htpasswd failed ({htpasswd.stderr.strip()}): apache2-utils is installed by "
                                "`make image-tools`")
        (workdir / "htpasswd").write_text(htpasswd.stdout)
        os.chmod(workdir / "htpasswd", 0o600)
        config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
                  "http": {"addr": f"127.0.0.1:{port}", "debug": {"addr": ""}},
                  "auth": {"htpasswd": {"realm": "podserve-testbed", "path": str(workdir / "htpasswd")}}}
        (workdir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        # setpriv --pdeathsig: the registry dies with the process that started it, even one killed with SIGKILL
        program = Program("registry", ["setpriv", "--pdeathsig", "KILL", "--", binary, "serve", workdir / "config.yml"],
                          workdir / "registry.log",
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OTEL_TRACES_EXPORTER": "none"})
        registry = cls(program, port, password)
        try:
            program.wait_until(lambda: port_open(port) and registry._get("/v2/")[0] == 200, 30, "answering /v2/")
        except BaseException:
            program.stop()
            raise
        return registry

    def stop(self) -> None:
        """Stop the registry and delete its htpasswd (the password lives only as long as the registry)."""
        self.program.stop()
        (self.program.log_path.parent / "htpasswd").unlink(missing_ok=True)

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- credentials, as a docker config.json (REGISTRY_AUTH_CONFIG) ---------------------------

    def auth(self) -> str:
        return base64.b64encode(f"{USER}:{self._password}".encode()).decode()

    def secrets(self) -> tuple[str, str]:
        """The password and the config.json auth string: what must never appear in an image (tests search for them)."""
        return self._password, self.auth()

    def docker_config(self, path: Path) -> Path:
        """Write a docker config.json that may push to this registry (mode 600) and return its path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auths": {self.host: {"auth": self.auth()}}}))
        os.chmod(path, 0o600)
        return path

    # --- the API -------------------------------------------------------------------------------

    def _get(self, path: str, accept: tuple[str, ...] = (), authenticated: bool = True):
        request = urllib.request.Request(f"http://{self.host}{path}")
        if authenticated:
            request.add_header("Authorization", f"Basic {self.auth()}")
        if accept:
            request.add_header("Accept", ", ".join(accept))
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def _json(self, path: str, accept: tuple[str, ...] = ()) -> tuple[dict, dict]:
        status, headers, body = self._get(path, accept)
        if status != 200:
            raise RegistryError(f"GET {path} on {self.host}: {status} {body[:300]!r}")
        return headers, json.loads(body)

    def status_without_credentials(self) -> int:
        """What /v2/ answers a client that sends no credentials (401 when authentication is on)."""
        return self._get("/v2/", authenticated=False)[0]

    def catalog(self) -> list[str]:
        return self._json("/v2/_catalog?n=1000")[1].get("repositories") or []

    def tags(self, repo: str) -> list[str]:
        return self._json(f"/v2/{repo}/tags/list")[1].get("tags") or []

    def describe(self, repo: str, ref: str, platform: str = "linux/amd64") -> ImageFacts:
        """The digest `repo:ref` points at, and its platform's manifest, config and size."""
        headers, top = self._json(f"/v2/{repo}/manifests/{ref}", INDEX_TYPES + MANIFEST_TYPES)
        digest = headers.get("Docker-Content-Digest", "")
        manifest = top
        if top.get("mediaType") in INDEX_TYPES or "manifests" in top:
            os_, arch = platform.split("/")
            (entry,) = [m for m in top["manifests"] if m.get("platform", {}).get("os") == os_
                        and m.get("platform", {}).get("architecture") == arch]
            manifest = self._json(f"/v2/{repo}/manifests/{entry['digest']}", MANIFEST_TYPES)[1]
        config = self._json(f"/v2/{repo}/blobs/{manifest['config']['digest']}")[1]
        size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        return ImageFacts(f"{self.host}/{repo}:{ref}", digest, size, tuple(manifest["layers"]), config)

    def pull(self, repo: str, ref: str, rootfs: Path) -> ImageFacts:
        """Unpack the image's layers into rootfs in order (OCI whiteouts applied, owners kept); return its facts."""
        facts = self.describe(repo, ref)
        rootfs.mkdir(parents=True, exist_ok=True)
        for layer in facts.layers:
            request = urllib.request.Request(f"http://{self.host}/v2/{repo}/blobs/{layer['digest']}",
                                             headers={"Authorization": f"Basic {self.auth()}"})
            with urllib.request.urlopen(request, timeout=300) as blob, tarfile.open(fileobj=blob, mode="r|*") as tar:
                _apply_layer(tar, rootfs)
        return facts


def _apply_layer(tar: tarfile.TarFile, rootfs: Path) -> None:
    """Extract one layer over rootfs as the OCI image spec says (.wh.NAME deletes NAME, .wh..wh..opq empties)."""
    for member in tar:
        path = Path(member.name.lstrip("./") or ".")
        target = rootfs / path
        if path.name == ".wh..wh..opq":
            for child in target.parent.iterdir() if target.parent.is_dir() else ():
                _remove(child)
            continue
        if path.name.startswith(".wh."):
            _remove(target.parent / path.name.removeprefix(".wh."))
            continue
        if target.is_symlink() or (target.exists() and not (target.is_dir() and member.isdir())):
            _remove(target)
        tar.extract(member, rootfs, numeric_owner=True, filter="fully_trusted")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, timeout=120)
