"""`python -m podserve.runtime`: serve the handler named in the environment."""

import sys

from podserve.runtime.main import main

sys.exit(main())
