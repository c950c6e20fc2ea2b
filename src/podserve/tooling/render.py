"""The render command: value.py and conf/ to each stage's manifests, or exit 2 with nothing written.

    python -m podserve.tooling.render --all [--values value.py] [--out build/manifests]
    python -m podserve.tooling.render --stage grey [--stage ab ...] [--image-tag TAG]
    python -m podserve.tooling.render --all --print-images   # the image each stage pulls
    python -m podserve.tooling.render --all --print-flavor   # gpu or cpu: the Dockerfile flavor of value.py

Every chosen stage is rendered to memory, parsed back and checked; only when all pass are
the files written, to <out>/<stage>/<kind>.yaml. When anything fails, the manifests an earlier
render left in <out>/ are removed, so that no later step deploys them by mistake. The image tag comes from --image-tag,
else $CI_COMMIT_SHORT_SHA, else the commit of value.py's checkout (what `make image` tags), else "dev". --existing-routes takes the VirtualServices other
services already serve (`kubectl get virtualservices -A -o yaml`) and refuses overlaps.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from podserve.tooling import (checks, handler_source, job_time, manifests, offline_manifests, output, platform_rules,
                              provenance, rollout, routing, templating, tenancy)
from podserve.tooling.conf import Conf, DeployPolicy, Stage, load_conf, load_deploy_policy
from podserve.tooling.image_tag import default_image_tag
from podserve.tooling.valuefile import Problem, ValueFileError
from podserve.tooling.values import ServiceValues, load_values

EXIT_INVALID = 2
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # with fullmatch: match's $ passes a trailing newline
#: Why an offline service has no A/B copy (render --all writes it as that stage's reason).
NO_OFFLINE_COPY = ("not deployed here: an offline service (Kafka workers) has no A/B copy, which would split its "
                   "stream between two versions")


@dataclass(frozen=True)
class Rendered:
    """Every chosen stage's checked documents, ready to write."""

    values: ServiceValues
    conf: Conf
    stages: dict[str, list[dict]]
    #: Chosen stages the service does not run in (value.py `regions`), with why.
    skipped: dict[str, str] = field(default_factory=dict)


def render(values_path: str | Path, stages: list[str] | None = None, conf: Conf | None = None,
           image_tag: str = "dev", existing_routes: list[routing.Route] = (),
           templates: Path | None = None, handler_paths: Sequence[Path] | None = None,
           project_path: str | None = None, source: provenance.Source | None = None) -> Rendered:
    """Render and check the chosen stages (all when None); raise ValueFileError (or a subclass) if anything is wrong.

    Every object carries the GitLab project's path (`project_path`, default $CI_PROJECT_PATH; tenancy.project), and
    grey's the branch it is built from (`source`, default GitLab's variables; provenance.mark: production's mirror
    reaches only a grey of the protected default branch).

    `handler` is checked in the source folders `handler_paths` (default: handler_source.default_paths).
    """
    conf = conf if conf is not None else load_conf()
    stages = list(conf.stages) if stages is None else stages
    every_stage = stages == list(conf.stages)
    unknown = [s for s in stages if s not in conf.stages]
    if unknown:
        raise ValueFileError("--stage", [Problem("stage", f"{s!r} is not a stage; use one of {', '.join(conf.stages)}")
                                         for s in unknown])
    if not _TAG.fullmatch(image_tag):
        raise ValueFileError("--image-tag", [Problem("image_tag", f"{image_tag!r} is not a valid image tag (letters, "
                                                     "digits, _ . -, at most 128, not starting with . or -)")])
    if handler_paths is None:
        handler_paths = handler_source.default_paths(Path(values_path))
    values = load_values(values_path, conf, existing_routes, handler_paths)
    policy = load_deploy_policy(conf=conf)
    project = _project(values, conf, project_path)
    skipped = {name: f"not deployed here: value.py regions = {values['regions']!r} leaves out "
                     f"{conf.stages[name].region}" for name in stages if not values.deploys_to(conf.stages[name])}
    stages = [name for name in stages if name not in skipped]
    source = source if source is not None else provenance.Source.from_environment()
    if values.offline:  # Kafka workers: their own templates, checks and stages (no ab)
        return _render_offline(values, conf, policy, stages, skipped, image_tag, templates, project, every_stage,
                               source)
    rendered = {name: _marked(tenancy.stamp(_released(manifests.render_stage(values, conf, conf.stages[name], image_tag,
                                                                             templates), conf, policy,
                                                      conf.stages[name]), project), conf.stages[name], source)
                for name in stages}
    problems = [p for name in stages for p in checks.check_stage(rendered[name], values, conf, conf.stages[name])]
    problems += checks.check_routes(rendered)
    problems += _job_time_problems(rendered, values, conf, policy)
    if problems:
        raise checks.ManifestError("rendered manifests", problems)
    return Rendered(values, conf, rendered, skipped)


def _released(docs: list[dict], conf: Conf, policy: DeployPolicy, stage: Stage) -> list[dict]:
    """A production stage as Argo Rollouts releases it (tooling/rollout.py); other stages as rendered."""
    if not stage.production:
        return docs
    return rollout.production(docs, conf.platform, policy.verdict, policy.canary_scale_down_delay_seconds)


def _marked(docs: list[dict], stage: Stage, source: provenance.Source) -> list[dict]:
    return provenance.mark(docs, source) if stage.track == "grey" else docs


def _project(values: ServiceValues, conf: Conf, path: str | None) -> str:
    try:
        return tenancy.project(conf, values["username"], values["service_name"],
                               path if path is not None else os.environ.get(tenancy.PROJECT_VARIABLE))
    except ValueError as exc:
        raise ValueFileError(tenancy.PROJECT_VARIABLE, [Problem("username", str(exc))]) from None


def _job_time_problems(rendered: dict[str, list[dict]], values: ServiceValues, conf: Conf,
                       policy: DeployPolicy) -> list:
    """The stages whose deploy could outlast its CI job (job_time), once each stage's documents are sound."""
    return [p for name, docs in rendered.items() if rollout.workload_of(docs) is not None
            for p in job_time.problems(docs, values, conf.stages[name], policy)]


def _render_offline(values: ServiceValues, conf: Conf, policy: DeployPolicy, stages: list[str],
                    skipped: dict[str, str], image_tag: str, templates: Path | None, project: str,
                    every_stage: bool, source: provenance.Source) -> Rendered:
    """Render an offline service's stages; one it has no copy in (ab) is refused when asked for by name, and with
    --all gets its reason, as a left-out region does, so that its CI job ends at once, passed."""
    offline_stages = offline_manifests.stages(conf)
    others = [s for s in stages if s not in offline_stages]
    if others and not every_stage:
        raise ValueFileError("--stage", [Problem("stage", f"{s!r} is not a stage of an offline service; use one of "
                                                 f"{', '.join(offline_stages)}") for s in others])
    skipped = {**skipped, **{s: NO_OFFLINE_COPY for s in others}}
    stages = [s for s in stages if s in offline_stages]
    rendered = {name: _marked(tenancy.stamp(offline_manifests.render_stage(values, conf, conf.stages[name], image_tag,
                                                                           templates), project), conf.stages[name],
                              source) for name in stages}
    problems = [p for name in stages
                for p in offline_manifests.check_stage(rendered[name], values, conf, conf.stages[name])]
    problems += _job_time_problems(rendered, values, conf, policy)
    if problems:
        raise checks.ManifestError("rendered manifests", problems)
    return Rendered(values, conf, rendered, skipped)


def main(argv: list[str] | None = None) -> int:
    """Run the render command; return its exit status (0, or 2 when anything is invalid).

    On any failure, the manifests in --out are removed first: an unexpected exception (a bug, its traceback kept)
    or an interrupt while writing must not leave an earlier render's manifests, or half of this one's.
    """
    args = _parser().parse_args(argv)
    refused = platform_rules.run_refusal()
    if refused:  # before anything, and without touching --out: another program wrote what is there
        print(f"Error: {refused}", file=sys.stderr)
        return EXIT_INVALID
    try:
        status = _run(args)
    except BaseException:
        _remove_earlier(args)
        raise
    if status != 0:
        _remove_earlier(args)
    return status


def _run(args: argparse.Namespace) -> int:
    tag = args.image_tag or default_image_tag(args.values)
    edited = platform_rules.refusal(Path(args.values).resolve().parent)
    if edited:  # the rules that apply are the tooling's own; a fork's edited copy is refused, never ignored
        print(f"Error: {edited}\nNothing was written.", file=sys.stderr)
        return EXIT_INVALID
    try:
        conf = load_conf(args.conf)
        existing = routing.load_existing_routes(args.existing_routes) if args.existing_routes else []
        result = render(args.values, None if args.all else args.stage, conf, tag, existing)
    except (ValueFileError, templating.TemplateError) as exc:
        print(f"Error: {exc}\nNothing was written.", file=sys.stderr)
        return EXIT_INVALID
    if not handler_source.default_paths(Path(args.values)):
        print(f"Note: no src/ beside {args.values}: handler {result.values['handler']!r} was not checked; render "
              f"the value.py of the service's repository to check it", file=sys.stderr)
    if args.print_images:
        images = {manifests.image_ref(result.values, conf, conf.stages[s], tag) for s in result.stages}
        print("\n".join(sorted(images)))
        return 0
    if args.print_flavor:  # the Dockerfile's flavor value.py's pods need (the image build's FLAVOR)
        print("gpu" if result.values["gpu_num"] else "cpu")
        return 0
    for warning in single_replica_warnings(result):
        print(f"Warning: {warning}", file=sys.stderr)
    written = output.write_stages(Path(args.out), result.stages)
    for stage in result.stages:
        count = sum(1 for path in written if path.parent.name == stage)
        print(f"{Path(args.out) / stage}: {count} files, {len(result.stages[stage])} objects")
    for path in output.write_not_deployed(Path(args.out), result.skipped):
        print(f"{path.parent}: {result.skipped[path.parent.name]}")
    if any(conf.stages[s].track == "grey" for s in result.stages) and result.values["grey_mirror_percent"]:
        print(provenance.Source.from_environment().mirror_note(result.values["grey_mirror_percent"]))
    return 0


def _remove_earlier(args: argparse.Namespace) -> None:
    """Remove the manifests in --out (--print-images writes none, so leaves them), saying so."""
    if not (args.print_images or args.print_flavor) and output.remove_stages(Path(args.out)):
        print(f"The manifests an earlier render wrote in {args.out}/ were removed: they no longer match "
              f"{args.values}.", file=sys.stderr)


def single_replica_warnings(result: Rendered) -> list[str]:
    """One warning per production stage that runs a single pod (an HPA's minimum counted): a node drain takes it down."""
    warnings = []
    for name, docs in result.stages.items():
        stage = result.conf.stages[name]
        if tenancy.tier(stage) != "production":
            continue
        deployment = rollout.workload_of(docs) or {}
        scaler = next((d for d in docs if d.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")), {})
        least = (deployment.get("spec") or {}).get("replicas") or (scaler.get("spec") or {}).get("minReplicas") \
            or (scaler.get("spec") or {}).get("minReplicaCount")
        if least == 1:
            field = stage.replicas if isinstance(stage.replicas, str) else "replicas"
            values = result.values
            if field in values.assigned or field == "replicas":
                source = values.source(field)
            else:  # a region's own field left out takes `replicas`
                source = f"{field} left out, so {values.source('replicas')}"
            warnings.append(f"{name} runs one replica ({source}): any node drain or eviction takes the service down "
                            f"in {stage.region}; set {field} to 2 or more")
    return warnings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="render", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", action="append", help="a stage from conf/stages.yaml (repeatable)")
    which.add_argument("--all", action="store_true", help="every stage")
    parser.add_argument("--values", default="value.py", help="the service's value.py (default: value.py)")
    parser.add_argument("--conf", default=None, help="the platform's conf/ folder (default: the repository's)")
    parser.add_argument("--out", default="build/manifests", help="write <out>/<stage>/*.yaml (default: build/manifests)")
    parser.add_argument("--image-tag", default=None, help="image tag (default: $CI_COMMIT_SHORT_SHA, else the "
                        "checkout's commit, as make image tags it, else dev)")
    parser.add_argument("--existing-routes", default=None, help="VirtualServices already served (YAML), to refuse overlaps")
    parser.add_argument("--print-images", action="store_true", help="print the stages' images and write nothing")
    parser.add_argument("--print-flavor", action="store_true",
                        help="print the image flavor value.py needs (gpu or cpu) and write nothing")
    return parser


if __name__ == "__main__":
    sys.exit(main())
