"""The overload client's reading of answers: whole responses only, and the Retry-After a 503 asks for."""

from bench.closedloop import _complete_answer, _retry_after


def test_an_answer_is_complete_only_with_its_whole_body():
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\n"
    assert _complete_answer(head + b"ab") is None
    status, headers, used = _complete_answer(head + b"abcdHTTP/1.1 200 OK")
    assert (status, used) == (503, len(head) + 4) and headers.startswith(b"HTTP/1.1 503")


def test_retry_after_is_read_from_the_headers_and_absent_means_no_wait():
    assert _retry_after(b"HTTP/1.1 503 X\r\nContent-Length: 2\r\nRetry-After: 1") == 1.0
    assert _retry_after(b"HTTP/1.1 503 X\r\nretry-after: 2.5\r\nContent-Length: 2") == 2.5
    assert _retry_after(b"HTTP/1.1 503 X\r\nContent-Length: 2") == 0.0
    assert _retry_after(b"HTTP/1.1 503 X\r\nRetry-After: Wed, 21 Oct 2026 07:28:00 GMT") == 0.0
