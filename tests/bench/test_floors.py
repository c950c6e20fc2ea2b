"""bench/floors.py: the L2 size as sysfs writes it, the floor server answering both wire forms, and the arithmetic
that turns the floors into a share of the decode bound."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from bench.floors import (DEFAULT_L2_BYTES, FLOOR_ANSWER, _wait_up, bound_share, l2_bytes, own_budget_ms)
from bench.loadgen import request_wires
from bench.systems import free_port
from bench.workloads import FAST, REPO


@pytest.mark.parametrize("text, size", [("2048K\n", 2 << 20), ("4M", 4 << 20), ("1048576", 1 << 20),
                                        ("", DEFAULT_L2_BYTES), ("lots", DEFAULT_L2_BYTES)])
def test_the_l2_size_is_read_as_sysfs_writes_it(tmp_path, text, size):
    path = tmp_path / "size"
    path.write_text(text)
    assert l2_bytes(path) == size
    assert l2_bytes(tmp_path / "absent") == DEFAULT_L2_BYTES


def test_the_floor_server_reads_both_wire_forms_and_answers_the_fixed_json():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.floors", "--serve", str(port)], cwd=REPO)
    try:
        _wait_up(port, process)
        host = f"127.0.0.1:{port}"
        for wire in request_wires("/api/floor", host, FAST.images()[:2]):  # JSON with base64, then raw bytes
            head, body = wire.split(b"\r\n\r\n", 1)
            target = head.split(b" ")[1].decode()
            content_type = next(line.split(b": ")[1] for line in head.split(b"\r\n") if line.startswith(b"Content-Type"))
            reply = requests.post(f"http://{host}{target}", data=body, headers={"Content-Type": content_type.decode()},
                                  timeout=5)
            assert (reply.status_code, reply.content) == (200, FLOOR_ANSWER)
    finally:
        process.kill()
        process.wait()


def test_the_share_of_the_bound_and_the_budget_for_the_goal_agree():
    assert bound_share(0.5, 0.0) == 1.0
    assert bound_share(0.5, 0.5) == 0.5
    budget = own_budget_ms(0.49, 0.07, goal=0.7)
    assert budget == pytest.approx(0.14)
    assert bound_share(0.49, 0.07 + budget) == pytest.approx(0.7)
