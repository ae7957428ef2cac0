"""requestline.py fed bytes, as the connection feeds it: which versions change, and that
nothing but a request line known to begin a request is ever touched."""

from __future__ import annotations

import pytest

from proxy.requestline import RequestLines

GET12 = b"GET /a HTTP/1.2\r\nHost: p\r\n\r\n"
GET11 = b"GET /a HTTP/1.1\r\nHost: p\r\n\r\n"


def fed_whole(lines: RequestLines, *reads: bytes) -> bytes:
    return b"".join(lines.feed(read) for read in reads)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (GET12, GET11),
        (b"GET /a HTTP/1.9\r\n\r\n", b"GET /a HTTP/1.1\r\n\r\n"),
        (b"\r\n\r\nGET /a HTTP/1.2\r\n\r\n", b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n"),
        (GET11, GET11),
        (b"GET /a HTTP/1.0\r\n\r\n", b"GET /a HTTP/1.0\r\n\r\n"),
        (b"GET /a\r\n\r\n", b"GET /a\r\n\r\n"),  # no version: the parser's to refuse
        (b"GET /a HTTP/1.12\r\n\r\n", b"GET /a HTTP/1.12\r\n\r\n"),  # malformed: likewise
        (b"GET /HTTP/1.2 HTTP/1.0\r\n\r\n", b"GET /HTTP/1.2 HTTP/1.0\r\n\r\n"),
    ],
)
def test_a_first_request_line_is_versioned(given: bytes, expected: bytes) -> None:
    lines = RequestLines()
    assert lines.feed(given) == expected
    assert not lines.unsupported_major


@pytest.mark.parametrize("version", [b"2.0", b"3.0", b"9.9"])
def test_a_major_version_over_1_is_noted_and_left_alone(version: bytes) -> None:
    lines = RequestLines()
    data = b"GET /a HTTP/" + version + b"\r\nHost: p\r\n\r\n"
    assert lines.feed(data) == data
    assert lines.unsupported_major


def test_a_line_split_across_reads_holds_back_only_what_may_be_its_version() -> None:
    lines = RequestLines()
    assert lines.feed(b"GET /a") == b"GET /a"
    assert lines.feed(b"bc HTTP/1.") == b"bc"
    assert lines.feed(b"2") == b""
    assert lines.feed(b"\r") == b""
    assert lines.feed(b"\nHost: p\r\n\r\n") == b" HTTP/1.1\r\nHost: p\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET /" + b"a" * 10_000, b"GET /a HTTPS"],
)
def test_an_unended_line_that_cannot_end_in_a_version_goes_on_at_once(data: bytes) -> None:
    lines = RequestLines()
    assert lines.feed(data) == data


def test_empty_lines_alone_are_not_held() -> None:
    lines = RequestLines()
    assert lines.feed(b"\r\n" * 1000) == b"\r\n" * 1000
    assert lines.feed(GET12) == GET11


def test_bodiless_heads_in_one_read_are_all_versioned() -> None:
    lines = RequestLines()
    assert lines.feed(GET12 * 3) == GET11 * 3


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 17", b"transfer-encoding: chunked", b"X: content-LENGTH", b"Upgrade: x"],
)
def test_nothing_after_a_head_that_may_have_a_body_is_touched(framing: bytes) -> None:
    lines = RequestLines()
    body = b"GET /b HTTP/1.2\r\n"  # a body that looks like a request line
    data = b"PUT /a HTTP/1.2\r\n" + framing + b"\r\n\r\n" + body + GET12
    expected = b"PUT /a HTTP/1.1\r\n" + framing + b"\r\n\r\n" + body + GET12
    assert lines.feed(data) == expected
    assert lines.feed(GET12) == GET12  # still elsewhere: nobody said where a message ends


def test_a_head_not_ended_in_this_read_stops_the_looking() -> None:
    lines = RequestLines()
    assert lines.feed(b"GET /a HTTP/1.2\r\nHost: p\r\n") == b"GET /a HTTP/1.1\r\nHost: p\r\n"
    assert lines.feed(b"X: GET /b HTTP/1.2\r\n\r\n") == b"X: GET /b HTTP/1.2\r\n\r\n"


def test_between_messages_looks_again_and_lost_track_stops() -> None:
    lines = RequestLines()
    assert lines.feed(b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n") != b""
    assert lines.feed(b"HTTP/1.2\r\n") == b"HTTP/1.2\r\n"  # a body, untouched
    lines.between_messages()
    assert lines.feed(GET12) == GET11
    lines.lost_track()
    assert lines.feed(GET12) == GET12


def test_lost_track_keeps_a_line_being_read() -> None:
    lines = RequestLines()
    assert lines.feed(b"GET /a HTTP/1.2") == b"GET /a"
    lines.lost_track()
    assert lines.feed(b"\r\n\r\n") == b" HTTP/1.1\r\n\r\n"
