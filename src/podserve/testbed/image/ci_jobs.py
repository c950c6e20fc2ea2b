"""Read .gitlab-ci.yml as GitLab does: jobs with `extends` merged, their variables expanded, their script lines.

One reader for the tests (tests/pipeline/) and for `make image`, which runs the build jobs' own lines. A job's
variables include those of its first matching rule (`rules: - if: ... variables:`), which win over the job's own,
as in GitLab; `if` is read in the forms the file uses: `$A == $B`, `$A == "text"`, `$A != ...` and a bare `$A`
(set and not empty), joined by `&&`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from podserve.testbed.image.versions import REPO

CI_FILE = REPO / ".gitlab-ci.yml"
#: Top-level keys that are not jobs.
GLOBAL_KEYS = {"stages", "variables", "default", "include", "workflow", "image", "services", "cache",
               "before_script", "after_script"}
#: Stand-ins for GitLab's predefined variables when a job's command line is expanded.
PREDEFINED = {"CI_COMMIT_SHORT_SHA": "1a2b3c4d", "CI_PROJECT_DIR": "/builds/team/service",
              "CI_COMMIT_REF_SLUG": "feature-x", "CI_COMMIT_BRANCH": "feature-x", "CI_DEFAULT_BRANCH": "main",
              "CI_REGISTRY_IMAGE": "registry.gitlab.example.com/team/service",
              "CI_REGISTRY": "registry.gitlab.example.com", "CI_PROJECT_NAMESPACE": "team", "CI_PROJECT_NAME": "service",
              "GITLAB_CI": "true"}


def pipeline(path: Path = CI_FILE) -> dict:
    return yaml.safe_load(path.read_text())


PIPELINE = pipeline()
JOBS = {name: job for name, job in PIPELINE.items() if name not in GLOBAL_KEYS}


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (_deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def resolved(name: str) -> dict:
    """A job with what it `extends` merged in: hashes deep-merged, the job's own keys winning, as GitLab does."""
    job = JOBS[name]
    parents = job.get("extends", [])
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _deep_merge(merged, resolved(parent))
    return _deep_merge(merged, {k: v for k, v in job.items() if k != "extends"})


def concrete_jobs() -> dict[str, dict]:
    """Every job GitLab would run (hidden `.templates` left out), resolved."""
    return {name: resolved(name) for name in JOBS if not name.startswith(".")}


def script_lines(job: dict) -> list[str]:
    return [*job.get("before_script", []), *job.get("script", [])]


def variables(job: dict, predefined: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a job sees: predefined, then the pipeline's, then its own, then its matching rule's, each
    expanded once."""
    values = dict(PREDEFINED if predefined is None else predefined)
    for source in (PIPELINE.get("variables", {}), job.get("variables", {})):
        for key, value in source.items():
            values[key] = expand(str(value), values)
    for key, value in ((matching_rule(job, values) or {}).get("variables") or {}).items():
        values[key] = expand(str(value), values)
    return values


def matching_rule(job: dict, values: dict[str, str]) -> dict | None:
    """The job's first rule whose `if` holds for `values` (a rule without `if` always does); None when none does."""
    return next((rule for rule in job.get("rules") or [] if "if" not in rule or condition(rule["if"], values)), None)


def condition(text: str, values: dict[str, str]) -> bool:
    """Whether a rule's `if` holds: `$A == $B`, `$A == "x"`, `$A != ...` or a bare `$A`, joined by `&&`."""
    def value(term: str) -> str:
        term = term.strip()
        return values.get(term[1:], "") if term.startswith("$") else term.strip('"').strip("'")

    for part in text.split("&&"):
        for operator in ("==", "!="):
            if operator in part:
                left, right = part.split(operator, 1)
                if (value(left) == value(right)) != (operator == "=="):
                    return False
                break
        else:
            if not value(part):
                return False
    return True


def expand(text: str, values: dict[str, str]) -> str:
    """Replace $NAME and ${NAME} with their values (unknown names stay as written)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)
