"""make bench-gpu's own arithmetic: which processes hold a CUDA context, and the table that names the machine."""

from bench.gpu import MOST_CORES, POD, cuda_contexts, decode_bound, layouts, markdown, parse_compute_apps
from bench.pod_split import STAGES, stage_means
from bench.systems import log_name
from bench.workloads import FAST, REPO
from podserve import memory_plan
from podserve.runtime.processes.layout import model_bytes
from podserve.settings import ServingSettings
from podserve.tooling.serve_local import local_environment

COMPUTE_APPS = "4101, 744\n4230, 724\n4231, 724\n[N/A], [N/A]\n"  # nvidia-smi --query-compute-apps=pid,used_memory


def test_a_process_listed_as_holding_gpu_memory_is_one_cuda_context():
    holding = parse_compute_apps(COMPUTE_APPS)
    assert holding == {4101: 780.1, 4230: 759.2, 4231: 759.2}  # MiB as MB; the unreadable line left out
    assert cuda_contexts([4100, 4101, 4102, 4103], holding) == 1  # a split pod: only its model process holds one
    assert cuda_contexts([4229, 4230, 4231], holding) == 2  # Gunicorn's arbiter and two workers
    assert cuda_contexts([1, 2], {}) == 0


def test_each_pod_the_benchmark_runs_on_a_16_core_gpu_machine_plans_its_memory():
    """A pod whose memory plan holds no request body does not start (runtime/main.py), and one that cannot take its
    largest refuses those: value.py's 8Gi holds a 4-core pod, not 16 decoders."""
    environment = local_environment(str(REPO / "value.py"), {})  # what start_ours starts from
    settings = ServingSettings.from_env({**environment, **POD, "PODSERVE_CPU": str(MOST_CORES)})
    weights = model_bytes(str(REPO / FAST.model_path))
    for name, decoders in layouts(MOST_CORES).items():
        plan = memory_plan.plan(settings, int(decoders), True, weights, cores=MOST_CORES)
        assert plan.problems() == [], (name, plan.problems())


def _results() -> dict:
    """A run on a lent H200 with one point measured and the last skipped."""
    row = {"c": 256, "system": "ours: split (auto)", "setup": "s", "rps": 8000.0, "p50_ms": 30.0, "p99_ms": 40.0,
           "errors": 0, "mean_batch": 63.0, "cpu_ms_per_request": 1.9, "server_cores": 15.2, "wrk_cores": 0.4,
           "other_cores": 0.1}
    return {"where": "GPU present", "command": "make bench-gpu", "wall_seconds": 200.0, "date": "today",
            "machine": {"gpu": ["GPU 0: NVIDIA H200 (UUID: x)"], "hostname": "gpu-7", "cpu": "Xeon", "cores": 16,
                        "memory_gib": 125.9, "python": "3.12", "onnxruntime": "1.31.1", "wrk": "wrk 4.1"},
            "load_average_at_start": [0.1, 0.1, 0.1], "model": "m", "handler": "h",
            "pod": {"PODSERVE_CPU": "16", "PODSERVE_MAX_BATCH_SIZE": "64"}, "gunicorn_workers": 16,
            "skipped": [256], "points": [row], "cuda_contexts": {"ours: split (auto)": 1, "gunicorn": 16},
            "gpu_processes": {str(pid): 700.0 for pid in range(17)}, "processes": {}}


def test_the_table_names_the_gpu_the_host_and_each_system_s_contexts():
    results = _results()
    text = markdown(results)
    assert text.startswith("# GPU benchmark on GPU 0: NVIDIA H200 (UUID: x):")
    assert "- Machine: gpu-7: GPU 0: NVIDIA H200" in text and "our pod: cpu=16, max_batch_size=64" in text
    assert "| 256 | ours: split (auto) | s | 8000.0 | 30.0 | 40.0 | 0 | 63.0 | 1.9 | 15.2, 0.4, 0.1 | n/a | n/a | n/a |" \
        in text
    assert "ours: split (auto) 1; gunicorn 16; 17 on the GPU in all." in text
    assert "Answers that were errors" not in text
    results["points"][0]["errors"] = 6419
    assert "**Answers that were errors or no answer** (wrk's non-2xx and socket errors; the req/s beside them counts " \
           "them too): ours: split (auto) at c=256 (6419)." in markdown(results)
    assert "Skipped, the time budget spent: c=256." in text


def test_a_system_that_cannot_start_is_named_and_the_others_go_on(tmp_path):
    import sys

    from bench.gpu import _started
    from bench.systems import Server, free_port

    results, servers = {}, []

    def start():
        return Server("ours: split (auto)", "ours", [sys.executable, "-c", "raise SystemExit(3)"], {}, free_port(),
                      "svc", tmp_path / log_name(FAST, "ours: split (auto)"), "")

    assert _started("ours: split (auto)", start, servers, str(tmp_path), results) is None
    assert "exited with 3" in results["failed"]["ours: split (auto)"]
    assert len(servers) == 1 and servers[0].stop() == 3  # started, so stopped with the rest
    assert "**ours: split (auto) failed** (left out from then on): ours: split (auto) exited with 3" in markdown(
        {**_results(), "failed": results["failed"]})


def test_a_server_s_log_is_named_in_the_characters_a_lent_machine_hands_back():
    assert log_name(FAST, "ours: split (auto)") == "fast-ours-split-auto.log"
    assert log_name(FAST, "gunicorn") == "fast-gunicorn.log"


def test_the_decode_bound_is_what_the_cores_left_to_the_pod_decode_alone():
    row = {"rps": 8000.0, "machine_cores": 16, "wrk_cores": 0.8, "other_cores": 0.2}
    # 1,600 requests a second a core decoded alone; 15 cores left to the pod: a bound of 24,000, 8,000 a third of it.
    assert decode_bound(row, 1600.0, 16) == {"decode_bound_rps": 24000.0, "decode_bound_fraction": 0.333}
    # on a bigger machine the pod still has only its own cores
    assert decode_bound({**row, "machine_cores": 64}, 1600.0, 16)["decode_bound_rps"] == 25600.0
    assert decode_bound({"rps": 8000.0}, 1600.0, 16) == {}  # windows that did not read the machine


def test_a_request_s_time_in_the_pod_splits_by_stage_from_the_histograms_over_a_point():
    request, queued, predict = (stage for stage, _ in STAGES)
    before = {request: (10.0, 1000.0), queued: (4.0, 1000.0), predict: (1.0, 40.0)}
    after = {request: (40.0, 2000.0), queued: (14.0, 2000.0), predict: (1.25, 140.0)}
    # 1,000 requests took 30 s in the pod (30 ms each), waited 10 s queued (10 ms each), 100 calls ran 0.25 s.
    assert stage_means(before, after) == {request: 30.0, queued: 10.0, predict: 2.5}
    assert stage_means(after, after) == {}  # nothing answered in between: no mean
    results = _results()
    results["points"][0].update(stage_ms={request: 30.0, queued: 10.0, predict: 2.5}, decode_bound_rps=24000.0,
                                decode_bound_fraction=0.333, role_cpu_ms_per_request={"front": 0.1, "decoder": 0.8})
    results["decode_alone"] = {"processes": 16, "seconds": 5.0, "rps": 25600.0}
    text = markdown(results)
    assert "| 24000.0 | 0.333 | front 0.1, decoder 0.8 |" in text
    assert "in 16 processes at once for 5 s before the servers started: 25600 requests/s, 1600 a core" in text
    assert "| 256 | ours: split (auto) | 30.0 | 30.0 | 10.0 | 2.5 |" in text
