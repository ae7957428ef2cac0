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
