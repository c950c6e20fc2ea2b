"""`make deploy` from a person's checkout to the local cluster says what it deploys (issue 59).

Before `make image`, the commit's image is not in the registry storage the local cluster pulls from: the deploy tool
refuses it (exit 3, naming `make image`) and changes nothing; changes in src/ the commit does not hold are named; and
once the image is there (stood in here by its tag in that storage: `make image` itself takes minutes), a grey that
lands on kwok's simulated nodes is said to have run no container.
"""

from __future__ import annotations

import subprocess

from fresh_copy import copy_env, fresh_copy
from live import Live
from podserve.tooling.deploy import local_image
from podserve.tooling.image_tag import LOCAL_REGISTRY_STORAGE, commit_tag

GREY = ("podserve-like-grey", "grey")  # value.py's team is like
SERVICE = "text-direction"


def stand_in_for_make_image(copy) -> None:
    """What `make image` leaves for the local cluster: the commit's tag of the service's repository in its storage."""
    tag = commit_tag(copy)
    link = (copy / LOCAL_REGISTRY_STORAGE / "docker/registry/v2/repositories/hk/like" / SERVICE / "_manifests/tags" /
            tag / "current/link")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text("sha256:" + "0" * 64)


def make_deploy(copy, kubeconfig) -> subprocess.CompletedProcess:
    """`make deploy STAGE=grey` as a person runs it on make cluster: with its (admin's) kubeconfig."""
    return subprocess.run(["make", "deploy", "STAGE=grey"], cwd=copy, capture_output=True, text=True, timeout=300,
                          env=copy_env(KUBECONFIG=str(kubeconfig)))


def test_make_deploy_before_make_image_is_refused_naming_it_and_says_what_it_deploys(control_plane, tmp_path):
    live = Live(control_plane, tmp_path)
    copy = fresh_copy(tmp_path / "repo")
    (copy / "src" / "server.py").write_text((copy / "src" / "server.py").read_text() + "\n# not committed\n")
    try:
        refused = make_deploy(copy, control_plane.kubeconfig)
        said = refused.stdout + refused.stderr
        print(said[-1500:])
        assert refused.returncode != 0 and "Error 3" in said, said  # the tool's exit 3 (make turns it into its 2)
        assert "Refused: the image for this commit was never built" in said and "run `make image`" in said, said
        assert "warning: src/server.py changed since the commit" in said, said
        assert live.objects(*GREY, SERVICE) == []  # nothing changed
        stand_in_for_make_image(copy)
        served = make_deploy(copy, control_plane.kubeconfig)
        said = served.stdout + served.stderr
        assert served.returncode == 0, said
        assert f"serving: revision 1 of {SERVICE} in grey" in said
        assert local_image.NO_CONTAINER in said, said  # kwok's nodes: no container ran
    finally:
        live.remove(*GREY, SERVICE)


def test_only_a_persons_deploy_to_a_cluster_on_loopback_is_checked():
    assert local_image.applies("https://127.0.0.1:6443", environ={})
    assert local_image.applies("https://localhost:6443", environ={})
    assert not local_image.applies("https://127.0.0.1:6443", environ={"CI": "true"})  # CI deploys by digest
    assert not local_image.applies("https://k8s.hk.example.com:6443", environ={})  # another cluster's registry


def test_an_image_is_found_in_the_storage_by_its_repository_and_tag(tmp_path):
    image = "registry.hk.example.com/like/svc:abcd1234"
    assert "run `make image`" in local_image.missing_image(image, tmp_path)
    link = tmp_path / LOCAL_REGISTRY_STORAGE / "docker/registry/v2/repositories/hk/like/svc/_manifests/tags/abcd1234"
    (link / "current").mkdir(parents=True)
    (link / "current" / "link").write_text("sha256:0")
    assert local_image.missing_image(image, tmp_path) is None
    assert "run `make image`" in local_image.missing_image(image.replace("abcd1234", "ffff0000"), tmp_path)
    assert local_image.missing_image(image.split(":")[0] + "@sha256:" + "a" * 64, tmp_path) is None  # by digest


def test_pods_all_on_kwok_nodes_ran_no_container():
    kwok = {"metadata": {"name": "k", "annotations": {"kwok.x-k8s.io/node": "fake"}}}
    real = {"metadata": {"name": "r", "annotations": {}}}
    nodes = {"k": kwok, "r": real}
    assert local_image.on_kwok_only([{"spec": {"nodeName": "k"}}], nodes)
    assert not local_image.on_kwok_only([{"spec": {"nodeName": "k"}}, {"spec": {"nodeName": "r"}}], nodes)
    assert not local_image.on_kwok_only([], nodes)
