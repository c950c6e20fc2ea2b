"""Production takes only what grey's verdict passed: `apply --verdict FILE` (verdict-grey's build/verdict.json).

Where hk mirrors its traffic to grey (value.py grey_mirror_percent: the rendered route has a mirror), grey answered
production's own payloads, and its verdict (`analyze --stage grey --against hk`) is required: `apply` refuses (exit
3) anything but a pass for the very image it deploys, unless the manual job's PODSERVE_VERDICT_OVERRIDE gives a
reason, which is then recorded, with $GITLAB_USER_LOGIN, on every object (podserve.io/verdict-override), in the
revision and in the notification. With mirroring off grey saw only its own callers: the verdict is printed, advisory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from podserve.tooling.deploy import failures
from podserve.tooling.deploy.errors import Refused
from podserve.tooling.deploy.history import now_text
from podserve.tooling.deploy.lock import holder_identity
from podserve.tooling.deploy.target import Target

OVERRIDE_VARIABLE = "PODSERVE_VERDICT_OVERRIDE"
#: GitLab's predefined variable: who started the job (who played the manual gate).
USER_VARIABLE = "GITLAB_USER_LOGIN"
OVERRIDE_ANNOTATION = "podserve.io/verdict-override"


def mirrored(target: Target) -> bool:
    """Whether the target's route copies production's requests to grey (so grey's verdict speaks for them)."""
    return any("mirror" in http for obj in target.objects if obj.get("kind") == "VirtualService"
               for http in (obj.get("spec") or {}).get("http") or [])


def read(path: str | None) -> tuple[dict | None, str]:
    """The verdict file's contents, or None and why it cannot be used."""
    if not path:
        return None, "no verdict was given (--verdict FILE, verdict-grey's build/verdict.json)"
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return None, f"the verdict {path} is missing (verdict-grey did not write it)"
    except ValueError as exc:
        return None, f"the verdict {path} is not JSON ({exc})"
    return (found, "") if isinstance(found, dict) else (None, f"the verdict {path} is not a verdict")


def check(target: Target, path: str | None, say=print, environ=os.environ) -> str:
    """Return the override to record ('' when none is needed); Refused (VERDICT_NOT_PASSED) when production needs
    grey's pass for this image and has none."""
    found, why = read(path)
    if not target.stage.production or not mirrored(target):
        if found is not None:
            say(f"grey's verdict (advisory: {target.stage.name} mirrors nothing to grey): {found.get('result')}"
                + (f" ({found.get('why')})" if found.get("why") else ""))
        return ""
    image = ((found or {}).get("candidate") or {}).get("image")
    if found is not None and found.get("result") == "pass" and image == target.image():
        say(f"grey's verdict: pass, for this image ({image})")
        return ""
    if found is not None:
        why = (f"grey's verdict is {found.get('result')!r}" + (f" ({found.get('why')})" if found.get("why") else "")
               if found.get("result") != "pass" else
               f"grey's verdict passed {image}, not this deploy's image {target.image()}")
    override = (environ.get(OVERRIDE_VARIABLE) or "").strip()
    if override:
        who = (environ.get(USER_VARIABLE) or "").strip() or holder_identity()
        text = f"{override} (by {who} at {now_text()}; {why})"
        say(f"deploying without grey's pass, as {OVERRIDE_VARIABLE} says: {text}")
        return text
    raise Refused(failures.VERDICT_NOT_PASSED, f"{why}; {target.stage.name} mirrors its requests to grey, so grey's "
                                               f"pass is required for {target.image()}")
