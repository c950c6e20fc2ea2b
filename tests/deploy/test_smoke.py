"""The smoke request CI sends through grey's route before production (podserve.tooling.smoke), against a local
stand-in for the mesh (simulated: a loopback HTTP server that answers as a grey pod behind the gateway would)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from podserve.image_identity import IMAGE_DIGEST_HEADER
from podserve.tooling import render, smoke

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "manifests"
    assert render.main(["--stage", "grey", "--values", str(REPO / "value.py"), "--out", str(out)]) == 0
    return out


class Gateway:
    """Answers `unready` 503s on grey's ready path, then 200 (from a pod of image `digest`); 404 elsewhere. Keeps
    (Host, path) of each request."""

    def __init__(self, unready: int, digest: str = ""):
        self.seen: list[tuple[str, str]] = []
        seen, left = self.seen, [unready]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                seen.append((self.headers["Host"], self.path))
                if self.path != "/grey/like/text-direction/v2/health/ready":
                    code = 404
                else:
                    code, left[0] = (503, left[0] - 1) if left[0] > 0 else (200, 0)
                body = b'{"ready": true}' if code == 200 else b'{"error": "not ready"}'
                self.send_response(code)
                if digest:
                    self.send_header(IMAGE_DIGEST_HEADER, digest)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_grey_answering_through_its_route_passes_after_the_mesh_catches_up(manifests, capsys):
    gateway = Gateway(unready=2)
    try:
        code = smoke.main(["--stage", "grey", "--manifests", str(manifests), "--base-url", gateway.url,
                           "--every", "0"])
    finally:
        gateway.stop()
    assert code == 0, capsys.readouterr()
    assert gateway.seen == [("infer-hk.example.com", "/grey/like/text-direction/v2/health/ready")] * 3
    assert "answered 200 on try 3" in capsys.readouterr().out


def test_a_grey_that_never_answers_fails_the_gate_naming_the_url(manifests, capsys):
    gateway = Gateway(unready=100)
    try:
        code = smoke.main(["--stage", "grey", "--manifests", str(manifests), "--base-url", gateway.url,
                           "--every", "0", "--attempts", "3"])
    finally:
        gateway.stop()
    out = capsys.readouterr()
    assert code == 1 and len(gateway.seen) == 3
    assert "grey's route never answered 200 at " + gateway.url + "/grey/like/text-direction/v2/health/ready" in out.err
    assert "answered 503" in out.out


def test_missing_manifests_are_bad_input(tmp_path, capsys):
    assert smoke.main(["--stage", "grey", "--manifests", str(tmp_path)]) == 2
    assert "pass render's output with --manifests" in capsys.readouterr().err


OURS, THEIRS = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def metadata(tmp_path: Path, digest: str) -> Path:
    path = tmp_path / "image-metadata.json"
    path.write_text(json.dumps({"containerimage.digest": digest}))
    return path


def smoke_expecting(digest: str, gateway: Gateway, manifests: Path, tmp_path: Path) -> int:
    """The smoke of this pipeline's build (`digest`, its metadata file) against `gateway`, which it then stops."""
    try:
        return smoke.main(["--stage", "grey", "--manifests", str(manifests), "--base-url", gateway.url, "--every", "0",
                           "--image-metadata", str(metadata(tmp_path, digest))])
    finally:
        gateway.stop()


def test_grey_answering_from_another_pipeline_s_build_fails_the_gate_naming_both_digests(manifests, tmp_path, capsys):
    gateway = Gateway(unready=0, digest=THEIRS)
    code = smoke_expecting(OURS, gateway, manifests, tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and len(gateway.seen) == 1  # certain at once: no waiting for the other build to go away
    assert f"grey serves the image {THEIRS}, not this pipeline's {OURS}: another pipeline" in err


def test_grey_answering_from_this_pipeline_s_build_passes(manifests, tmp_path, capsys):
    code = smoke_expecting(OURS, Gateway(unready=1, digest=OURS), manifests, tmp_path)
    assert code == 0 and f"answered 200 on try 2 from {OURS}" in capsys.readouterr().out


def test_a_pod_naming_no_digest_fails_a_gate_that_expects_one(manifests, tmp_path, capsys):
    code = smoke_expecting(OURS, Gateway(unready=0), manifests, tmp_path)
    assert code == 1 and "(one that names no digest)" in capsys.readouterr().err


def test_the_pod_s_header_is_the_digest_the_deploy_tool_gave_it_and_nothing_else():
    """podserve.image_identity: the env the deploy tool sets (digest.pin) becomes the header; anything else is left out,
    never sent (no header injection from the environment)."""
    from podserve.image_identity import IMAGE_DIGEST_ENV, header_line

    assert header_line({IMAGE_DIGEST_ENV: OURS}) == f"{IMAGE_DIGEST_HEADER}: {OURS}\r\n"
    for bad in ("", "latest", OURS + "\r\nSet-Cookie: x=1", "sha256:" + "A" * 64):
        assert header_line({IMAGE_DIGEST_ENV: bad}) == ""
