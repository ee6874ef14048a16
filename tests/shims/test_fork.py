"""fork (shim-contract.md 2.7): a child of an attached process gets its own slot and watcher.

The parent's allocation stays in the parent's slot, the child's lands in the child's, and each is
released with the process that made it (normal exit, SIGKILL), never the other's.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from hami_core_fw.monitor import region

pytestmark = pytest.mark.shim

MIB = 1 << 20
LIMIT = {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}


def slots(r: region.Region) -> dict[int, int]:
    """pid -> device 0 bytes of every live slot."""
    return {s.pid: s.used[0].total for s in r.live_slots()}


def consistent(r: region.Region) -> None:
    assert r.extension is not None
    assert r.extension.devices[0].reserved == r.usage(0).total


def poll(shim, want: dict[int, int], deadline_s: float = 2.0) -> region.Region:
    deadline = time.monotonic() + deadline_s
    while True:
        r = shim.region()
        if slots(r) == want or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_child_has_its_own_slot_released_with_it(shim, end):
    p = shim.start("forked", "alloc", **LIMIT)
    try:
        held = p.until("forked")
        parent, child = int(held["parent.pid"]), int(held["child.pid"])
        assert int(held["child.alloc_rc"]) == 0
        assert int(held["child.free_parent_rc"]) == 0  # the driver's answer, passed through
        r = shim.region()
        assert slots(r) == {parent: 64 * MIB, child: 32 * MIB}
        assert r.usage(0).data_size == 96 * MIB
        consistent(r)
        if end == "sigkill":
            os.kill(child, signal.SIGKILL)
            # the parent's watcher sweeps the dead child's slot (a zombie until reaped)
            r = poll(shim, {parent: 64 * MIB})
        else:
            p.resume()
            held = p.until("reaped")
            assert int(held["child_status"]) == 0
            r = shim.region()
        assert slots(r) == {parent: 64 * MIB}
        assert r.usage(0).total == 64 * MIB
        consistent(r)
    finally:
        res = p.finish()
    assert res.rc == 0, res.stderr
    if end == "sigkill":
        assert res.int("child_status") == -signal.SIGKILL
    assert res.stderr == ""
    r = shim.region()
    assert r.live_slots() == ()
    assert r.usage(0).total == 0


def test_child_that_only_launches_registers_its_own_slot(shim):
    p = shim.start("forked", "launch", **LIMIT)
    try:
        held = p.until("forked")
        parent, child = int(held["parent.pid"]), int(held["child.pid"])
        assert int(held["child.launch_rc"]) == 0
        r = shim.region()
        assert slots(r) == {parent: 64 * MIB, child: 0}
    finally:
        res = p.finish()
    assert res.rc == 0, res.stderr


def test_child_watcher_reclaims_the_killed_parent(shim):
    """Only the child's own watcher thread (restarted after fork) can sweep the parent's slot:
    nobody else is left, and the child neither registers nor allocates afterwards."""
    p = shim.start("forked", "alloc", **LIMIT)
    try:
        held = p.until("forked")
        parent, child = int(held["parent.pid"]), int(held["child.pid"])
        os.kill(parent, signal.SIGKILL)
        p.until("orphan")  # the child saw the parent's end of the pipe close
        r = poll(shim, {child: 32 * MIB})
        assert slots(r) == {child: 32 * MIB}
        assert r.usage(0).total == 32 * MIB
        consistent(r)
        p.resume()  # the child exits normally
        r = poll(shim, {})
        assert r.live_slots() == ()
        assert r.usage(0).total == 0
    finally:
        p.kill()
        res = p.finish()
    assert res.rc == -signal.SIGKILL


@pytest.mark.parametrize("what", ["attach", "ctx", "pool"])
def test_lock_held_by_another_thread_at_fork_does_not_block_the_child(shim, what):
    res = shim.run("forked", "lock", what, timeout=120, **LIMIT)
    assert res.rc == 0, (res.stdout, res.stderr)
    assert res.int("thread.rc") == 0
    assert res.int("child_status") == 0, res.stdout  # -14: the child hung (SIGALRM)
    assert res.int("child_ok") == 1
    r = shim.region()
    assert r.live_slots() == ()
    assert r.usage(0).total == r.usage(1).total == 0
