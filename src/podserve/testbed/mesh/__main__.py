"""`make mesh`: one region's gateway (a real Envoy on 127.0.0.1:8080) in front of every stage's pods.

    python -m podserve.testbed.mesh serve [--values value.py] [--region hk] [--pods 3] [--port 8080]
    python -m podserve.testbed.mesh rollout     # restart the running mesh's production pods, one at a time

`serve` writes build/mesh/state.json (Envoy's admin address; each pod's stage, pid and port)
and runs until Ctrl-C, which stops everything it started. `rollout` sends the running mesh
SIGHUP (its pid is in state.json), and it replaces its production pods as a Deployment
rollout does, printing each step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from podserve.testbed.mesh.mesh import Mesh
from podserve.testbed.processes import StartError
from podserve.tooling.valuefile import ValueFileError

STATE = Path("build/mesh/state.json")


def serve(args) -> int:
    work = Path(args.work)
    mesh = Mesh([Path(args.values)], work, region=args.region, pods=args.pods, port=args.port)
    stop = threading.Event()
    rollout = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: rollout.set())
    try:
        mesh.start()
    except (StartError, ValueFileError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        write_state(mesh, work / "state.json")
        production = next(w.stage for w in mesh.workloads if mesh.conf.stages[w.stage].production)
        paths = sorted({route.match_value for vh in mesh.config.virtual_hosts for route in vh.routes
                        if route.match_kind == "exact"})
        print(f"The {args.region} gateway (Envoy) listens on http://127.0.0.1:{mesh.port}; admin on "
              f"http://{mesh.envoy.admin}; {len(mesh.state()['pods'])} pods; state in {work / 'state.json'}.\n"
              f"Routes: {', '.join(paths)} (POST them as the README's \"Try it\" shows)\n"
              f"Rolling restart of {production}: python -m podserve.testbed.mesh rollout. Ctrl-C stops everything.",
              flush=True)
        while not stop.is_set():
            if rollout.wait(0.5):
                rollout.clear()
                mesh.rolling_restart(production, on_step=lambda m: print(f"rollout: {m}", flush=True))
                write_state(mesh, work / "state.json")
                print("rollout: done", flush=True)
    finally:
        print("stopping the gateway and the pods", flush=True)
        mesh.stop()
    return 0


def write_state(mesh: Mesh, path: Path) -> None:
    state = dict(mesh.state(), pid=os.getpid())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def rollout(args) -> int:
    path = Path(args.work) / "state.json"
    try:
        pid = json.loads(path.read_text())["pid"]
        os.kill(pid, signal.SIGHUP)
    except (OSError, KeyError, ValueError) as exc:
        print(f"Error: no running mesh to restart ({path}: {exc}); start one with `make mesh`", file=sys.stderr)
        return 2
    print(f"asked the mesh (pid {pid}) for a rolling restart; it prints each step")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podserve.testbed.mesh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="start the gateway and the pods until Ctrl-C")
    run.add_argument("--values", default="value.py")
    run.add_argument("--region", default="hk")
    run.add_argument("--pods", type=int, default=3, help="production pods (grey and ab get one each)")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--work", default=str(STATE.parent))
    roll = commands.add_parser("rollout", help="restart the running mesh's production pods one at a time")
    roll.add_argument("--work", default=str(STATE.parent))
    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else rollout(args)


if __name__ == "__main__":
    sys.exit(main())
