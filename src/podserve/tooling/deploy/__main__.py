"""`python -m podserve.tooling.deploy`: see podserve.tooling.deploy.cli."""

import sys

from podserve.tooling.deploy.cli import main

sys.exit(main())
