"""Part plans (proxy/uploads/parts.py), fed numbers: no sockets, no S3."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BadRequest, PayloadTooLarge
from proxy.storage import UploadedPart
from proxy.uploads.parts import (
    PartPlan,
    check_completion,
    check_held,
    declared_size,
    missing_parts,
    parse_parts,
    plan_parts,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
TIB = 1024 * GIB


def test_a_small_file_is_one_part_of_its_own_size() -> None:
    plan = plan_parts(1)
    assert (plan.part_size, plan.count, plan.length(1)) == (5 * MIB, 1, 1)


def test_the_last_part_takes_the_remainder() -> None:
    plan = plan_parts(12 * MIB + 3, smallest=5 * MIB)
    assert (plan.count, plan.length(1), plan.length(2), plan.length(3)) == (
        3,
        5 * MIB,
        5 * MIB,
        2 * MIB + 3,
    )
    with pytest.raises(ValueError, match="not in a plan of 3 parts"):
        plan.length(4)


def test_the_routes_part_size_is_the_smallest_part() -> None:
    assert plan_parts(GIB, smallest=64 * MIB) == PartPlan(GIB, 64 * MIB, 16)


def test_a_file_too_large_for_10000_parts_gets_larger_whole_mib_parts() -> None:
    plan = plan_parts(100 * GIB, smallest=8 * MIB)
    assert plan.part_size == 11 * MIB  # 100 GiB / 10,000 = 10.24 MiB, rounded up
    assert plan.count == 9310
    five_tib = plan_parts(5 * TIB)
    assert five_tib.part_size == 525 * MIB
    assert five_tib.count <= 10_000


@pytest.mark.parametrize("size", [0, -1, 5 * TIB + 1])
def test_sizes_s3_cannot_store_have_no_plan(size: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        plan_parts(size)


@given(
    size=st.integers(min_value=1, max_value=5 * TIB),
    smallest=st.integers(min_value=5 * MIB, max_value=5 * GIB),
)
def test_every_plan_keeps_s3s_rules(size: int, smallest: int) -> None:
    plan = plan_parts(size, smallest)
    assert 1 <= plan.count <= 10_000
    assert 5 * MIB <= plan.part_size <= 5 * GIB
    assert plan.part_size * (plan.count - 1) + plan.length(plan.count) == size
    assert 1 <= plan.length(plan.count) <= plan.part_size


def test_declared_size_is_checked_before_anything_else() -> None:
    assert declared_size(10, 10) == 10
    with pytest.raises(PayloadTooLarge) as over:
        declared_size(11, 10)
    assert over.value.detail == "at most 10 bytes"
    for wrong in (None, "10", 1.5, True, 0, -3):
        with pytest.raises(BadRequest):
            declared_size(wrong, 10)


def test_missing_parts_skip_what_s3_holds_and_stop_at_the_budget() -> None:
    plan = plan_parts(40 * MIB)  # 8 parts of 5 MiB
    assert missing_parts(plan, (), 3) == [1, 2, 3]
    assert missing_parts(plan, {1, 2, 4}, 3) == [3, 5, 6]
    assert missing_parts(plan, set(range(1, 9)), 100) == []
    assert missing_parts(plan, (), 0) == []


def test_held_parts_must_fit_the_plan_of_the_resumed_size() -> None:
    plan = plan_parts(12 * MIB)
    check_held(plan, [UploadedPart(1, 5 * MIB, '"a"'), UploadedPart(3, 2 * MIB, '"c"')])
    for wrong in (UploadedPart(1, 4 * MIB, '"a"'), UploadedPart(4, 1, '"d"')):
        with pytest.raises(BadRequest) as refused:
            check_held(plan, [wrong])
        assert refused.value.detail == "size differs from the size the upload began with"


def test_a_part_list_is_parsed_strictly() -> None:
    assert parse_parts([{"number": 1, "etag": '"a"'}, {"number": 3, "etag": "b"}]) == [
        (1, '"a"'),
        (3, "b"),
    ]
    for wrong in (
        None,
        [],
        [{"number": 0, "etag": "a"}],
        [{"number": 10_001, "etag": "a"}],
        [{"number": True, "etag": "a"}],
        [{"number": 1, "etag": ""}],
        [{"number": 1, "etag": "x" * 129}],
        [{"number": 2, "etag": "a"}, {"number": 2, "etag": "a"}],
        [{"number": 2, "etag": "a"}, {"number": 1, "etag": "a"}],
        ["1"],
    ):
        with pytest.raises(BadRequest) as refused:
            parse_parts(wrong)
        assert "ascending order" in refused.value.detail


def test_completion_names_what_s3_would_refuse() -> None:
    held = {
        1: UploadedPart(1, 5 * MIB, '"one"'),
        2: UploadedPart(2, 5 * MIB, '"two"'),
        3: UploadedPart(3, 7, '"three"'),
    }
    assert check_completion([(1, "one"), (2, '"two"'), (3, "three")], held, 20 * MIB) == (
        10 * MIB + 7
    )
    refusals = {
        "part 4 was not uploaded; resume to see which parts were": [(1, "one"), (4, "four")],
        "part 2: etag differs from the uploaded part's": [(1, "one"), (2, "one")],
    }
    for detail, parts in refusals.items():
        with pytest.raises(BadRequest) as refused:
            check_completion(parts, held, 20 * MIB)
        assert refused.value.detail == detail
    short = {**held, 2: UploadedPart(2, 5 * MIB - 1, '"two"')}
    with pytest.raises(BadRequest) as too_small:
        check_completion([(1, "one"), (2, "two"), (3, "three")], short, 20 * MIB)
    assert too_small.value.detail == "part 2 is smaller than 5 MiB and not the last part"
    with pytest.raises(PayloadTooLarge):
        check_completion([(1, "one"), (2, "two")], held, 10 * MIB - 1)
