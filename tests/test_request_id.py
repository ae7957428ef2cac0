"""Request ids: random, unique, and never shared by a forked worker with its parent."""

from __future__ import annotations

import os
import re

from proxy.request import new_request_id


def test_ids_are_16_hex_digits_and_do_not_repeat() -> None:
    ids = [new_request_id() for _ in range(5000)]  # several 512-id blocks
    assert all(re.fullmatch(r"[0-9a-f]{16}", found) for found in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_its_own_ids_not_its_parents_next_ones() -> None:
    """Ids come from a block of os.urandom read ahead; a worker forked with part of that
    block left must not hand out the same ids as its parent."""
    new_request_id()  # the parent holds a block with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running pytest's teardown
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != new_request_id()


def test_an_object_ref_is_equal_and_hashed_by_bucket_key_and_customer_key() -> None:
    from dataclasses import replace

    from proxy.request import ObjectRef
    from proxy.ssec import CustomerKey

    one, other = CustomerKey(b"k" * 32), CustomerKey(b"o" * 32)
    refs = [
        ObjectRef("bucket", "key"),
        ObjectRef("bucket", "key", one),
        ObjectRef("bucket", "key", other),
        ObjectRef("bucket", "other"),
        ObjectRef("other", "key"),
    ]
    assert len(set(refs)) == len(refs)  # each field tells two objects apart
    again = ObjectRef("bucket", "key", CustomerKey(b"k" * 32))
    assert again == refs[1] and hash(again) == hash(refs[1]) and {refs[1]: 1}[again] == 1
    moved = replace(refs[0], key="other")  # the remembered hash follows the fields
    assert moved == refs[3] and hash(moved) == hash(refs[3])


def test_object_of_hands_out_one_ref_per_object_and_keeps_routes_apart() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from proxy.ssec import CustomerKey
    from proxy.surfaces.access import object_of

    def route(bucket: str, sse: CustomerKey | None) -> Any:
        return cast(Any, SimpleNamespace(settings=SimpleNamespace(bucket=bucket), sse=sse))

    plain, keyed = route("bucket", None), route("bucket", CustomerKey(b"k" * 32))
    assert object_of(plain, "a.jpg") is object_of(plain, "a.jpg")
    assert object_of(keyed, "a.jpg") != object_of(plain, "a.jpg")  # another customer key
    assert object_of(keyed, "a.jpg").sse == CustomerKey(b"k" * 32)
    assert object_of(route("other", None), "a.jpg").bucket == "other"
