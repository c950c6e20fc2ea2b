"""Images by digest from BuildKit's metadata file: the reference rewritten, a file without a digest refused."""

from __future__ import annotations

import json

import pytest

from podserve.tooling.deploy import digest
from podserve.tooling.deploy.errors import BadInput

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("image, repository", [
    ("registry.hk.example.com/like/svc:abc123", "registry.hk.example.com/like/svc"),
    ("localhost:5000/like/svc:v1", "localhost:5000/like/svc"),
    ("localhost:5000/like/svc", "localhost:5000/like/svc"),
    (f"registry.hk.example.com/like/svc@{DIGEST}", "registry.hk.example.com/like/svc"),
    ("svc:v1", "svc"),
])
def test_the_repository_keeps_the_registry_port_and_drops_the_tag(image, repository):
    assert digest.repository(image) == repository


def test_only_the_server_container_is_pinned_and_the_input_is_not_changed():
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [
        {"name": "server", "image": "r.example.com/like/svc:v1"}, {"name": "decode", "image": "r.example.com/d:2"}]}}}}
    (pinned, service) = digest.pin((deployment, {"kind": "Service"}), DIGEST)
    containers = pinned["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == [f"r.example.com/like/svc@{DIGEST}", "r.example.com/d:2"]
    # the server knows its build: it names it on every answer (podserve.image_identity), CI's smoke compares
    assert containers[0]["env"] == [{"name": "PODSERVE_IMAGE_DIGEST", "value": DIGEST}] and "env" not in containers[1]
    assert digest.pin((pinned,), DIGEST)[0]["spec"]["template"]["spec"]["containers"][0]["env"] == containers[0]["env"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v1")
    assert service == {"kind": "Service"}


@pytest.mark.parametrize("text", ["{}", '{"containerimage.digest": "sha256:short"}', "not json", "[]",
                                  json.dumps({"containerimage.digest": "sha256:" + "a" * 64 + "\n"})])
def test_a_metadata_file_without_a_digest_is_refused_naming_it(tmp_path, text):
    path = tmp_path / "metadata.json"
    path.write_text(text)
    with pytest.raises(BadInput, match="metadata.json"):
        digest.from_metadata(path)


def test_buildkit_s_metadata_gives_the_digest(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"containerimage.digest": DIGEST, "image.name": "a,b"}))
    assert digest.from_metadata(path) == DIGEST
