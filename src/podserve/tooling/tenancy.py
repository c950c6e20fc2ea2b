"""Who owns what on a shared cluster: each team's namespaces, their labels, and the accounts that deploy there.

The one place these names are made (docs/tenancy.md says why: a namespace per team and stage).
render stamps TEAM_LABEL and the GitLab project (PROJECT_ANNOTATION) on every object; the platform chart labels each namespace with
NAMESPACE_TEAM and NAMESPACE_TIER and annotates it with its hosts and route prefix, and its
admission policies compare those with the requesting account and the object
(charts/podserve-platform/templates/policies.yaml). CI deploys a team's grey and ab stages
with the team's preview account and its production stages with the team's production
account; neither can write anywhere else.
"""

from __future__ import annotations

from podserve.tooling.conf import Conf, Stage

#: The object label render stamps with value.py's username.
TEAM_LABEL = "team"
#: Namespace labels and annotations the chart writes and the admission policies read.
NAMESPACE_TEAM = "podserve.io/team"
NAMESPACE_TIER = "podserve.io/tier"
NAMESPACE_HOSTS = "podserve.io/hosts"
NAMESPACE_ROUTE_PREFIX = "podserve.io/route-prefix"
NAMESPACE_DEPLOYER = "podserve.io/deployer"
#: The GitLab project that rendered an object (CI_PROJECT_PATH), and the group a namespace's objects must come from.
PROJECT_ANNOTATION = "podserve.io/project"
NAMESPACE_PROJECT_GROUP = "podserve.io/project-group"
#: GitLab's predefined variable holding the project's path ("models/like/text-direction").
PROJECT_VARIABLE = "CI_PROJECT_PATH"
#: Grey and ab serve no production traffic: they run on every branch, with the preview account.
PREVIEW_TRACKS = ("grey", "ab")


#: Each tier's PriorityClass (the chart creates them): production pods preempt grey and ab ones when a
#: pool is full (a rollout's surge pod included); preview pods never preempt anything.
PRIORITY_CLASSES = {
    "production": {"name": "podserve-production", "value": 100000, "preemptionPolicy": "PreemptLowerPriority"},
    "preview": {"name": "podserve-preview", "value": 1000, "preemptionPolicy": "Never"},
}


def tier(stage: Stage) -> str:
    """Return "preview" for grey and ab (deployed from any branch), "production" for the rest."""
    return "preview" if stage.track in PREVIEW_TRACKS else "production"


def priority_class(stage: Stage) -> str:
    """Return the PriorityClass of the stage's pods."""
    return PRIORITY_CLASSES[tier(stage)]["name"]


def account(team: str, tier_name: str) -> str:
    """Return the ServiceAccount name CI deploys `team`'s stages of `tier_name` with."""
    return f"podserve-{team}-{tier_name}"


def project(conf: Conf, team: str, service: str, path: str | None) -> str:
    """Return the GitLab project path render stamps: `path` ($CI_PROJECT_PATH in CI), else the one a service of
    `team` would have (outside CI); ValueError naming both when `path` lies outside the team's group."""
    group = conf.project_group(team)
    if not path:
        return f"{group}/{service}"
    if not path.startswith(f"{group}/"):
        raise ValueError(f"the GitLab project {path} ({PROJECT_VARIABLE}) is not in team {team}'s group {group} "
                         f"(conf/teams.yaml gitlab_group): set value.py username to the team whose group holds the "
                         "project, or move the project into its team's group")
    return path


def stamp(documents: list[dict], project_path: str) -> list[dict]:
    """Return `documents` with PROJECT_ANNOTATION set on each (in place: they are render's own)."""
    for doc in documents:
        doc.setdefault("metadata", {}).setdefault("annotations", {})[PROJECT_ANNOTATION] = project_path
    return documents


def quota(conf: Conf, stage: Stage) -> dict[str, str]:
    """The ResourceQuota's hard limits of a team's namespace of `stage`: none in production (priority rules
    there), the platform's preview_gpus in grey and ab, so branches cannot take a pool's GPUs."""
    if tier(stage) != "preview":
        return {}
    return {f"requests.{conf.region_of(stage).gpu.resource}": str(conf.platform.limits.preview_gpus)}


def namespaces(conf: Conf, region: str) -> list[dict]:
    """Every team's namespace of every stage in `region`, with what the chart and its policies need."""
    found = []
    for stage in (s for s in conf.stages.values() if s.region == region):
        for team in conf.teams:
            found.append({"name": stage.namespace_for(team), "team": team, "stage": stage.name,
                          "tier": tier(stage), "account": account(team, tier(stage)),
                          "hostPorts": stage.service_discovery,
                          "hosts": [stage.ingress_host], "routePrefix": stage.route_prefix_for(team),
                          "projectGroup": f"{conf.project_group(team)}/",
                          "quota": quota(conf, stage)})
    return sorted(found, key=lambda ns: ns["name"])
