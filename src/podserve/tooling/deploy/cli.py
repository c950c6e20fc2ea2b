"""The command line: parse, load conf/ and the target, connect, run one verb, map errors to exit statuses.

    python -m podserve.tooling.deploy apply --stage S [--manifests DIR] [--values value.py] [--dry-run]
                                           [--force --reason TEXT] [--image-metadata FILE]
    python -m podserve.tooling.deploy status --stage S
    python -m podserve.tooling.deploy rollback --stage S
    python -m podserve.tooling.deploy delete --stage grey [--manifests DIR | --service NAME --team TEAM]
    python -m podserve.tooling.deploy retire --stage hk --confirm NAME [--manifests DIR | --service NAME --team TEAM]
    python -m podserve.tooling.deploy analyze --stage grey --against hk [--manifests DIR] [--out FILE]
                                             [--window SECONDS]
    python -m podserve.tooling.deploy canary promote|abort --stage hk [--reason TEXT] [--manifests DIR | ...]

A production stage is an Argo Rollout: apply applies it and follows Argo's status (a job killed meanwhile changes
nothing in the cluster; the next one of the same revision attaches), rollback and `canary abort` are Argo's abort.

Exit status: 0 serving, 1 rollout failed (rolled back where that applies), 2 bad input
(with the fix), 3 refused (route collision, lock held past the wait, freeze window, a
production deploy from a pipeline older than the one that deployed what runs). `analyze`:
0 pass, 1 fail, 2 bad input, 3 refused (grey runs another build), 4 inconclusive.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
from pathlib import Path
import sys
import time

from podserve.tooling import platform_rules
from podserve.tooling.conf import load_conf, load_deploy_policy
from podserve.tooling.deploy import analysis, commands, digest, failures, local_image, notify
from podserve.tooling.deploy.errors import BadInput, ClusterError, DeployError, NotDeployedHere, Refused, Terminated
from podserve.tooling.deploy.kube import NODES, PODS, Kube
from podserve.tooling.deploy.target import Target, from_manifests, from_values, service_from_values, stage_of
from podserve.tooling.valuefile import ValueFileError


def main(argv: list[str] | None = None) -> int:
    """Run one verb; return its exit status (never raises for a deploy's own errors)."""
    started = time.monotonic()  # the job's time already spent counts from here where GitLab does not say when it began
    args = _parser().parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    target = None
    signal.signal(signal.SIGTERM, _terminated)
    try:
        refused = platform_rules.run_refusal()
        if refused:
            raise BadInput(refused)
        conf = load_conf(args.conf)
        policy = load_deploy_policy(args.conf)
        stage = stage_of(conf, args.stage)
        target = _target(args, conf, stage)
        opts = commands.options_from(policy, dry_run=getattr(args, "dry_run", None), force=getattr(args, "force", None),
                                     reason=getattr(args, "reason", None), budget_seconds=args.budget,
                                     scheduling_grace_seconds=args.scheduling_grace, lock_wait_seconds=args.lock_wait,
                                     started=started,
                                     verdict=getattr(args, "verdict", None))
        if getattr(args, "reason", None) and not getattr(args, "force", False) and args.command != "canary":
            raise BadInput("--reason goes with --force; drop it, or add --force")
        if args.command == "analyze":
            return _analyze(args, conf, policy, target)
        kube = Kube.from_environment()
        if args.command == "apply":
            local = args.local and not args.manifests and not args.image_metadata and \
                local_image.applies(kube.api.configuration.host)
            if local:
                _check_local(target, args.values, opts.dry_run, say)
            status = commands.apply(kube, target, conf, policy, opts, say)
            if local and status == failures.EXIT_SERVING and not opts.dry_run:
                _say_where_it_ran(kube, target, say)
            return status
        if args.command == "status":
            return commands.status(kube, target, say)
        if args.command == "rollback":
            return commands.rollback(kube, target, conf, opts, say)
        if args.command == "retire":
            return commands.retire(kube, target, policy, opts, args.confirm, say)
        if args.command == "canary":
            return commands.canary(kube, target, args.action, args.reason or "", say)
        return commands.delete(kube, target, opts, say)
    except ValueFileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return failures.EXIT_BAD_INPUT
    except Terminated as exc:  # apply handles one after its first change; here, nothing more is done
        print(f"Error: {exc.message}; the tool stopped", file=sys.stderr)
        return failures.EXIT_FAILED
    except NotDeployedHere as exc:  # value.py regions leaves this region out: CI's job ends here, passed
        say(exc.message)
        return exc.exit_code
    except DeployError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if isinstance(exc, Refused) and target is not None and args.command == "apply" and not args.dry_run:
            notify.send(notify.payload(target.service, target.stage.name, None, "refused", exc.message))
        return exc.exit_code


def _analyze(args, conf, policy, target: Target) -> int:
    """Judge the preview stage `target` against the production stage --against, as `analysis` says."""
    against = stage_of(conf, args.against)
    if not against.production or against.region != target.stage.region or target.stage.production:
        raise BadInput(f"--stage {target.stage.name} --against {args.against}: judge a preview stage (grey) against "
                       f"the production stage of its region ({', '.join(n for n, s in conf.stages.items() if s.production and s.region == target.stage.region)})")
    if not any(o.get("kind") == "VirtualService" for o in target.objects):
        print(f"{target.service} is an offline service: it keeps its rolling update and has no verdict", flush=True)
        _write_not_applicable(args.out, target)
        return failures.EXIT_SERVING
    stable = from_manifests(args.manifests, against) if args.manifests else \
        from_values(args.values, conf, against, args.image_tag)
    return analysis.analyze(Kube.from_environment(), conf, target, stable, policy, args.out, args.window,
                            lambda text: print(text, flush=True))


def _write_not_applicable(out: str | None, target: Target) -> None:
    """The verdict file of a service that has none (offline: no route, no mirror)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"version": analysis.VERDICT_VERSION, "result": "not applicable",
                                         "why": "an offline service", "candidate": {"service": target.service}},
                                        indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_local(target: Target, values: str, dry_run: bool, say) -> None:
    """A person's `make deploy` to the local cluster: the image must exist (exit 3 naming `make image`; a dry run only
    warns), and changes the commit does not hold are named (tooling/deploy/local_image.py)."""
    checkout = Path(values).resolve().parent
    changed = local_image.uncommitted(checkout, Path(values))
    if changed:
        say(f"warning: {', '.join(changed)} changed since the commit: the image `make image` built for it does not "
            f"hold these changes; commit them and run `make image` before deploying them")
    missing = local_image.missing_image(target.image(), checkout)
    if missing and dry_run:
        say(f"warning: {missing}")
    elif missing:
        raise Refused(failures.IMAGE_NOT_BUILT, missing)


def _say_where_it_ran(kube: Kube, target: Target, say) -> None:
    """Say so when every pod of what now serves is on a kwok node, where no container ran."""
    try:
        pods = kube.list(PODS, target.namespace, f"service={target.service}").get("items") or []
        nodes = {node["metadata"]["name"]: node for node in kube.list(NODES).get("items") or []}
    except ClusterError:  # an account that may not list nodes: nothing to say of them
        return
    if local_image.on_kwok_only(pods, nodes):
        say(local_image.NO_CONTAINER)


def _terminated(signum, _frame) -> None:
    """SIGTERM (the runner cancelling the job): raise in the main thread; a second one is ignored, so the rollback
    that follows runs to its end (the runner's SIGKILL after its grace period still ends everything)."""
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signal.Signals(signum).name)


def _target(args, conf, stage) -> Target:
    """Return what the verb acts on: rendered objects for apply, else just the service and stage."""
    if args.command in ("apply", "analyze"):
        target = from_manifests(args.manifests, stage) if args.manifests else \
            from_values(args.values, conf, stage, args.image_tag)
        if getattr(args, "image_metadata", None):  # the image that was built and tested, by digest (docs/deploy.md)
            target = dataclasses.replace(target, objects=digest.pin(target.objects,
                                                                    digest.from_metadata(args.image_metadata)))
        return target
    if getattr(args, "service", None):
        if not args.team:
            raise BadInput("--service NAME needs --team TEAM (value.py's username): each team has its own "
                           "namespace of the stage")
        return Target(args.service, stage, args.team)
    if args.manifests:
        rendered = from_manifests(args.manifests, stage)
        return Target(rendered.service, stage, rendered.team)
    service, team = service_from_values(args.values)
    return Target(service, stage, team)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m podserve.tooling.deploy", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="command", required=True)
    described = {
        "apply": "apply the stage's objects (server-side), prune the rest, wait; roll back a failed production stage",
        "status": "the stage's revision, pods (readiness, restarts) and recent warning events",
        "rollback": "put the previous revision back and wait for it",
        "delete": "remove every object of the service's grey (or ab) stage, found by its labels",
        "retire": "take the service out of a stage for good, production included (--confirm NAME, no prompt)",
        "analyze": "judge grey against production's stable pods by an Argo Rollouts AnalysisRun (the canary's "
                   "statistic): 0 pass, 1 fail, 3 refused, 4 inconclusive",
        "canary": "promote the production release Argo Rollouts runs now (its remaining steps and analysis skipped: "
                  "--reason required) or abort it",
    }
    for verb, text in described.items():
        sub = verbs.add_parser(verb, help=text, description=text)
        sub.add_argument("--stage", required=True, help="a stage from conf/stages.yaml (grey, ab, hk, eu, na)")
        sub.add_argument("--manifests", default=None,
                         help="render's output (DIR/<stage>/*.yaml or the stage folder); default: render --values now")
        sub.add_argument("--values", default="value.py", help="the service's value.py (default: value.py)")
        sub.add_argument("--conf", default=None, help="the platform's conf/ folder (default: the repository's)")
        sub.add_argument("--budget", type=float, default=None,
                         help="seconds to wait for the rollout (default: from progressDeadlineSeconds and replicas)")
        sub.add_argument("--scheduling-grace", type=float, default=None,
                         help="seconds an unschedulable pod may wait before the deploy fails "
                              "(default: conf/deploy.yaml scheduling_grace_seconds)")
        sub.add_argument("--lock-wait", type=float, default=None,
                         help="seconds to wait for another deploy's lock (default: conf/deploy.yaml lock_wait_seconds)")
        if verb == "analyze":
            sub.add_argument("--against", required=True, help="the production stage judged against (hk)")
            sub.add_argument("--out", default=None, help="write the verdict as JSON here (what apply --verdict reads)")
            sub.add_argument("--window", type=int, default=None,
                             help="seconds to judge (default and least: conf/deploy.yaml verdict.window_seconds, or "
                                  "value.py verdict_window_seconds)")
            sub.add_argument("--image-tag", default=None, help="image tag when rendering (as apply's)")
            continue
        if verb != "apply":
            sub.add_argument("--service", default=None, help="the service's name, when there is no value.py or manifests")
            sub.add_argument("--team", default=None, help="the service's team (value.py's username), with --service")
        if verb == "canary":
            sub.add_argument("action", choices=(commands.PROMOTE, commands.ABORT))
            sub.add_argument("--reason", default=None, help="why (required to promote: the analysis is skipped)")
        if verb == "retire":
            sub.add_argument("--confirm", required=True, metavar="SERVICE_NAME",
                             help="the service's name again: what is retired is named twice, as CI has no prompt")
        if verb == "apply":
            sub.add_argument("--image-tag", default=None,
                             help="image tag when rendering (default: $CI_COMMIT_SHORT_SHA, else the checkout's "
                                  "commit, as make image tags it)")
            sub.add_argument("--local", action="store_true",
                             help="a person's deploy from their checkout (make deploy) to the local cluster: refuse an "
                                  "image `make image` never built, name changes the commit does not hold, say where "
                                  "the pods ran")
            sub.add_argument("--image-metadata", default=None,
                             help="BuildKit's --metadata-file of the pushed image: deploy it by digest, not by tag")
            sub.add_argument("--dry-run", action="store_true",
                             help="print what would change (server-side dry run) and change nothing")
            sub.add_argument("--force", action="store_true", help="deploy inside a freeze window (needs --reason)")
            sub.add_argument("--reason", default=None, help="why a forced deploy cannot wait; recorded on the objects")
            sub.add_argument("--verdict", default=None,
                             help="grey's verdict (analyze --out): with mirroring on, production deploys only an "
                                  "image it passed, unless $PODSERVE_VERDICT_OVERRIDE gives a reason")
    return parser


if __name__ == "__main__":
    sys.exit(main())
