"""Tell people how a deploy ended: POST the result as JSON to $PODSERVE_NOTIFY_URL (a chat robot, a webhook).

A notification that fails is logged on stderr and never changes the deploy's exit status.
The pipeline link comes from GitLab's CI variables when CI runs the tool.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
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
    """POST `body` to $PODSERVE_NOTIFY_URL when it is set; return whether it was delivered. Never raises (an
    Exception: SIGTERM's Terminated goes on), and never logs the URL's path or query (a robot's URL holds its
    access token there) nor an exception's text (http.client's and urllib's quote the URL): only the exception's
    type, the HTTP status and the URL's scheme and host."""
    log = log or (lambda text: print(text, file=sys.stderr))
    url = (environ.get(URL_VARIABLE) or "").strip()  # a CI/CD variable pasted with a line break
    if not url:
        return False
    where = _scheme_and_host(url)
    if where is None:
        log(f"warning: the notification was not delivered: {URL_VARIABLE} is not an http(s) URL with a host (it "
            f"must start with https://); fix the CI/CD variable {URL_VARIABLE}; the deploy's result stands")
        return False
    try:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            answer.read()
        return True
    except Exception as exc:  # noqa: BLE001 (a notification never changes the deploy's exit status)
        status = f" {exc.code}" if isinstance(exc, urllib.error.HTTPError) and isinstance(exc.code, int) else ""
        log(f"warning: the notification to {URL_VARIABLE} was not delivered ({type(exc).__name__}{status}, to "
            f"{where}); if it persists, check that CI/CD variable; the deploy's result stands")
        return False


def _scheme_and_host(url: str) -> str | None:
    """Return 'scheme://host[:port]' of an http(s) URL (never its user, path or query), or None when it is not one."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}"
