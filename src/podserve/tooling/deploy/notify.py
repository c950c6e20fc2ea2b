"""Tell people how a deploy ended: POST the result as JSON to $PODSERVE_NOTIFY_URL (a chat robot, a webhook).

A notification that fails is logged on stderr and never changes the deploy's exit status.
The pipeline link comes from GitLab's CI variables when CI runs the tool.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

URL_VARIABLE = "PODSERVE_NOTIFY_URL"
TIMEOUT_SECONDS = 10


def payload(service: str, stage: str, revision: int | None, outcome: str, diagnosis: str | None,
            environ=os.environ) -> dict:
    """Return the JSON body: service, stage, revision, outcome, diagnosis and the pipeline's link."""
    return {"service": service, "stage": stage, "revision": revision, "outcome": outcome, "diagnosis": diagnosis,
            "pipeline": environ.get("CI_PIPELINE_URL") or environ.get("CI_JOB_URL"),
            "job": environ.get("CI_JOB_URL"), "commit": environ.get("CI_COMMIT_SHORT_SHA")}


def send(body: dict, environ=os.environ, log=None) -> bool:
    """POST `body` to $PODSERVE_NOTIFY_URL when it is set; return whether it was delivered. Never raises."""
    log = log or (lambda text: print(text, file=sys.stderr))
    url = environ.get(URL_VARIABLE)
    if not url:
        return False
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            answer.read()
        return True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log(f"warning: the notification to {URL_VARIABLE} was not delivered ({exc}); the deploy's result stands")
        return False
