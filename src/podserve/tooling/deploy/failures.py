"""What the deploy tool says when a deploy goes wrong: one entry per failure, the source of docs/deploy.md's table.

Each `Failure` holds the headline the tool prints first, what it means, the value.py field
to change (or who else must act) and the exit status. The diagnosis and the refusals build
their messages from these entries, and `table()` writes the Markdown table that
docs/deploy.md carries (a test keeps the two identical).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Exit statuses of the deploy tool.
EXIT_SERVING = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
#: `analyze`'s verdict when it cannot say (too few requests, a pod unscraped, Prometheus unreachable).
EXIT_INCONCLUSIVE = 4


@dataclass(frozen=True)
class Failure:
    """One way a deploy goes wrong: how the tool names it, why it happens, and what to change."""

    reason: str
    headline: str
    cause: str
    field: str
    fix: str
    exit_code: int = EXIT_FAILED

    def say(self, detail: str) -> str:
        """Return the message the tool prints: headline, the observed detail, then the fix."""
        detail = detail.rstrip()
        if "\n" in detail:  # quoted log lines: the fix goes on a line of its own
            return f"{self.headline}: {detail}\nFix: {self.fix}"
        return f"{self.headline}: {detail.rstrip('.')}. Fix: {self.fix}"


UNSCHEDULABLE = Failure(
    "unschedulable", "No node can take the pod",
    "the scheduler refused the pod for longer than the grace period: no node has the cpu, memory or GPU it "
    "asks for, or every node is cordoned or full",
    "`cpu`, `memory`, `gpu_num`, `gpu_memory` (the one the scheduler names)",
    "lower the request the scheduler names in value.py so that one node of the region can hold the pod; "
    "if the nodes are cordoned or full, ask the platform team")
CREATE_REFUSED = Failure(
    "create_refused", "The cluster refuses to create the pods",
    "the ReplicaSet cannot create pods (FailedCreate): the namespace's ResourceQuota has no room for them (a "
    "rollout needs room for its surge pod too) or an admission policy refuses them; the quota or policy is named",
    "`gpu_num`, `replicas`, `ab_replicas`, `cpu`, `memory` (or the platform's quota)",
    "ask for less (fewer GPUs or replicas, or stop another grey copy of your team's) so the quota named above has "
    "room, or ask the platform team to raise it; for a policy, change what it names (docs/tenancy.md)")
OOM_KILLED = Failure(
    "oom_killed", "The server was OOMKilled",
    "the server used more memory than its limit, twice", "`memory`",
    "raise `memory` in value.py above what the model uses (fewer `ins_num_per_gpu` or a smaller "
    "`max_batch_size` also lowers it)")
CRASH_LOOP = Failure(
    "crash_loop", "The server keeps crashing (CrashLoopBackOff)",
    "the server exits soon after it starts, again and again", "`handler`, `model_path` (or src/server.py)",
    "fix the error in the server's last log lines (quoted above): usually `handler`, `model_path` or the "
    "handler's code in src/server.py")
IMAGE_PULL = Failure(
    "image_pull", "The image cannot be pulled (ImagePullBackOff)",
    "the node cannot pull the stage's image: it was not pushed, or the registry refuses the node",
    "none: the pipeline's build job and the registry",
    "make sure the pipeline's build job pushed this exact image; if it did, ask the platform team about "
    "the registry's credentials")
STARTUP_PROBE = Failure(
    "startup_probe", "Start-up took longer than the startup probe allows",
    "loading and warming up the model took longer than `init_delay_second`, so the pod was restarted while "
    "loading", "`init_delay_second`",
    "raise `init_delay_second` in value.py above the longest start-up (load + warm-up)")
NOT_STARTED = Failure(
    "not_started", "The node never started the pod's containers",
    "the pod was scheduled, but its containers were never created: the kubelet failed or hung setting up its "
    "sandbox (the pod's network), a volume, or the image pull; the newest event on the pod is quoted",
    "none: the node or the registry (the platform team); `init_delay_second` for a pull still running",
    "read the kubelet's words quoted above: FailedCreatePodSandBox is the node's runtime or network (ask the platform "
    "team, naming the node), FailedMount a Secret or ConfigMap the pod needs that is missing, a pull still running "
    "an image too large for the deadline (raise `init_delay_second` or make the image smaller)")
NEVER_READY = Failure(
    "never_ready", "The pod runs but never became ready",
    "the server runs but `/api/ping` never answered 200 within the budget: the model did not load or warm "
    "up", "`init_delay_second` (or `model_path`, `handler`)",
    "see what /api/ping answered (quoted above); fix the load error, or raise `init_delay_second` if it was "
    "still loading")
PROGRESS_DEADLINE = Failure(
    "progress_deadline", "The rollout made no progress within its deadline",
    "no new pod became available within the Deployment's progressDeadlineSeconds (derived from "
    "`init_delay_second`)", "`init_delay_second`",
    "read the pod states quoted above; if the pods were still starting, raise `init_delay_second`")
TIMED_OUT = Failure(
    "timed_out", "The rollout did not finish within the deploy budget",
    "pods kept starting but the rollout was not complete when the budget (from `init_delay_second` and the "
    "replicas) ran out", "`init_delay_second`",
    "read the pod states quoted above; raise `init_delay_second` if pods were still loading")

ROUTE_COLLISION = Failure(
    "route_collision", "Refused: the route collides with another service",
    "another service's live VirtualService already serves a path this stage's route would also accept",
    "`service_name`", "choose another `service_name` (or ask the other route's owner)", EXIT_REFUSED)
LOCK_HELD = Failure(
    "lock_held", "Refused: another deploy of this service and stage is running",
    "the stage's deploy lock (a Lease in the cluster) stayed held past the wait", "none: wait for it",
    "wait for that deploy to finish (its holder is named above), then run this one again", EXIT_REFUSED)
FREEZE_WINDOW = Failure(
    "freeze_window", "Refused: the region is in a deploy freeze",
    "conf/deploy.yaml declares a freeze window for the stage's region now", "none: conf/deploy.yaml",
    "deploy after the window ends, or, for an emergency, run again with --force --reason TEXT "
    "(the reason is recorded on the objects)", EXIT_REFUSED)
OUTDATED_PIPELINE = Failure(
    "outdated_pipeline", "Refused: this job's pipeline is older than the one that deployed what runs",
    "a production deploy job of an old pipeline was retried or played: it would put an older commit back",
    "none: the pipeline", "to go back on purpose, run the `rollback` command above; otherwise revert the commit and "
    "deploy the revert from a new pipeline", EXIT_REFUSED)
PROJECT_COLLISION = Failure(
    "project_collision", "Refused: another GitLab project of the team deploys this service",
    "a live object of the stage with this service's name carries another project's podserve.io/project: two projects "
    "of one team chose one service_name, and the second would silently take the first's service over",
    "`service_name`", "choose another `service_name`; if the service moved to this project on purpose, retire it from "
    "the old one first (`retire --stage S --service NAME --team TEAM --confirm NAME`)", EXIT_REFUSED)

ROLLOUT_ABORTED = Failure(
    "rollout_aborted", "Argo Rollouts aborted the release",
    "the production Rollout's analysis failed at a step (5xx, latency above stable's 90% or 50% bucket or queue wait "
    "worse than stable's by more than the relative margin, or above the ceiling), stayed inconclusive past its limit, "
    "could not reach Prometheus, or someone ran `canary abort`: Argo sent every request back to stable and scaled the "
    "canary down; stable's pods never changed",
    "none: the build (or `canary_steps`, `verdict_window_seconds`)",
    "read the analysis above (which metric, its counts): fix the build; for too few requests at a step, use a larger "
    "first step or a longer `verdict_window_seconds`; Prometheus named: ask the platform team")
GREY_ANOTHER_BUILD = Failure(
    "grey_another_build", "Refused: grey runs another build than this pipeline's",
    "grey's history or its pod template names another revision than this pipeline's (another branch deployed grey, "
    "or it was changed by hand) at the start or the end of the verdict's window: its numbers would judge that build",
    "none: the pipeline",
    "run this pipeline's grey job again, then its verdict-grey; or play deploy-hk with PODSERVE_VERDICT_OVERRIDE set "
    "to the reason", EXIT_REFUSED)
VERDICT_NOT_PASSED = Failure(
    "verdict_not_passed", "Refused: grey's verdict is not a pass for this image",
    "with mirroring on (`grey_mirror_percent`), hk deploys only an image grey's verdict (verdict-grey's "
    "build/verdict.json) passed; it failed, was inconclusive or refused, is missing, or judged another image",
    "none: the build (or PODSERVE_VERDICT_OVERRIDE)",
    "read verdict-grey's numbers; fix the build, or play deploy-hk with the CI/CD variable PODSERVE_VERDICT_OVERRIDE "
    "set to the reason (recorded on the objects, the revision and the notification, with $GITLAB_USER_LOGIN)",
    EXIT_REFUSED)

IMAGE_NOT_BUILT = Failure(
    "image_not_built", "Refused: the image for this commit was never built",
    "a person's `make deploy` to the local cluster names the image `make image` builds from the checkout's commit, "
    "and the registry storage the local cluster pulls from does not hold it", "none: the image",
    "run `make image` (it builds the commit's image and pushes it where the local cluster pulls from), then deploy "
    "again", EXIT_REFUSED)

#: Every failure, in the order docs/deploy.md lists them.
ALL = (UNSCHEDULABLE, CREATE_REFUSED, OOM_KILLED, CRASH_LOOP, IMAGE_PULL, NOT_STARTED, STARTUP_PROBE, NEVER_READY,
       PROGRESS_DEADLINE, TIMED_OUT, ROLLOUT_ABORTED, ROUTE_COLLISION, PROJECT_COLLISION, LOCK_HELD, FREEZE_WINDOW,
       OUTDATED_PIPELINE, GREY_ANOTHER_BUILD, VERDICT_NOT_PASSED, IMAGE_NOT_BUILT)
BY_REASON = {failure.reason: failure for failure in ALL}


def table() -> str:
    """Return docs/deploy.md's "When a deploy goes wrong" table, written from the entries above."""
    rows = ["| the tool prints | cause | what to change | exit |", "|---|---|---|---|"]
    rows += [f"| {f.headline} | {f.cause} | {f.field} | {f.exit_code} |" for f in ALL]
    return "\n".join(rows) + "\n"
