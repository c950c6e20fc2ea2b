"""What a deploy is about: the stage (from conf/), the service, and the objects render wrote for it.

The objects come from `--manifests DIR` (render's output: DIR/<stage>/*.yaml, or the
stage's folder itself), else from rendering value.py on the spot. Every object must carry
the labels render puts on all of them (`service`, `stage`, managed-by podserve); they are
how prune and delete find the service's objects again, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from podserve.tooling.conf import Conf, Stage
from podserve.tooling.deploy.errors import BadInput, NotDeployedHere
from podserve.tooling.output import NOT_DEPLOYED
from podserve.tooling.rollout import workload_of
from podserve.tooling.tenancy import TEAM_LABEL

MANAGED_BY = ("app.kubernetes.io/managed-by", "podserve")


def label_selector(labels: dict[str, str]) -> str:
    """Return the equality label selector (`k=v,...`, keys sorted) matching every label in `labels`."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def selector(service: str, stage: str) -> str:
    """Return the label selector of every object render writes for one service's stage."""
    return label_selector({MANAGED_BY[0]: MANAGED_BY[1], "service": service, "stage": stage})


@dataclass(frozen=True)
class Target:
    """One service's stage: where it runs and the objects to apply (empty when only its name is known)."""

    service: str
    stage: Stage
    team: str
    objects: tuple[dict, ...] = ()

    @property
    def namespace(self) -> str:
        """The team's namespace of the stage: teams never share one (docs/tenancy.md)."""
        return self.stage.namespace_for(self.team)

    @property
    def selector(self) -> str:
        return selector(self.service, self.stage.name)

    def deployment(self) -> dict | None:
        """The object that runs the stage's pods: its Deployment, or in production its Rollout."""
        return workload_of(self.objects)

    def image(self) -> str:
        deployment = self.deployment() or {}
        containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
        return containers[0].get("image", "")


def stage_of(conf: Conf, name: str) -> Stage:
    """Return the stage named on the command line; BadInput naming the stages when it is unknown."""
    if name not in conf.stages:
        raise BadInput(f"--stage {name!r} is not a stage; use one of {', '.join(conf.stages)} (conf/stages.yaml)")
    return conf.stages[name]


def from_manifests(folder: str | Path, stage: Stage) -> Target:
    """Read render's output for `stage`; BadInput when it is missing or not render's."""
    folder = Path(folder)
    stage_folder = folder / stage.name if (folder / stage.name).is_dir() else folder
    if (stage_folder / NOT_DEPLOYED).is_file():
        raise NotDeployedHere(f"{stage.name}: {(stage_folder / NOT_DEPLOYED).read_text(encoding='utf-8').strip()} "
                              f"({stage_folder / NOT_DEPLOYED}); nothing to do")
    files = sorted(stage_folder.glob("*.yaml"))
    if not files:
        raise BadInput(f"--manifests {folder}: no {stage.name}/*.yaml there; write them with "
                       f"`python -m podserve.tooling.render --stage {stage.name} --out {folder}`")
    objects = []
    for path in files:
        try:
            objects += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        except (OSError, yaml.YAMLError) as exc:
            raise BadInput(f"{path} cannot be read as YAML ({exc}); render it again") from None
    return _checked(objects, stage, str(stage_folder))


def from_values(values_path: str | Path, conf: Conf, stage: Stage, image_tag: str | None = None) -> Target:
    """Render value.py's `stage` now (as CI's render job would); BadInput listing every problem."""
    from podserve.tooling import render, templating
    from podserve.tooling.image_tag import default_image_tag
    from podserve.tooling.valuefile import ValueFileError

    if not Path(values_path).is_file():
        raise BadInput(f"--values {values_path} does not exist; run from the service's repository or pass "
                       "--manifests DIR (render's output)")
    tag = image_tag or default_image_tag(values_path)
    try:
        rendered = render.render(values_path, [stage.name], conf, tag)
    except (ValueFileError, templating.TemplateError) as exc:
        raise BadInput(str(exc)) from None
    if stage.name in rendered.skipped:
        raise NotDeployedHere(f"{stage.name}: {rendered.skipped[stage.name]}; nothing to do")
    return _checked(rendered.stages[stage.name], stage, str(values_path))


def service_from_values(values_path: str | Path) -> tuple[str, str]:
    """Return value.py's (service_name, username) without checking the rest (enough to delete a stage)."""
    from podserve.tooling.valuefile import ValueFileError, read_assignments

    try:
        assigned = read_assignments(values_path)
    except ValueFileError as exc:
        raise BadInput(str(exc)) from None
    found = [(assigned.get(key) or (None,))[0] for key in ("service_name", "username")]
    if not all(isinstance(value, str) and value for value in found):
        raise BadInput(f"{values_path} sets no service_name or username; pass --service NAME --team TEAM "
                       "or --manifests DIR")
    return found[0], found[1]


def _checked(objects: list[dict], stage: Stage, where: str) -> Target:
    services, teams = set(), set()
    for obj in objects:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        what = f"{obj.get('kind')} {meta.get('name')} in {where}"
        if labels.get(MANAGED_BY[0]) != MANAGED_BY[1] or "service" not in labels:
            raise BadInput(f"{what} lacks render's labels ({MANAGED_BY[0]}: {MANAGED_BY[1]}, service, stage); "
                           "deploy only what render writes")
        team = labels.get(TEAM_LABEL, "")
        if labels.get("stage") != stage.name or meta.get("namespace") != stage.namespace_for(team):
            raise BadInput(f"{what} is for stage {labels.get('stage')!r} in namespace {meta.get('namespace')!r}, "
                           f"not {stage.name!r} in {stage.namespace_for(team)!r} (team {team!r}); pass the "
                           f"manifests of --stage {stage.name}")
        services.add(labels["service"])
        teams.add(team)
    if len(services) != 1 or len(teams) != 1:
        raise BadInput(f"{where} holds objects of {len(services)} services ({', '.join(sorted(services))}) "
                       f"of {len(teams)} teams; pass one service's manifests")
    target = Target(services.pop(), stage, teams.pop(), tuple(objects))
    if target.deployment() is None:
        raise BadInput(f"{where} has no Deployment or Rollout; pass the folder render wrote")
    return target
