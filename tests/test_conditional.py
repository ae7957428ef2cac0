"""conditional.py fed headers and validators: no sockets, no S3."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.conditional import (
    PRECONDITION_HEADERS,
    ByteRange,
    has_preconditions,
    has_write_preconditions,
    if_range_holds,
    parse_http_date,
    parse_ranges,
    precondition_status,
    satisfiable_spans,
    write_preconditions_hold,
)

ETAG = '"abc"'
MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sat, 05 Nov 1994 08:49:37 GMT"
LATER = "Mon, 07 Nov 1994 08:49:37 GMT"


def status(headers: dict[str, str], method: str = "GET", etag: str | None = ETAG) -> int | None:
    return precondition_status(method, headers, etag, MODIFIED)


# Dates (RFC 9110 5.6.7)


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime
    ],
)
def test_all_three_date_forms_mean_the_same_instant(value: str) -> None:
    assert parse_http_date(value, this_year=2026) == datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


def test_rfc850_two_digit_years_more_than_50_years_ahead_are_last_century() -> None:
    assert parse_http_date("Monday, 01-Jan-80 00:00:00 GMT", this_year=2026).year == 1980
    assert parse_http_date("Friday, 01-Jan-76 00:00:00 GMT", this_year=2026).year == 2076


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        "Mon, 32 Jan 2020 00:00:00 GMT",
        "Mon, 01 Foo 2020 00:00:00 GMT",
        "Mon, 01 Jan 2020 25:00:00 GMT",
        "Mon, 01 Jan 99999999999 00:00:00 GMT",
        "Mon, 01 Jan 2020 00:00:00 +0100",
        "2020-01-01T00:00:00Z",
    ],
)
def test_invalid_dates_are_none(value: str | None) -> None:
    assert parse_http_date(value) is None


# Preconditions, in RFC 9110 13.2.2's order


def test_nothing_to_check_without_conditional_headers() -> None:
    assert not has_preconditions({"Range": "bytes=0-1", "If-Range": ETAG})
    assert has_preconditions({"If-None-Match": "*"})
    assert status({}) is None


@pytest.mark.parametrize("name", PRECONDITION_HEADERS)
def test_each_precondition_header_is_seen_in_any_case(name: str) -> None:
    assert has_preconditions(CIMultiDictProxy(CIMultiDict({name.lower(): "x"})))


@pytest.mark.parametrize(
    ("if_match", "expected"),
    [
        (ETAG, None),
        ('"x", "abc"', None),
        ("*", None),
        ('W/"abc"', 412),  # If-Match compares strongly
        ('"x"', 412),
        ("garbage", 412),  # a list that does not parse matches nothing: fail closed
        ('x"abc"', 412),
        ('"abc"x', 412),
        ('"abc" "x"', 412),
        ('*, "abc"', 412),  # `*` is the whole field or nothing
        (' , "x",, "abc" , ', None),  # empty list members are allowed (RFC 9110 5.6.1)
    ],
)
def test_if_match(if_match: str, expected: int | None) -> None:
    assert status({"If-Match": if_match}) == expected


def test_if_match_never_matches_a_weak_etag_but_star_does() -> None:
    assert status({"If-Match": 'W/"abc"'}, etag='W/"abc"') == 412
    assert status({"If-Match": "*"}, etag=None) is None


@pytest.mark.parametrize(("since", "expected"), [(EARLIER, 412), (MODIFIED, None), (LATER, None)])
def test_if_unmodified_since(since: str, expected: int | None) -> None:
    assert status({"If-Unmodified-Since": since}) == expected


def test_if_match_outranks_if_unmodified_since() -> None:
    assert status({"If-Match": ETAG, "If-Unmodified-Since": EARLIER}) is None


def test_invalid_if_unmodified_since_is_ignored() -> None:
    assert status({"If-Unmodified-Since": "not a date"}) is None


@pytest.mark.parametrize(
    ("if_none_match", "expected"),
    [
        (ETAG, 304),
        ('W/"abc"', 304),  # If-None-Match compares weakly
        ('"x", W/"abc"', 304),
        ("*", 304),
        ('"x"', None),
        ('"ab"', None),
        ("abc", None),  # unquoted: not an entity-tag
        ('x"abc"', None),  # a list that does not parse matches nothing: the whole object
        ('"x" "abc"', None),
    ],
)
def test_if_none_match(if_none_match: str, expected: int | None) -> None:
    assert status({"If-None-Match": if_none_match}) == expected
    assert status({"If-None-Match": if_none_match}, method="HEAD") == expected


def test_if_none_match_on_other_methods_is_412() -> None:
    assert status({"If-None-Match": "*"}, method="DELETE") == 412


@pytest.mark.parametrize(("since", "expected"), [(EARLIER, None), (MODIFIED, 304), (LATER, 304)])
def test_if_modified_since(since: str, expected: int | None) -> None:
    assert status({"If-Modified-Since": since}) == expected


def test_if_modified_since_is_for_get_and_head_only() -> None:
    assert status({"If-Modified-Since": LATER}, method="HEAD") == 304
    assert status({"If-Modified-Since": LATER}, method="POST") is None


def test_if_none_match_outranks_if_modified_since() -> None:
    assert status({"If-None-Match": '"x"', "If-Modified-Since": LATER}) is None


def test_412_outranks_304() -> None:
    assert status({"If-Match": '"x"', "If-None-Match": ETAG}) == 412


def test_dates_in_obsolete_forms_count() -> None:
    assert status({"If-Modified-Since": "Sunday, 06-Nov-94 08:49:37 GMT"}) == 304
    assert status({"If-Unmodified-Since": "Sat Nov  5 08:49:37 1994"}) == 412


def test_without_validators_only_star_can_match() -> None:
    assert precondition_status("GET", {"If-None-Match": ETAG}, None, None) is None
    assert precondition_status("GET", {"If-Modified-Since": LATER}, None, None) is None
    assert precondition_status("GET", {"If-None-Match": "*"}, None, None) == 304


# A field on several lines (RFC 9110 5.3)


def lines(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_list_fields_on_several_lines_are_one_list() -> None:
    headers = lines(("If-None-Match", '"x"'), ("If-None-Match", ETAG))
    assert precondition_status("GET", headers, ETAG, MODIFIED) == 304
    headers = lines(("If-Match", '"x"'), ("if-match", ETAG))
    assert precondition_status("GET", headers, ETAG, MODIFIED) is None
    headers = lines(("If-Match", '"x"'), ("If-Match", '"y"'))
    assert precondition_status("GET", headers, ETAG, MODIFIED) == 412
    # `*` joined to another line is no longer `*`: it does not parse, so If-Match fails.
    headers = lines(("If-Match", "*"), ("If-Match", ETAG))
    assert precondition_status("GET", headers, ETAG, MODIFIED) == 412


@pytest.mark.parametrize("name", ["If-Modified-Since", "If-Unmodified-Since"])
def test_a_date_field_sent_twice_is_ignored(name: str) -> None:
    # Either date alone would decide (304 or 412); twice, the field is not a date.
    value = LATER if name == "If-Modified-Since" else EARLIER
    assert precondition_status("GET", lines((name, value)), ETAG, MODIFIED) is not None
    assert precondition_status("GET", lines((name, value), (name, value)), ETAG, MODIFIED) is None


def test_if_range_sent_twice_does_not_hold() -> None:
    assert not if_range_holds(lines(("If-Range", ETAG), ("If-Range", ETAG)), ETAG, MODIFIED)


# Writes (PUT): judged on the object at the key, or on none


@pytest.mark.parametrize(
    ("headers", "when_absent", "when_present"),
    [
        ({}, True, True),
        ({"If-None-Match": "*"}, True, False),  # create only
        ({"If-Match": "*"}, False, True),  # replace only
        ({"If-Match": ETAG}, False, True),
        ({"If-Match": '"x", "abc"'}, False, True),
        ({"If-Match": '"nope"'}, False, False),
        ({"If-Match": 'W/"abc"'}, False, False),  # strong comparison
        ({"If-Match": 'x"abc"'}, False, False),  # malformed: fails closed
        ({"If-None-Match": ETAG}, True, False),
        ({"If-None-Match": 'W/"abc"'}, True, False),  # weak comparison
        ({"If-None-Match": '"x"'}, True, True),
        ({"If-None-Match": 'x"abc"'}, False, False),  # malformed: fails closed for a write
        ({"If-Unmodified-Since": EARLIER}, True, False),  # no object: nothing to compare
        ({"If-Unmodified-Since": LATER}, True, True),
        ({"If-Unmodified-Since": "not a date"}, True, True),
        ({"If-Match": ETAG, "If-Unmodified-Since": EARLIER}, False, True),  # If-Match first
        ({"If-Modified-Since": LATER}, True, True),  # means nothing for a write
        ({"If-Match": ETAG, "If-None-Match": ETAG}, False, False),
    ],
)
def test_write_preconditions(
    headers: dict[str, str], when_absent: bool, when_present: bool
) -> None:
    assert write_preconditions_hold(headers, False, None, None) is when_absent
    assert write_preconditions_hold(headers, True, ETAG, MODIFIED) is when_present
    assert has_write_preconditions(headers) is (set(headers) - {"If-Modified-Since"} != set())


def test_write_preconditions_on_several_lines() -> None:
    headers = lines(("If-None-Match", '"x"'), ("If-None-Match", ETAG))
    assert not write_preconditions_hold(headers, True, ETAG, MODIFIED)
    assert not write_preconditions_hold(
        lines(("If-Unmodified-Since", EARLIER), ("If-Match", '"x"')), True, ETAG, MODIFIED
    )


# If-Range (RFC 9110 13.1.5): strong comparison only


@pytest.mark.parametrize(
    ("if_range", "holds"),
    [
        (None, True),
        (ETAG, True),
        ('"other"', False),
        ('W/"abc"', False),
        (MODIFIED, True),
        ("Sunday, 06-Nov-94 08:49:37 GMT", True),
        (LATER, False),  # not "modified since": the date must be exactly Last-Modified
        (EARLIER, False),
        ("not a date", False),
    ],
)
def test_if_range(if_range: str | None, holds: bool) -> None:
    headers = {} if if_range is None else {"If-Range": if_range}
    assert if_range_holds(headers, ETAG, MODIFIED) is holds


def test_if_range_never_matches_a_weak_etag() -> None:
    assert not if_range_holds({"If-Range": 'W/"abc"'}, 'W/"abc"', MODIFIED)


# Range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (ByteRange(0, 99),)),
        ("Bytes=10-", (ByteRange(10, None),)),
        ("bytes=-5", (ByteRange(None, 5),)),
        ("bytes= 0-1 , 5-6", (ByteRange(0, 1), ByteRange(5, 6))),
        (None, None),
        ("bytes=5-2", ()),  # malformed bytes range sets: 416, as nginx answers
        ("bytes=-0", ()),
        ("bytes=-", ()),
        ("bytes=abc", ()),
        ("items=0-1", None),  # another unit: ignored
        ("bytes=0-1,", ()),
        ("bytes=" + ",".join(f"{i}-{i}" for i in range(17)), None),
    ],
)
def test_parse_ranges(header: str | None, expected: tuple[ByteRange, ...] | None) -> None:
    assert parse_ranges(header) == expected


def test_ranges_become_spans_within_the_object() -> None:
    overlapping = parse_ranges("bytes=0-5,-5,3-8") or ()
    assert satisfiable_spans(overlapping, 10) is None  # more bytes than the object: send it all
    spans = satisfiable_spans(parse_ranges("bytes=0-1,5-6,-1,8-99,100-") or (), 10)
    assert spans == [(0, 1), (5, 6), (9, 9), (8, 9)]
    assert satisfiable_spans(parse_ranges("bytes=0-1,5-6,100-") or (), 10) == [(0, 1), (5, 6)]
    assert satisfiable_spans(parse_ranges("bytes=10-") or (), 10) == []  # 416
    assert satisfiable_spans(parse_ranges("bytes=-50") or (), 10) == [(0, 9)]
    assert satisfiable_spans(parse_ranges("bytes=0-") or (), 0) == []


def test_a_range_goes_to_s3_as_asked() -> None:
    assert ByteRange(None, 5).as_header() == "bytes=-5"
    assert ByteRange(3, None).as_header() == "bytes=3-"
