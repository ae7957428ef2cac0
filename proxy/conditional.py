"""HTTP preconditions, If-Range and byte ranges (RFC 9110 13-14), judged from validators; no I/O.

Fed request headers and an object's validators (ETag, Last-Modified), it says what to answer;
it never touches S3 or a socket. Every path asks the same functions (streamed GET, HEAD,
memory cache, and uploads for a PUT), so the rules cannot drift apart.

Rules, in RFC 9110 13.2.2's order:
1. If-Match present: 412 unless one tag matches strongly (`*` matches any existing object).
   Else If-Unmodified-Since earlier than Last-Modified: 412.
2. If-None-Match present: 304 (GET/HEAD; 412 otherwise) when one tag matches weakly or is `*`.
   Else, on GET/HEAD, If-Modified-Since not earlier than Last-Modified: 304.
3. If-Range (GET with Range only): honour Range only when it matches strongly: an ETag that is
   not W/, or a date exactly equal to Last-Modified. Otherwise serve the whole object.
4. Range: 206 for the satisfiable ranges, 416 when none is or the bytes range set is
   malformed (as nginx answers); another unit is ignored.
5. A write (PUT) is judged by rules 1 and 2 against the object as it is, or against no object
   (`write_preconditions_hold`): If-Match and `If-None-Match: *` then tell creating from
   replacing, and If-Modified-Since means nothing.
Fields: a list field sent on several lines is one list (RFC 9110 5.3): If-Match and
If-None-Match lines are joined with commas. A date field sent more than once, or in none of
the three HTTP forms, is ignored, and so is an If-Range sent more than once. A tag list that
does not parse (`x"etag"`, `*` among tags) matches nothing, so If-Match fails closed with
412; for a write, so does If-None-Match (a guard the proxy cannot read refuses the write).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412
PRECONDITION_HEADERS = ("If-Match", "If-None-Match", "If-Unmodified-Since", "If-Modified-Since")
WRITE_PRECONDITION_HEADERS = ("If-Match", "If-None-Match", "If-Unmodified-Since")
MAX_RANGES = 16  # more parts than this is treated as no Range (RFC 9110 14.2 permits it)

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) {_MONTH} (\d{{4}}) {_TIME} GMT"
)
_RFC850 = re.compile(
    rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-{_MONTH}-(\d\d) "
    rf"{_TIME} GMT"
)
_ASCTIME = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")
# One member of an entity-tag list (RFC 9110 8.8.3), empty ones allowed (5.6.1), then a comma
# or the end. Opaque tags take obs-text, which a header arrives as (any non-ASCII character).
_LIST_MEMBER = re.compile(r'[ \t]*(?:(W/)?("[\x21\x23-\x7e\x80-\U0010ffff]*"))?[ \t]*(,|\Z)')
_BYTE_RANGE = re.compile(r"\s*(\d{0,19})\s*-\s*(\d{0,19})\s*")


def parse_http_date(value: str | None, this_year: int | None = None) -> datetime | None:
    """An HTTP-date in any of its three forms (RFC 9110 5.6.7), or None if it is none of them.

    `this_year` anchors RFC 850's two-digit years (a year more than 50 years ahead is the
    previous century's); it defaults to the current year.
    """
    if not value or len(value) > 64:
        return None
    value = value.strip()
    try:
        if found := _IMF_FIXDATE.fullmatch(value):
            day, month, year, hour, minute, second = found.groups()
            return _utc(int(year), month, day, hour, minute, second)
        if found := _RFC850.fullmatch(value):
            day, month, short_year, hour, minute, second = found.groups()
            year = _full_year(int(short_year), this_year or datetime.now(UTC).year)
            return _utc(year, month, day, hour, minute, second)
        if found := _ASCTIME.fullmatch(value):
            month, day, hour, minute, second, year = found.groups()
            return _utc(int(year), month, day.strip(), hour, minute, second)
    except ValueError:  # 32 February, 25:61:61 and the like
        return None
    return None


def _utc(year: int, month: str, day: str, hour: str, minute: str, second: str) -> datetime:
    return datetime(year, _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC)


def _full_year(short: int, this_year: int) -> int:
    year = this_year - this_year % 100 + short
    return year - 100 if year > this_year + 50 else year


def has_preconditions(headers: Mapping[str, str]) -> bool:
    """Cheap test that keeps the common request (no validators) from parsing anything."""
    # Spelled out: any() over a generator cost three times as much, on every GET and HEAD.
    return (
        "If-None-Match" in headers
        or "If-Modified-Since" in headers
        or "If-Match" in headers
        or "If-Unmodified-Since" in headers
    )


def precondition_status(
    method: str, headers: Mapping[str, str], etag: str | None, last_modified: str | None
) -> int | None:
    """412 or 304 when a precondition decides the answer; None to go on and serve. The
    object exists (it has these validators, or none S3 gave)."""
    if_match = _list_field(headers, "If-Match")
    if if_match is not None:
        if not _any_tag_matches(if_match, etag, weak=False):
            return PRECONDITION_FAILED
    elif _modified_after(headers, "If-Unmodified-Since", last_modified):
        return PRECONDITION_FAILED
    safe = method in ("GET", "HEAD")
    if_none_match = _list_field(headers, "If-None-Match")
    if if_none_match is not None:
        if _any_tag_matches(if_none_match, etag, weak=True):
            return NOT_MODIFIED if safe else PRECONDITION_FAILED
    elif safe:
        since = _date_field(headers, "If-Modified-Since")
        modified = parse_http_date(last_modified)
        if since is not None and modified is not None and modified <= since:
            return NOT_MODIFIED
    return None


def has_write_preconditions(headers: Mapping[str, str]) -> bool:
    """Whether a write (PUT) carries a precondition (If-Modified-Since means nothing there)."""
    return any(name in headers for name in WRITE_PRECONDITION_HEADERS)


def write_preconditions_hold(
    headers: Mapping[str, str], exists: bool, etag: str | None, last_modified: str | None
) -> bool:
    """Rule 5: whether a PUT may store its body, judged on the object at the key (`exists`,
    with its validators) or on no object."""
    if_match = _list_field(headers, "If-Match")
    if if_match is not None:
        # `*` and every tag match only a current object (RFC 9110 13.1.1).
        if not exists or not _any_tag_matches(if_match, etag, weak=False):
            return False
    elif exists and _modified_after(headers, "If-Unmodified-Since", last_modified):
        return False  # (no object: no modification date to compare, so it is ignored)
    if_none_match = _list_field(headers, "If-None-Match")
    if if_none_match is None:
        return True
    if if_none_match.strip() != "*" and entity_tags(if_none_match) is None:
        return False  # a guard the proxy cannot read: refuse rather than overwrite
    return not exists or not _any_tag_matches(if_none_match, etag, weak=True)


def if_range_holds(headers: Mapping[str, str], etag: str | None, last_modified: str | None) -> bool:
    """Whether a Range may be honoured: no If-Range, or one that matches strongly."""
    values = field_lines(headers, "If-Range")
    if not values:
        return True
    if len(values) > 1:
        return False  # a single validator, sent twice: not one the proxy can trust
    validator = values[0].strip()
    if validator.startswith(('"', "W/")):
        # A weak tag never matches here: If-Range needs the very same bytes (13.1.5).
        return etag is not None and _strong_tag(validator) is not None and validator == etag
    date = parse_http_date(validator)
    return date is not None and date == parse_http_date(last_modified)


def field_lines(headers: Mapping[str, str], name: str) -> list[str]:
    """Every line of a field: a multidict's `getall`, or the one value of a plain mapping."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]


def _list_field(headers: Mapping[str, str], name: str) -> str | None:
    """A list field's lines as the one list they are (RFC 9110 5.3)."""
    values = field_lines(headers, name)
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def _date_field(headers: Mapping[str, str], name: str) -> datetime | None:
    """A date field's date; None when absent, invalid, or sent more than once (a list of
    dates is not a date: RFC 9110 13.1.3-4 ignore it)."""
    values = field_lines(headers, name)
    return parse_http_date(values[0]) if len(values) == 1 else None


def _modified_after(headers: Mapping[str, str], name: str, last_modified: str | None) -> bool:
    since = _date_field(headers, name)
    modified = parse_http_date(last_modified)
    return since is not None and modified is not None and modified > since


def entity_tags(field: str) -> list[tuple[bool, str]] | None:
    """A `#entity-tag` list as (weak, opaque-tag) pairs; None if it does not parse (`*`,
    which is no list, included)."""
    tags: list[tuple[bool, str]] = []
    position = 0
    while True:
        found = _LIST_MEMBER.match(field, position)
        if found is None:
            return None
        weak, opaque, comma = found.groups()
        if opaque is not None:
            tags.append((weak is not None, opaque))
        if not comma:
            return tags
        position = found.end()


def _any_tag_matches(field: str, etag: str | None, *, weak: bool) -> bool:
    if field.strip() == "*":
        return True  # the object exists: callers ask only about objects S3 returned
    if etag is None:
        return False
    mine = etag.removeprefix("W/") if weak else _strong_tag(etag)
    if mine is None:
        return False
    tags = entity_tags(field)
    if tags is None:
        return False  # a list that does not parse matches nothing
    return any(opaque == mine and (weak or not is_weak) for is_weak, opaque in tags)


def _strong_tag(tag: str) -> str | None:
    return None if tag.startswith("W/") else tag


@dataclass(frozen=True)
class ByteRange:
    """One requested byte-range-spec; `first` None means the last `last` bytes (a suffix)."""

    first: int | None
    last: int | None

    def as_header(self) -> str:
        """The range as a Range header value, for S3."""
        first = "" if self.first is None else str(self.first)
        last = "" if self.last is None else str(self.last)
        return f"bytes={first}-{last}"

    def span(self, size: int) -> tuple[int, int] | None:
        """(first, last) byte positions within `size` bytes, or None if unsatisfiable."""
        if self.first is None:
            length = self.last or 0
            return (max(0, size - length), size - 1) if size and length else None
        if self.first >= size:
            return None
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return self.first, last


def parse_ranges(header: str | None) -> tuple[ByteRange, ...] | None:
    """The byte ranges a Range header asks for; None to serve the whole object; an empty
    tuple for a bytes range set that can never be satisfied (416).

    Another unit, or more than MAX_RANGES parts, is ignored, as RFC 9110 14.2 permits. A
    malformed bytes range set (`5-2`, `-0`, garbage) is refused with 416, as nginx refuses
    it: a client that sent it learns its request was wrong instead of getting the whole body.
    """
    if not header:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) > MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        found = _BYTE_RANGE.fullmatch(part)
        if found is None:
            return ()
        first_text, last_text = found.groups()
        first = int(first_text) if first_text else None
        last = int(last_text) if last_text else None
        if first is None and not last:  # "-" or "-0": asks for nothing
            return ()
        if first is not None and last is not None and first > last:
            return ()
        ranges.append(ByteRange(first, last))
    return tuple(ranges)


def satisfiable_spans(ranges: tuple[ByteRange, ...], size: int) -> list[tuple[int, int]] | None:
    """The (first, last) spans within `size` bytes to send; empty means 416, and None means
    send the whole object instead: ranges that add up to more than the object itself
    (overlaps) are refused as nginx refuses them, so a small request cannot ask for many
    copies of one object."""
    spans = [span for byte_range in ranges if (span := byte_range.span(size)) is not None]
    if sum(last - first + 1 for first, last in spans) > size:
        return None
    return spans
