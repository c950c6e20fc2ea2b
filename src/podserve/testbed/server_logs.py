"""Faults of the runtime's own in a server's log: the records it marked with RUNTIME_FAULT (runtime/core/logs.py)."""

from __future__ import annotations

import json

from podserve.runtime.core.logs import FAULT_FIELD, FAULT_VALUE


def runtime_faults(log_text: str) -> list[str]:
    """Each record of `log_text` that the runtime marked as a fault of its own: its message and its traceback's last
    line. A line cut short (a process killed as it wrote) is skipped."""
    faults = []
    for line in log_text.splitlines():
        if not line.startswith("{") or f'"{FAULT_FIELD}": "{FAULT_VALUE}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get(FAULT_FIELD) == FAULT_VALUE:
            last = str(record.get("traceback") or "no traceback").strip().splitlines()[-1]
            faults.append(f"{record.get('msg')}: {last}")
    return faults
