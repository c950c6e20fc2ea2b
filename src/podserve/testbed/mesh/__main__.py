"""`make mesh`: one region's gateway (a real Envoy fed by istiod) in front of every stage's pods, on 127.0.0.1:8080.

    python -m podserve.testbed.mesh serve [--values value.py] [--region hk] [--pods 3] [--port 8080]
    python -m podserve.testbed.mesh rollout     # restart the running mesh's production pods, one at a time

`serve` starts a control plane (podserve.testbed.cluster, free ports) and istiod against it, then the mesh; it
forwards 127.0.0.1:--port to the gateway's HTTPS server (TLS left out), writes build/mesh/state.json (the gateway's
and Envoy's addresses, istiod's debug page; each pod's stage, pid and address) and runs until Ctrl-C, which stops
everything it started. `rollout` sends the running mesh SIGHUP (its pid is in state.json), and it replaces its
production pods as a Deployment rollout does, printing each step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import shutil
import tempfile
import time

from podserve.testbed.cluster import build as cluster_build
from podserve.testbed.cluster.controlplane import start as start_control_plane
from podserve.testbed.mesh import build as istiod_build
from podserve.testbed.mesh.istiod import Istiod, plaintext_gateway
from podserve.testbed.mesh.mesh import Mesh
from podserve.testbed.processes import StartError
from podserve.tooling.valuefile import ValueFileError

STATE = Path("build/mesh/state.json")


def serve(args) -> int:
    work = Path(args.work)
    stop = threading.Event()
    rollout = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: rollout.set())
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="podserve-mesh-"))
    plane = istiod = mesh = None
    try:
        cluster_build.build()
        istiod_build.build()
        print("starting a control plane (podserve.testbed.cluster, free ports) and istiod ...", flush=True)
        plane = start_control_plane(scratch / "plane", region=args.region)
        gateway = next(s.gateway for s in _conf().stages.values() if s.region == args.region)
        plaintext_gateway(plane.api_client(), *gateway.split("/"))
        istiod = Istiod.start(plane, scratch / "istiod")
        mesh = Mesh([Path(args.values)], work, plane=plane, istiod=istiod, region=args.region, pods=args.pods)
        mesh.start()
        port = mesh.forward(args.port)
    except (StartError, ValueFileError, ValueError, cluster_build.BuildError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        for part in (mesh, istiod, plane):
            if part is not None:
                part.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        return 2
    try:
        write_state(mesh, work / "state.json")
        production = next(w.stage for w in mesh.workloads if mesh.conf.stages[w.stage].production)
        paths = sorted({match["uri"]["exact"] for doc in mesh.objects if doc["kind"] == "VirtualService"
                        for http in doc["spec"]["http"] for match in http["match"]
                        if "exact" in match["uri"] and not match.get("headers")})
        print(f"The {args.region} gateway (Envoy, fed by istiod) is up in {time.monotonic() - started:.0f} s: its "
              f"HTTPS server's routes (TLS left out) on http://127.0.0.1:{port}, forwarded to {mesh.url}; its port 80 "
              f"(301 to https, as in production) at {mesh.plaintext_url}; admin on http://{mesh.envoy.admin}; "
              f"{len(mesh.state()['pods'])} pods; state in {work / 'state.json'}.\n"
              f"Routes: {', '.join(paths)} (POST them as the README's \"Try it\" shows)\n"
              f"Rolling restart of {production}: python -m podserve.testbed.mesh rollout. Ctrl-C stops everything.",
              flush=True)
        while not stop.is_set():
            if rollout.wait(0.5):
                rollout.clear()
                mesh.rolling_restart(production, on_step=lambda m: print(f"rollout: {m}", flush=True))
                write_state(mesh, work / "state.json")
                print("rollout: done", flush=True)
            istiod.check_alive()
    finally:
        print("stopping the gateway, the pods, istiod and the control plane", flush=True)
        mesh.stop()
        istiod.stop()
        plane.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _conf():
    from podserve.tooling.conf import load_conf

    return load_conf()


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
