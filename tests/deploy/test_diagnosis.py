"""The rollout's verdict as a pure function of API-shaped objects: each failure named, with its field, as soon as certain."""

from __future__ import annotations

import pytest

from api_objects import IMAGE, NOW, crashed, deployment, event, pod, replicasets, unschedulable
from podserve.tooling.deploy import diagnosis, failures
from podserve.tooling.deploy.diagnosis import Observed, diagnose

GRACE = 90


def observe(dep, pods, events=(), logs=None, budget_left=100.0, offer="") -> Observed:
    return Observed(dep, replicasets(), list(pods), list(events), NOW, logs or {}, GRACE, budget_left, offer)


def test_a_complete_rollout_is_serving_and_says_how_many_pods_are_ready():
    verdict = diagnose(observe(deployment(updated=1, ready=1, available=1), [pod(ready=True)]))
    assert verdict.state == diagnosis.SERVING and verdict.done
    assert verdict.message.startswith("1/1 pods ready")


@pytest.mark.parametrize("dep, waits_for", [
    (deployment(generation=3, observed=2), "new spec to be observed"),
    (deployment(replicas=2, updated=1), "1 of 2 pods updated"),
    (deployment(updated=1, total=2, available=1), "old pod(s) pending termination"),
    (deployment(updated=1, available=0), "0 of 1 updated pods available"),
])
def test_an_unfinished_rollout_is_progressing_with_what_it_waits_for(dep, waits_for):
    verdict = diagnose(observe(dep, [pod()]))
    assert verdict.state == diagnosis.PROGRESSING and not verdict.done
    assert waits_for in verdict.message
    assert "text-direction-new-x1: running, not ready yet" in verdict.message


def test_old_pods_are_not_judged():
    old = pod(name="text-direction-old-a", owner="rs-uid-1", statuses=crashed("OOMKilled", 137, restarts=5))
    assert diagnose(observe(deployment(updated=1), [old, pod()])).state == diagnosis.PROGRESSING


def test_oom_killed_twice_fails_at_once_naming_the_limit_and_memory():
    verdict = diagnose(observe(deployment(updated=1), [pod(statuses=crashed("OOMKilled", 137, restarts=1))]))
    assert verdict.state == diagnosis.FAILED and verdict.failure is failures.OOM_KILLED
    assert verdict.message.startswith("The server was OOMKilled: ")
    assert "(8Gi, from value.py's memory)" in verdict.message and "raise `memory`" in verdict.message


def test_oom_killed_once_and_running_again_is_not_yet_certain():
    statuses = [{"name": "server", "restartCount": 1, "ready": False, "state": {"running": {}},
                 "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]
    assert diagnose(observe(deployment(updated=1), [pod(statuses=statuses)])).state == diagnosis.PROGRESSING


def test_a_crash_loop_quotes_the_last_log_lines_from_the_termination_message():
    lines = "INFO loading\nTraceback (most recent call last):\nRuntimeError: no such model\n"
    verdict = diagnose(observe(deployment(updated=1), [pod(statuses=crashed("Error", 1, 1, lines))]))
    assert verdict.failure is failures.CRASH_LOOP
    assert "exited (code 1, Error)" in verdict.message and "RuntimeError: no such model" in verdict.message
    assert "`handler`, `model_path`" in verdict.message


def test_a_crash_loop_prefers_the_logs_read_from_the_api():
    name = "text-direction-new-x1"
    verdict = diagnose(observe(deployment(updated=1), [pod(statuses=crashed("Error", 1, 2, "status text"))],
                               logs={name: "from the log API"}))
    assert "from the log API" in verdict.message and "status text" not in verdict.message


def test_image_pull_backoff_names_the_image_and_registry():
    statuses = [{"name": "server", "image": "registry.hk.example.com/like/x:1", "restartCount": 0, "ready": False,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image: not found"}}}]
    verdict = diagnose(observe(deployment(updated=1), [pod(phase="Pending", statuses=statuses)]))
    assert verdict.failure is failures.IMAGE_PULL
    assert "registry.hk.example.com/like/x:1 from registry registry.hk.example.com" in verdict.message
    assert "not found" in verdict.message


def test_err_image_pull_alone_may_still_recover():
    statuses = [{"name": "server", "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull"}}}]
    assert diagnose(observe(deployment(updated=1), [pod(phase="Pending", statuses=statuses)])).state == "progressing"


def test_a_startup_probe_kill_names_the_budget_and_init_delay_second():
    statuses = [{"name": "server", "restartCount": 1, "ready": False, "started": False,
                 "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 143, "reason": "Error"}}}]
    slow = pod(statuses=statuses)
    events = [event(slow, "Unhealthy", "Startup probe failed: HTTP probe failed with statuscode: 503"),
              event(slow, "Killing", "Container server failed startup probe, will be restarted", kind="Normal")]
    verdict = diagnose(observe(deployment(updated=1), [slow], events))
    assert verdict.failure is failures.STARTUP_PROBE
    assert "60 s the probe allows (from init_delay_second)" in verdict.message
    assert "statuscode: 503" in verdict.message and "raise `init_delay_second`" in verdict.message


CORDONED = "0/3 nodes are available: 3 node(s) were unschedulable. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
SHORT_GPU = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."


def test_unschedulable_within_the_grace_is_still_progressing():
    pending = pod(phase="Pending", statuses=[], conditions=unschedulable(CORDONED, GRACE - 10))
    verdict = diagnose(observe(deployment(updated=1), [pending]))
    assert verdict.state == diagnosis.PROGRESSING and "Pending (Unschedulable: 0/3 nodes" in verdict.message


def test_unschedulable_past_the_grace_quotes_the_scheduler_the_request_and_the_nodes():
    pending = pod(phase="Pending", statuses=[], conditions=unschedulable(SHORT_GPU, GRACE + 1))
    verdict = diagnose(observe(deployment(updated=1), [pending], offer="at most cpu 30, memory 120Gi per node"))
    assert verdict.failure is failures.UNSCHEDULABLE
    assert SHORT_GPU in verdict.message
    assert "cpu 4, memory 8Gi, nvidia.com/gpu 1" in verdict.message
    assert "at most cpu 30, memory 120Gi per node" in verdict.message
    assert "field(s) to change: `gpu_num`" in verdict.message


def test_cordoned_nodes_name_every_resource_field_and_the_platform_team():
    pending = pod(phase="Pending", statuses=[], conditions=unschedulable(CORDONED, GRACE + 1))
    verdict = diagnose(observe(deployment(updated=1), [pending]))
    assert "node(s) were unschedulable" in verdict.message
    assert "`cpu`, `memory`, `gpu_num`" in verdict.message and "ask the platform team" in verdict.message


def test_a_cluster_autoscaler_scaling_up_keeps_the_pod_waiting():
    pending = pod(phase="Pending", statuses=[], conditions=unschedulable(SHORT_GPU, GRACE + 60))
    scale_up = event(pending, "TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 1->2 (max: 4)}]", kind="Normal")
    assert diagnose(observe(deployment(updated=1), [pending], [scale_up])).state == diagnosis.PROGRESSING


@pytest.mark.parametrize("message, fields", [
    ("0/4 nodes are available: 4 Insufficient memory.", ["`memory`"]),
    ("0/4 nodes are available: 2 Insufficient cpu, 2 Insufficient memory.", ["`cpu`", "`memory`"]),
    ("0/1 nodes are available: 1 Insufficient nvidia.com/gpumem.", ["`gpu_memory`"]),
    ("0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector.", ["`gpu_num`"]),
])
def test_the_scheduler_s_shortage_maps_to_its_value_py_field(message, fields):
    assert diagnosis.short_fields(message) == fields


def test_never_ready_at_the_end_of_the_budget_quotes_what_ping_answered():
    running = pod()
    events = [event(running, "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")]
    logs = {running["metadata"]["name"]: '{"level": "info", "msg": "serving"}\n'
                                         '{"level": "warning", "msg": "/api/ping: 503 model not loaded"}\n'}
    still = diagnose(observe(deployment(updated=1), [running], events, logs))
    assert still.state == diagnosis.PROGRESSING
    verdict = diagnose(observe(deployment(updated=1), [running], events, logs, budget_left=0))
    assert verdict.failure is failures.NEVER_READY
    assert "statuscode: 503" in verdict.message and "/api/ping: 503 model not loaded" in verdict.message
    assert "`init_delay_second`" in verdict.message


def test_progress_deadline_exceeded_is_certain_and_names_the_deadline():
    exceeded = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    pending_forever = pod(statuses=[{"name": "server", "restartCount": 0,
                                     "state": {"waiting": {"reason": "ContainerCreating"}}}], phase="Pending")
    verdict = diagnose(observe(deployment(updated=1, conditions=[exceeded]), [pending_forever]))
    assert verdict.failure is failures.PROGRESS_DEADLINE
    assert "progressDeadlineSeconds = 185" in verdict.message and "ContainerCreating" in verdict.message


def test_the_budget_running_out_without_a_known_cause_says_so():
    creating = pod(phase="Pending", statuses=[{"name": "server", "restartCount": 0,
                                               "state": {"waiting": {"reason": "ContainerCreating"}}}])
    verdict = diagnose(observe(deployment(updated=1), [creating], budget_left=0))
    assert verdict.failure is failures.TIMED_OUT and "ContainerCreating" in verdict.message


SANDBOX = ('Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox '
           '"4f1c": plugin type="bridge" failed (add): failed to allocate for range 0: no IP addresses available in '
           'range set: 10.245.0.1-10.245.0.254')
EXCEEDED = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}


def on_a_node(statuses=None) -> dict:
    """A scheduled pod whose one container the kubelet has not created yet."""
    placed = pod(phase="Pending", statuses=statuses if statuses is not None else [
        {"name": "server", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}])
    placed["spec"]["nodeName"] = "gpu-node-7"
    return placed


def repeated(event_obj: dict, count: int) -> dict:
    return {**event_obj, "count": count}


def test_a_pod_stuck_creating_shows_the_kubelet_s_last_event_while_waiting():
    stuck = on_a_node()
    events = [event(stuck, "Scheduled", "Successfully assigned podserve-grey/x to gpu-node-7", "Normal", 70),
              repeated(event(stuck, "FailedCreatePodSandBox", SANDBOX, seconds_ago=12), 5)]
    verdict = diagnose(observe(deployment(updated=1), [stuck], events))
    assert verdict.state == diagnosis.PROGRESSING
    assert verdict.message.endswith(
        f"text-direction-new-x1: ContainerCreating (Warning FailedCreatePodSandBox (5 times, last 12 s ago): {SANDBOX})")


def test_at_the_deadline_a_pod_never_started_is_the_node_s_failure_with_the_kubelet_s_words():
    stuck = on_a_node()
    events = [repeated(event(stuck, "FailedCreatePodSandBox", SANDBOX, seconds_ago=12), 9)]
    verdict = diagnose(observe(deployment(updated=1, conditions=[EXCEEDED]), [stuck], events))
    assert verdict.failure is failures.NOT_STARTED
    assert verdict.message.startswith("The node never started the pod's containers: no new pod became available "
                                      "within progressDeadlineSeconds = 185; pod text-direction-new-x1 was placed "
                                      "on node gpu-node-7 60 s ago")
    assert SANDBOX in verdict.message and "9 times" in verdict.message
    assert "ask the platform team, naming the node" in verdict.message


def test_a_pull_still_running_at_the_deadline_is_said_with_the_older_warning():
    pulling = on_a_node()
    events = [event(pulling, "FailedMount", 'MountVolume.SetUp failed for volume "conf": configmap "x" not found',
                    seconds_ago=100),
              event(pulling, "Pulling", f'Pulling image "{IMAGE}"', "Normal", 95)]
    verdict = diagnose(observe(deployment(updated=1), [pulling], events, budget_left=0))
    assert verdict.failure is failures.NOT_STARTED
    assert f'the last event on it: Normal Pulling (95 s ago): Pulling image "{IMAGE}"; before it: Warning ' \
           'FailedMount (100 s ago): MountVolume.SetUp failed' in verdict.message
    assert "raise `init_delay_second`" in verdict.message
    assert verdict.message.count("Pulling image") == 1  # quoted once, not again in the budget's progress line


def test_a_pod_the_kubelet_said_nothing_about_is_named_so():
    init = on_a_node([{"name": "fetch", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}])
    verdict = diagnose(observe(deployment(updated=1, conditions=[EXCEEDED]), [init]))
    assert verdict.failure is failures.NOT_STARTED
    assert "the last event on it: none (the node's kubelet reported nothing on it)" in verdict.message


def test_a_container_that_ran_before_is_not_a_pod_never_started():
    restarted = on_a_node([{"name": "server", "restartCount": 1, "state": {"waiting": {"reason": "ContainerCreating"}},
                            "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}])
    verdict = diagnose(observe(deployment(updated=1, conditions=[EXCEEDED]), [restarted]))
    assert verdict.failure is failures.PROGRESS_DEADLINE


def test_no_deployment_yet_is_progressing():
    assert diagnose(observe(None, [])).state == diagnosis.PROGRESSING


def test_every_failure_message_starts_with_its_headline_and_ends_with_its_fix():
    for failure in failures.ALL:
        said = failure.say("something observed.")
        assert said.startswith(failure.headline + ": something observed. Fix: ")
        assert said.endswith(failure.fix)


@pytest.mark.parametrize("message, names", [
    ('pods "text-direction-new-x2" is forbidden: exceeded quota: podserve-quota, requested: '
     'requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4',
     "the ResourceQuota podserve-grey/podserve-quota is full"),
    ('pods "text-direction-new-x2" is forbidden: ValidatingAdmissionPolicy \'podserve-host-ports\' with binding '
     '\'podserve-host-ports\' denied request: a hostPort is allowed only on the http port',
     "the admission policy podserve-host-ports refuses them"),
])
def test_pods_the_replicaset_cannot_create_are_certain_at_once_naming_the_quota_or_policy(message, names):
    """The shape the ReplicaSet controller writes (pkg/controller/replicaset: ReplicaFailure, FailedCreate)."""
    sets = replicasets()
    sets[1]["status"] = {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                         "message": message}]}
    verdict = diagnose(Observed(deployment(replicas=2, updated=1), sets, [pod()], [], NOW, {}, GRACE, 100.0, ""))
    assert verdict.state == diagnosis.FAILED and verdict.failure is failures.CREATE_REFUSED
    assert names in verdict.message and "ReplicaSet text-direction-new cannot create pods (FailedCreate)" in \
        verdict.message


@pytest.mark.parametrize("message", [
    'Operation cannot be fulfilled on resourcequotas "podserve-quota": the object has been modified; please apply '
    'your changes to the latest version and try again',
    'the server has received too many requests and has asked us to try again later (post pods)',
    'the server was unable to return a response in the time allotted, but may still be processing the request '
    '(post pods)',
])
def test_a_refusal_the_replicaset_controller_retries_is_no_verdict(message):
    """Two pods admitted at once both update the quota's usage; the loser's FailedCreate is a 409 the controller
    retries (seen in tests/deploy/test_live.py's rollback: it failed a rollback that then came up)."""
    sets = replicasets()
    sets[1]["status"] = {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                         "message": f'pods "text-direction-new-x2" is forbidden: {message}'}]}
    verdict = diagnose(Observed(deployment(replicas=2, updated=1), sets, [pod()], [], NOW, {}, GRACE, 100.0, ""))
    assert verdict.state == diagnosis.PROGRESSING, verdict.message


# --- a production Rollout, as Argo Rollouts writes its status ---------------------------------------------------

def _rollout(phase="Progressing", current="new", stable="old", generation=2, observed="2", abort=False,
             message="", step=1) -> dict:
    """The Deployment of api_objects as Argo's Rollout: its ReplicaSets told apart by their pod template hash."""
    found = deployment(replicas=2, updated=2, ready=2, available=2)
    found.update(apiVersion="argoproj.io/v1alpha1", kind="Rollout")
    found["metadata"]["generation"] = generation
    found["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 10}, {"analysis": {}}]}}
    found["status"].update(observedGeneration=observed, phase=phase, message=message, currentPodHash=current,
                           stableRS=stable, abort=abort, currentStepIndex=step,
                           canary={"weights": {"stable": {"weight": 90}, "canary": {"weight": 10}}})
    return found


def _hashed() -> list[dict]:
    old, new = replicasets()
    for rs, label in ((old, "old"), (new, "new")):
        rs["metadata"]["labels"] = {"rollouts-pod-template-hash": label}
    return [old, new]


def _observe_rollout(rollout, pods, runs=()) -> Observed:
    return Observed(rollout, _hashed(), list(pods), [], NOW, {}, GRACE, 100.0, "", tuple(runs))


def test_a_rollout_argo_has_not_observed_yet_is_progressing_whatever_its_previous_pods_do():
    """Right after a rollback re-applies stable's spec, the status still names the failed revision's hash: its
    crash-looping pods are no verdict on the spec just applied."""
    looping = pod(statuses=crashed(restarts=3))
    assert diagnose(_observe_rollout(_rollout(), [looping])).state == diagnosis.FAILED  # observed: certain
    verdict = diagnose(_observe_rollout(_rollout(generation=3, observed="2"), [looping]))
    assert verdict.state == diagnosis.PROGRESSING and "observe the new spec" in verdict.message


def test_a_rollout_serves_only_once_healthy_on_its_current_pod_template():
    ready = [pod(ready=True), pod(name="text-direction-new-x2", ready=True)]
    mid_step = diagnose(_observe_rollout(_rollout(phase="Paused", message="CanaryPauseStep"), ready))
    assert mid_step.state == diagnosis.PROGRESSING
    assert "Argo Rollouts: Paused (CanaryPauseStep), step 2 of 2, weights stable 90, canary 10" in mid_step.message
    # Healthy but still the old template (Argo about to start the canary): not serving
    assert diagnose(_observe_rollout(_rollout(phase="Healthy"), ready)).state == diagnosis.PROGRESSING
    done = diagnose(_observe_rollout(_rollout(phase="Healthy", stable="new", step=2), ready))
    assert done.state == diagnosis.SERVING and done.message.startswith("2/2 pods ready (rollout complete)")


def test_an_aborted_rollout_fails_with_argo_s_words_and_the_analysis_counts():
    run = {"metadata": {"name": "text-direction-5d8-2"},
           "spec": {"args": [{"name": "canary-hash", "value": "new"}, {"name": "stable-hash", "value": "old"}]},
           "status": {"phase": "Failed", "metricResults": [
               {"name": "errors", "phase": "Failed", "failed": 1,
                "measurements": [{"phase": "Failed", "value": "[120,6000,6,6000,120]"}]},
               {"name": "latency", "phase": "Successful", "successful": 1,
                "measurements": [{"phase": "Successful", "value": "[10,6000,12,6000,120]"}]}]}}
    said = "RolloutAborted: Rollout aborted update to revision 2: Metric \"errors\" assessed Failed"
    verdict = diagnose(_observe_rollout(_rollout(phase="Degraded", abort=True, message=said), [pod(ready=True)],
                                        [run]))
    assert verdict.state == diagnosis.FAILED and verdict.failure is failures.ROLLOUT_ABORTED
    assert said in verdict.message
    assert "errors: Failed [failed 1] value [120,6000,6,6000,120]" in verdict.message
    assert "canary new against stable old" in verdict.message


def test_an_aborted_rollout_whose_spec_is_stable_s_again_waits_for_argo_to_clear_the_abort():
    """A rollback re-applied stable's spec after an abort: Argo may write the observed generation a status write
    before it clears the abort. The spec's template hash (the tool's annotation) is the stable ReplicaSet's: no
    verdict yet. The same abort on the failed revision's spec is a failure."""
    from podserve.tooling.deploy import drift

    said = "RolloutAborted: Rollout aborted update to revision 2"
    rollout = _rollout(phase="Degraded", abort=True, message=said, generation=3, observed="3")
    rollout["spec"].setdefault("template", {}).setdefault("metadata", {})["annotations"] = {
        drift.TEMPLATE_HASH: "stable-spec"}
    old, new = _hashed()
    for rs, spec in ((old, "stable-spec"), (new, "failed-spec")):
        rs["spec"] = {"template": {"metadata": {"annotations": {drift.TEMPLATE_HASH: spec}}}}
    observed = Observed(rollout, [old, new], [pod(ready=True)], [], NOW, {}, GRACE, 100.0, "", ())
    verdict = diagnose(observed)
    assert verdict.state == diagnosis.PROGRESSING and "taking stable's spec back" in verdict.message
    rollout["status"]["abort"] = False  # the abort cleared, the phase still Degraded with Argo's words
    assert diagnose(observed).state == diagnosis.PROGRESSING
    rollout["spec"]["template"]["metadata"]["annotations"][drift.TEMPLATE_HASH] = "failed-spec"
    assert diagnose(observed).failure is failures.ROLLOUT_ABORTED
