"""Revisions of a service's stage, kept in the cluster: the objects of the current and the previous deploy.

A ConfigMap `<service>.deploy-history` in the stage's namespace holds the revision number,
the image, who applied it and when, the GitLab pipeline and commit it came from (pipeline.py),
and the full set of objects as applied (not as the server defaulted them) for the current and
the previous revision, and, while a deploy runs,
the revision it is applying (`pending`): one still there at the next start was never
finished (its deploy was killed, or its rollback did not finish; drift.py reports it), and
beside it the set that deploy rolls back to (`restore`), so that `rollback` can put back what
ran before it. A rollback re-applies the previous set and prunes what it lacks, so it
restores every object, not only the ReplicaSet. Before the first recorded deploy, the
previous set is read from the live objects of the service and stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

from podserve.tooling.deploy.kube import CONFIGMAPS, Kube

#: Metadata the server adds that must not be applied back.
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
                    "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences", "finalizers")
_SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision", "kubectl.kubernetes.io/last-applied-configuration")


def history_name(service: str) -> str:
    return f"{service}.deploy-history"


@dataclass
class Revision:
    """One applied set: its number, image, who and when, the GitLab pipeline and commit it came from, and the objects.

    `pipeline` ($CI_PIPELINE_ID) and `commit` ($CI_COMMIT_SHA) are None and "" when the tool ran outside CI, or
    the entry was written before they were recorded; a rollback keeps them, as it puts the same revision back.
    """

    number: int
    objects: list[dict]
    image: str = ""
    applied_by: str = ""
    applied_at: str = ""
    reason: str = ""
    pipeline: int | None = None
    commit: str = ""
    #: While the revision runs as a canary (pending): its steps, the step and weights now, its phase and every
    #: analysis (canary.py); kept once recorded, as what it went through.
    canary: dict | None = None
    #: Why production took it without grey's pass, and who said so (PODSERVE_VERDICT_OVERRIDE, $GITLAB_USER_LOGIN).
    verdict_override: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Revision | None":
        """Read a stored revision; entries of older tools lack later fields, and fields this one does not know are
        left out, so a history outlives the tool that wrote it."""
        if not text:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass
class History:
    """The current and previous revision of one service's stage."""

    service: str
    stage: str
    namespace: str
    current: Revision | None = None
    previous: Revision | None = None
    labels: dict = field(default_factory=dict)
    pending: Revision | None = None
    restore: Revision | None = None  # what a rollback of `pending` puts back (number 0: unrecorded live objects)

    @classmethod
    def load(cls, kube: Kube, namespace: str, service: str, stage: str) -> "History":
        found = kube.get(CONFIGMAPS, namespace, history_name(service))
        data = (found or {}).get("data") or {}
        return cls(service, stage, namespace, Revision.from_json(data.get("current")),
                   Revision.from_json(data.get("previous")), pending=Revision.from_json(data.get("pending")),
                   restore=Revision.from_json(data.get("restore")))

    def begin(self, kube: Kube, revision: Revision, restore: Revision | None = None) -> None:
        """Store `revision` as pending before its first change, with the set a rollback of it puts back (`restore`):
        both stay there if the deploy is killed or its rollback does not finish."""
        self.pending, self.restore = revision, restore
        self._store(kube)

    def keep_pending(self, kube: Kube) -> None:
        """Store the pending revision as it is now (a canary's step, weights and analyses)."""
        self._store(kube)

    def end(self, kube: Kube) -> None:
        """Forget the pending revision (the deploy ended: serving, or rolled back to the end)."""
        if self.pending is not None or self.restore is not None:
            self.pending = self.restore = None
            self._store(kube)

    def record(self, kube: Kube, revision: Revision) -> None:
        """Make `revision` current (the old current becomes previous) and store both."""
        self.previous, self.current, self.pending, self.restore = self.current, revision, None, None
        self._store(kube)

    def swap(self, kube: Kube) -> None:
        """After a rollback: the previous revision is current again, and the rolled-back one previous."""
        self.current, self.previous = self.previous, self.current
        self._store(kube)

    def next_number(self) -> int:
        return max((r.number for r in (self.current, self.previous) if r), default=0) + 1

    def _store(self, kube: Kube) -> None:
        data = {name: revision.to_json() for name, revision in (("current", self.current), ("previous", self.previous),
                                                                ("pending", self.pending), ("restore", self.restore))
                if revision}
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": history_name(self.service), "namespace": self.namespace,
                                 "labels": {"service": self.service, "stage": self.stage,
                                            "app.kubernetes.io/managed-by": "podserve-deploy"}},
                    "data": data})


def as_applied(live: dict) -> dict:
    """Return a live object as it could be applied again: no status, no server-set metadata."""
    obj = {k: v for k, v in live.items() if k != "status"}
    meta = {k: v for k, v in (live.get("metadata") or {}).items() if k not in _SERVER_METADATA}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _SERVER_ANNOTATIONS}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    obj["metadata"] = meta
    return obj


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
