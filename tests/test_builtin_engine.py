"""The built-in engine's per-request shortcuts (issue 26), checked without S3: each must give
exactly what the long way gives."""

from __future__ import annotations

import dataclasses

from proxy.config import S3Settings
from proxy.engines.builtin import BuiltinStorage
from proxy.presign import Credentials
from proxy.request import ObjectRef
from proxy.ssec import CustomerKey
from proxy.storage import ObjectMeta

from .conftest import Clock

CREDS = Credentials("AKIAEXAMPLE", "secret")


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


def test_a_signed_head_is_reused_only_for_its_exact_inputs_within_its_second() -> None:
    clock = Clock(1_765_000_000.2)
    engine = BuiltinStorage(S3Settings(endpoint_url="http://127.0.0.1:9000"), clock=clock)
    ref = ObjectRef("bucket", "k")
    first = engine._head(CREDS, "GET", ref, ())
    assert engine._head(CREDS, "GET", ObjectRef("bucket", "k"), ()) is first
    clock.now += 0.5  # the same second
    assert engine._head(CREDS, "GET", ref, ()) is first

    def signature(found: tuple[object, bytes]) -> bytes:
        return found[1].split(b"Signature=", 1)[1].split(b"\r\n", 1)[0]

    sealed = ObjectRef("bucket", "k", CustomerKey(b"k" * 32))
    others = [
        engine._head(Credentials(CREDS.access_key, "another-secret"), "GET", ref, ()),
        engine._head(CREDS, "HEAD", ref, ()),
        engine._head(CREDS, "GET", ObjectRef("other", "k"), ()),
        engine._head(CREDS, "GET", ObjectRef("bucket", "k2"), ()),
        engine._head(CREDS, "GET", sealed, ()),
    ]
    assert len({signature(found) for found in [first, *others]}) == 6
    ranged = engine._head(CREDS, "GET", ref, (("Range", "bytes=0-9"),))
    assert ranged[1].endswith(b"Range: bytes=0-9\r\n\r\n")
    assert signature(ranged) == signature(first)  # Range is sent unsigned
    clock.now += 1  # the next second: signed again, with a new date
    later = engine._head(CREDS, "GET", ref, ())
    assert signature(later) != signature(first)
