"""Part plans for presigned multipart uploads: how a declared size is cut into parts, which
parts still need a URL, and whether a list of parts may be joined. No I/O.

S3's rules this keeps: an object of at most 5 TiB in at most 10,000 parts numbered from 1;
every part but the last at least 5 MiB; no part over 5 GiB. A plan is a pure function of the
size (and the route's smallest part), so `resume` recomputes the same plan from the same size
with nothing stored anywhere: each part's URL signs that part's exact length, so the parts of
one upload add up to the declared size and never past what the route allows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..config import MIB, S3_MAX_OBJECT, S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART
from ..errors import BadRequest, PayloadTooLarge
from ..storage import UploadedPart


@dataclass(frozen=True)
class PartPlan:
    """`size` bytes in `count` parts of `part_size` bytes, the last one shorter or equal."""

    size: int
    part_size: int
    count: int

    def length(self, number: int) -> int:
        """The exact length of part `number` (1..count)."""
        if not 1 <= number <= self.count:
            raise ValueError(f"part {number} is not in a plan of {self.count} parts")
        if number < self.count:
            return self.part_size
        return self.size - self.part_size * (self.count - 1)


def plan_parts(size: int, smallest: int = S3_MIN_PART) -> PartPlan:
    """The plan for a file of `size` bytes (1..5 TiB): parts of `smallest` bytes (at least
    S3's 5 MiB), or, where 10,000 of them would not hold the file, of the smallest whole
    number of MiB that does."""
    if not 1 <= size <= S3_MAX_OBJECT:
        raise ValueError(f"size {size} is outside 1..{S3_MAX_OBJECT}")
    if not S3_MIN_PART <= smallest <= S3_MAX_PART:
        raise ValueError(f"smallest part {smallest} is outside S3's {S3_MIN_PART}..{S3_MAX_PART}")
    needed = -(-size // S3_MAX_PARTS)
    part_size = max(smallest, -(-needed // MIB) * MIB)
    # 5 TiB / 10,000 rounded up to a MiB is 525 MiB: far below S3's 5 GiB part.
    return PartPlan(size, part_size, -(-size // part_size))


def declared_size(size: object, max_bytes: int) -> int:
    """The `size` of a sign API entry, checked before anything is created: a whole number of
    bytes (400), at most the route's max_bytes (413)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BadRequest(
            "multipart entry without a size",
            detail="size (the file's byte count, at least 1) required",
        )
    if size > max_bytes:
        raise PayloadTooLarge(
            f"multipart upload of {size} bytes over upload.max_bytes",
            detail=f"at most {max_bytes} bytes",
        )
    return size


def missing_parts(plan: PartPlan, held: Collection[int], budget: int) -> list[int]:
    """The first `budget` part numbers of the plan that S3 does not hold yet."""
    wanted: list[int] = []
    for number in range(1, plan.count + 1):
        if len(wanted) >= budget:
            break
        if number not in held:
            wanted.append(number)
    return wanted


def check_held(plan: PartPlan, held: Collection[UploadedPart]) -> None:
    """400 when what S3 holds cannot belong to this plan: the caller resumes with another
    size than it began with (each part's length is signed, so the same size always fits)."""
    for part in held:
        if part.number > plan.count or part.size != plan.length(part.number):
            raise BadRequest(
                f"resume with a size the uploaded part {part.number} does not fit",
                detail="size differs from the size the upload began with",
            )


def parse_parts(value: object) -> list[tuple[int, str]]:
    """A `complete` entry's `parts`: [{"number": N, "etag": "..."}...], numbers ascending
    from 1 to 10,000, as (number, ETag). 400 for anything else, before S3 is asked."""
    shape = 'parts: [{"number": 1, "etag": "..."}, ...] in ascending order'
    if not isinstance(value, list) or not 1 <= len(value) <= S3_MAX_PARTS:
        raise BadRequest("complete without a part list", detail=shape)
    parts: list[tuple[int, str]] = []
    for entry in value:
        number = entry.get("number") if isinstance(entry, dict) else None
        etag = entry.get("etag") if isinstance(entry, dict) else None
        if (
            not isinstance(number, int)
            or isinstance(number, bool)
            or not 1 <= number <= S3_MAX_PARTS
            or not isinstance(etag, str)
            or not 1 <= len(etag) <= 128
        ):
            raise BadRequest("complete with a malformed part", detail=shape)
        if parts and number <= parts[-1][0]:
            raise BadRequest("complete with parts out of order", detail=shape)
        parts.append((number, etag))
    return parts


def check_completion(
    parts: list[tuple[int, str]], held: Mapping[int, UploadedPart], max_bytes: int
) -> int:
    """The object's size if S3 can join `parts` as they stand; else the refusal S3 would
    give, said plainly (400, the upload kept), or 413 past max_bytes."""
    total = 0
    for index, (number, etag) in enumerate(parts):
        part = held.get(number)
        if part is None:
            raise BadRequest(
                f"complete names part {number}, which S3 does not hold",
                detail=f"part {number} was not uploaded; resume to see which parts were",
            )
        if _bare(part.etag) != _bare(etag):
            raise BadRequest(
                f"complete names part {number} with another ETag than S3 holds",
                detail=f"part {number}: etag differs from the uploaded part's",
            )
        if index < len(parts) - 1 and part.size < S3_MIN_PART:
            raise BadRequest(
                f"complete with part {number} under 5 MiB before the last",
                detail=f"part {number} is smaller than 5 MiB and not the last part",
            )
        total += part.size
    if total > max_bytes:
        raise PayloadTooLarge(
            f"complete of {total} bytes over upload.max_bytes",
            detail=f"at most {max_bytes} bytes",
        )
    return total


def _bare(etag: str) -> str:
    # S3 lists ETags quoted; clients often keep them as the browser showed them, or bare.
    return etag.strip().strip('"')
