"""The pod's HTTP front end against hostile and broken clients, one class of attack per test.

Each test talks to the real server process over raw sockets on loopback, checks the status,
the close and the counter the attack must end in, and then that a normal request on a new
connection is still answered. The limits (conf/platform.yaml's `http`) are lowered per test
where waiting out the production value would only make the test slow.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import pytest
import requests

from fixture_handlers import held_batches
from hostile import (TINY_RECEIVE_BUFFER, Reader, answers_normally, connect, flood_until_blocked, json_request,
                     memory_for_uploads, metric_value, peak_rss_bytes, request_head, requests_counted, rss_bytes,
                     send_all_then_read, send_until_closed, send_until_refused, timed_answer, wait_until_quiet)
from podserve.metric_names import LINGERING_CLOSES, OVER_LIMIT_CONNECTIONS
from podserve.runtime.http.lingering import LINGER_BYTES, LINGER_SECONDS
from podserve.runtime.http.messages import linger_bytes
from podserve.runtime.http.parser import PIPELINE_DEPTH
from podserve.runtime.http.probe_lane import LANE_SIZE
from podserve.settings import ServingSettings
from podserve.testbed.processes import poll_until

MIB = 1024 * 1024
BODY = {"postid": "1", "data": [1, 2, 3, 4]}
ROUTE = "/api/example"  # the fixture servers' service_name is "example"


@pytest.fixture
def affine(start_server, affine_model):
    def start(**settings):
        return start_server(handler="fixture_handlers:Affine", model_path=str(affine_model), **settings)
    return start


def test_a_header_that_never_ends_gets_431_however_it_is_split_and_memory_stays_flat(affine):
    server = affine()
    peak_before = peak_rss_bytes(server.process.pid)
    with connect(server.port) as sock:
        sock.sendall(b"POST " + ROUTE.encode() + b" HTTP/1.1\r\nHost: pod\r\nX-Long: ")
        sent = send_until_refused(sock, (b"a" * 1024 for _ in range(48 * 1024)))  # up to 48 MiB, 1 KiB at a time
        reader = Reader(sock)
        answer = reader.response()
        assert answer.status == 431, answer.body
        assert "65536 bytes" in answer.json()["msg"] and answer.closes
        assert reader.closed_by_server(within=5)
    assert sent < 16 * MIB, f"the server kept reading a head of {sent} bytes"
    assert peak_rss_bytes(server.process.pid) - peak_before < 8 * MIB
    assert requests_counted(server, 431) == 1
    answers_normally(server)


def test_a_head_sent_slowly_gets_408_at_the_header_timeout_and_is_closed(affine):
    server = affine(header_timeout_seconds=2)
    with connect(server.port) as sock:
        sock.sendall(b"POST /api/example HTTP/1.1\r\nHost: pod\r\n")
        started = time.monotonic()
        send_until_refused(sock, (b"X-Slow: 1\r\n" for _ in range(100)), pause=0.2, within=8)
        answer = Reader(sock).response()
        waited = time.monotonic() - started
    assert answer.status == 408 and answer.closes, answer.body
    assert "within 2 s" in answer.json()["msg"]
    assert 1.8 < waited < 4.5, waited
    assert requests_counted(server, 408) == 1
    answers_normally(server)


def test_blank_lines_between_requests_do_not_keep_a_connection_open_past_the_idle_timeout(affine):
    """HTTP/1.1 has the server skip blank lines before a request, so they begin none: a caller trickling only
    those is idle. It is closed at the idle timeout with nothing written, and a flood of them is a head over the
    limit (431), however it is split."""
    server = affine(idle_timeout_seconds=2)
    with connect(server.port) as sock:
        started = time.monotonic()
        send_until_refused(sock, (b"\r\n" for _ in range(100)), pause=0.2, within=8)
        reader = Reader(sock)
        assert reader.closed_by_server(within=2)
        closed_after = time.monotonic() - started
        assert reader.buffer == b"", reader.buffer  # nothing was asked, so nothing is answered
    assert 1.8 < closed_after < 5, closed_after
    with connect(server.port) as sock:  # a request after blank lines, and blank lines after its answer
        sock.sendall(b"\r\n\r\n" + json_request(ROUTE, BODY) + b"\r\n")
        reader = Reader(sock)
        assert reader.response().status == 200
        assert reader.closed_by_server(within=5)
    with connect(server.port) as sock:
        send_until_refused(sock, (b"\r\n" * 512 for _ in range(1024)))  # up to 1 MiB of blank lines
        answer = Reader(sock).response()
        assert answer.status == 431 and answer.closes, answer.body
    assert requests_counted(server, 431) == 1
    answers_normally(server)


def test_a_body_sent_slowly_gets_408_at_the_request_deadline_and_its_bytes_are_released(affine, affine_model):
    # room for one largest body only: a pod whose memory leaves bodies being sent less than max_body_bytes gets that
    server = affine(memory_bytes=memory_for_uploads(10 * MIB, model_path=str(affine_model)))
    head = request_head("POST", ROUTE, {"Content-Type": "application/json", "Content-Length": str(10 * MIB),
                                                 "X-Request-Timeout-Ms": "2000"})
    with connect(server.port) as sock:
        sock.sendall(head)
        started = time.monotonic()
        send_until_refused(sock, (b" " * 1024 for _ in range(1000)), pause=0.05, within=8)
        reader = Reader(sock)
        answer = reader.response()
        waited = time.monotonic() - started
        assert answer.status == 408 and answer.closes, answer.body
        assert "deadline" in answer.json()["msg"]
        assert reader.closed_by_server(within=5)
    assert 1.8 < waited < 4.5, waited
    # Its 10 MiB are free again: a second largest body is taken, not refused 503 at its headers.
    with connect(server.port) as sock:
        sock.sendall(head)
        sock.sendall(b"x" * 1024)
        time.sleep(0.3)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # nothing came back: the body is being read, not refused
    answers_normally(server)


def test_bodies_still_being_sent_share_one_pod_wide_budget_and_beyond_it_get_503_at_their_headers(affine,
                                                                                                   affine_model):
    limits = {"max_body_bytes": 4096, "max_image_pixels": 1000, "max_video_pixels": 1000}
    server = affine(**limits, memory_bytes=memory_for_uploads(8192, model_path=str(affine_model), **limits))
    body = json.dumps({"postid": "1", "data": [1, 2, 3, 4], "pad": " " * 3900}).encode()
    head = request_head("POST", ROUTE, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    first, second, third = (connect(server.port) for _ in range(3))
    try:
        first.sendall(head + body[:100])
        second.sendall(head + body[:100])
        time.sleep(0.3)
        third.sendall(head)
        refused = Reader(third).response()
        assert refused.status == 503 and refused.closes and refused.headers["retry-after"] == "1", refused.body
        assert "bytes of bodies still being sent" in refused.json()["msg"]
        first.sendall(body[100:])
        assert Reader(first).response().status == 200  # its budget is released once its body is whole
    finally:
        for sock in (first, second, third):
            sock.close()
    assert requests_counted(server, 503) == 1
    with connect(server.port) as sock:
        sock.sendall(head + body)
        assert Reader(sock).response().status == 200


def test_a_chunked_body_of_a_million_tiny_chunks_is_held_in_one_buffer(affine):
    server = affine()
    peak_before = peak_rss_bytes(server.process.pid)
    body = json.dumps(BODY).encode() + b" " * (2 * MIB - 64)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 2]), body[i:i + 2]) for i in range(0, len(body), 2))
    chunks += b"0\r\n\r\n"
    with connect(server.port, timeout=60) as sock:
        sock.sendall(request_head("POST", ROUTE, {"Content-Type": "application/json",
                                                           "Transfer-Encoding": "chunked"}) + chunks)
        answer = Reader(sock).response()
    assert answer.status == 200, answer.body
    assert answer.json()["results"] == [3.0, 5.0, 7.0, 9.0]
    grown = peak_rss_bytes(server.process.pid) - peak_before
    # 2 MiB of body held once, plus its one copy when whole: not a list item (~40 bytes) per 2-byte chunk (~40 MiB).
    assert grown < 16 * MIB, f"peak RSS grew {grown / MIB:.1f} MiB for a 2 MiB body"


def test_beyond_the_connection_limit_probes_are_answered_and_everything_else_gets_a_503(affine):
    """A connection over max_connections is read as far as its request line, in a lane of its own: the probes are
    answered from the pod's state, anything else (or nothing within a second) gets the prebuilt 503, and a crowd
    of silent connections cannot fill the lane (the oldest is evicted, with the 503, unread)."""
    server = affine(max_connections=8)
    held = [connect(server.port) for _ in range(8)]
    silent_crowd = []
    try:
        for sock in held:  # each is accepted and served
            sock.sendall(request_head("GET", "/api/ping"))
            assert Reader(sock).response().status == 200
        refused, took = timed_answer(server.port, json_request(ROUTE, BODY))
        assert refused.status == 503 and refused.closes and refused.headers["retry-after"] == "1", refused.body
        assert "8 connections open" in refused.json()["msg"] and took < 1.0
        with connect(server.port) as silent:  # sends nothing: the 503 once its second is up, then end of file
            started = time.monotonic()
            reader = Reader(silent)
            assert reader.response().status == 503
            assert 0.8 < time.monotonic() - started < 3.0
            assert reader.closed_by_server(within=3)
        silent_crowd = [connect(server.port) for _ in range(LANE_SIZE + 36)]  # more than the lane holds
        for path, method, status in (("/api/ping", "GET", 200), ("/api/live", "GET", 200), ("/api/ping", "HEAD", 200),
                                     ("/api/ping", "POST", 405), ("/metrics", "GET", 503)):
            answer, took = timed_answer(server.port, request_head(method, path))
            assert (answer.status, answer.closes) == (status, True), (method, path, answer.body)
            assert took < 1.0, f"{method} {path} over the limit took {took:.3f} s"
        assert answer.json()["msg"].startswith("this pod has 8 connections open")
        ping, _ = timed_answer(server.port, b"GET /api/ping?probe=kubelet HTTP/1.0\r\n\r\n")
        assert ping.status == 200 and ping.json()["results"]["ready"] is True
        long_line, took = timed_answer(server.port, b"GET /api/ping?" + b"x" * 2000 + b" HTTP/1.1\r\n\r\n")
        assert long_line.status == 503 and took < 1.0  # a request line over 1 KiB is no probe, refused at once
    finally:
        for sock in held + silent_crowd:
            sock.close()
    poll_until(lambda: timed_answer(server.port, json_request(ROUTE, BODY))[0].status == 200, timeout=10,
               what="a request on a new connection served once the held ones closed")
    assert metric_value(server, OVER_LIMIT_CONNECTIONS, outcome="probe") == 5
    evicted = metric_value(server, OVER_LIMIT_CONNECTIONS, outcome="evicted")
    assert evicted >= 36, evicted  # the crowd beyond the lane's 64, at least
    refused_count = metric_value(server, OVER_LIMIT_CONNECTIONS, outcome="refused")
    assert requests_counted(server, 503, route="other") == refused_count + evicted
    answers_normally(server)


def test_a_caller_over_the_connection_limit_uploading_a_video_sized_body_reads_its_503(affine):
    """The lane's lingering close reads and drops up to the largest body the pod takes, as the server's does: a
    caller over the limit that sends 30 MiB before reading gets the 503 and its Retry-After, not a reset."""
    server = affine(max_connections=2)
    held = [connect(server.port) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(request_head("GET", "/api/ping"))
            assert Reader(sock).response().status == 200
        head = request_head("POST", ROUTE, {"Content-Type": "application/json", "Content-Length": str(30 * MIB)})
        refused = send_all_then_read(server.port, head, (b" " * 65536 for _ in range(30 * 16)))
        assert refused.status == 503 and refused.headers["retry-after"] == "1", refused.body
        assert "2 connections open" in refused.json()["msg"]
    finally:
        for sock in held:
            sock.close()
    answers_normally(server)


def test_two_thousand_connections_held_leave_the_probes_answered_within_a_second(affine):
    """Issue 58: with 2,000 connections held (the limit is 1,000), 200 of them pipelining requests and never
    reading, probes on new connections are answered 200 within a second from the pod's state, a request for the
    service gets the 503, and the pod's memory stays within idle + 64 MiB."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 4096, f"this test holds 2,000 sockets; the open-file limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = affine()  # max_connections: conf/platform.yaml's 1000
    idle_rss = rss_bytes(server.process.pid)
    pings = request_head("GET", "/api/ping") * 1500  # 57 KB
    held: list[socket.socket] = []
    most_rss = idle_rss
    try:
        for _ in range(200):
            sock = connect(server.port, receive_buffer=TINY_RECEIVE_BUFFER)
            held.append(sock)
            sock.setblocking(False)
            try:
                sock.send(pings)  # as much as the kernel takes at once; its answers are never read
            except BlockingIOError:
                pass
        held += [connect(server.port) for _ in range(1800)]
        wait_until_quiet(server.process.pid)  # what the crowd sent is read and answered, as far as it goes
        most_rss = max(most_rss, rss_bytes(server.process.pid))
        for i in range(10):
            path = ("/api/ping", "/api/live")[i % 2]
            answer, took = timed_answer(server.port, request_head("GET", path, {"Connection": "close"}))
            assert answer.status == 200, (path, answer.status, answer.body)
            assert took < 1.0, f"probe {i} ({path}) took {took:.3f} s"
            most_rss = max(most_rss, rss_bytes(server.process.pid))
        refused = send_all_then_read(server.port, json_request(ROUTE, BODY), [])
        assert refused.status == 503 and "1000 connections open" in refused.json()["msg"], refused.body
        most_rss = max(most_rss, rss_bytes(server.process.pid))
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"RSS idle {idle_rss / MIB:.1f} MiB, most {most_rss / MIB:.1f} MiB with 2,000 connections held")
    assert most_rss < idle_rss + 64 * MIB, f"RSS grew {(most_rss - idle_rss) / MIB:.1f} MiB"
    poll_until(lambda: metric_value(server, OVER_LIMIT_CONNECTIONS) > 0, timeout=10,
               what="/metrics answered once the held connections closed")
    assert metric_value(server, OVER_LIMIT_CONNECTIONS, outcome="probe") == 10
    answers_normally(server)


@pytest.mark.parametrize("kind", ["431 for a 3 MiB header", "413 for a 3 MiB body",
                                  "413 for a 30 MiB body, less than a video's JSON the pod takes"])
def test_a_caller_that_sends_everything_before_reading_reads_its_refusal_not_a_reset(affine, kind):
    """The server closes after these refusals; it first reads and discards what the caller is still sending
    (a lingering close), so the refusal is not lost to the reset a close with unread bytes would send. It reads up
    to the largest body the pod takes (a video's base64 JSON, 43 MiB by default), more than LINGER_BYTES."""
    size = 30 * MIB if "30 MiB" in kind else 3 * MIB
    server = affine(max_body_bytes=MIB)
    if kind.startswith("431"):
        head = b"POST " + ROUTE.encode() + b" HTTP/1.1\r\nHost: pod\r\nX-Long: "
        status, words = 431, "65536 bytes"
    else:
        # Raw bytes: refused from its headers, being over max_body_bytes by more than the 1 MiB read and dropped.
        head = request_head("POST", ROUTE, {"Content-Type": "application/octet-stream",
                                            "Content-Length": str(size)})
        status, words = 413, "over the limit of 1048576"
    assert size + len(head) < linger_bytes(ServingSettings(max_body_bytes=MIB).largest_body_bytes())
    answer = send_all_then_read(server.port, head, (b"a" * 65536 for _ in range(size // 65536)))  # not read meanwhile
    assert answer.status == status and answer.closes, answer.body
    assert words in answer.json()["msg"]
    poll_until(lambda: metric_value(server, LINGERING_CLOSES, ended="caller") == 1, timeout=10,
               what="the lingering close ended by the caller")
    assert requests_counted(server, status) == 1
    answers_normally(server)


def test_a_lingering_close_is_bounded_in_time_and_in_bytes(affine):
    """A refused caller that never stops sending holds its connection at most LINGER_SECONDS after the refusal
    (trickling) and is reset past the largest body the pod takes (flooding)."""
    server = affine(header_timeout_seconds=1)
    with connect(server.port) as sock:  # a slow head: 408 at the header timeout, then it keeps trickling
        sock.sendall(b"POST /api/example HTTP/1.1\r\nHost: pod\r\n")
        send_until_refused(sock, (b"X-Slow: 1\r\n" for _ in range(100)), pause=0.1, within=8)
        refused_at = time.monotonic()
        reader = Reader(sock)
        assert reader.response().status == 408
        sent_after = send_until_closed(sock, (b"X-Slow: 1\r\n" for _ in range(1000)), pause=0.1, within=15)
        closed_after = time.monotonic() - refused_at
    assert LINGER_SECONDS - 0.5 < closed_after < LINGER_SECONDS + 3, closed_after
    assert sent_after > 0
    poll_until(lambda: metric_value(server, LINGERING_CLOSES, ended="time") == 1, timeout=10,
               what="the lingering close ended by its clock")
    with connect(server.port) as sock:  # a header that never ends, sent as fast as the server reads
        sock.sendall(b"POST /api/example HTTP/1.1\r\nHost: pod\r\nX-Long: ")
        sent = send_until_closed(sock, (b"a" * 65536 for _ in range(2048)), within=30)  # up to 128 MiB
    bound = linger_bytes(ServingSettings().largest_body_bytes())  # the largest body the pod takes, and its slack
    assert LINGER_BYTES < bound < sent < bound + 24 * MIB, f"{sent / MIB:.1f} MiB sent before the reset"
    poll_until(lambda: metric_value(server, LINGERING_CLOSES, ended="bytes") == 1, timeout=10,
               what="the lingering close ended by its byte bound")
    answers_normally(server)


def test_a_caller_that_never_reads_its_answers_is_disconnected_at_the_write_timeout(affine):
    server = affine(write_timeout_seconds=2)
    ping = request_head("GET", "/api/ping")
    with connect(server.port, receive_buffer=TINY_RECEIVE_BUFFER) as sock:
        assert flood_until_blocked(sock, ping * 64) > 0
        poll_until(lambda: server.metric_sum("podserve_write_timeouts_total") == 1, timeout=15,  # 2 s + a tick
                   what="the caller that reads nothing dropped at the write timeout")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(1000):  # whatever was already on the way is readable; then the reset
                if not sock.recv(65536):
                    raise ConnectionResetError("closed")
    answers_normally(server)


def test_callers_that_pipeline_without_reading_make_the_pod_buffer_less_than_a_read_each(affine):
    """Once a caller's answers back up, what the server had already read of its pipelined requests waits unparsed
    (a few bytes per request) instead of being answered into the loop's buffer (about five times as many bytes):
    100 callers sending 512 KiB of pings each make the pod hold less than one 256 KiB read (uvloop's) each."""
    server = affine()
    idle_rss = rss_bytes(server.process.pid)
    pings = request_head("GET", "/api/ping") * 1700  # 64 KB
    callers = [connect(server.port, receive_buffer=TINY_RECEIVE_BUFFER) for _ in range(100)]
    try:
        sent = dict.fromkeys(callers, 0)
        sending = set(callers)
        for _ in range(100):  # a few rounds: each caller sends until its 512 KiB are out or the kernel takes no more
            for sock in list(sending):
                sock.setblocking(False)
                try:
                    sent[sock] += sock.send(pings)
                except BlockingIOError:
                    sending.discard(sock)
                if sent[sock] >= 512 * 1024:
                    sending.discard(sock)
            if not sending:
                break
            time.sleep(0.05)
        wait_until_quiet(server.process.pid)
        grown = rss_bytes(server.process.pid) - idle_rss
    finally:
        for sock in callers:
            sock.close()
    print(f"RSS grew {grown / MIB:.1f} MiB for 100 callers that pipelined {sum(sent.values()) / MIB:.0f} MiB "
          f"of pings and read nothing")
    assert grown < 100 * 256 * 1024, f"RSS grew {grown / MIB:.1f} MiB"
    answers_normally(server)


@pytest.mark.parametrize("length", ["0" * 5000 + "1", "9" * 30])
def test_a_content_length_of_any_length_gets_400_never_500(affine, length):
    server = affine()
    with connect(server.port) as sock:
        sock.sendall(b"POST /api/example HTTP/1.1\r\nHost: pod\r\nContent-Length: " + length.encode() + b"\r\n\r\n1")
        answer = Reader(sock).response()
    assert answer.status == 400 and answer.closes, answer.body
    assert "Content-Length" in answer.json()["msg"]
    assert requests_counted(server, 500) == 0
    answers_normally(server)


def test_pipelined_requests_beyond_the_depth_are_not_dispatched_until_answers_go_out(start_server, affine_model):
    # init_delay_second 2: a 1 s warm-up budget, so start-up runs a few 0.3 s predicts, not 22 of them (6.6 s).
    server = start_server(handler="fixture_handlers:SlowAffine", model_path=str(affine_model), max_batch_size=16,
                          queue_size=64, init_delay_second=2, TEST_PREDICT_SLEEP="0.3")
    count = 120
    with connect(server.port, timeout=60) as sock:
        sock.sendall(b"".join(json_request(ROUTE, {"postid": str(i), "data": [i, 1, 1, 1]})
                              for i in range(count)))  # one write: far more than the depth in the server's first read
        most_held = 0
        for _ in range(10):
            time.sleep(0.1)
            most_held = max(most_held, server.metric_sum("podserve_in_flight_requests"))
        reader = Reader(sock)
        answers = [reader.response() for _ in range(count)]
    assert 0 < most_held <= PIPELINE_DEPTH
    assert [a.status for a in answers] == [200] * count  # back-pressure, not 503s nor a close
    assert [a.json()["postid"] for a in answers] == [str(i) for i in range(count)]
    assert [a.json()["results"][0] for a in answers] == [2.0 * i + 1 for i in range(count)]


def test_probes_answer_within_a_second_while_clients_flood_the_control_thread(affine):
    server = affine(control_queue_size=16)
    flood = request_head("GET", "/metrics") * 400
    socks = [connect(server.port, timeout=30) for _ in range(12)]
    stop = threading.Event()

    def drain(sock):
        try:
            while not stop.is_set() and sock.recv(1 << 20):
                pass
        except OSError:
            pass

    readers = [threading.Thread(target=drain, args=(sock,), daemon=True) for sock in socks]
    for sock, thread in zip(socks, readers):
        thread.start()
        sock.sendall(flood)
    slowest = 0.0
    try:
        with requests.Session() as session:
            for _ in range(20):
                for path in ("/api/ping", "/api/live"):
                    started = time.monotonic()
                    assert session.get(server.url(path), timeout=5).status_code == 200
                    slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)
    finally:
        stop.set()
        for sock in socks:
            sock.close()
    assert slowest < 1.0, f"a probe took {slowest:.3f} s behind the flood"
    assert requests_counted(server, 503, route="other") > 0  # the control queue is bounded: the flood is refused
    answers_normally(server)


def test_a_handler_header_that_cannot_be_sent_gets_500_naming_it_and_the_answers_after_it_keep_their_order(
        start_server, affine_model):
    server = start_server(handler="fixture_handlers:HeaderInjector", model_path=str(affine_model))
    firsts = [5, 1, 6, 2, 7]
    with connect(server.port) as sock:
        sock.sendall(b"".join(json_request(ROUTE, {"postid": str(i), "data": [first, 0, 0, 0]})
                              for i, first in enumerate(firsts)))
        reader = Reader(sock)
        answers = [reader.response() for _ in firsts]
    assert [a.status for a in answers] == [200, 500, 200, 500, 200]
    assert [a.json()["postid"] for a in answers] == ["0", "1", "2", "3", "4"]
    for answer in answers:
        assert "injected" not in answer.headers and "x-note" not in answer.headers
    assert "X-Note" in answers[1].json()["msg"] and "CR, LF" in answers[1].json()["msg"]
    assert "X-Note" in answers[3].json()["msg"] and "latin-1" in answers[3].json()["msg"]
    answers_normally(server, {"postid": "after", "data": [5, 2, 3, 4]})


def test_100_continue_is_sent_only_to_http_1_1_and_only_to_a_request_the_pod_can_take(start_server, affine_model,
                                                                                     tmp_path):
    gate = tmp_path / "gate"  # while it is there, a predict call waits at it: the busy request holds its place
    server = start_server(handler="fixture_handlers:SlowAffine", model_path=str(affine_model), queue_size=1,
                          max_batch_size=1, TEST_PREDICT_SLEEP="0", TEST_PREDICT_GATE=str(gate))
    body = json.dumps(BODY).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Expect": "100-continue"}
    with connect(server.port) as old:  # HTTP/1.0: no interim answer, whatever it asks
        old.sendall(request_head("POST", ROUTE, head, version="1.0") + body)
        answer = Reader(old).response()
        assert answer.status == 200 and answer.interim == []
    with connect(server.port) as busy, connect(server.port) as waiting:
        gate.touch()
        busy.sendall(json_request(ROUTE, BODY))  # holds the pod's only place until the gate goes
        poll_until(lambda: held_batches(gate) == [1], timeout=10, every=0.01, what="the busy request in its predict")
        started = time.monotonic()
        waiting.sendall(request_head("POST", ROUTE, head))  # its body waits for a 100 that must not come
        reader = Reader(waiting)
        answer = reader.response()
        assert answer.status == 503 and answer.interim == [] and answer.closes
        assert time.monotonic() - started < 1.0  # at its headers, not after its body or the busy request
        assert reader.closed_by_server(within=2)
        gate.unlink()
        assert Reader(busy).response().status == 200
    with connect(server.port) as fresh:  # room again: 100 Continue, then the answer
        fresh.sendall(request_head("POST", ROUTE, head))
        reader = Reader(fresh)
        interim = reader._line()
        assert interim.startswith(b"HTTP/1.1 100"), interim
        assert reader._line() == b""
        fresh.sendall(body)
        assert reader.response().status == 200


def test_an_upgrade_is_ignored_without_a_body_and_refused_400_with_one(affine):
    server = affine()
    upgrade = {"Connection": "Upgrade", "Upgrade": "h2c"}
    with connect(server.port) as sock:
        sock.sendall(request_head("GET", "/api/ping", upgrade) + request_head("GET", "/api/live"))
        reader = Reader(sock)
        assert [reader.response().status, reader.response().status] == [200, 200]
    with connect(server.port) as sock:
        body = json.dumps(BODY).encode()
        sock.sendall(request_head("POST", ROUTE, {**upgrade, "Content-Type": "application/json",
                                                           "Content-Length": str(len(body))}) + body)
        reader = Reader(sock)
        answer = reader.response()
        assert answer.status == 400 and answer.closes and "Upgrade" in answer.json()["msg"]
        assert reader.closed_by_server(within=2)
    assert requests_counted(server, 200, route=ROUTE) == 0  # the refused body never reached the service
    answers_normally(server)


def test_requests_whose_caller_hung_up_are_not_decoded_and_are_counted_499(start_server, affine_model):
    server = start_server(handler="fixture_handlers:SlowDecode", model_path=str(affine_model), http_threads=1)
    with connect(server.port) as busy:
        busy.sendall(json_request(ROUTE, {"postid": "1.0", "data": [1, 2, 3, 4]}))  # the one thread, 1 s
        time.sleep(0.2)
        for i in range(5):
            with connect(server.port) as gone:
                gone.sendall(json_request(ROUTE, {"postid": "0", "data": [i, 2, 3, 4]}))
                time.sleep(0.05)
        assert Reader(busy).response().status == 200
    poll_until(lambda: requests_counted(server, 499) == 5, timeout=10, what="the five abandoned requests counted")
    assert server.metric_sum("service_inputs_decoded_total") == 1  # only the caller that stayed was decoded
    answers_normally(server)


def test_head_announces_the_length_get_would_send(affine):
    server = affine()
    for path in ("/no-such-route", "/api/ping", "/metrics"):
        with connect(server.port) as sock:
            sock.sendall(request_head("HEAD", path) + request_head("GET", path))
            reader = Reader(sock)
            head = reader.response(head_only=True)
            get = reader.response()
        assert head.status == get.status
        if path != "/metrics":  # the metrics page changes between two reads; its length only has to be announced
            assert int(head.headers["content-length"]) == len(get.body) > 0
        else:
            assert int(head.headers["content-length"]) > 1000
    answers_normally(server)


def test_an_answered_requests_body_is_released_at_once_even_behind_a_slow_one(start_server, affine_model, tmp_path):
    gate = tmp_path / "gate"  # while it is there, a predict call waits at it: the first request is the slow one
    server = start_server(handler="fixture_handlers:SlowAffine", model_path=str(affine_model),
                          max_body_bytes=4 * MIB, TEST_PREDICT_SLEEP="0", TEST_PREDICT_GATE=str(gate))
    bad = json.dumps({"postid": "bad", "data": "not a list", "pad": " " * (4 * MIB - 100)}).encode()
    refused = request_head("POST", ROUTE, {"Content-Type": "application/json", "Content-Length": str(len(bad))}) + bad
    peak_before = peak_rss_bytes(server.process.pid)
    with connect(server.port, timeout=30) as sock:
        # The first request runs until the gate goes; the fifteen behind it are answered 400 at once but wait their
        # turn on the wire: their 60 MiB of bodies must not wait with them. Each is sent once the server has answered
        # the one before, so that only one body is ever being read or parsed: what the peak holds beyond that is
        # bodies kept after their answers (sent all at once, how many are read before the first is parsed is a race).
        gate.touch()
        sock.sendall(json_request(ROUTE, BODY))
        poll_until(lambda: held_batches(gate) == [1], timeout=10, every=0.01, what="the first request in its predict")
        for sent in range(1, 16):
            sock.sendall(refused)
            poll_until(lambda: requests_counted(server, 400) == sent, timeout=10, every=0.02,
                       what=f"request {sent} of 15 answered 400")
        assert requests_counted(server, 200) == 0, "the slow request ended before the fifteen were answered"
        gate.unlink()
        reader = Reader(sock)
        statuses = [reader.response().status for _ in range(16)]
    assert statuses == [200] + [400] * 15
    grown = peak_rss_bytes(server.process.pid) - peak_before
    print(f"peak RSS grew {grown / MIB:.1f} MiB over 15 answered bodies of 4 MiB")
    assert grown < 40 * MIB, f"peak RSS grew {grown / MIB:.1f} MiB: answered bodies were held"
