"""Bounded polling for the control-plane tests: the testbed's own poll loop, failing the test when it runs out."""

from __future__ import annotations

from podserve.testbed.processes import poll_until


def wait_for(check, what: str, timeout: float = 60.0, every: float = 0.25, explain=None):
    """Call `check` until it returns something truthy (returned); fail naming `what` after `timeout` seconds.

    `explain()`, when given, says what the cluster shows at that moment (a pod's status and events): the failure
    message carries it, so a run that timed out says why.
    """
    try:
        return poll_until(check, what, timeout, every)
    except TimeoutError as exc:
        message = str(exc)
        if explain is not None:
            try:
                message += "\n" + explain()
            except Exception as failure:  # noqa: BLE001 - the timeout is the failure; the story is a bonus
                message += f"\n(no story: {failure!r})"
        raise AssertionError(message) from None


def pod_story(core, namespace: str, name: str, kubelet=None) -> str:
    """A pod's phase, conditions, container states and events, and the kubelet's last log lines if given."""
    pod = core.read_namespaced_pod(name, namespace)
    lines = [f"pod {namespace}/{name}: phase {pod.status.phase}, node {pod.spec.node_name}"]
    lines += [f"  condition {c.type}={c.status} {c.reason or ''} {c.message or ''}".rstrip()
              for c in pod.status.conditions or []]
    for status in pod.status.container_statuses or []:
        waiting = status.state.waiting
        lines.append(f"  container {status.name}: "
                     + (f"waiting {waiting.reason}: {waiting.message}" if waiting else str(status.state)))
    lines += [f"  event {e.type} {e.reason} x{e.count or 1}: {e.message}"
              for e in core.list_namespaced_event(namespace).items if e.involved_object.name == name]
    if kubelet is not None:
        lines.append("kubelet's last lines:\n" + kubelet.log_tail(40))
    return "\n".join(lines)
