"""make bench-gpu's own arithmetic: which processes hold a CUDA context, and the table that names the machine."""

from bench.gpu import cuda_contexts, markdown, parse_compute_apps
from bench.systems import log_name
from bench.workloads import FAST

COMPUTE_APPS = "4101, 744\n4230, 724\n4231, 724\n[N/A], [N/A]\n"  # nvidia-smi --query-compute-apps=pid,used_memory


def test_a_process_listed_as_holding_gpu_memory_is_one_cuda_context():
    holding = parse_compute_apps(COMPUTE_APPS)
    assert holding == {4101: 780.1, 4230: 759.2, 4231: 759.2}  # MiB as MB; the unreadable line left out
    assert cuda_contexts([4100, 4101, 4102, 4103], holding) == 1  # a split pod: only its model process holds one
    assert cuda_contexts([4229, 4230, 4231], holding) == 2  # Gunicorn's arbiter and two workers
    assert cuda_contexts([1, 2], {}) == 0


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
    assert "| 256 | ours: split (auto) | s | 8000.0 | 30.0 | 40.0 | 0 | 63.0 | 1.9 | 15.2, 0.4, 0.1 |" in text
    assert "ours: split (auto) 1; gunicorn 16; 17 on the GPU in all." in text
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
