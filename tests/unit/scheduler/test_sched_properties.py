"""Properties over random sequences of placements, removals, init completions, re-registrations.

At every step: no device holds more memory, cores or slots than it has; the incremental state
equals a from-scratch rebuild; the memoised filter answers exactly as an unmemoised one on the
rebuilt state, and the first-fit filter chooses the same node and devices; re-filtering a placed pod
answers as if its reservation were gone.
"""

from __future__ import annotations

import dataclasses

from _sched_helpers import CW, KEYS, dev, gpu, make_host
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hami_core_fw import _names, models
from hami_core_fw.scheduler import core, state

QUOTA_NS = "q"
QUOTA_MEM = 12000
MEM_RESOURCE = "hami.io/fake-gpumem"

device_spec = st.tuples(
    st.integers(1, 3),  # slots
    st.sampled_from([4000, 8000]),  # MiB
    st.sampled_from([100, 100, 200]),  # devcore
    st.integers(0, 1),  # numa
)
node_spec = st.lists(device_spec, min_size=1, max_size=3)

container = st.one_of(
    st.just({"cpu": "1"}),
    st.builds(
        lambda n, mem, pct, cores: gpu(n, mem=mem, pct=pct, cores=cores),
        st.integers(1, 2),
        st.sampled_from([None, 1000, 3000, 5000]),
        st.sampled_from([None, None, 25, 50]),
        st.sampled_from([None, 0, 30, 100]),
    ),
)
pod_spec = st.fixed_dictionaries(
    {
        "app": st.lists(container, min_size=1, max_size=2),
        "init": st.lists(container, max_size=1),
        "ns": st.sampled_from(["default", QUOTA_NS]),
        "gpu_policy": st.sampled_from(
            [None, "binpack", "spread", "mutex", "binpack,numa", "topology-aware"]
        ),
        "node_policy": st.sampled_from(["binpack", "spread"]),
        "numa_bind": st.booleans(),
    }
)


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host = make_host()
        self.state = state.ClusterState(self.host)
        self.nodes: dict[str, dict[str, list[models.DeviceInfo]]] = {}
        self.placed: dict[str, models.PodView] = {}
        self.serial = 0

    # ------------------------------------------------------------------ helpers

    def rebuilt(self, *, without: str | None = None) -> state.ClusterState:
        fresh = state.ClusterState(self.host, fit_cache=False)
        for name, devices in sorted(self.nodes.items()):
            fresh.set_node(models.NodeView(name=name), devices)
        fresh.set_quota(QUOTA_NS, {f"limits.{MEM_RESOURCE}": QUOTA_MEM})
        for uid in sorted(self.placed, reverse=True):
            record = self.state.reservation(uid)
            assert record is not None
            if uid != without:
                fresh.set_pod(record.pod, record.node, record.devices)
        return fresh

    @staticmethod
    def same(a: core.FilterDecision, b: core.FilterDecision) -> None:
        assert (a.node, dict(a.devices), a.failed, a.scores, a.error) == (
            b.node,
            dict(b.devices),
            b.failed,
            b.scores,
            b.error,
        )

    # ------------------------------------------------------------------ rules

    @initialize(specs=st.lists(node_spec, min_size=1, max_size=3))
    def setup(self, specs: list[list[tuple[int, int, int, int]]]) -> None:
        for n, spec in enumerate(specs):
            name = f"n{n}"
            self.nodes[name] = {
                CW: [
                    dev(i, node=name, count=c, mem=m, cores=k, numa=numa)
                    for i, (c, m, k, numa) in enumerate(spec)
                ]
            }
            self.state.set_node(models.NodeView(name=name), self.nodes[name])
        self.state.set_quota(QUOTA_NS, {f"limits.{MEM_RESOURCE}": QUOTA_MEM})

    @rule(spec=pod_spec)
    def place(self, spec: dict[str, object]) -> None:
        self.serial += 1
        ann = {}
        if spec["gpu_policy"]:
            ann[_names.ANNOTATION_GPU_POLICY] = str(spec["gpu_policy"])
        if spec["numa_bind"]:
            ann[KEYS.numa_bind] = "true"
        app = [dict(c) for c in spec["app"]]  # type: ignore[attr-defined]
        init = [dict(c) for c in spec["init"]]  # type: ignore[attr-defined]
        p = models.PodView(
            namespace=str(spec["ns"]),
            name=f"p{self.serial}",
            uid=f"uid-{self.serial}",
            annotations=ann,
            init_containers=tuple(
                models.ContainerView(name=f"i{k}", limits=c, init=True) for k, c in enumerate(init)
            ),
            containers=tuple(
                models.ContainerView(name=f"c{k}", limits=c) for k, c in enumerate(app)
            ),
        )
        names = sorted(self.nodes)
        policy = str(spec["node_policy"])
        decision = core.filter_pod(self.state, self.host, p, names, node_policy=policy)
        self.same(
            decision, core.filter_pod(self.rebuilt(), self.host, p, names, node_policy=policy)
        )
        first = core.filter_pod(
            self.state, self.host, p, names, node_policy=policy, exhaustive=False
        )
        assert (first.node, dict(first.devices), first.error) == (
            decision.node,
            dict(decision.devices),
            decision.error,
        )
        assert first.failed.items() <= decision.failed.items()
        if decision.node is None:
            assert first.failed == decision.failed
        else:
            assert first.scores == {decision.node: decision.scores[decision.node]}
        if decision.not_ours:
            assert all(not c.limits.get("hami.io/fake-gpu") for c in p.all_containers)
            return
        assert decision.error == ""
        if decision.node is None:
            assert set(decision.failed) == set(names)
            return
        for entries in decision.devices.values():
            assert len(entries) == len(p.all_containers)
        self.state.set_pod(p, decision.node, decision.devices)
        self.placed[p.uid] = p

    @precondition(lambda self: self.placed)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.placed)))
        self.state.remove_pod(uid)
        del self.placed[uid]

    @precondition(lambda self: any(p.init_containers for p in self.placed.values()))
    @rule(data=st.data())
    def finish_init(self, data: st.DataObject) -> None:
        uid = data.draw(
            st.sampled_from(sorted(u for u, p in self.placed.items() if p.init_containers))
        )
        p = self.placed[uid]
        done = dataclasses.replace(p, init_succeeded=frozenset(c.name for c in p.init_containers))
        record = self.state.reservation(uid)
        assert record is not None
        self.state.set_pod(done, record.node, record.devices)
        self.placed[uid] = done

    @rule(data=st.data())
    def reregister(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.nodes)))
        devices = self.nodes[name][CW]
        i = data.draw(st.integers(0, len(devices) - 1))
        devices[i] = dataclasses.replace(devices[i], health=not devices[i].health)
        self.state.set_node(models.NodeView(name=name), self.nodes[name])

    @precondition(lambda self: self.placed)
    @rule(data=st.data())
    def refilter(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.placed)))
        p = self.placed[uid]
        names = sorted(self.nodes)
        before = self.state.fingerprint()
        decision = core.filter_pod(self.state, self.host, p, names)
        self.same(decision, core.filter_pod(self.rebuilt(without=uid), self.host, p, names))
        assert self.state.fingerprint() == before

    # ------------------------------------------------------------------ invariants

    @invariant()
    def never_over_capacity(self) -> None:
        for name in self.state.node_names():
            for d in self.state.usage(name):
                assert d.used <= d.count, d
                assert d.usedmem <= d.totalmem, d
                assert d.usedcores <= d.totalcore, d
        entry = self.state.quota.entry(QUOTA_NS, MEM_RESOURCE)
        assert entry is None or entry.used <= QUOTA_MEM

    @invariant()
    def equals_rebuild(self) -> None:
        if self.nodes:
            assert self.state.snapshot_equals(self.rebuilt())


ClusterMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCluster = ClusterMachine.TestCase
