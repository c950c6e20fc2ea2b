"""Start the real server (`python -m podserve.runtime`, in a subprocess, on loopback) and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from podserve.runtime.core.logs import ACCESS_LOGGER
from podserve.settings import ServingSettings
from podserve.testbed.processes import free_port, poll_until
from podserve.testbed.server_logs import runtime_faults

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class Server:
    """A server process under test; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, log_path: Path, wrapper: tuple[str, ...] = (), **settings):
        settings.setdefault("drain_seconds", 0)  # tests that shut down on purpose set their own
        self.port = free_port()
        self.log_path = log_path
        config = ServingSettings(host="127.0.0.1", port=self.port, **{k: v for k, v in settings.items()
                                                                       if k in ServingSettings.names()})
        env = {**os.environ, **config.to_env(), **{k: str(v) for k, v in settings.items()
                                                   if k not in ServingSettings.names()}}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(HERE)])
        self.service = config.service_name
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([*wrapper, sys.executable, "-m", "podserve.runtime"], env=env, cwd=REPO,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.session = requests.Session()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def api(self) -> str:
        return self.url(f"/api/{self.service}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url("/api/ping"), timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow on a loaded machine: again
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready within {timeout}s:\n{self.log()}")

    def post(self, body=None, *, data: bytes | None = None, headers=None, path: str | None = None, **kwargs):
        return self.session.post(path and self.url(path) or self.api, json=body, data=data, headers=headers,
                                 timeout=30, **kwargs)

    def metrics(self) -> dict[str, float]:
        """Return every sample on /metrics as {'name{labels}': value}."""
        return self.metrics_from_text(requests.get(self.url("/metrics"), timeout=5).text)

    @staticmethod
    def metrics_from_text(text: str) -> dict[str, float]:
        """Every sample of a Prometheus text page as {'name{labels}': value}."""
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples

    def metric_sum(self, name: str) -> float:
        """Sum a metric's samples over every label set."""
        return sum(v for k, v in self.metrics().items() if re.fullmatch(rf"{name}(\{{.*\}})?", k))

    def log(self) -> str:
        if not self._log.closed:  # closed once stopped
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def runtime_faults(self) -> list[str]:
        """The faults of the runtime's own that its log records (podserve/testbed/server_logs.py)."""
        return runtime_faults(self.log())

    def access_records(self, count: int, timeout: float = 10.0) -> list[dict]:
        """The access log's records once there are `count`: the server writes a request's line just after its
        answer (as nginx's log phase does), so a caller holding the answer may read the log before the line."""
        records: list[dict] = []

        def enough() -> bool:
            records[:] = [r for r in self.log_records() if r.get("logger") == ACCESS_LOGGER]
            return len(records) >= count

        poll_until(enough, what=f"{count} access-log line(s)", timeout=timeout, every=0.02)
        return records

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.terminate()
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()
            self.session.close()
