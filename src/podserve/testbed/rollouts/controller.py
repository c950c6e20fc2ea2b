"""Argo Rollouts' controller (built by build.py) as a plain process against a control plane, as the platform chart's
ServiceAccount.

    controller = RolloutsController.start(plane, work)   # rollouts-controller with a token of the chart's account
    controller.metrics()                                  # its /metrics text (rollout_info, analysis_run_info, ...)
    controller.plugin("status", "svc", "-n", "ns")        # kubectl-argo-rollouts with the same credentials
    controller.stop()

It runs with the chart's ServiceAccount (templates/rollouts.yaml: a TokenRequest made with the admin kubeconfig), so
the chart's RBAC is what the tests show it needs; `--istio-api-version=v1` as the chart runs it; leader election off
(one process). Argo binds its metrics and healthz ports on 0.0.0.0 with no flag to change that: both take free ports.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import yaml

from podserve.testbed.cluster.accounts import account_kubeconfig
from podserve.testbed.processes import Program, built, free_port
from podserve.testbed.rollouts import build

CHART_VALUES = Path(__file__).resolve().parents[4] / "charts" / "podserve-platform" / "values.yaml"
ACCOUNT = "argo-rollouts"
START_TIMEOUT_SECONDS = 60.0


def chart_settings() -> dict:
    """The chart's `rollouts` values (namespace, ports, image)."""
    return yaml.safe_load(CHART_VALUES.read_text())["rollouts"]


class RolloutsController:
    """One rollouts-controller process, its credentials and ports."""

    def __init__(self, program: Program, kubeconfig: Path, metrics_port: int, healthz_port: int, binaries: Path):
        self.program, self.kubeconfig, self.binaries = program, kubeconfig, binaries
        self.metrics_port, self.healthz_port = metrics_port, healthz_port

    @classmethod
    def start(cls, plane, work: Path, binaries: Path | None = None, namespace: str | None = None,
              extra_args: tuple[str, ...] = ()) -> "RolloutsController":
        """Start the controller against `plane` as the chart's account and wait until it serves its metrics."""
        binaries = binaries or build.ENGINE.binaries_dir()
        binary = built(binaries / build.CONTROLLER, "rollouts-controller", "argo-rollouts")
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        namespace = namespace or chart_settings()["namespace"]
        kubeconfig = account_kubeconfig(plane, namespace, ACCOUNT, work / "kubeconfig", seconds=7200,
                                        default_namespace=namespace)
        metrics, healthz = free_port(), free_port()
        program = Program("rollouts-controller", [
            "setpriv", "--pdeathsig", "KILL", "--", binary, f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            "--istio-api-version=v1", f"--metricsPort={metrics}", f"--healthzPort={healthz}", "--loglevel=info",
            "--logformat=text", *extra_args],
            work / "rollouts-controller.log",
            env={"PATH": "/usr/bin:/bin", "HOME": str(work), "POD_NAMESPACE": namespace}, cwd=work)
        controller = cls(program, kubeconfig, metrics, healthz, binaries)
        try:
            program.wait_until(lambda: "controller_info" in controller.metrics() or
                               "rollout_info" in controller.metrics(), START_TIMEOUT_SECONDS, "/metrics served")
        except BaseException:
            program.stop()
            raise
        return controller

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:  # noqa: S310
            return reply.read().decode()

    def plugin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run kubectl-argo-rollouts with the controller's credentials (what an operator's plugin does)."""
        return subprocess.run([self.binaries / build.PLUGIN, f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=timeout)

    def log_lines(self, word: str) -> list[str]:
        return [line for line in self.program.log_tail(100000).splitlines() if word in line]

    def check_alive(self) -> None:
        self.program.check_alive()

    def stop(self) -> None:
        self.program.stop(timeout=10)
