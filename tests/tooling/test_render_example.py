"""The example service: `render --all` writes five stages that pass every check, byte for byte the golden files.

Checks on every written object: kubernetes-validate --strict at the oldest and newest
Kubernetes we support (conf/platform.yaml), the Istio and Prometheus-operator CRD schemas
with unknown fields rejected, and `kubectl kustomize` (kubectl's own YAML decoding and
unique object ids; offline, so not server-side validation).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kube_schemas import KUBE_VERSIONS, all_schema_errors
from manifest_helpers import REPO, kustomize, read_tree
from podserve.tooling import provenance, render

GOLDEN = Path(__file__).resolve().parent / "golden"
STAGES = ["grey", "ab", "hk", "eu", "na"]


def render_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podserve.tooling.render", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_render_all_writes_five_stages_that_pass_every_check(tmp_path, kubectl):
    result = render_cli("--all", "--values", "value.py", "--out", str(tmp_path), "--image-tag", "golden")
    assert result.returncode == 0, result.stderr
    tree = read_tree(tmp_path)
    assert sorted(tree) == sorted(STAGES)
    docs = [doc for stage in STAGES for doc in tree[stage]]
    # six objects a preview stage, seven a production one (its Rollout and AnalysisTemplate for the Deployment): no
    # HPA, since the example's max_replicas is 0
    assert len(docs) == 6 * 2 + 7 * 3
    assert KUBE_VERSIONS == ("1.30", "1.37")
    assert all_schema_errors(docs) == []
    for stage in STAGES:
        built = kustomize(kubectl, tmp_path / stage, tmp_path)
        assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == \
            sorted((d["kind"], d["metadata"]["name"]) for d in tree[stage])


def test_output_is_the_golden_files_byte_for_byte(tmp_path, monkeypatch):
    """Regenerate after an intended change: python -m podserve.tooling.render --all --image-tag golden --out tests/tooling/golden
    (outside CI: grey's source record is of no branch pipeline, whatever CI variables this run has)."""
    for name in (provenance.BRANCH_VARIABLE, provenance.DEFAULT_BRANCH_VARIABLE, provenance.PROTECTED_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    assert render.main(["--all", "--out", str(tmp_path), "--image-tag", "golden"]) == 0
    written = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*.yaml"))}
    golden = {p.relative_to(GOLDEN): p.read_bytes() for p in sorted(GOLDEN.rglob("*.yaml"))}
    assert sorted(written) == sorted(golden)
    for path, text in written.items():
        assert text == golden[path], f"{path} differs from tests/tooling/golden/{path}"


def test_the_golden_files_pass_the_schemas():
    docs = [doc for stage in read_tree(GOLDEN).values() for doc in stage]
    assert len(docs) == 6 * 2 + 7 * 3 and all_schema_errors(docs) == []


def test_rendering_twice_gives_the_same_bytes(tmp_path):
    for out in ("one", "two"):
        assert render.main(["--all", "--out", str(tmp_path / out), "--image-tag", "x1"]) == 0
    one = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*.yaml")}
    two = {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").rglob("*.yaml")}
    assert one == two


def test_a_stage_folder_holds_only_the_current_objects(tmp_path, conf):
    (tmp_path / "hk").mkdir()
    (tmp_path / "hk" / "horizontalpodautoscaler.yaml").write_text("stale\n")
    assert render.main(["--stage", "hk", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "hk").iterdir()) == [
        "analysistemplate.yaml", "destinationrule.yaml", "poddisruptionbudget.yaml", "podmonitor.yaml", "rollout.yaml",
        "service.yaml", "virtualservice.yaml"]


def test_one_stage_and_the_image_tag_from_ci(tmp_path):
    result = subprocess.run([sys.executable, "-m", "podserve.tooling.render", "--stage", "eu", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"CI_COMMIT_SHORT_SHA": "abc1234", "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["eu"]
    assert "image: registry.eu.example.com/like/text-direction:abc1234" in (tmp_path / "eu" / "rollout.yaml").read_text()


def test_print_images_lists_each_registry_and_writes_nothing(tmp_path):
    result = render_cli("--all", "--print-images", "--image-tag", "t1", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["registry.eu.example.com/like/text-direction:t1",
                                     "registry.hk.example.com/like/text-direction:t1",
                                     "registry.na.example.com/like/text-direction:t1"]
    assert not (tmp_path / "out").exists()


def test_make_render_writes_build_manifests_and_refuses_invalid_values(tmp_path):
    good = subprocess.run(["make", "-s", "render", f"OUT={tmp_path / 'good'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == sorted(STAGES)
    broken = tmp_path / "value.py"
    broken.write_text((REPO / "value.py").read_text().replace('memory = "8Gi"', 'memory = "8GB"'))
    bad = subprocess.run(["make", "-s", "render", f"VALUES={broken}", f"OUT={tmp_path / 'bad'}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "memory" in bad.stderr and "Error 2" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_the_kubernetes_validate_command_passes_core_kinds_and_only_warns_on_crd_kinds(tmp_path):
    """The CLI itself, as a person would run it; what it only warns about is exactly what the CRD schemas check."""
    from kube_schemas import crd_validators
    files = sorted(str(p) for p in GOLDEN.rglob("*.yaml"))
    versions = [arg for version in KUBE_VERSIONS for arg in ("-k", version)]
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", *versions, *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    docs = [doc for stage in read_tree(GOLDEN).values() for doc in stage]
    crd_kinds = {(d["apiVersion"], d["kind"]) for d in docs if (d["apiVersion"], d["kind"]) in crd_validators()}
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in crd_kinds]
    # grey and ab: Deployment, Service, PodDisruptionBudget; production: Service, PodDisruptionBudget
    assert sum(" passed for resource " in line for line in lines) == len(core) * len(KUBE_VERSIONS) == (3 * 2 + 2 * 3) * 2
    warned = {line.split("kind ")[1].split(" with")[0] for line in lines if line.startswith("WARN")}
    assert warned == {kind for _, kind in crd_kinds} == {"VirtualService", "DestinationRule", "PodMonitor", "Rollout",
                                                         "AnalysisTemplate"}
    assert not any(line.startswith("ERROR") for line in lines)
