"""The priority feedback loop (hami-compat.md 10.3) as a table, and its writes into real files."""

from __future__ import annotations

import pytest
from monitor_regions import v0, v1, write_container

from hami_core_fw.monitor import feedback, region, scan

A, B = "GPU-aaaa", "GPU-bbbb"


def c(key, priority, recent, uuids=(A,), switch=1):
    return feedback.ContainerState(key, priority, recent, switch, tuple(uuids))


def d(recent, switch):
    return feedback.Decision(recent, switch)


CASES = [
    # (id, containers, expected key -> (recent_kernel, utilization_switch))
    ("lone-active", [c("x", 1, 2)], {"x": d(1, 0)}),
    ("idle", [c("x", 1, 0)], {"x": d(0, 0)}),
    ("ages-out", [c("x", 1, 1)], {"x": d(0, 0)}),
    ("same-priority-same-gpu", [c("x", 1, 2), c("y", 1, 2)], {"x": d(1, 1), "y": d(1, 1)}),
    ("same-priority-other-gpu", [c("x", 1, 2), c("y", 1, 2, (B,))], {"x": d(1, 0), "y": d(1, 0)}),
    # y's heartbeat ages to 0 in this pass: it no longer counts, x runs unthrottled
    ("other-ages-out", [c("x", 1, 2), c("y", 1, 1)], {"x": d(1, 0), "y": d(0, 0)}),
    ("outranked-blocks", [c("hi", 0, 2), c("lo", 1, 2)], {"hi": d(1, 0), "lo": d(-1, 1)}),
    ("outranked-idle-blocks", [c("hi", 0, 2), c("lo", 1, 0)], {"hi": d(1, 0), "lo": d(-1, 1)}),
    ("high-on-other-gpu", [c("hi", 0, 2), c("lo", 1, 2, (B,))], {"hi": d(1, 0), "lo": d(1, 0)}),
    ("still-blocked", [c("hi", 0, 2), c("lo", 1, -1)], {"hi": d(1, 0), "lo": d(-1, 1)}),
    ("unblocked", [c("hi", 0, 1), c("lo", 1, -1)], {"hi": d(0, 0), "lo": d(0, 0)}),
    # the lower-priority one being active never affects the higher
    ("low-active-only", [c("hi", 0, 0), c("lo", 1, 2)], {"hi": d(0, 0), "lo": d(1, 0)}),
    # every device counts: hi is active on B, the second GPU of lo
    ("multi-gpu", [c("hi", 0, 2, (B,)), c("lo", 1, 2, (A, B))], {"hi": d(1, 0), "lo": d(-1, 1)}),
    # priorities are not limited to 0 and 1
    ("priority-3-vs-5", [c("p3", 3, 2), c("p5", 5, 2)], {"p3": d(1, 0), "p5": d(-1, 1)}),
    ("no-devices", [c("x", 1, 2, ())], {"x": d(1, 0)}),
    ("empty", [], {}),
]


@pytest.mark.parametrize(
    ("containers", "expected"), [x[1:] for x in CASES], ids=[x[0] for x in CASES]
)
def test_plan(containers, expected):
    assert feedback.plan(containers) == expected


def test_plan_converges_to_unblock_when_the_high_priority_container_stops():
    states = [c("hi", 0, 2), c("lo", 1, 2)]
    passes = []
    for _ in range(3):  # hi launches nothing more: 2 -> 1 -> 0
        out = feedback.plan(states)
        passes.append((out["hi"], out["lo"]))
        states = [
            c(s.key, s.priority, out[s.key].recent_kernel, switch=out[s.key].utilization_switch)
            for s in states
        ]
    assert passes == [(d(1, 0), d(-1, 1)), (d(0, 0), d(0, 0)), (d(0, 0), d(0, 0))]


class FakeIO:
    def __init__(self, switch, recent):
        self.fields = {2_008_900: switch, 2_008_904: recent}
        self.writes = []

    def read_i32(self, offset):
        return self.fields[offset]

    def write_i32(self, offset, value):
        self.writes.append((offset, value))
        self.fields[offset] = value


@pytest.mark.parametrize(
    ("observed", "now", "decision", "written", "after"),
    [
        # unchanged values are not rewritten
        ((1, 0), (0, 0), d(0, 0), [], (0, 0)),
        # plain decrement and switch-off
        ((2, 1), (1, 2), d(1, 0), ["utilization_switch", "recent_kernel"], (0, 1)),
        # the shim launched since the read: its heartbeat wins over the decrement
        ((1, 0), (0, 2), d(0, 0), [], (0, 2)),
        # ... but never over a block
        ((1, 0), (1, 2), d(-1, 1), ["recent_kernel"], (1, -1)),
        # unblock
        ((-1, 1), (1, -1), d(0, 0), ["utilization_switch", "recent_kernel"], (0, 0)),
    ],
    ids=["unchanged", "decrement", "heartbeat-wins", "block-wins", "unblock"],
)
def test_apply_writes_only_what_changed(observed, now, decision, written, after):
    recent_seen, switch_seen = observed
    io = FakeIO(switch=now[0], recent=now[1])
    state = c("x", 1, recent_seen, switch=switch_seen)
    assert feedback.apply(io, "v1", state, decision) == written
    assert (io.fields[2_008_900], io.fields[2_008_904]) == after


@pytest.mark.parametrize("layout", ["v1", "v0"])
def test_apply_into_a_mapped_file_is_read_back_by_the_reader(tmp_path, layout):
    data = v1(uuids=[A], recent_kernel=2, switch=1) if layout == "v1" else v0(uuids=[A])
    path = write_container(tmp_path, "uid", "main", data)
    mapped = scan.MappedRegion(path)
    r = mapped.read()
    assert r.layout == layout
    state = feedback.state_of("uid_main", r)
    assert state == feedback.ContainerState("uid_main", 1, 2, 1, (A,))
    written = feedback.apply(mapped, r.layout, state, d(-1, 0))
    assert written == ["utilization_switch", "recent_kernel"]
    mapped.close()
    again = region.read_file(path)
    assert (again.recent_kernel, again.utilization_switch, again.priority) == (-1, 0, 1)
    # nothing else moved: the rest of the file is byte-identical
    before, after = bytes(data), path.read_bytes()
    off = feedback.UTILIZATION_SWITCH_OFFSET[layout]
    assert before[:off] == after[:off] and before[off + 8 :] == after[off + 8 :]
