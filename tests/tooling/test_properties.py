"""Property tests: any valid value.py renders manifests that pass every check; any invalid one fails cleanly."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_schemas import all_schema_errors
from podserve import memory_plan
from podserve.routes import RESERVED_SERVICE_NAMES
from podserve.tooling import output, quantity, render
from podserve.tooling.conf import load_conf
from podserve.tooling.values import FIELDS, pod_layout
from service_files import VALID, value_text

CONF = load_conf()
NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True).filter(
    lambda n: n not in RESERVED_SERVICE_NAMES)


@st.composite
def valid_services(draw) -> dict:
    gpu_num = draw(st.sampled_from([0, 1]))
    instances = draw(st.integers(1, 4))
    replicas = {name: draw(st.integers(1, 6)) for name in ("replicas", "ab_replicas")}
    regions = {name: draw(st.none() | st.integers(1, 6)) for name in ("hk_replicas", "eu_replicas", "na_replicas")}
    production = [r if r is not None else replicas["replicas"] for r in regions.values()]
    batch = draw(st.integers(1, 256))
    use_srv = draw(st.booleans())
    cpu = draw(st.integers(1, 16) | st.integers(1, 16000).map(lambda m: f"{m}m")
               | st.integers(1, 16000).map(lambda m: m / 1000))
    # The least memory whose plan holds for this pod (podserve/memory_plan.py): less is refused, naming memory.
    fields = {**{name: f.default for name, f in FIELDS.items()}, **VALID, "cpu": float(quantity.cpu_cores(cpu)),
              "gpu_num": gpu_num, "ins_num_per_gpu": instances, "memory": "1Gi"}
    least = memory_plan.smallest_memory(*pod_layout(fields, CONF))
    return {
        "service_name": draw(NAMES),
        "username": draw(st.sampled_from(CONF.teams)),
        "cpu": cpu,
        "memory": draw(st.integers(max(quantity.memory_bytes(CONF.platform.limits.min_memory), least) >> 20,
                                   100 * 1024).map(lambda mi: f"{mi}Mi")
                       | st.integers(max(1, -(-least >> 30)), 100).map(lambda g: f"{g}Gi")),
        "gpu_num": gpu_num,
        "ins_num_per_gpu": instances,
        "gpu_memory": draw(st.integers(1, 10 // instances)) if gpu_num else 0,
        **replicas, **regions,
        "max_replicas": draw(st.just(0) | st.integers(max(production), 64)),
        "autoscale_metric": draw(st.sampled_from(["queue_depth", "in_flight"])),
        "autoscale_target": draw(st.none() | st.integers(1, 100) | st.floats(0.5, 100).map(lambda f: round(f, 2))),
        "init_delay_second": draw(st.integers(1, 1800)),
        "use_srv": use_srv,
        "host_port": draw(st.integers(20000, 29999)) if use_srv else 0,
        "max_batch_size": batch,
        "queue_size": draw(st.integers(batch, 10_000)),
        "max_batch_delay_ms": draw(st.integers(0, 100) | st.floats(0, 100).map(lambda f: round(f, 3))),
        "request_timeout_ms": draw(st.integers(1, 600_000)),
        "drain_seconds": draw(st.integers(0, 300)),
    }


def run_render(path: Path, out: Path) -> tuple[int, str]:
    """Run the render command in this process; return its exit status and what it printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = render.main(["--all", "--values", str(path), "--out", str(out)])
    return code, err.getvalue()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_services())
def test_any_valid_value_py_renders_manifests_that_pass_every_check(fields):
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "value.py", Path(folder) / "out"
        path.write_text(value_text({**VALID, **fields}))
        rendered = render.render(path, conf=CONF).stages
        assert all_schema_errors([doc for docs in rendered.values() for doc in docs]) == []
        code, error = run_render(path, out)
        assert code == 0, error
        for stage, docs in rendered.items():
            for name, text in output.stage_files(docs).items():
                assert (out / stage / name).read_text() == text


#: (field, strategy of values that field must refuse)
CORRUPTIONS = [
    ("replicas", st.integers(max_value=0)),
    ("replicas", st.text(max_size=5)),
    ("memory", st.text(alphabet="0123456789GBgbMKi .", min_size=1, max_size=6).filter(
        # Kubernetes' own grammar takes "1." and ".5" as numbers, so "1.G" is a quantity, not a corruption.
        lambda t: not __import__("re").fullmatch(r"(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|[kMGT])?", t))),
    ("memory", st.integers(1, 10**12)),
    ("cpu", st.integers(max_value=0) | st.booleans() | st.text(alphabet="abc-", min_size=1, max_size=4)),
    ("username", st.text(min_size=1, max_size=10).filter(lambda t: t not in CONF.teams)),
    ("service_name", st.from_regex(r"[A-Z_0-9 ][a-zA-Z_]{0,8}", fullmatch=True)),
    ("gpu_num", st.integers(2, 100) | st.integers(max_value=-1) | st.floats(0.1, 0.9)),
    ("init_delay_second", st.integers(max_value=0) | st.integers(1801, 10**6)),
    ("max_batch_size", st.integers(max_value=0)),
    ("drain_seconds", st.floats(max_value=-0.01, allow_nan=False) | st.integers(301, 10**6)),
    ("use_srv", st.integers() | st.text(max_size=3)),
    ("request_timeout_ms", st.text(max_size=4) | st.floats(allow_nan=False)),
    ("hk_replicas", st.integers(max_value=0) | st.floats(allow_nan=False)),
    ("colour", st.integers()),
]


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(CORRUPTIONS).flatmap(lambda c: st.tuples(st.just(c[0]), c[1])))
def test_any_invalid_value_py_fails_cleanly_naming_the_field(corruption):
    field, value = corruption
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "value.py", Path(folder) / "out"
        path.write_text(value_text({**VALID, field: value}))
        code, error = run_render(path, out)
        assert code == 2
        assert f"{field}: " in error and "Nothing was written." in error
        assert not out.exists()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_any_text_as_value_py_never_crashes(text):
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "value.py", Path(folder) / "out"
        path.write_text(text)
        code, error = run_render(path, out)
        assert code == 2 and "Nothing was written." in error and not out.exists()
