"""The built-in engine's per-request shortcuts (issue 26), checked without S3: each must give
exactly what the long way gives."""

from __future__ import annotations

import dataclasses

from proxy.storage import ObjectMeta


def test_object_meta_of_is_the_dataclass_with_every_field_given() -> None:
    values = [f"value-{field.name}" for field in dataclasses.fields(ObjectMeta)]
    values[0] = 123  # content_length
    fast, slow = ObjectMeta.of(*values), ObjectMeta(*values)  # type: ignore[arg-type]
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    for field in dataclasses.fields(ObjectMeta):
        assert getattr(fast, field.name) == getattr(slow, field.name)
    try:
        fast.etag = "changed"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("ObjectMeta.of made a mutable object")
