"""An in-memory stand-in for deploy.kube.Kube, for driving commands.apply and rollback without a cluster.

It keeps objects by kind, namespace and name, applies as server-side apply would for the
tool's needs (the object replaced; a partial apply by another field manager kept out), lists
by label selector, takes Leases (POST, 409 when held; PUT), and records every write. `fail`
is called before each write (apply, delete) with the verb and the object, and may raise: a
ClusterError for an API error, Terminated for SIGTERM. The rollout's wait is not simulated:
`Deploy` replaces rollout.wait by a queue of verdicts.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

from podserve.tooling.conf import load_conf, load_deploy_policy
from podserve.tooling.deploy import commands, diagnosis, pipeline, rollout
from podserve.tooling.deploy.errors import ClusterError
from podserve.tooling.deploy.history import History
from podserve.tooling.deploy.kube import CONFIGMAPS, LEASES, MANAGED, Kind, kind_of
from podserve.tooling.deploy.target import Target, from_values
from podserve.tooling.rollout import workload_kind

REPO = Path(__file__).resolve().parents[2]


def _matches(labels: dict, selector: str | None) -> bool:
    return all(labels.get(key) == value for key, value in
               (part.split("=", 1) for part in (selector or "").split(",") if part))


class FakeKube:
    """Objects in a dict; `writes` lists ('apply' | 'delete', kind, name) in order; `fail(verb, doc)` may raise."""

    def __init__(self):
        self.store: dict[tuple[str, str | None, str], dict] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.fail = lambda verb, doc: None
        self._versions = itertools.count(1)

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict | None:
        found = self.store.get((kind.plural, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind: Kind, namespace: str | None = None, selector: str | None = None, field_selector=None) -> dict:
        items = [copy.deepcopy(o) for (plural, ns, _), o in self.store.items()
                 if plural == kind.plural and namespace in (None, ns)
                 and _matches((o.get("metadata") or {}).get("labels") or {}, selector)]
        return {"items": items, "metadata": {"resourceVersion": str(next(self._versions))}}

    def apply(self, doc: dict, dry_run: bool = False, force: bool = True, manager: str = "podserve-deploy") -> dict:
        kind = kind_of(doc) if doc.get("kind") in MANAGED else {"ConfigMap": CONFIGMAPS}[doc["kind"]]
        meta = doc["metadata"]
        key = (kind.plural, meta.get("namespace"), meta["name"])
        if dry_run:
            return copy.deepcopy(doc)
        self.fail("apply", doc)
        if manager != "podserve-deploy" and key in self.store:  # the replicas handover: nothing else changes
            return copy.deepcopy(self.store[key])
        stored = copy.deepcopy(doc)
        stored["metadata"].update(uid=f"uid-{meta['name']}", resourceVersion=str(next(self._versions)))
        self.store[key] = stored
        self.writes.append(("apply", doc["kind"], meta["name"]))
        return copy.deepcopy(stored)

    def delete(self, kind: Kind, namespace: str | None, name: str, uid=None, propagation="Background",
               resource_version=None) -> bool:
        self.fail("delete", {"kind": kind.plural, "metadata": {"name": name, "namespace": namespace}})
        self.writes.append(("delete", kind.plural, name))
        return self.store.pop((kind.plural, namespace, name), None) is not None

    def request(self, method: str, path: str, query=None, body=None, **_options) -> dict:
        """Leases only: POST creates (409 when one exists), PUT replaces."""
        meta = body["metadata"]
        key = (LEASES.plural, meta["namespace"], meta["name"])
        if method == "POST" and key in self.store:
            raise ClusterError(409, f"leases.coordination.k8s.io {meta['name']!r} already exists")
        if method not in ("POST", "PUT"):
            raise NotImplementedError(f"{method} {path}")
        stored = copy.deepcopy(body)
        stored["metadata"].update(uid="lease-uid", resourceVersion=str(next(self._versions)))
        self.store[key] = stored
        return copy.deepcopy(stored)

    def logs(self, *_args, **_kwargs) -> str:
        return ""

    def wait_for_change(self, *_args, **_kwargs) -> None:
        return None


@dataclass
class Deploy:
    """The example value.py's service in production stage hk, deployed with `commands.apply` against a FakeKube.

    `verdicts` are what rollout.wait answers, in order (the deploy's wait, then its rollback's); `said` holds every
    line the tool printed and `sent` every notification's body (notify.send itself runs when `notify` is true).
    """

    monkeypatch: object
    stage: str = "hk"
    notify: bool = False
    kube: FakeKube = field(default_factory=FakeKube)
    verdicts: list = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    sent: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.conf = load_conf()
        self.policy = load_deploy_policy()
        self.monkeypatch.setattr(commands, "check_freeze", lambda *_a, **_k: "")  # today may be in a freeze window
        for name in (commands.JOB_TIMEOUT_VARIABLE, commands.JOB_STARTED_VARIABLE,  # a test run in a CI job
                     pipeline.PIPELINE_ID_VARIABLE, pipeline.COMMIT_VARIABLE):
            self.monkeypatch.delenv(name, raising=False)
        self.monkeypatch.setattr(rollout, "wait", lambda *_a, **_k: self.verdicts.pop(0))
        if not self.notify:
            self.monkeypatch.setattr(commands.notify, "send", lambda body, **_k: self.sent.append(body) or True)
        rendered = self.target("v0")
        self.service, self.team, self.namespace = rendered.service, rendered.team, rendered.namespace

    def target(self, tag: str) -> Target:
        return from_values(REPO / "value.py", self.conf, self.conf.stages[self.stage], tag)

    def apply(self, tag: str, *verdicts: str, **options) -> int:
        """Run `apply` of image tag `tag`; each verdict is 'serving' or 'failed'."""
        self.verdicts[:] = [diagnosis.Verdict(diagnosis.SERVING if v == "serving" else diagnosis.FAILED,
                                              "1/1 ready" if v == "serving" else "The server was OOMKilled")
                            for v in verdicts]
        self.said.clear()
        self.sent.clear()
        opts = replace(commands.Options(lock_wait_seconds=1), **options)
        return commands.apply(self.kube, self.target(tag), self.conf, self.policy, opts, self.said.append)

    def rollback(self, *verdicts: str) -> int:
        self.verdicts[:] = [diagnosis.Verdict(diagnosis.SERVING, "1/1 ready") for _ in verdicts]
        self.said.clear()
        self.sent.clear()
        return commands.rollback(self.kube, Target(self.service, self.conf.stages[self.stage], self.team), self.conf,
                                 commands.Options(lock_wait_seconds=1), self.said.append)

    def history(self) -> History:
        return History.load(self.kube, self.namespace, self.service, self.stage)

    def live(self, kind: str) -> dict | None:
        return self.kube.get(MANAGED[kind], self.namespace, self.service)

    def image(self) -> str:
        return self.live(workload_kind(self.conf.stages[self.stage]))["spec"]["template"]["spec"]["containers"][0][
            "image"]

    @property
    def output(self) -> str:
        return "\n".join(self.said)
