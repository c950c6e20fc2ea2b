"""The split layout's model and decoders as the front's probes read them, from the pod's shared state.

runtime/protocols/probes.py reads an InstancePool in one process and this in the split layout, by the same names:
`ready`, `status`, `instance_count`, `failure`, `liveness_problem`. The model's liveness is the same rule in both
(runtime/batching/pool.py's `instances_problem`), over what the model process publishes.
"""

from __future__ import annotations

from podserve.runtime.batching.pool import instances_problem
from podserve.runtime.processes.decoders import Decoders
from podserve.runtime.processes.pod_state import DECODER, MODEL, READY, PodState, now_ns
from podserve.settings import ServingSettings

#: A model process whose heartbeat (a thread of its own) is older than this is not counted ready: it is stopped or
#: holds the GIL in native code, and the supervisor replaces it (processes/supervisor.py: HANG_SECONDS).
MODEL_SILENT_NS = 2_000_000_000


class PodView:
    """The pod's model and decoders as the probes read them."""

    def __init__(self, state: PodState, decoders: Decoders, settings: ServingSettings):
        self.state, self.decoders, self.settings = state, decoders, settings

    def _model_beating(self) -> bool:
        slots = self.state.slots_of(MODEL)
        return bool(slots) and all(self.state.slots[slot]["state"] == READY
                                   and now_ns() - int(self.state.slots[slot]["heartbeat_ns"]) < MODEL_SILENT_NS
                                   for slot in slots)

    @property
    def ready(self) -> bool:
        return bool(self.state.model["ready"]) and self._model_beating() and self.decoders.ready_count > 0

    @property
    def instance_count(self) -> int:
        return int(self.state.model["instances"])

    def status(self) -> str:
        model = self.state.model
        if not model["ready"]:
            return self.state.status() or "the model process is starting"
        if not self._model_beating():
            return "the model process has not stamped its heartbeat (stopped, or stuck holding the GIL): it is replaced"
        if not self.decoders.ready_count:
            starting = len(self.state.slots_of(DECODER))
            return f"no decoder process is ready ({starting} starting)"
        return f"{self.instance_count} instance(s) ready; {self.decoders.ready_count} decoder process(es)"

    @property
    def failure(self) -> str | None:
        return self.state.status() if self.state.model["failed"] else None

    def liveness_problem(self) -> str | None:
        """Why the pod is wedged: the model process's batch thread dead or a batch running past stuck_batch_seconds
        (the instances' rule, read only while the model process that published them is ready: a crashed one's last
        batch says nothing while its replacement loads), or the model process's loop silent that long."""
        model, stuck = self.state.model, self.settings.stuck_batch_seconds
        if not model["ready"] or not model["heartbeat_ns"]:
            return None
        now = now_ns()
        silent = (now - int(model["heartbeat_ns"])) / 1e9
        if silent > stuck:
            return f"the model process has not stamped its heartbeat for {silent:.0f}s"
        names = self.state.info().get("instances", [])
        instances = self.state.instances
        return instances_problem(
            ((names[i] if i < len(names) else str(i), bool(instances[i]["alive"]),
              int(instances[i]["batch_started_ns"]) / 1e9 or None) for i in range(int(model["instances"]))),
            stuck, now / 1e9)
