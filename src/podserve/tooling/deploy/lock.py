"""One deploy of a service and stage at a time: a coordination.k8s.io Lease in the stage's namespace.

The lock is the Lease `podserve-deploy.<service>`, kept as client-go's leader election keeps
its Lease: the holder's identity in the spec, every write conditional on the resourceVersion
last seen (a lost race is a 409, never an overwrite), and time measured on each process's own
monotonic clock, never by comparing wall clocks across machines. The holder renews every third
of `leaseDurationSeconds` and deletes the Lease at the end (conditional on its uid and
resourceVersion). A second deploy waits up to the policy's wait, printing who holds it, then
refuses (exit 3) naming the holder. A Lease whose record has not changed for
`leaseDurationSeconds` as the waiting deploy observed it (its holder was killed) is free.
A holder that finds its Lease taken over, or that could not renew it for
`leaseDurationSeconds`, has lost the lock: `check()` raises LockLost, and the Lease is left
alone (it is the new holder's).
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from datetime import datetime, timezone

from podserve.tooling.deploy import failures
from podserve.tooling.deploy.errors import ClusterError, LockLost, Refused
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
        self.version: str | None = None  # the resourceVersion of our last write
        self.renewed_at = 0.0  # monotonic time of our last successful write
        self.lost: str | None = None  # why the lock is no longer ours
        self._observed: tuple[str, float] | None = None  # (another holder's resourceVersion, when first seen)
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

    def check(self) -> None:
        """Raise LockLost when the Lease is no longer ours (taken over, or not renewed in time)."""
        if self.lost is None and self.uid and time.monotonic() - self.renewed_at > self.lease_seconds:
            self.lost = (f"the deploy lock {self.namespace}/{self.name} was not renewed for "
                         f"{self.lease_seconds} s, so another deploy may hold it now")
        if self.lost:
            raise LockLost(self.lost)

    def release(self) -> None:
        """Stop renewing and delete the Lease if it is still ours (conditional on its uid and resourceVersion)."""
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=10)
        if self.uid and not self.lost:
            try:
                self.kube.delete(LEASES, self.namespace, self.name, uid=self.uid, resource_version=self.version)
            except ClusterError as exc:
                if exc.status != 409:  # 409: it changed since our last write; it is someone else's now
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
            self._took(self.kube.request("POST", LEASES.path(self.namespace), body=body))
            return None
        except ClusterError as exc:
            if exc.status != 409:
                raise
        current = self.kube.get(LEASES, self.namespace, self.name)
        if current is None:
            return self._try_take()
        if not self._expired(current):
            return current
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            taken = self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
        except ClusterError as exc:
            if exc.status == 409:  # someone else took it first
                return self.kube.get(LEASES, self.namespace, self.name) or current
            raise
        self.say(f"took over the deploy lock from {current['spec'].get('holderIdentity')}, which stopped renewing it")
        self._took(taken)
        return None

    def _took(self, lease: dict) -> None:
        self.uid, self.version = lease["metadata"]["uid"], lease["metadata"]["resourceVersion"]
        self.renewed_at = time.monotonic()

    def _expired(self, lease: dict) -> bool:
        """Whether another holder's Lease is free: no holder, or its record unchanged for its leaseDurationSeconds
        on this process's monotonic clock since this process first saw that record (client-go's observedTime)."""
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        version = lease["metadata"]["resourceVersion"]
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, time.monotonic())
        return time.monotonic() - self._observed[1] > (spec.get("leaseDurationSeconds") or 0)

    def _renew(self) -> None:
        """Renew the Lease with our last resourceVersion as precondition; a conflict by another holder loses it."""
        while not self._stop.wait(max(1.0, self.lease_seconds / 3)):
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": self.version,
                                 "labels": {"service": self.service, "stage": self.stage,
                                            "app.kubernetes.io/managed-by": "podserve-deploy"}},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                             "renewTime": _micro(datetime.now(timezone.utc))}}
            try:
                current = self.kube.get(LEASES, self.namespace, self.name)
                holder = ((current or {}).get("spec") or {}).get("holderIdentity")
                if current is None or holder != self.identity or current["metadata"]["uid"] != self.uid:
                    self.lost = (f"the deploy lock {self.namespace}/{self.name} was taken over by "
                                 f"{holder or 'nobody (deleted)'}")
                    return
                body["spec"]["acquireTime"] = current["spec"].get("acquireTime")
                self._took(self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body))
            except ClusterError as exc:  # a 409 is a write since our read: the next round reads it again
                self.say(f"warning: could not renew the deploy lock: {exc.message}")
                if time.monotonic() - self.renewed_at > self.lease_seconds:
                    self.lost = (f"the deploy lock {self.namespace}/{self.name} could not be renewed for "
                                 f"{self.lease_seconds} s ({exc.message}), so another deploy may hold it now")
                    return


def _micro(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
