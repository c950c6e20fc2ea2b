"""A production canary (value.py canary_steps): the new pod template beside stable, weighted step by step and judged
at each step, then promoted by today's rollout, or aborted.

`apply` runs one when a production stage's pod template changes, canary_steps is set and the live route splits
stable and canary (rendered with subsets: the deploy that first brings them is a rolling update). Only the pod
template is canaried: every other object stays what runs until the promotion.

1. (apply's checks; the Lease, held to the end; the history names the revision pending, with this state)
2. `<service>-canary` from the new template (canary_objects), at the first step's replicas, waited for with the
   rollout's diagnosis: a failure aborts.
3. Each step: the canary's replicas for its weight (ceil(weight x stable's live replicas)), the weights on the live
   route, slow start waited out, then the analysis (analysis.analyse: track canary against stable): pass goes to
   the next step, fail aborts, inconclusive extends the window up to max_extensions times and then aborts.
4. Promotion: today's rollout of the whole revision on stable with the canary still weighted; then stable 100, the
   canary deleted, the revision recorded (with this state: its steps and analyses).

Abort: stable 100 first, then the canary deleted (canary_scale_down_delay_seconds later, as at promotion);
`canary_aborted` is notified with the numbers; exit 1. SIGTERM
aborts the same way. After a SIGKILL the history still holds the revision pending with its state (and the objects
carry the step): the next apply of the same revision resumes at the recorded step, another revision aborts the
canary first and starts over, `rollback` aborts it. `deploy canary promote|abort` asks the running loop, through the
history's ConfigMap (a key of its own field manager), to promote now without the analysis (a recorded reason is
required) or to abort.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from podserve.tooling import job_time, release
from podserve.tooling.deploy import analysis, budget, canary_objects, diagnosis, drift, failures, rollout
from podserve.tooling.deploy.errors import BadInput
from podserve.tooling.deploy.history import History, history_name, now_text
from podserve.tooling.deploy.kube import CONFIGMAPS, MANAGED, Kube
from podserve.tooling.deploy.lock import holder_identity
from podserve.tooling.deploy.target import Target

#: The history ConfigMap's key a `deploy canary` command is written to, and the field manager that owns it (so the
#: deploy's own writes of the history never remove it).
COMMAND_KEY = "canary-command"
COMMAND_MANAGER = "podserve-deploy-canary-command"
PROMOTE, ABORT = "promote", "abort"
STEPS, PROMOTING = "steps", "promoting"


class Stop(Exception):
    """The loop stops its steps: `action` promote (skipping what is left of the analysis) or abort, and why."""

    def __init__(self, action: str, why: str, by: str = ""):
        super().__init__(why)
        self.action, self.why, self.by = action, why, by


# --- what the objects are -----------------------------------------------------------------------------------

def route_of(objects: list[dict]) -> dict | None:
    return next((o for o in objects if o.get("kind") == "VirtualService"), None)


def rule_of(objects: list[dict]) -> dict | None:
    return next((o for o in objects if o.get("kind") == "DestinationRule"), None)


def deployment_of(objects: list[dict]) -> dict | None:
    return next((o for o in objects if o.get("kind") == "Deployment"), None)


def live_canary(kube: Kube, target: Target) -> dict | None:
    return kube.get(MANAGED["Deployment"], target.namespace, release.canary_name(target.service))


# --- the decision: a canary (new or resumed), or today's rolling update --------------------------------------

def decide(kube: Kube, target: Target, history: History, objects: list[dict], before: list[dict],
           say=print, delay_seconds: float = 0) -> dict | None:
    """Return the state of the canary this apply runs (resumed: the same revision a killed deploy left at a step),
    or None for a rolling update. A canary of another revision left running is aborted first (stable 100, the canary
    deleted; the history keeps that revision pending, so this deploy still rolls back to what ran before it)."""
    new_hash = drift.running_hash(deployment_of(objects))
    pending = history.pending
    running = pending.canary if pending is not None else None
    if running and drift.running_hash(deployment_of(pending.objects)) == new_hash:
        say(f"resuming the canary of revision {pending.number} at step {running.get('step', -1) + 1} of "
            f"{len(running['steps'])} ({running.get('phase')}), as the killed deploy left it")
        return dict(running, resumed=True)
    if running or live_canary(kube, target) is not None:
        which = f"revision {pending.number}'s" if running else "a"
        say(f"a canary ({which}) is still running from an earlier deploy: aborting it before this revision")
        abort_objects(kube, target, route_of(before) or _live_route(kube, target), say, delay_seconds=delay_seconds)
    steps = release.read_release_policy(deployment_of(objects))["canary_steps"]
    if not target.stage.production or not steps:
        return None
    live = kube.get(MANAGED["Deployment"], target.namespace, target.service)
    if live is None or drift.running_hash(live) == new_hash:
        return None  # nothing runs yet to compare with, or the pod template is unchanged: only it is canaried
    if not canary_objects.splits(route_of(before), rule_of(before)):
        say("no canary this time: the route that runs has no stable and canary subsets yet (rendered before "
            "canaries); this deploy brings them with a rolling update, and the next one is canaried")
        return None
    return {"steps": list(steps), "step": -1, "weights": release.weights(0), "phase": STEPS, "analyses": [],
            "template_hash": new_hash, "started_at": now_text()}


def _live_route(kube: Kube, target: Target) -> dict | None:
    from podserve.tooling.deploy.history import as_applied

    live = kube.get(MANAGED["VirtualService"], target.namespace, target.service)
    return as_applied(dict(live, kind="VirtualService")) if live else None


# --- abort -------------------------------------------------------------------------------------------------

def abort_objects(kube: Kube, target: Target, route: dict | None, say=print, check=lambda: None,
                  delay_seconds: float = 0) -> None:
    """Stable 100 first (the route as it ran, unweighted), then, `delay_seconds` later, the canary deleted."""
    if route is not None:
        check()
        kube.apply(canary_objects.weighted(route, release.weights(0)))
        say(f"set the weights of VirtualService/{route['metadata']['name']} to stable 100, canary 0")
        if live_canary(kube, target) is not None:
            serve_while_the_mesh_settles(delay_seconds, say, check)
    check()
    if kube.delete(MANAGED["Deployment"], target.namespace, release.canary_name(target.service)):
        say(f"deleted Deployment/{release.canary_name(target.service)}")


def serve_while_the_mesh_settles(delay_seconds: float, say=print, check=lambda: None) -> None:
    """Wait `delay_seconds` (conf/deploy.yaml canary_scale_down_delay_seconds) with the canary still serving, so
    requests the gateways still route to it by the old weights are answered, not 503 "no healthy upstream"."""
    if delay_seconds <= 0:
        return
    say(f"the canary serves {delay_seconds:.0f} s more while the mesh takes the new weights, then goes")
    analysis.wait_until(time.monotonic() + delay_seconds, check)


# --- commands from `deploy canary promote|abort` -----------------------------------------------------------------

def send_command(kube: Kube, target: Target, action: str, reason: str, say=print) -> int:
    """Ask the running canary of the target to promote now (skipping its analysis: `reason` is required and
    recorded) or to abort; BadInput when no canary runs."""
    history = History.load(kube, target.namespace, target.service, target.stage.name)
    pending = history.pending
    if pending is None or not pending.canary:
        raise BadInput(f"no canary of {target.service} runs in {target.stage.name} (namespace {target.namespace}): "
                       "nothing to promote or abort")
    if action == PROMOTE and not reason.strip():
        raise BadInput("promote skips the canary's analysis: say why with --reason TEXT (it is recorded in the "
                       "revision and the notification)")
    command = {"action": action, "reason": reason.strip(), "by": holder_identity(), "at": now_text(),
               "revision": pending.number}
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": history_name(target.service), "namespace": target.namespace},
                "data": {COMMAND_KEY: json.dumps(command, sort_keys=True)}}, manager=COMMAND_MANAGER)
    say(f"asked the canary of revision {pending.number} of {target.service} in {target.stage.name} to {action}"
        + (f" ({reason.strip()})" if reason.strip() else "") + "; the running deploy acts on it within seconds")
    return failures.EXIT_SERVING


def read_command(kube: Kube, target: Target, revision: int) -> dict | None:
    """The command waiting for the canary of `revision` (one for another revision is stale: ignored)."""
    found = kube.get(CONFIGMAPS, target.namespace, history_name(target.service))
    try:
        command = json.loads(((found or {}).get("data") or {}).get(COMMAND_KEY) or "null")
    except ValueError:
        return None
    return command if isinstance(command, dict) and command.get("revision") == revision else None


def clear_command(kube: Kube, target: Target) -> None:
    """Remove the command (its manager applies the ConfigMap without it)."""
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": history_name(target.service), "namespace": target.namespace}, "data": {}},
               manager=COMMAND_MANAGER)


# --- the loop ------------------------------------------------------------------------------------------------

class Canary:
    """One canary of a revision: its steps, judged, then promoted; or aborted."""

    def __init__(self, kube: Kube, target: Target, state: dict, objects: list[dict], before: list[dict],
                 thresholds: analysis.Plan, prometheus, check=lambda: None, say=print):
        self.kube, self.target, self.state, self.say = kube, target, state, say
        self.objects, self.before, self.plan, self.prometheus = objects, before, thresholds, prometheus
        self._check = check
        self.route = route_of(before)
        self.history: History | None = None

    @property
    def revision(self) -> int:
        return self.state["revision"]

    def tick(self) -> None:
        """Between steps and while waiting: the lock (LockLost), then a `deploy canary` command (Stop)."""
        self._check()
        command = read_command(self.kube, self.target, self.revision)
        if command is not None:
            clear_command(self.kube, self.target)
            action = command.get("action")
            if action in (PROMOTE, ABORT):
                raise Stop(action, command.get("reason", ""), command.get("by", ""))

    def store(self) -> None:
        self.history.pending = replace(self.history.pending, canary=self.public_state())
        self.history.keep_pending(self.kube)

    def public_state(self) -> dict:
        return {k: v for k, v in self.state.items() if k != "resumed"}

    def canary_deployment(self, replicas: int) -> dict:
        return canary_objects.canary_deployment(deployment_of(self.objects), replicas, self.state)

    def steps(self, wait_canary, stable_replicas) -> None:
        """Every step from the recorded one: replicas, weights, slow start, analysis. Stop or an aborting
        verdict raises; returning means every step passed."""
        steps = self.state["steps"]
        for index in range(max(self.state["step"], 0), len(steps)):
            weight = steps[index]
            replicas = release.canary_replicas(weight, stable_replicas())
            self.tick()
            verdict = wait_canary(self.canary_deployment(replicas))
            if verdict.state != diagnosis.SERVING:
                raise Stop(ABORT, f"the canary's pods did not become ready: {verdict.message}")
            self.state.update(step=index, weights=release.weights(weight))
            self.store()
            self.tick()
            self.kube.apply(canary_objects.weighted(self.route, self.state["weights"], self.public_state()))
            self.say(f"step {index + 1} of {len(steps)}: {weight}% of {self.target.stage.name}'s requests to the "
                     f"canary ({replicas} pod(s)), {100 - weight}% to stable")
            self.judge(index, weight)

    def judge(self, index: int, weight: int) -> None:
        """Wait out slow start, then analyse up to 1 + max_extensions windows; Stop(abort) unless one passes."""
        policy = self.plan.policy
        analysis.wait_until(time.monotonic() + self.plan.slow_start_seconds, self.tick)
        match = deployment_of([self.canary_deployment(1)])["spec"]["selector"]["matchLabels"]
        for attempt in range(1 + policy.max_extensions):
            found = analysis.analyse(self.prometheus, self.plan,
                                     lambda: analysis.ready_pods(self.kube, self.target.namespace, match),
                                     self.say, check=self.tick)
            analysis.report(found, self.plan, self.say)
            self.state["analyses"].append(_summary(index, weight, attempt, found))
            self.store()
            if found.result == "pass":
                return
            numbers = f"step {index + 1} ({weight}%): {found.result}: {'; '.join(found.reasons)}"
            if found.result == "fail":
                raise Stop(ABORT, numbers)
            if attempt < policy.max_extensions:
                self.say(f"inconclusive: extending step {index + 1}'s window ({attempt + 1} of "
                         f"{policy.max_extensions} extensions)")
        raise Stop(ABORT, f"{numbers}, still after {policy.max_extensions} extension(s)")


def _summary(index: int, weight: int, attempt: int, found) -> dict:
    counted = {name: (side.requests, side.errors) for name, side in (("candidate", found.candidate),
                                                                      ("stable", found.stable)) if side is not None}
    return {"step": index + 1, "weight": weight, "attempt": attempt + 1, "result": found.result,
            "reasons": found.reasons, "requests": counted, "at": now_text(),
            "false_fail_probability": found.false_fail_probability}


def worst_seconds(target: Target, objects: list[dict], policy, stable_replicas: int) -> int:
    """The longest a production canary of `objects` may take before its promotion (render's job-time check counts
    the same: job_time.canary_seconds); 0 for any other stage or without canary_steps."""
    deployment = deployment_of(objects)
    if deployment is None or not target.stage.production:
        return 0
    return job_time.canary_seconds(list(objects), deployment, stable_replicas, policy)


def wait_settings_for(target: Target, deployment: dict, settings: rollout.WaitSettings) -> rollout.WaitSettings:
    """The rollout's wait for the canary's pods: one progress deadline (they start together) and the margin."""
    deadline = (deployment.get("spec") or {}).get("progressDeadlineSeconds") or \
        budget.KUBERNETES_DEFAULT_PROGRESS_DEADLINE
    return replace(settings, budget_seconds=deadline + budget.ROLLOUT_MARGIN_SECONDS)



# --- one canary, from its first step to its promotion or its abort ------------------------------------------------

def run(kube: Kube, target: Target, conf, policy, opts, lock, history: History, revision, restore, objects: list[dict],
        state: dict, prometheus, noticed: list[str], say=print) -> int:
    """Run the canary of `revision` (its state new, or resumed at its recorded step) to its end; return the exit."""
    from podserve.tooling.deploy import commands
    from podserve.tooling.deploy.errors import ClusterError, LockLost, Terminated

    resumed = state.get("resumed", False)
    state = {k: v for k, v in state.items() if k != "resumed"}
    state["revision"] = revision.number
    revision = replace(revision, canary=state)
    before, back_to = restore.objects, restore.number or None
    plan = analysis.plan_for(target, target, policy, track=release.CANARY)
    loop = Canary(kube, target, state, objects, before, plan, prometheus, lock.check, say)
    if not resumed:  # a command left for a killed canary that had this revision's number is not for this one
        clear_command(kube, target)
    history.begin(kube, revision, restore)
    loop.history = history
    say(f"canary of revision {revision.number}: steps {', '.join(f'{w}%' for w in state['steps'])}, each judged for "
        f"{plan.policy.window_seconds} s (up to {plan.policy.max_extensions} extension(s)), then the rollout"
        + (" (resumed)" if resumed else ""))

    def wait_canary(deployment: dict):
        lock.check()
        commands._apply_one(kube, deployment, say)
        canary_target = replace(target, objects=(deployment,))
        settings = wait_settings_for(canary_target, deployment,
                                     commands.wait_settings(canary_target, conf, opts, [deployment]))
        return rollout.wait(kube, canary_target, settings, say, lock.check)

    def aborted(why: str) -> int:
        say(f"ABORTED: {failures.CANARY_FAILED.say(why)}")
        try:
            abort_objects(kube, target, loop.route, say, delay_seconds=opts.canary_scale_down_delay_seconds)
        except ClusterError as exc:  # the history keeps the revision pending: rollback finishes the abort
            say(f"FAILED: the canary could not be aborted ({exc.message}): run `python -m podserve.tooling.deploy "
                f"rollback --stage {target.stage.name} --service {target.service} --team {target.team}`")
            commands._notify(target, revision.number, "canary_aborted", f"{why}; the abort did not finish: "
                                                                        f"{exc.message}", say)
            return failures.EXIT_FAILED
        commands._end(kube, history, say)
        commands._notify(target, revision.number, "canary_aborted", why, say, revision.verdict_override)
        return failures.EXIT_FAILED

    try:
        if state["phase"] == STEPS:
            try:
                loop.steps(wait_canary, lambda: commands.live_replicas(kube, target) or 1)
            except Stop as stop:
                if stop.action == ABORT:
                    return aborted(stop.why if stop.by == "" else f"aborted by {stop.by}: {stop.why or 'no reason'}")
                state["promoted"] = {"reason": stop.why, "by": stop.by, "at": now_text(), "step": state["step"] + 1}
                say(f"promoting now, without the rest of the analysis, as {stop.by} asked: {stop.why}")
            except Terminated as exc:
                return aborted(exc.message)
            except ClusterError as exc:
                return aborted(commands._cause(exc))
        state["phase"] = PROMOTING
        loop.store()
        return _promote(kube, target, conf, opts, lock, history, revision, loop, objects, before, back_to, noticed,
                        say)
    except LockLost as exc:
        say(f"STOPPED: {exc.message}. This deploy stops here and does not roll back: the stage belongs to the new "
            "holder's deploy now, and its Lease is left alone")
        commands._notify(target, revision.number, "interrupted", exc.message, say)
        return failures.EXIT_FAILED
    except (ClusterError, Terminated) as exc:  # during the promotion: roll back as any rollout cut short
        return commands.interrupted(kube, target, before, history, revision.number, commands._cause(exc), conf, opts,
                                    say, lock.check)


def _promote(kube: Kube, target: Target, conf, opts, lock, history: History, revision, loop: Canary,
             objects: list[dict], before: list[dict], back_to, noticed: list[str], say=print) -> int:
    """Today's rollout of the whole revision on stable, the canary still weighted; then stable 100, the canary
    deleted, the revision recorded."""
    from podserve.tooling.deploy import commands

    state = loop.public_state()
    weighted = [canary_objects.weighted(o, state["weights"], state) if o.get("kind") == "VirtualService" else o
                for o in objects]
    say(f"promoting revision {revision.number}: the rollout of stable, the canary still at {state['weights'][1]}%")
    commands.apply_set(kube, target, weighted, say, lock.check,
                       keep=(("Deployment", release.canary_name(target.service)),),
                       propagation_seconds=conf.platform.mesh.propagation_seconds)
    settings = commands.wait_settings(target, conf, opts, objects, commands.live_replicas(kube, target))
    say(f"waiting up to {settings.budget_seconds:.0f} s for the rollout")
    verdict = rollout.wait(kube, target, settings, say, lock.check)
    lock.check()
    if verdict.state != diagnosis.SERVING:  # the rollback puts back what ran (stable 100) and prunes the canary
        return commands.failed_rollout(kube, target, history, before, back_to, revision.number, verdict, conf, opts,
                                       say, lock.check)
    lock.check()
    kube.apply(route_of(objects))
    say(f"set the weights of VirtualService/{target.service} to stable 100, canary 0")
    serve_while_the_mesh_settles(opts.canary_scale_down_delay_seconds, say, lock.check)
    lock.check()
    if kube.delete(MANAGED["Deployment"], target.namespace, release.canary_name(target.service)):
        say(f"deleted Deployment/{release.canary_name(target.service)}")
    history.record(kube, replace(revision, applied_at=now_text(), canary=state))
    passed = sum(1 for a in state["analyses"] if a["result"] == "pass")
    say(f"serving: revision {revision.number} of {target.service} in {target.stage.name} after its canary "
        f"({passed} step(s) passed" + (f", promoted at step {state['promoted']['step']} by "
                                        f"{state['promoted']['by']}: {state['promoted']['reason']}"
                                        if state.get("promoted") else "") + f"): {verdict.message}")
    commands._notify(target, revision.number, "serving", "; ".join(f"noticed: {line}" for line in noticed) or None,
                     say, revision.verdict_override)
    return failures.EXIT_SERVING
