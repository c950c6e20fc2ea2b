"""`python -m podserve.runtime.healthcheck`: exit 0 when this pod's /api/ping answers 200 (the image's HEALTHCHECK)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from podserve.routes import PING_PATH
from podserve.settings import ServingSettings


def main() -> int:
    settings = ServingSettings.from_env()
    url = f"http://127.0.0.1:{settings.port}{PING_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
