"""What the real node's scaling tests share: a timeline of samples taken in a thread, the test conf's short scale-down
window, and hk's ScaledObject (render's, and its removal once KEDA lets it go)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Generic, TypeVar

import yaml

from real_node_service import NAME, remove_hk

from podserve.testbed.processes import poll_until

KEDA = ("keda.sh", "v1alpha1")
#: How often a Timeline samples.
SAMPLE_SECONDS = 0.5

S = TypeVar("S")


class Timeline(Generic[S]):
    """Calls `sample()` every SAMPLE_SECONDS in a thread while the `with` body runs; `samples` in order, each with a
    monotonic `at`."""

    def __init__(self, sample: Callable[[], S]):
        self.sample = sample
        self.samples: list[S] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "Timeline[S]":
        self._thread.start()
        poll_until(lambda: self.samples, "a first sample", 30)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def last(self) -> S:
        return self.samples[-1]

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # a refused or slow call: counted, the next sample tries again
                self.errors.append(repr(exc)[:200])

    def first(self, check: Callable[[S], bool], after: float = 0.0) -> S | None:
        return next((s for s in self.samples if s.at >= after and check(s)), None)


def since(later, earlier) -> float:
    """Seconds from `earlier` (a sample or a time.monotonic()) to the sample `later`; both must have been seen."""
    assert later is not None and earlier is not None, (earlier, later)
    return later.at - (earlier if isinstance(earlier, float) else earlier.at)


def distinct(values: list[int]) -> list[int]:
    """`values` with each run of equal values as one."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def read_or_none(call):
    """`call()`'s object, or None where the apiserver answers 404."""
    from kubernetes.client.exceptions import ApiException

    try:
        return call()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def shorten_scale_down(conf: Path, seconds: int) -> Path:
    """Set the test conf `conf`'s HPA scale-down stabilisation window to `seconds` (conf/platform.yaml keeps 300 s);
    return it."""
    platform = yaml.safe_load((conf / "platform.yaml").read_text())
    platform["autoscaling"]["scale_down_stabilization_seconds"] = seconds
    (conf / "platform.yaml").write_text(yaml.safe_dump(platform))
    return conf


def scaled_object(manifests: Path) -> dict:
    """The ScaledObject render wrote in the stage folder `manifests`."""
    (found,) = [d for f in sorted(manifests.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
                if d and d["kind"] == "ScaledObject"]
    return found


def remove_scaled_hk(service, namespace: str) -> None:
    """remove_hk, and wait until KEDA has let its ScaledObject go (its finalizer removes the HPA)."""
    from kubernetes import client

    remove_hk(service, namespace)
    objects = client.CustomObjectsApi(service.plane.api_client())
    poll_until(lambda: not objects.list_namespaced_custom_object(*KEDA, namespace, "scaledobjects",
                                                                 label_selector=f"service={NAME}")["items"],
               "KEDA letting the ScaledObject go", 60, every=0.5)


def wait_for_no_hk_pods(service, namespace: str, timeout: float = 120) -> None:
    """Until no pod of the service is left in hk from an earlier test."""
    from kubernetes import client

    core = client.CoreV1Api(service.plane.api_client())
    poll_until(lambda: not core.list_namespaced_pod(namespace, label_selector=f"service={NAME}").items,
               "no hk pod of the service left from an earlier test", timeout)
