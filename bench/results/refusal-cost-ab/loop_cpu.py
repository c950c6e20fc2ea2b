"""Loop-thread and process CPU under a retry-at-once storm, two checkouts' servers taken in turn.

Run from a checkout: PYTHONPATH=src:. <venv>/bin/python bench/results/refusal-cost-ab/loop_cpu.py NEW_SRC OLD_SRC
(each a checkout's src/; the example model must be in this checkout's model/). Writes loop-cpu.json here.
"""
import json, sys, tempfile, time
from pathlib import Path
from bench.closedloop import run_closed_loop
from bench.loadgen import request_wires
from bench.systems import start_ours, CLOCK_TICKS
from bench.workloads import FAST

def thread_cpu(pid, tid):
    f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLOCK_TICKS

LOGS = Path(tempfile.mkdtemp(prefix="loop-cpu-"))
out = []
for rnd in range(2):
    for name, src in (("new", sys.argv[1]), ("old", sys.argv[2])):
        server = start_ours(name, FAST, LOGS, src=Path(src))
        try:
            server.wait_ready()
            wires = request_wires(server.path, f"127.0.0.1:{server.port}", FAST.images())
            run_closed_loop("127.0.0.1", server.port, wires, 8, 3.0)
            pid = server.process.pid
            for c in (128, 256):
                server.wait_idle(); time.sleep(0.3)
                t0, p0 = thread_cpu(pid, pid), server.cpu_seconds()
                o = run_closed_loop("127.0.0.1", server.port, wires, c, 6.0)
                t1, p1 = thread_cpu(pid, pid), server.cpu_seconds()
                row = {"run": f"{name}-{rnd+1}", "c": c, "ok_rps": round(o.rate(200), 1), "refused_rps": round(o.rate(503), 1),
                       "ok_p99_ms": o.percentile_ms(200, 99), "refused_p50_ms": o.percentile_ms(503, 50),
                       "loop_thread_cores": round((t1 - t0) / o.seconds, 3), "process_cores": round((p1 - p0) / o.seconds, 3),
                       "client_cores": round(o.client_cpu_s / o.seconds, 3), "door_rate": server.gauge("podserve_refusal_rate")}
                print(json.dumps(row), flush=True); out.append(row)
        finally:
            server.stop()
(Path(__file__).parent / "loop-cpu.json").write_text(json.dumps(out, indent=1))
