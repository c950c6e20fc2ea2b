"""`python -m podserve.runtime.offline`: run the offline worker in the foreground."""

import sys

from podserve.runtime.offline.main import main

sys.exit(main())
