"""The deploy tool's verbs: apply (then wait, and roll back a failed production stage), status, rollback, delete.

Each verb takes a connection, the target (service and stage) and the policy, prints what
it does, and returns the exit status; refusals and bad input are raised as the errors in
`errors`, which the CLI turns into their exit status.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from podserve.tooling import job_time, release, routing, tenancy
from podserve.tooling.conf import Conf, DeployPolicy
from podserve.tooling.deploy import (argo, budget, diagnosis, drift, failures, freeze, migration, notify, pipeline,
                                    rollout, verdict_gate)
from podserve.tooling.deploy.errors import (BadInput, ClusterError, DeployError, LockLost, Refused,
                                            RollbackIncomplete, Terminated)
from podserve.tooling.deploy.history import History, Revision, as_applied, history_name, now_text
from podserve.tooling.deploy.kube import CONFIGMAPS, EVENTS, MANAGED, PODS, REPLICASETS, Kube, kind_of
from podserve.tooling.deploy.lock import DeployLock, holder_identity
from podserve.tooling.deploy.target import Target, label_selector
from podserve.tooling.rollout import WORKLOAD_KINDS, workload_kind, workload_of

FORCED_ANNOTATION = "podserve.io/forced-reason"
#: The field manager that keeps spec.replicas when an HPA takes a Deployment over.
REPLICAS_HANDOVER = "podserve-deploy-handover-to-hpa"
#: How long `delete` waits for the stage's pods and ReplicaSets to be gone.
DELETE_WAIT_SECONDS = 180
#: GitLab's predefined variable holding the job's timeout in seconds (the job's `timeout:` or the project's).
JOB_TIMEOUT_VARIABLE = "CI_JOB_TIMEOUT"
#: GitLab's predefined variable holding when the job started (RFC 3339): its timeout counts from then.
JOB_STARTED_VARIABLE = "CI_JOB_STARTED_AT"


@dataclass(frozen=True)
class Options:
    """The command line's choices, with the policy's defaults filled in."""

    dry_run: bool = False
    force: bool = False
    reason: str = ""
    budget_seconds: float | None = None  # None: derived from the Deployment (budget.rollout_seconds)
    scheduling_grace_seconds: float = 90
    lock_wait_seconds: float = 600
    lock_lease_seconds: int = 60
    started: float | None = None  # time.monotonic() when the tool started: the job's start without $CI_JOB_STARTED_AT
    verdict: str | None = None  # grey's verdict file (verdict_gate.py)


def options_from(policy: DeployPolicy, **chosen) -> Options:
    """Return Options with the policy's values where the command line chose none."""
    defaults = Options(scheduling_grace_seconds=policy.scheduling_grace_seconds,
                       lock_wait_seconds=policy.lock_wait_seconds, lock_lease_seconds=policy.lock_lease_seconds)
    return replace(defaults, **{k: v for k, v in chosen.items() if v is not None})


# --- apply --------------------------------------------------------------------------------------

def apply(kube: Kube, target: Target, conf: Conf, policy: DeployPolicy, opts: Options, say=print) -> int:
    """Apply the target's objects, prune the rest, wait; on failure roll back (not grey). Return the exit status."""
    forced = check_freeze(policy, target, opts, datetime.now(timezone.utc), say, lasting=deploy_span(target, policy))
    override = verdict_gate.check(target, opts.verdict, say)  # production takes only what grey's verdict passed
    if opts.dry_run:
        check_routes(kube, target)
        return dry_run(kube, target, say)
    objects = [drift.stamped(_annotated(obj, forced, override)) for obj in target.objects]
    job = pipeline.from_environment()
    history = History.load(kube, target.namespace, target.service, target.stage.name)
    pipeline.check_order(target, history, job)  # an old pipeline's job is refused before it waits for the lock
    if job_timeout() is not None:  # in CI: what cannot end in the job's time left is refused before the lock's wait
        live = live_workload(kube, target)
        check_job_timeout(target, conf, opts, objects, rollback_set(kube, target, history, live).objects,
                          live_replicas(kube, target), lock_wait=opts.lock_wait_seconds,
                          canary_seconds=canary_worst_seconds(target, objects, policy, live_replicas(kube, target) or 1))
    with DeployLock(kube, target.namespace, target.service, target.stage.name, opts.lock_wait_seconds,
                    opts.lock_lease_seconds, say) as lock:
        check_routes(kube, target)
        history = History.load(kube, target.namespace, target.service, target.stage.name)
        unchecked = pipeline.check_order(target, history, job)  # again, as a newer deploy may have ended meanwhile
        if unchecked:
            say(unchecked)
        live = live_workload(kube, target)
        check_project(kube, target)
        noticed = drift.differences(history, live) + renamed(kube, target)
        for line in noticed:  # a killed deploy, a rollout undo or a scale by hand since the last recorded deploy
            say(f"NOTICED: {line}")
        restore = rollback_set(kube, target, history, live)
        before, back_to = restore.objects, restore.number or None
        check_job_timeout(target, conf, opts, objects, before, live_replicas(kube, target),  # with the real time left
                          canary_seconds=canary_worst_seconds(target, objects, policy, live_replicas(kube, target) or 1))
        validate(kube, objects)
        if migrate_to_rollout(kube, target, objects, conf, opts, say, lock.check, workload_of(list(restore.objects))):
            live = live_workload(kube, target)  # the interim Rollout; a failure rolls back within it (roll_back_to)
        attached = attachable(history, live, objects)
        number = attached.number if attached else history.next_number()
        revision = Revision(number, objects, target.image(), holder_identity(), now_text(), forced, job.pipeline,
                            job.commit, verdict_override=override)
        say(f"deploying {target.service} to {target.stage.name} (namespace {target.namespace}) as revision {number}: "
            f"{target.image()}")
        # From the first mutating call on, every way out ends rolled back (production: by Argo), recorded, or left
        # to Argo Rollouts in the cluster (a production release goes on whatever happens to this job), never silent.
        try:
            if attached:  # an earlier job of this revision was killed: Argo went on; follow it, change nothing
                revision = attached
                say(f"attaching to revision {number}'s release, which Argo Rollouts runs in the cluster since an "
                    f"earlier job applied it: {argo.state_of(live).describe()}")
            else:
                history.begin(kube, revision, restore)
                apply_set(kube, target, objects, say, lock.check,
                          propagation_seconds=conf.platform.mesh.propagation_seconds)
            settings = wait_settings(target, conf, opts, objects, live_replicas(kube, target))
            if target.stage.production:
                settings = replace(settings, budget_seconds=settings.budget_seconds + canary_worst_seconds(
                    target, objects, policy, live_replicas(kube, target) or 1))
            say(f"waiting up to {settings.budget_seconds:.0f} s for the rollout")
            verdict = rollout.wait(kube, target, settings, say, lock.check)
            lock.check()
        except LockLost as exc:
            say(f"STOPPED: {exc.message}. This deploy stops here and does not roll back: the stage belongs to the "
                "new holder's deploy now, and its Lease is left alone")
            _notify(target, number, "interrupted", exc.message, say)
            return failures.EXIT_FAILED
        except Terminated as exc:
            if target.stage.production:  # the release is Argo's: stopping this job changes nothing in the cluster
                say(f"STOPPED: {exc.message}. Revision {number}'s release goes on in the cluster: Argo Rollouts "
                    "promotes or aborts it by its own analysis; run the job again to follow it to its end (it "
                    f"attaches), or `python -m podserve.tooling.deploy canary abort --stage {target.stage.name}`")
                _notify(target, number, "interrupted", f"{exc.message}; the release goes on in the cluster", say)
                return failures.EXIT_FAILED
            return interrupted(kube, target, before, history, number, _cause(exc), conf, opts, say, lock.check)
        except ClusterError as exc:
            return interrupted(kube, target, before, history, number, _cause(exc), conf, opts, say, lock.check)
        if verdict.state == diagnosis.SERVING:
            asked = History.load(kube, target.namespace, target.service, target.stage.name).pending
            if asked is not None and asked.number == number and asked.canary:  # `canary promote --reason` meanwhile
                revision = replace(revision, canary=asked.canary)
            history.record(kube, replace(revision, applied_at=now_text()))
            say(f"serving: revision {number} of {target.service} in {target.stage.name}: {verdict.message}")
            _notify(target, number, "serving", "; ".join(f"noticed: {line}" for line in noticed) or None, say,
                    override)
            return failures.EXIT_SERVING
        return failed_rollout(kube, target, history, before, back_to, number, verdict, conf, opts, say, lock.check)


def live_workload(kube: Kube, target: Target) -> dict | None:
    """The live object that runs the target's pods (its Deployment, or in production its Rollout, or the Deployment
    a production stage ran before its migration to the Rollout), or None."""
    workload = target.deployment()
    if workload:
        found = kube.get(MANAGED[workload["kind"]], target.namespace, workload["metadata"]["name"])
        if found is None and workload["kind"] == "Rollout":  # a stage not yet migrated from its Deployment
            found = kube.get(MANAGED["Deployment"], target.namespace, workload["metadata"]["name"])
        return found
    # by name only (status, rollback, canary with --service): production's Rollout, or an offline worker's Deployment
    for kind in dict.fromkeys((workload_kind(target.stage), "Deployment")):
        found = kube.get(MANAGED[kind], target.namespace, target.service)
        if found is not None:
            return found
    return None


class MigrationFailed(DeployError):
    """The interim Rollout of a migration from a Deployment never served: it was removed, the Deployment serves."""


#: How long a migration waits, beyond the old pods' terminationGracePeriodSeconds, for them to be gone.
MIGRATION_DRAIN_MARGIN_SECONDS = 60


def migrate_to_rollout(kube: Kube, target: Target, objects: list[dict], conf: Conf, opts: Options, say=print,
                       check=lambda: None, recorded: dict | None = None) -> list[dict] | None:
    """Move a production stage from its live Deployment to Argo's Rollout without dropping a request (migration.py):
    the interim Rollout runs the Deployment's pods beside it until every one is available, then the Deployment goes.
    `recorded`: the Deployment as the history recorded it when the live one has not drifted from it (its template as
    rendered, which hashes as this apply's when the build is the same: no second replacement). Return the interim
    objects, or None when nothing runs in a Deployment. MigrationFailed when the interim pods never serve (the
    Rollout removed, the Deployment serving)."""
    workload = workload_of(objects)
    if not target.stage.production or workload is None:
        return None
    name = workload["metadata"]["name"]
    old = migration.legacy_deployment(kube.get(MANAGED["Deployment"], target.namespace, name), objects)
    if old is None:
        return None
    moved = migration.interim(objects, old, recorded)
    replicas = old["spec"].get("replicas", 1)
    say(f"migrating {target.stage.name} from Deployment/{name} to Argo Rollouts: Rollout/{name} starts {replicas} "
        f"pods of the Deployment's pod template, and the Deployment's {replicas} serve until every one is available")
    for step in mesh_steps(kube, moved, conf.platform.mesh.propagation_seconds, say):
        check()
        step() if callable(step) else _apply_one(kube, step, say)
    interim = replace(target, objects=tuple(moved))
    verdict = rollout.wait(kube, interim, wait_settings(interim, conf, opts, moved, replicas), say, check)
    if verdict.state != diagnosis.SERVING:
        check()
        kube.delete(MANAGED["Rollout"], target.namespace, name)
        raise MigrationFailed(f"the migration to Argo Rollouts stopped: Rollout/{name}'s pods of the running build "
                              f"did not serve ({verdict.message}). Rollout/{name} was removed; Deployment/{name} "
                              "serves as before. Fix what the message names (for GPUs: the migration runs both "
                              "workloads' pods at once) and deploy again")
    check()
    selector = migration.old_pods_selector(old)
    kube.delete(MANAGED["Deployment"], target.namespace, name, uid=old["metadata"]["uid"])
    grace = (old["spec"]["template"]["spec"].get("terminationGracePeriodSeconds") or 30)
    say(f"Rollout/{name} serves with {replicas} pods: deleted Deployment/{name}; waiting up to "
        f"{grace + MIGRATION_DRAIN_MARGIN_SECONDS} s for its pods to drain and stop")
    deadline = time.monotonic() + grace + MIGRATION_DRAIN_MARGIN_SECONDS
    while left := kube.list(PODS, target.namespace, selector).get("items") or []:
        if time.monotonic() > deadline:
            say(f"warning: {len(left)} pod(s) of Deployment/{name} still stopping; going on")
            break
        check()
        time.sleep(1)
    say(f"migrated: Deployment/{name} replaced by Rollout/{name} ({replicas} pods replaced)")
    return moved


def attachable(history: History, live: dict | None, objects: list[dict]) -> Revision | None:
    """The pending revision whose release Argo still runs with this apply's pod template (an earlier job of the
    same revision was killed): the apply follows it instead of applying again; None otherwise."""
    pending = history.pending
    if pending is None or live is None or live.get("kind") != "Rollout" or not argo.in_progress(live):
        return None
    ours = drift.running_hash(workload_of(objects))
    if drift.running_hash(live) == ours and drift.running_hash(workload_of(list(pending.objects))) == ours:
        return pending
    return None


def abort_release(kube: Kube, target: Target, say=print, check=lambda: None) -> bool:
    """Abort the production release Argo runs (every request back to stable, the canary scaled down by Argo);
    whether one was running."""
    if not target.stage.production:
        return False
    live = live_workload(kube, target)
    if live is None or live.get("kind") != "Rollout" or not argo.in_progress(live):
        return False
    check()
    try:
        argo.abort(kube, target.namespace, live["metadata"]["name"])
    except ClusterError as exc:  # the rollback that follows re-applies stable's spec, which ends the release too
        say(f"could not abort the release of Rollout/{live['metadata']['name']} ({_cause(exc)})")
        return False
    say(f"aborted the release of Rollout/{live['metadata']['name']}: Argo Rollouts sends every request back to "
        "stable and scales the canary down")
    return True


def failed_rollout(kube: Kube, target: Target, history: History, before: list[dict], back_to: int | None, number: int,
                   verdict: diagnosis.Verdict, conf: Conf, opts: Options, say=print, check=lambda: None) -> int:
    """End a rollout that failed: keep grey for inspection, roll production back (budgeted from how far the rollout
    got), forget the pending revision once the rollback ended, notify; return EXIT_FAILED."""
    say(f"FAILED: {verdict.message}")
    if target.stage.track == "grey":
        _end(kube, history, say)
        say(f"grey is left as it is for inspection (`python -m podserve.tooling.deploy status --stage "
            f"{target.stage.name}`); stop it with `python -m podserve.tooling.deploy delete --stage "
            f"{target.stage.name}`")
        _notify(target, number, "failed", verdict.message, say)
        return failures.EXIT_FAILED
    try:
        abort_release(kube, target, say, check)  # stable 100 at once; the rollback below re-applies stable's spec
        outcome = roll_back_to(kube, target, before, back_to, conf, opts, say, rolled_from=number,
                               check=check, rolled_out=rolled_out(kube, target))
    except RollbackIncomplete as exc:  # the history keeps this deploy pending: the next deploy and rollback see it
        say(f"FAILED: {exc.message}")
        _notify(target, number, "rollback_failed", f"{verdict.message}; {exc.message}", say)
        return failures.EXIT_FAILED
    except LockLost as exc:
        say(f"STOPPED: {exc.message}. The rollback stops here: the stage belongs to the new holder's deploy now")
        _notify(target, number, "interrupted", f"{verdict.message}; {exc.message}", say)
        return failures.EXIT_FAILED
    _end(kube, history, say)
    _notify(target, number, outcome, verdict.message, say)
    return failures.EXIT_FAILED


def interrupted(kube: Kube, target: Target, before: list[dict], history: History, number: int, cause: str,
                conf: Conf, opts: Options, say=print, check=lambda: None) -> int:
    """End a deploy cut short after its first change (an API error, SIGTERM): roll the stage back to what ran before
    (as a failed rollout is; grey is kept for inspection), notify with outcome `interrupted`; return EXIT_FAILED.
    The history forgets the deploy only once its rollback ended; one cut short leaves it pending."""
    say(f"INTERRUPTED: {cause}")
    if target.stage.track == "grey":
        _end(kube, history, say)
        outcome = f"{target.stage.name} is left as it is (`status --stage {target.stage.name}` shows it)"
    else:
        back_to = history.restore.number if history.restore else None
        try:
            abort_release(kube, target, say, check)
            done = roll_back_to(kube, target, before, back_to or None, conf, opts, say, rolled_from=number,
                                check=check)
            outcome = "rolled back" if done == "rolled_back" else "the rollback did not become healthy"
            _end(kube, history, say)
        except RollbackIncomplete as exc:
            outcome = f"the rollback failed too: {exc.message}"
            say(f"FAILED: {exc.message}")
        except LockLost as exc:
            outcome = f"the rollback stopped: {exc.message}"
            say(f"STOPPED: {exc.message}")
    _notify(target, number, "interrupted", f"{cause}; {outcome}", say)
    return failures.EXIT_FAILED


def _end(kube: Kube, history: History, say=print) -> None:
    """Forget the pending revision; when the history cannot be written, say that the next deploy will report it."""
    try:
        history.end(kube)
    except (ClusterError, Terminated):
        say("warning: the history still names this deploy as unfinished; the next deploy reports it")


def _cause(exc: BaseException) -> str:
    if isinstance(exc, ClusterError):
        return f"the API server answered {exc.status or 'nothing'}: {exc.message}"
    return exc.message


def rollback_set(kube: Kube, target: Target, history: History, live: dict | None) -> Revision:
    """What a failure rolls back to: after a deploy that never finished (killed: the history still names it pending),
    what ran before that deploy (the set it would itself have rolled back to), never its half-applied objects;
    else the recorded revision, unless something else really runs (the live objects, as revision 0: not
    recorded: a `kubectl rollout undo`, an edit)."""
    if history.pending is not None and (history.restore or history.current):
        return history.restore or history.current
    if history.current and not drift.template_drifted(history, live):
        return history.current
    return Revision(0, live_objects(kube, target), applied_at=now_text())


def roll_back_to(kube: Kube, target: Target, objects: list[dict], number: int | None, conf: Conf, opts: Options,
                 say=print, rolled_from: int | None = None, check=lambda: None, rolled_out: int | None = None) -> str:
    """Re-apply the objects as they were before, prune the rest, wait; return 'rolled_back', or 'rollback_failed'
    when they do not become healthy. RollbackIncomplete when an API error or SIGTERM cut it short: it names which
    objects are back, which still hold revision `rolled_from`'s, and the command that finishes the rollback.

    `check` runs before each write, as in a deploy (the deploy lock's: LockLost stops it, the stage being another
    deploy's by then); `rolled_out`, the new pods a failed rollout had made available, budgets the wait
    (budget.rollback_seconds; None: the whole rollout of the objects)."""
    if target.stage.production and (workload_of(list(objects)) or {}).get("kind") == "Deployment":
        objects = migration.into_rollout(list(objects), live_objects(kube, target))  # never back to a Deployment
    if objects:
        say(f"rolling back to the previous revision{f' ({number})' if number else ''}")
    else:
        say("rolling back: there was no previous revision, so this deploy's objects are removed")
    previous = replace(target, objects=tuple(objects))
    restored: list[str] = []
    left: list[str] = []
    stopped: list[BaseException] = []  # the first API error or SIGTERM; the rollback is incomplete once it holds one

    # One object the API server refuses (a 500 on the DestinationRule) does not stop the others: each is
    # independent, and each one put back is one object fewer of the failed revision serving beside the old ones
    # (the old Deployment's pods behind the new VirtualService's routes). Only a server that does not answer at all
    # ends it: every further call would wait as long to fail. SIGTERM does not stop it either: the CLI ignores a
    # second one, these are a few quick writes, and stopping between them would leave production half rolled back;
    # the write SIGTERM cut short is sent again. What the job's log and the notification then say is exact.
    def attempt(step) -> bool:
        if any(isinstance(exc, ClusterError) and not exc.status for exc in stopped):
            return False
        for _ in range(2):
            try:
                check()
                step()
                return True
            except Terminated as exc:
                stopped.append(exc)
            except ClusterError as exc:
                stopped.append(exc)
                return False
        return False

    steps: list = []
    if not attempt(lambda: steps.extend(mesh_steps(kube, list(objects), conf.platform.mesh.propagation_seconds,
                                                   say))):
        steps = list(objects)  # the live DestinationRules could not be read: in the order rendered
    for step in steps:
        if callable(step):
            step()
            continue
        what = f"{step['kind']}/{step['metadata']['name']}"
        (restored if attempt(lambda: _apply_one(kube, step, say)) else left).append(what)
    extra: list[dict] = []
    if not attempt(lambda: extra.extend(prunable(kube, previous, list(objects)))):
        left.append("whatever only the rolled-back revision has (it could not be listed, so it was not pruned)")
    for obj in extra:
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        if attempt(lambda: _prune_one(kube, target, obj, say)):
            restored.append(f"{what} (pruned)")
        else:
            left.append(f"{what} (not pruned)")
    if stopped:
        raise _incomplete(target, number, rolled_from, restored, left, stopped, waited=False)
    if previous.deployment() is None:
        return "rolled_back"
    settings = wait_settings(previous, conf, opts, list(objects), live_replicas(kube, previous))
    if rolled_out is not None and opts.budget_seconds is None:
        settings = replace(settings, budget_seconds=budget.rollback_seconds(
            progress_deadline(previous.deployment()), rolled_out, max_surge(previous.deployment())))
    try:
        verdict = rollout.wait(kube, previous, settings, say, check)
    except (ClusterError, Terminated) as exc:
        raise _incomplete(target, number, rolled_from, restored, left, [exc], waited=True) from None
    if verdict.state == diagnosis.SERVING:
        say(f"rolled back: the previous revision is serving again: {verdict.message}")
        return "rolled_back"
    say(f"the rollback did not become healthy either: {verdict.message}")
    return "rollback_failed"


def _incomplete(target: Target, number: int | None, rolled_from: int | None, restored: list[str], left: list[str],
                stopped: list[BaseException], waited: bool) -> RollbackIncomplete:
    """The error of a rollback cut short: one line of what runs in the stage now, and the command that finishes it."""
    cause = "; ".join(dict.fromkeys(_cause(exc) for exc in stopped))
    back = f"revision {number}'s" if number else "what ran before"
    failed = f"revision {rolled_from}'s" if rolled_from else "the rolled-back revision's"
    fix = (f"`python -m podserve.tooling.deploy rollback --stage {target.stage.name} --service {target.service} "
           f"--team {target.team}`")
    if left:
        state = (f"{target.stage.name} is half rolled back: {', '.join(restored) or 'no object'} "
                 f"{'is' if len(restored) == 1 else 'are'} {back} again; {', '.join(left)} "
                 f"{'is' if len(left) == 1 else 'are'} still {failed}")
    elif waited:
        state = (f"every object of {target.stage.name} is {back} again, but its rollout was not seen to serve "
                 f"({', '.join(restored)})")
    else:
        state = (f"every object of {target.stage.name} is {back} again ({', '.join(restored) or 'none'}), but its "
                 "rollout was not waited for")
    return RollbackIncomplete(f"the rollback did not finish ({cause}): {state}; finish it with {fix}", cause,
                              restored, left)


def validate(kube: Kube, objects: list[dict]) -> None:
    """Server-side dry-run every object first, so that one the API server refuses leaves everything unchanged (a
    Deployment whose selector changes with the live selector: the selector is immutable, and apply re-creates it)."""
    for obj in objects:
        dry_apply(kube, as_applied_over_live(kube, obj))


def as_applied_over_live(kube: Kube, obj: dict) -> dict:
    """`obj` as apply sends it over the live one: a Deployment with the live selector, a DestinationRule with the
    subset hashes Argo wrote."""
    if obj.get("kind") not in ("Deployment", "DestinationRule"):
        return obj
    live = kube.get(kind_of(obj), obj["metadata"].get("namespace"), obj["metadata"]["name"])
    if obj["kind"] == "DestinationRule":
        return argo.keep_subset_hashes(obj, live)
    if live is None or not selector_changes(live, obj):
        return obj
    found = copy.deepcopy(obj)
    found["spec"]["selector"] = live["spec"]["selector"]
    return found


def dry_apply(kube: Kube, obj: dict) -> dict:
    """Server-side dry-run one object; return what the server would store. A refusal is BadInput saying what to
    change: the platform itself broken (its limits ConfigMap), a platform rule (docs/tenancy.md), a field or kind
    the cluster does not know; other errors go on as they are."""
    try:
        return kube.apply(obj, dry_run=True)
    except ClusterError as exc:
        what = f"{obj.get('kind')}/{obj['metadata'].get('name')}"
        if exc.status == 404:
            raise BadInput(f"{what}: the cluster has no place for it ({exc.message}): the stage's namespace or "
                           f"the {obj.get('kind')} CRD is missing; ask the platform team to install the platform "
                           "chart (charts/podserve-platform) and the CRDs. Nothing was changed") from None
        broken = diagnosis.platform_broken(exc.message)
        if broken:
            raise BadInput(f"{what}: {broken}. Nothing was changed") from None
        if "ValidatingAdmissionPolicy" in exc.message:  # the platform's rules (docs/tenancy.md)
            raise BadInput(f"{what}: the platform's admission policy refuses it ({exc.message}); change what the "
                           "policy names (docs/tenancy.md lists each). Nothing was changed") from None
        # A 500 'failed to create typed patch object' is server-side apply meeting a field the schema lacks.
        if exc.status in (400, 409, 422) or (exc.status == 500 and "not declared in schema" in exc.message):
            raise BadInput(f"{what}: the API server refuses it ({exc.message}); render the manifests again "
                           "with this version of the tooling. Nothing was changed") from None
        raise


def apply_set(kube: Kube, target: Target, objects: list[dict], say=print, check=lambda: None,
              keep: tuple[tuple[str, str], ...] = (), propagation_seconds: float = 0) -> None:
    """Server-side apply every object (make before break: mesh_steps), then delete the target's objects that are not
    among them nor in `keep` ((kind, name): a running canary's Deployment) (`check` runs before each change and
    raises to stop: the deploy lock's)."""
    for step in mesh_steps(kube, objects, propagation_seconds, say):
        check()
        step() if callable(step) else _apply_one(kube, step, say)
    for obj in prunable(kube, target, objects, keep):
        _prune_one(kube, target, obj, say)


def mesh_steps(kube: Kube, objects: list[dict], propagation_seconds: float, say=print) -> list:
    """The objects to apply, in an order that never has a gateway route to a subset it has no cluster for (istiod
    drops a DestinationRule subset's cluster with the subset, and a gateway answers a route to a cluster it lacks
    503 with no body; measured on the real node through istiod: 22 of them at 60 requests a second when a rollback
    removed the `stable` subset and its route at once). Each step is an object to apply, or a callable that waits
    `propagation_seconds` (istiod's push to every gateway, conf/platform.yaml mesh.propagation_seconds).

    Make before break: a DestinationRule that gains subsets goes first (with any subset it loses still in it), then,
    once the mesh carries them, everything else (the VirtualServices that name them); a DestinationRule that loses
    subsets goes last, once the mesh carries the routes that no longer name them. Nothing waits when no subset of a
    live DestinationRule changes (every deploy but the selector's migration and a rollback across it)."""
    growing, rest, shrinking = [], [], []
    for obj in objects:
        live = kube.get(kind_of(obj), obj["metadata"].get("namespace"), obj["metadata"]["name"]) \
            if obj.get("kind") == "DestinationRule" else None
        if live is None:
            rest.append(obj)
            continue
        had = {s["name"]: s for s in (live.get("spec") or {}).get("subsets") or []}
        has = {s["name"] for s in (obj.get("spec") or {}).get("subsets") or []}
        lost = [subset for name, subset in had.items() if name not in has]
        if has - set(had):
            first = copy.deepcopy(obj)
            first["spec"]["subsets"] = list(first["spec"].get("subsets") or []) + lost
            growing.append(first)
        if lost:
            shrinking.append(obj)
        elif not has - set(had):
            rest.append(obj)

    def wait(why: str):
        def waiting() -> None:
            say(f"waiting {propagation_seconds:g} s for the mesh to {why}")
            time.sleep(propagation_seconds)
        return [waiting] if propagation_seconds else []

    # a Rollout after the VirtualService and DestinationRule it names: Argo validates them when it first sees it (a
    # Rollout naming one not yet there is Degraded, InvalidSpec, until its next resync)
    rest.sort(key=lambda obj: obj.get("kind") == "Rollout")
    return (growing + (wait("carry the new subsets before a route names them") if growing else []) + rest
            + (wait("route away from the subsets that go") if shrinking else []) + shrinking)


def _apply_one(kube: Kube, obj: dict, say=print) -> None:
    kind, meta = kind_of(obj), obj["metadata"]
    live = kube.get(kind, meta.get("namespace"), meta["name"])
    if live is not None and obj["kind"] == "Deployment" and selector_changes(live, obj):
        recreate_orphaning(kube, obj, live, say)
        return
    if live is not None and obj["kind"] in WORKLOAD_KINDS:
        hand_over_replicas(kube, obj, live, say)
    kube.apply(argo.keep_subset_hashes(obj, live))
    say(f"{'configured' if live is not None else 'created'} {obj['kind']}/{meta['name']}")


#: How long a Deployment deleted with propagationPolicy Orphan may take to be gone (the garbage collector first
#: frees its ReplicaSets of their owner).
ORPHAN_WAIT_SECONDS = 60


def selector_changes(live: dict, deployment: dict) -> bool:
    """Whether applying `deployment` changes the live one's selector (immutable: the object must be re-created)."""
    return ((live.get("spec") or {}).get("selector") or {}) != ((deployment.get("spec") or {}).get("selector") or {})


def recreate_orphaning(kube: Kube, deployment: dict, live: dict, say=print) -> None:
    """Re-create a Deployment whose selector changes (production's gained `track: stable`, or a rollback across
    that): delete it with propagationPolicy Orphan, so that its ReplicaSets and pods keep running ownerless, and
    create it again with its live replicas; the controller adopts the ReplicaSet whose pod template is the same (its
    labels match the new selector), so no pod restarts."""
    meta = deployment["metadata"]
    was = label_selector(((live.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    becomes = label_selector(((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    kube.delete(MANAGED["Deployment"], meta["namespace"], meta["name"], uid=live["metadata"]["uid"],
                propagation="Orphan")
    deadline = time.monotonic() + ORPHAN_WAIT_SECONDS
    while kube.get(MANAGED["Deployment"], meta["namespace"], meta["name"]) is not None:
        if time.monotonic() > deadline:
            raise ClusterError(0, f"Deployment/{meta['name']} deleted with its ReplicaSets orphaned was still there "
                                  f"after {ORPHAN_WAIT_SECONDS} s (the garbage collector frees them first)")
        time.sleep(0.5)
    created = copy.deepcopy(deployment)
    replicas = (live.get("spec") or {}).get("replicas")
    handed = "replicas" not in deployment["spec"] and replicas is not None  # an HPA's: kept, not reset to 1
    if handed:
        created["spec"]["replicas"] = replicas
    kube.apply(created)
    if handed:
        hand_over_replicas(kube, deployment, created, say)
        kube.apply(deployment)
    say(f"re-created Deployment/{meta['name']} for its selector ({was} -> {becomes}), its ReplicaSets orphaned and "
        "adopted again: no pod restarts")


def _prune_one(kube: Kube, target: Target, obj: dict, say=print) -> None:
    kube.delete(kind_of(obj), target.namespace, obj["metadata"]["name"])
    say(f"pruned {obj['kind']}/{obj['metadata']['name']} (no longer rendered)")


def hand_over_replicas(kube: Kube, deployment: dict, live: dict, say=print) -> None:
    """Keep the live replica count when an HPA takes over (render stops setting spec.replicas).

    Applying a Deployment without the replicas we owned would remove the field, and the
    Deployment would drop to its default of one pod until the HPA scaled it up again. As
    Kubernetes' server-side apply guide says, another manager takes the field first.
    """
    if "replicas" in (deployment.get("spec") or {}) or "replicas" not in (live.get("spec") or {}):
        return
    kube.apply({"apiVersion": deployment["apiVersion"], "kind": deployment["kind"],
                "metadata": {"name": live["metadata"]["name"], "namespace": live["metadata"]["namespace"]},
                "spec": {"replicas": live["spec"]["replicas"]}}, force=False, manager=REPLICAS_HANDOVER)
    say(f"handed spec.replicas ({live['spec']['replicas']}) of {deployment['kind']}/{live['metadata']['name']} over to "
        "the HPA")


def prunable(kube: Kube, target: Target, objects: list[dict], kept: tuple[tuple[str, str], ...] = ()) -> list[dict]:
    """Return the live objects of the target's service and stage that `objects` no longer holds (nor `kept`)."""
    keep = {(o["kind"], o["metadata"]["name"]) for o in objects} | set(kept)
    found = []
    for kind_name, kind in MANAGED.items():
        for live in _list_if_served(kube, kind, target.namespace, target.selector):
            if (kind_name, live["metadata"]["name"]) not in keep and not controlled(live):
                found.append(dict(live, kind=kind_name))
    return found


def live_objects(kube: Kube, target: Target) -> list[dict]:
    """Return the target's live objects as they could be applied again (the rollback set before any history)."""
    return [as_applied(dict(live, kind=kind_name, apiVersion=live.get("apiVersion") or kind.api_version))
            for kind_name, kind in MANAGED.items()
            for live in _list_if_served(kube, kind, target.namespace, target.selector)
            if (live["metadata"].get("labels") or {}).get(release.TRACK_LABEL) != release.CANARY
            and not controlled(live)]


def controlled(live: dict) -> bool:
    """Whether a controller made `live` (its controller ownerReference): KEDA's HPA carries its ScaledObject's labels,
    so it matches the service's selector, but it is KEDA's to keep or remove, never the tool's to prune or re-apply."""
    return any(ref.get("controller") for ref in live["metadata"].get("ownerReferences") or [])


def job_timeout(environ=os.environ) -> int | None:
    """Return the CI job's timeout in seconds ($CI_JOB_TIMEOUT), or None outside CI."""
    limit = (environ.get(JOB_TIMEOUT_VARIABLE) or "").strip()
    return int(limit) if limit.isdigit() else None


def job_seconds_spent(opts: Options, environ=os.environ) -> tuple[float, str]:
    """Return how long the job has run and since when: $CI_JOB_STARTED_AT (RFC 3339), else since the tool started
    (opts.started; then what ran before the tool in the job is not counted), else nothing is known (0)."""
    text = (environ.get(JOB_STARTED_VARIABLE) or "").strip()
    try:
        started = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text) if text else None
    except ValueError:
        started = None
    if started is not None:
        started = started if started.tzinfo else started.replace(tzinfo=timezone.utc)
        return max(0.0, (_utc_now() - started).total_seconds()), f"since the job started at {text} " \
                                                                 f"(${JOB_STARTED_VARIABLE})"
    if opts.started is not None:
        return max(0.0, time.monotonic() - opts.started), "since this tool started"
    return 0.0, "as far as is known"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def check_job_timeout(target: Target, conf: Conf, opts: Options, objects: list[dict], before: list[dict],
                      live: int | None, environ=os.environ, lock_wait: float = 0, canary_seconds: float = 0) -> None:
    """In CI, refuse before any change a deploy whose waits could outlast what is left of the job's timeout (GitLab
    would kill it midway): its rollout's wait, its rollback's, JOB_MARGIN_SECONDS and `lock_wait` (the longest the
    deploy lock may still make it wait: checked once before the lock with the lock's whole wait, and again once the
    lock is taken, with 0), against $CI_JOB_TIMEOUT less the time the job has already run (job_seconds_spent).
    BadInput naming the numbers, the value.py fields, the lock's wait and the job's `timeout:`. A production canary's
    steps at their worst (`canary_seconds`, canary_worst_seconds) come before its rollout."""
    limit = job_timeout(environ)
    if limit is None:
        return
    settings = wait_settings(target, conf, opts, objects, live)
    rollout_seconds = settings.budget_seconds
    rollback_seconds = 0.0
    previous = workload_of(before)
    if previous is not None and target.stage.track != "grey":  # at most all but one of the new pods to put back
        rollback_seconds = budget.rollback_seconds(progress_deadline(previous), rollout_pods(target, objects, live) - 1,
                                                   max_surge(previous))
    needed = rollout_seconds + rollback_seconds + budget.JOB_MARGIN_SECONDS + lock_wait + canary_seconds
    spent, since = job_seconds_spent(opts, environ)
    left = limit - spent
    if needed > left:
        lock_text = f" and up to {lock_wait:.0f} s for the deploy lock" if lock_wait else ""
        lock_text += f", after up to {canary_seconds:.0f} s of its canary's steps" if canary_seconds else ""
        lock_fix = ", or deploy when no other deploy of it runs" if lock_wait else ""
        raise BadInput(f"this deploy may wait {rollout_seconds:.0f} s for its rollout and {rollback_seconds:.0f} s for a "
                       f"rollback (+{budget.JOB_MARGIN_SECONDS} s){lock_text}, {needed:.0f} s in all, more than the "
                       f"job's timeout of {limit} s (${JOB_TIMEOUT_VARIABLE}) leaves it: {spent:.0f} s have passed "
                       f"{since}, {max(left, 0):.0f} s are left, so GitLab could kill it midway: lower "
                       f"init_delay_second or the replicas (max_replicas) in value.py{lock_fix}. Nothing was changed")


def renamed(kube: Kube, target: Target) -> list[str]:
    """One line per other service of the stage rendered by the same GitLab project: a renamed service's old objects."""
    ours = target.deployment()
    project = (((ours or {}).get("metadata") or {}).get("annotations") or {}).get(tenancy.PROJECT_ANNOTATION)
    if not project:
        return []
    found = []
    for other in [o for kind in WORKLOAD_KINDS for o in _list_if_served(
            kube, MANAGED[kind], target.namespace, f"stage={target.stage.name},app.kubernetes.io/managed-by=podserve")]:
        name = (other["metadata"].get("labels") or {}).get("service")
        if name != target.service and (other["metadata"].get("annotations") or {}).get(
                tenancy.PROJECT_ANNOTATION) == project:
            found.append(f"service {name} of the same project ({project}) still runs in {target.namespace}: if the "
                         f"service was renamed, retire the old one: `python -m podserve.tooling.deploy retire --stage "
                         f"{target.stage.name} --service {name} --team {target.team} --confirm {name}`")
    return found


def live_replicas(kube: Kube, target: Target) -> int | None:
    """Return the live Deployment's (Rollout's) spec.replicas (an autoscaler's count once it owns the field), or
    None."""
    if target.deployment() is None:
        return None
    live = live_workload(kube, target)
    return ((live or {}).get("spec") or {}).get("replicas")


def progress_deadline(deployment: dict | None) -> int:
    """Return a Deployment's progressDeadlineSeconds (Kubernetes' default where it sets none)."""
    return ((deployment or {}).get("spec") or {}).get("progressDeadlineSeconds") \
        or budget.KUBERNETES_DEFAULT_PROGRESS_DEADLINE


def max_surge(deployment: dict | None) -> int:
    """Return a Deployment's rolling maxSurge as a count (1 where it is a percentage or unset)."""
    surge = ((((deployment or {}).get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", 1)
    return surge if isinstance(surge, int) else 1


def rolled_out(kube: Kube, target: Target) -> int | None:
    """Return how many new pods the target's rollout had made available (its newest ReplicaSet's available ones);
    None when the cluster does not say (the rollback then gets the whole rollout's budget)."""
    try:
        live = live_workload(kube, target)
        if live is None:
            return 0
        replicasets = kube.list(REPLICASETS, target.namespace, label_selector(
            (live["spec"].get("selector") or {}).get("matchLabels") or {})).get("items") or []
    except ClusterError:
        return None
    return sum((rs.get("status") or {}).get("availableReplicas", 0) for rs in diagnosis.new_replicasets(live, replicasets))


def check_project(kube: Kube, target: Target) -> None:
    """Refuse (exit 3) objects whose live namesakes another GitLab project of the team deployed: two projects with one
    service name would silently take each other's service over (their podserve.io/project annotation tells)."""
    ours = (((target.deployment() or {}).get("metadata") or {}).get("annotations") or {}).get(tenancy.PROJECT_ANNOTATION)
    if not ours:
        return
    for obj in target.objects:
        live = kube.get(kind_of(obj), target.namespace, obj["metadata"]["name"])
        theirs = (((live or {}).get("metadata") or {}).get("annotations") or {}).get(tenancy.PROJECT_ANNOTATION)
        if theirs and theirs != ours:
            raise Refused(failures.PROJECT_COLLISION, f"{obj['kind']}/{obj['metadata']['name']} in {target.namespace} "
                                                      f"belongs to GitLab project {theirs}, not this one ({ours})")


def rollout_pods(target: Target, objects: list[dict], live: int | None = None) -> int:
    """Return how many pods a rollout of `objects` replaces: the Deployment's replicas, or where an HPA or KEDA owns
    them (render leaves spec.replicas out) the `live` pods the autoscaler keeps, at least its minimum."""
    deployment = workload_of(objects) or target.deployment() or {}
    scaler = next((o for o in objects if o.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")), None)
    least = ((scaler or {}).get("spec") or {})
    least = least.get("minReplicas") or least.get("minReplicaCount") or 1
    return (deployment.get("spec") or {}).get("replicas") or (max(live or 0, least) if scaler else 1)


def wait_settings(target: Target, conf: Conf, opts: Options, objects: list[dict],
                  live: int | None = None) -> rollout.WaitSettings:
    """Return the wait's budget (from the Deployment's progressDeadlineSeconds and rollout_pods) and grace."""
    deployment = workload_of(objects) or target.deployment() or {}
    seconds = opts.budget_seconds or budget.rollout_seconds(progress_deadline(deployment),
                                                            rollout_pods(target, objects, live), max_surge(deployment))
    return rollout.WaitSettings(seconds, opts.scheduling_grace_seconds, node_offer(conf, target, deployment))


def node_offer(conf: Conf, target: Target, deployment: dict) -> str:
    """Return what the largest node of the pod's pool in the stage's region can allocate (conf/regions.yaml)."""
    wanted = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
    region = conf.regions.get(target.stage.region)
    if region is None:
        return ""
    for name in ("gpu", "cpu"):
        pool = getattr(region.node_pools, name)
        if pool.node_selector == wanted:
            a = pool.allocatable
            gpus = f", {a.gpus} x {region.gpu.resource}" if a.gpus else ""
            labels = label_selector(pool.node_selector)
            return f"at most cpu {a.cpu}, memory {a.memory}{gpus} per node (pool {labels} in {region.name})"
    return ""


# --- policy checks ----------------------------------------------------------------------------

def check_freeze(policy: DeployPolicy, target: Target, opts: Options, now: datetime, say=print,
                 lasting: float = 0) -> str:
    """Refuse inside a freeze window of the stage's region, or one that starts within `lasting` seconds (what the
    deploy may take at its worst: a canary's), unless forced; return the forced reason ('' if none)."""
    if target.stage.name in policy.exempt_stages:
        return ""
    for window in policy.windows_for(target.stage.region):
        ends, now_or_later = None, now
        for minute in range(0, int(lasting // 60) + 2):  # windows are set to the minute
            now_or_later = min(now + timedelta(minutes=minute), now + timedelta(seconds=lasting))
            ends = freeze.ends_at(window.start, window.end, window.timezone, now_or_later)
            if ends is not None:
                break
        if ends is None:
            continue
        if now_or_later > now:  # not frozen now, but the window starts within the deploy's span
            starts = now_or_later.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
            window_note = (f"; this deploy may take up to {lasting:.0f} s (its canary's steps at their worst) and "
                           f"would still run when it starts, at about {starts} UTC")
        else:
            window_note = ""
        in_utc = ends.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
        detail = (f"region {target.stage.region} is frozen from {window.start} to {window.end} ({window.timezone}: "
                  f"{window.reason}); this window ends at {ends.isoformat()} ({in_utc} UTC){window_note}")
        if not opts.force:
            raise Refused(failures.FREEZE_WINDOW, detail)
        if not opts.reason.strip():
            raise BadInput("--force needs --reason TEXT: say why this deploy cannot wait; it is recorded on the objects")
        say(f"forced past the freeze: {detail}; reason recorded on the objects: {opts.reason}")
        return f"{opts.reason.strip()} (forced by {holder_identity()} at {now_text()})"
    return ""


def check_routes(kube: Kube, target: Target) -> None:
    """Refuse the target when one of its routes can share a path with another service's live VirtualService."""
    ours_docs = [o for o in target.objects if o.get("kind") == "VirtualService"]
    if not ours_docs:
        return
    ours = [route for doc in ours_docs for route in routing.routes_of(doc)]
    names = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in ours_docs}
    live = [dict(vs, kind="VirtualService") for vs in _list_if_served(kube, MANAGED["VirtualService"], None, None)]
    by_owner = {}
    for vs in live:
        if (vs["metadata"].get("namespace"), vs["metadata"]["name"]) in names:
            continue
        for route in routing.routes_of(vs):
            by_owner.setdefault(route, f"{vs['metadata'].get('namespace')}/{vs['metadata']['name']}")
    pairs = routing.conflicts(ours, list(by_owner))
    if pairs:
        said = "; ".join(f"our {a.match.kind} {a.match.value!r} on {a.host} overlaps {b.match.kind} "
                         f"{b.match.value!r} of {b.owner} (VirtualService {by_owner[b]})" for a, b in pairs)
        raise Refused(failures.ROUTE_COLLISION, said)


# --- dry run ------------------------------------------------------------------------------------

def dry_run(kube: Kube, target: Target, say=print) -> int:
    """Print what apply would change (server-side dry run of every object, and the prune); change nothing."""
    say(f"dry run: what `apply --stage {target.stage.name}` would change in namespace {target.namespace} "
        "(nothing is changed)")
    for obj in map(drift.stamped, target.objects):  # as apply would send them
        kind, meta = kind_of(obj), obj["metadata"]
        live = kube.get(kind, meta.get("namespace"), meta["name"])
        after = dry_apply(kube, as_applied_over_live(kube, obj))
        what = f"{obj['kind']}/{meta['name']}"
        if live is None:
            say(f"would create {what}")
            continue
        if obj["kind"] == "Deployment" and selector_changes(live, obj):
            say(f"would re-create {what} for its new selector, orphaning its ReplicaSets for the new one to adopt "
                "(no pod restarts)")
        changed = differences(_comparable(live), _comparable(after))
        say(f"would change {what}: {', '.join(changed[:12])}{' ...' if len(changed) > 12 else ''}" if changed
            else f"unchanged {what}")
    workload = workload_of(list(target.objects))
    old = migration.legacy_deployment(kube.get(MANAGED["Deployment"], target.namespace, workload["metadata"]["name"]),
                                      list(target.objects)) if target.stage.production and workload else None
    for obj in prunable(kube, target, list(target.objects)):
        if old is not None and (obj["kind"], obj["metadata"]["name"]) == ("Deployment", old["metadata"]["name"]):
            say(f"would move Deployment/{old['metadata']['name']} into Rollout/{old['metadata']['name']} first: a "
                "Rollout of the running build beside it until all its pods are available, then the Deployment "
                "deleted (docs/deploy.md: The move from the Deployment)")
            continue
        say(f"would delete {obj['kind']}/{obj['metadata']['name']} (no longer rendered)")

    return failures.EXIT_SERVING


def differences(before, after, path: str = "") -> list[str]:
    """Return the dotted paths where two API-shaped values differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [p for key in sorted(set(before) | set(after), key=str)
                for p in differences(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [p for i, (a, b) in enumerate(zip(before, after)) for p in differences(a, b, f"{path}[{i}]")]
    return [] if before == after else [path or "(object)"]


def _comparable(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != diagnosis.REVISION}
    compared = {"metadata": {"labels": meta.get("labels") or {}, "annotations": annotations},
                **{k: v for k, v in obj.items() if k not in ("metadata", "status")}}
    template = (compared.get("spec") or {}).get("template")
    if isinstance(template, dict):  # the template's hash follows the template: name what changed in it instead
        template = copy.deepcopy(template)
        ((template.get("metadata") or {}).get("annotations") or {}).pop(drift.TEMPLATE_HASH, None)
        compared["spec"] = dict(compared["spec"], template=template)
    return compared


# --- status, rollback, delete -----------------------------------------------------------------

def status(kube: Kube, target: Target, say=print) -> int:
    """Print the revision, the pods (ready, restarts, state; the newest event on a pod not started) and recent
    warning events; 0 when serving."""
    history = History.load(kube, target.namespace, target.service, target.stage.name)
    current = history.current
    deployment = live_workload(kube, target)
    running = drift.running_revision(history, deployment)
    say(f"{target.service} in {target.stage.name} (namespace {target.namespace}): " +
        (f"revision {current.number}, {current.image}, applied {current.applied_at} by {current.applied_by}"
         + (f" from {pipeline.origin_of(current).describe()}" if current.pipeline is not None else "")
         + (f", forced: {current.reason}" if current.reason else "") if current else "no revision recorded"))
    if drift.template_drifted(history, deployment):
        say("really running: " + (f"revision {running.number} ({running.image})" if running else
                                   "a pod template no recorded revision has") + ", not what the history records")
    for line in drift.differences(history, deployment):
        say(f"NOTICED: {line}")
    if deployment is None:
        say(f"no {workload_kind(target.stage)}: the stage is not deployed")
        return failures.EXIT_FAILED
    _release_status(kube, deployment, history, say)
    match = deployment["spec"]["selector"].get("matchLabels") or {}
    pod_selector = label_selector(match)
    pods = kube.list(PODS, target.namespace, pod_selector).get("items") or []
    replicasets = kube.list(REPLICASETS, target.namespace, pod_selector).get("items") or []
    uids = {o["metadata"].get("uid") for o in [deployment, *pods, *replicasets]}
    events = [e for e in kube.list(EVENTS, target.namespace).get("items") or []
              if (e.get("involvedObject") or {}).get("uid") in uids]
    now = datetime.now(timezone.utc)
    done, line = diagnosis.rollout_status(deployment)
    say(diagnosis.progress_line(deployment, diagnosis.new_pods(deployment, replicasets, pods), line))
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(s.get("restartCount", 0) for s in statuses)
        say(f"  pod {pod['metadata']['name']}: {ready}/{len(statuses) or len(pod['spec']['containers'])} ready, "
            f"{restarts} restart(s), {diagnosis.pod_state(pod, events, now)}")
    ready = {pod["metadata"]["name"]: diagnosis.pod_is_ready(pod) for pod in pods}
    warnings, noise = [], {}
    for event in (e for e in events if e.get("type") == "Warning"):
        name = (event.get("involvedObject") or {}).get("name")
        note = diagnosis.known_noise(event, ready.get(name, False))
        if note:
            noise[note] = noise.get(note, 0) + 1
        else:
            warnings.append(event)
    for event in sorted(warnings, key=diagnosis.event_time)[-10:]:
        involved = event.get("involvedObject") or {}
        say(f"  warning {diagnosis.event_time(event)} {involved.get('kind')}/{involved.get('name')}: "
            f"{event.get('reason')}: {event.get('message', '').strip()}")
    for note, count in noise.items():
        say(f"  known, not a fault ({count} warning event(s) left out): {note}")
    return failures.EXIT_SERVING if done else failures.EXIT_FAILED


def _release_status(kube: Kube, live: dict, history: History, say=print) -> None:
    """A production Rollout's release as Argo runs it: phase, step, weights, each analysis run's measurements; and
    what `canary promote|abort` recorded."""
    if live.get("kind") != "Rollout":
        return
    say(argo.state_of(live).describe())
    for run in argo.analysis_runs(kube, live)[-3:]:
        for line in argo.measurements(run):
            say(f"  {line}")
    asked = (history.pending.canary if history.pending else None) or {}
    if asked.get("action"):
        say(f"  canary {asked['action']} asked by {asked.get('by')} at {asked.get('at')}: {asked.get('reason') or '-'}")


def rollback(kube: Kube, target: Target, conf: Conf, opts: Options, say=print) -> int:
    """Put the previous recorded revision back, wait for it; 0 when it serves. After a deploy that never finished
    (killed, or its rollback cut short: the history still names it pending), put back what ran before that deploy
    instead, as its rollback would have."""
    with DeployLock(kube, target.namespace, target.service, target.stage.name, opts.lock_wait_seconds,
                    opts.lock_lease_seconds, say) as lock:
        history = History.load(kube, target.namespace, target.service, target.stage.name)
        if abort_release(kube, target, say, lock.check):
            _notify(target, history.pending.number if history.pending else None, "canary_aborted",
                    "rollback aborted the release Argo Rollouts ran", say)
        if history.pending is not None:
            return _finish_rollback(kube, target, conf, opts, history, say, lock.check)
        if history.previous is None:
            raise BadInput(f"{target.service} in {target.stage.name} has no previous revision recorded (ConfigMap "
                           f"{target.namespace}/{history_name(target.service)}); deploy the version you want with apply")
        try:
            outcome = roll_back_to(kube, target, history.previous.objects, history.previous.number, conf, opts, say,
                                   rolled_from=history.current.number if history.current else None, check=lock.check)
        except RollbackIncomplete as exc:  # the history is unchanged: the same command finishes it
            say(f"FAILED: {exc.message}")
            _notify(target, history.previous.number, "rollback_failed", exc.message, say)
            return failures.EXIT_FAILED
        if outcome == "rolled_back":
            history.swap(kube)
        _notify(target, history.current.number if outcome == "rolled_back" else history.previous.number,
                outcome, None, say)
        return failures.EXIT_SERVING if outcome == "rolled_back" else failures.EXIT_FAILED


def _finish_rollback(kube: Kube, target: Target, conf: Conf, opts: Options, history: History, say=print,
                     check=lambda: None) -> int:
    """Put back what ran before the pending revision (history.restore, else the recorded current one); forget it."""
    pending, back = history.pending, history.restore or history.current
    if back is None:
        raise BadInput(f"revision {pending.number} of {target.service} in {target.stage.name} never finished and the "
                       f"history (ConfigMap {target.namespace}/{history_name(target.service)}) holds nothing to put "
                       "back: deploy the version you want with apply")
    say(f"revision {pending.number} ({pending.image}) never finished (its deploy was killed, or its rollback was cut "
        "short): putting back what ran before it")
    try:
        outcome = roll_back_to(kube, target, back.objects, back.number or None, conf, opts, say,
                               rolled_from=pending.number, check=check)
    except RollbackIncomplete as exc:  # still pending: the same command goes on from here
        say(f"FAILED: {exc.message}")
        _notify(target, back.number or None, "rollback_failed", exc.message, say)
        return failures.EXIT_FAILED
    history.end(kube)
    _notify(target, back.number or None, outcome, None, say)
    return failures.EXIT_SERVING if outcome == "rolled_back" else failures.EXIT_FAILED


def delete(kube: Kube, target: Target, opts: Options, say=print) -> int:
    """Remove every object of the service's stage (found by labels), then wait for its pods to be gone."""
    if target.stage.production:
        raise BadInput(f"delete stops grey and A/B copies only; {target.stage.name} serves production: to take "
                       f"the service out of it for good, run `retire --stage {target.stage.name} --confirm "
                       f"{target.service}`")
    return _remove(kube, target, opts, "deleted", say)


def retire(kube: Kube, target: Target, policy: DeployPolicy, opts: Options, confirm: str, say=print) -> int:
    """Take a service out of a stage for good (production included): every object with its labels, its history
    and its lock; `confirm` must repeat the service's name (CI has no prompt). Refused in a freeze window."""
    if confirm != target.service:
        raise BadInput(f"--confirm {confirm!r} does not repeat the service's name: pass --confirm {target.service} to "
                       f"retire {target.service} from {target.stage.name} (namespace {target.namespace})")
    check_freeze(policy, target, replace(opts, force=False), datetime.now(timezone.utc), say)
    say(f"retiring {target.service} from {target.stage.name} (namespace {target.namespace}): every object with its "
        "labels, its history and its lock")
    return _remove(kube, target, opts, "retired", say, nothing_is_a_failure=True)


#: What `delete` and `retire` remove first: the route, so that callers stop reaching the service before its pods go.
REMOVED_FIRST = ("VirtualService",)


def _remove(kube: Kube, target: Target, opts: Options, outcome: str, say=print, nothing_is_a_failure: bool = False) -> int:
    """Remove every object with the service's and stage's labels, the route first, its history last; wait for its
    pods. With nothing there at all: exit 1 and no notification where `nothing_is_a_failure` (retire: a mistyped
    --service or --team), else 0 (stopping a grey that is already gone)."""
    labels = f"service={target.service},stage={target.stage.name}"
    kinds = sorted(MANAGED.items(), key=lambda item: item[0] not in REMOVED_FIRST)
    with DeployLock(kube, target.namespace, target.service, target.stage.name, opts.lock_wait_seconds,
                    opts.lock_lease_seconds, say):
        removed = 0
        for kind_name, kind in [*kinds, ("ConfigMap", CONFIGMAPS)]:
            for live in _list_if_served(kube, kind, target.namespace, labels):
                if kube.delete(kind, target.namespace, live["metadata"]["name"], propagation="Foreground"):
                    say(f"deleted {kind_name}/{live['metadata']['name']}")
                    removed += 1
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while True:
            left = [f"{k}/{o['metadata']['name']}" for k, kind in (("ReplicaSet", REPLICASETS), ("Pod", PODS),
                                                                   *MANAGED.items())
                    for o in _list_if_served(kube, kind, target.namespace, labels)]
            if not left:
                break
            if time.monotonic() > deadline:
                say(f"still there after {DELETE_WAIT_SECONDS} s: {', '.join(left)}")
                return failures.EXIT_FAILED
            time.sleep(1)
    if not removed and nothing_is_a_failure:
        say(f"FAILED: nothing of {target.service} runs in {target.stage.name}: no object in namespace "
            f"{target.namespace} has the labels {labels} (team {target.team}); check --service and --team; nothing "
            "was changed and nobody was notified")
        return failures.EXIT_FAILED
    say(f"{target.service} in {target.stage.name}: {removed} object(s) deleted; nothing with its labels is left")
    _notify(target, None, outcome, None, say)
    return failures.EXIT_SERVING


# --- helpers ----------------------------------------------------------------------------------

def _list_if_served(kube: Kube, kind, namespace: str | None, selector: str | None) -> list[dict]:
    try:
        return kube.list(kind, namespace, selector).get("items") or []
    except ClusterError as exc:
        if exc.status == 404:  # the kind's API (a CRD such as KEDA's) is not installed in this cluster
            return []
        raise


def _annotated(obj: dict, forced: str, override: str = "") -> dict:
    added = {key: text for key, text in ((FORCED_ANNOTATION, forced), (verdict_gate.OVERRIDE_ANNOTATION, override))
             if text}
    if not added:
        return obj
    meta = dict(obj["metadata"])
    meta["annotations"] = dict(meta.get("annotations") or {}, **added)
    return dict(obj, metadata=meta)


def _notify(target: Target, revision: int | None, outcome: str, diagnosis_text: str | None, say,
            override: str = "") -> None:
    body = notify.payload(target.service, target.stage.name, revision, outcome, diagnosis_text)
    if override:
        body["verdict_override"] = override
    notify.send(body)


def deploy_span(target: Target, policy: DeployPolicy) -> float:
    """The longest a deploy of the rendered target may run at its worst: a canary's steps, its rollout and rollback
    (the freeze windows must not begin in it)."""
    deployment = target.deployment()
    if deployment is None or not target.stage.production:
        return 0
    replicas = (deployment.get("spec") or {}).get("replicas") or 1
    worst = canary_worst_seconds(target, list(target.objects), policy, replicas)
    if not worst:
        return 0
    return budget.deploy_job_seconds(progress_deadline(deployment), replicas, max_surge(deployment), True, 0,
                                     worst)[2]


def canary_worst_seconds(target: Target, objects: list[dict], policy, stable_replicas: int) -> int:
    """The longest a production release's canary steps may take before its promotion (render's job-time check counts
    the same: job_time.canary_seconds); 0 for any other stage or without canary_steps."""
    workload = workload_of(objects)
    if workload is None or not target.stage.production:
        return 0
    return job_time.canary_seconds(list(objects), workload, stable_replicas, policy)


# --- canary promote|abort ---------------------------------------------------------------------------------------

PROMOTE, ABORT = "promote", "abort"


def canary(kube: Kube, target: Target, action: str, reason: str, say=print) -> int:
    """Promote the production release Argo runs now (every step and analysis left skipped: `reason` required) or
    abort it, as Argo's plugin does (status patches on the Rollout); the reason and who asked are recorded in the
    history's pending revision and notified. BadInput when no release runs."""
    if action == PROMOTE and not reason.strip():
        raise BadInput("promote skips the release's remaining steps and analysis: say why with --reason TEXT (it is "
                       "recorded in the history and the notification)")
    live = live_workload(kube, target) if target.stage.production else None
    if live is None or live.get("kind") != "Rollout" or not argo.in_progress(live):
        state = argo.state_of(live).describe() if live is not None and live.get("kind") == "Rollout" else \
            f"no Rollout of {target.service}"
        raise BadInput(f"no release of {target.service} runs in {target.stage.name} (namespace {target.namespace}; "
                       f"{state}): nothing to promote or abort")
    name = live["metadata"]["name"]
    if action == PROMOTE:
        argo.promote_full(kube, target.namespace, name, paused=bool((live.get("spec") or {}).get("paused")))
    else:
        argo.abort(kube, target.namespace, name)
    asked = {"action": action, "reason": reason.strip(), "by": holder_identity(), "at": now_text()}
    history = History.load(kube, target.namespace, target.service, target.stage.name)
    if history.pending is not None:
        history.pending = replace(history.pending, canary=asked)
        history.keep_pending(kube)
    said = f" ({reason.strip()})" if reason.strip() else ""
    say(f"{'promoted' if action == PROMOTE else 'aborted'} the release of Rollout/{name} in {target.stage.name}"
        f"{said}: Argo Rollouts {'skips every remaining step and analysis' if action == PROMOTE else 'sends every request back to stable and scales the canary down'}")
    _notify(target, history.pending.number if history.pending else None,
            "canary_promoted" if action == PROMOTE else "canary_aborted",
            f"{action} by {asked['by']}{said}", say)
    return failures.EXIT_SERVING
