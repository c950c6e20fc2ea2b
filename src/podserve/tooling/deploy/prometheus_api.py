"""The deploy tool's door to Prometheus: instant queries over its HTTP API, with an optional bearer token.

Where it is: `--prometheus URL`, else $PODSERVE_PROMETHEUS_URL (a CI/CD variable scoped per environment, so each
region's job reads its own region's Prometheus); $PODSERVE_PROMETHEUS_TOKEN, when set, is sent as a bearer token.
Neither is ever printed: a message names the URL's scheme and host only. A Prometheus that does not answer, or
answers an error, is `Unreachable`: the verdict is then inconclusive, never a pass.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from podserve.tooling.deploy.errors import BadInput

URL_VARIABLE = "PODSERVE_PROMETHEUS_URL"
TOKEN_VARIABLE = "PODSERVE_PROMETHEUS_TOKEN"
TIMEOUT_SECONDS = 15


class Unreachable(Exception):
    """Prometheus did not answer, or answered an error: the message says which, without the URL's path or token."""


class PrometheusAPI:
    """Instant queries against one Prometheus."""

    def __init__(self, url: str, token: str = "", timeout: float = TIMEOUT_SECONDS):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        parts = urllib.parse.urlsplit(self.url)
        self.where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"

    @classmethod
    def from_environment(cls, url: str | None = None, environ=os.environ) -> "PrometheusAPI":
        """The Prometheus named by `url`, else $PODSERVE_PROMETHEUS_URL; BadInput when neither is an http(s) URL."""
        url = (url or environ.get(URL_VARIABLE) or "").strip()
        try:
            parts = urllib.parse.urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:  # a port that is not a number
            ok = False
        if not ok:
            raise BadInput(f"no Prometheus to judge by: pass --prometheus URL or set the CI/CD variable {URL_VARIABLE} "
                           "(scoped to the environment: each region's Prometheus) to its http(s) address, e.g. "
                           "https://prometheus.hk.example.com")
        return cls(url, (environ.get(TOKEN_VARIABLE) or "").strip())

    def query(self, expr: str, at: float) -> list[dict]:
        """Evaluate `expr` at the Unix time `at`; return its result vector; Unreachable on any failure."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr, 'time': f'{at:.3f}'})}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except ValueError:
                raise Unreachable(f"Prometheus at {self.where} answered HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise Unreachable(f"Prometheus at {self.where} could not be reached ({type(exc).__name__})") from None
        if body.get("status") != "success":
            raise Unreachable(f"Prometheus at {self.where} refused a query: {body.get('errorType')}: "
                              f"{body.get('error')}")
        return body["data"]["result"]

    def by(self, expr: str, at: float, label: str) -> dict[str, float]:
        """Return {label value: value} of a vector query (one series per value of `label`)."""
        return {item["metric"].get(label, ""): float(item["value"][1]) for item in self.query(expr, at)}
