"""One deploy of a service and stage at a time: a coordination.k8s.io Lease in the stage's namespace.

The lock is the Lease `podserve-deploy.<service>`; its holder renews it while the deploy
runs and deletes it at the end. A second deploy waits up to the policy's wait, printing
who holds it, then refuses (exit 3) naming the holder. A Lease its holder stopped renewing
(the job was killed) is free once `leaseDurationSeconds` have passed without renewal.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

from podserve.tooling.deploy import failures
from podserve.tooling.deploy.errors import ClusterError, Refused
from podserve.tooling.deploy.kube import LEASES, Kube


def lease_name(service: str) -> str:
    """Return the name of a service's deploy Lease (one per namespace, so one per stage)."""
    return f"podserve-deploy.{service}"


def holder_identity() -> str:
    """Return who is deploying: the CI job's URL when CI runs it, else user@host, with the process id."""
    who = os.environ.get("CI_JOB_URL") or os.environ.get("CI_PIPELINE_URL")
    if not who:
        try:
            who = f"{getpass.getuser()}@{socket.gethostname()}"
        except (KeyError, OSError):
            who = socket.gethostname()
    return f"{who} (pid {os.getpid()})"


class DeployLock:
    """The Lease held for one deploy: `with DeployLock(...)` takes it (waiting), renews it, and frees it."""

    def __init__(self, kube: Kube, namespace: str, service: str, stage: str, wait_seconds: float,
                 lease_seconds: int, say=print, poll_seconds: float = 2.0):
        self.kube, self.namespace, self.service, self.stage = kube, namespace, service, stage
        self.wait_seconds, self.lease_seconds, self.say, self.poll = wait_seconds, lease_seconds, say, poll_seconds
        self.name = lease_name(service)
        self.identity = holder_identity()
        self.uid: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> "DeployLock":
        self.acquire()
        return self

    def __exit__(self, *_exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the Lease, waiting while another live deploy holds it; Refused when the wait is over."""
        deadline = time.monotonic() + self.wait_seconds
        announced = None
        while True:
            lease = self._try_take()
            if lease is None:
                break
            holder = (lease.get("spec") or {}).get("holderIdentity") or "?"
            since = (lease.get("spec") or {}).get("acquireTime") or "?"
            if time.monotonic() >= deadline:
                raise Refused(failures.LOCK_HELD, f"{self.namespace}/{self.name} has been held by {holder} since "
                              f"{since}; waited {self.wait_seconds:.0f} s")
            if holder != announced:
                self.say(f"waiting for the deploy lock {self.namespace}/{self.name}, held by {holder} since {since} "
                         f"(up to {self.wait_seconds:.0f} s)")
                announced = holder
            time.sleep(self.poll)
        self._renewer = threading.Thread(target=self._renew, name="deploy-lock-renewer", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stop renewing and delete the Lease (only ours: the delete is conditional on its uid)."""
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=10)
        if self.uid:
            try:
                self.kube.delete(LEASES, self.namespace, self.name, uid=self.uid)
            except ClusterError as exc:
                if exc.status != 409:  # 409: someone took it after ours expired; it is theirs now
                    self.say(f"warning: could not free the deploy lock: {exc.message}")
            self.uid = None

    def _try_take(self) -> dict | None:
        """Create the Lease, or take it over when expired; return the holder's Lease when it is held."""
        now = _micro(datetime.now(timezone.utc))
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"service": self.service, "stage": self.stage,
                                        "app.kubernetes.io/managed-by": "podserve-deploy"}},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                         "acquireTime": now, "renewTime": now}}
        try:
            created = self.kube.request("POST", LEASES.path(self.namespace), body=body)
            self.uid = created["metadata"]["uid"]
            return None
        except ClusterError as exc:
            if exc.status != 409:
                raise
        current = self.kube.get(LEASES, self.namespace, self.name)
        if current is None:
            return self._try_take()
        if not _expired(current):
            return current
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            taken = self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
        except ClusterError as exc:
            if exc.status == 409:  # someone else took it first
                return self.kube.get(LEASES, self.namespace, self.name) or current
            raise
        self.say(f"took over the deploy lock from {current['spec'].get('holderIdentity')}, which stopped renewing it")
        self.uid = taken["metadata"]["uid"]
        return None

    def _renew(self) -> None:
        while not self._stop.wait(max(1.0, self.lease_seconds / 3)):
            try:
                current = self.kube.get(LEASES, self.namespace, self.name)
                if not current or current["metadata"]["uid"] != self.uid:
                    self.say("warning: the deploy lock was taken away; another deploy may run at the same time")
                    return
                current["spec"]["renewTime"] = _micro(datetime.now(timezone.utc))
                self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=current)
            except ClusterError as exc:
                self.say(f"warning: could not renew the deploy lock: {exc.message}")


def _expired(lease: dict) -> bool:
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not spec.get("holderIdentity") or not renewed:
        return True
    renewed_at = datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    return datetime.now(timezone.utc) > renewed_at + timedelta(seconds=spec.get("leaseDurationSeconds") or 0)


def _micro(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
