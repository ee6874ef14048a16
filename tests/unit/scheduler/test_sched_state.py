"""ClusterState: incremental usage, init/app collapsing, node re-registration, quota, rebuilds."""

from __future__ import annotations

import pytest
from _sched_helpers import CW, cluster, dev, gpu, pod, rebuild

from hami_core_fw import models, plugins
from hami_core_fw.builtin import fake
from hami_core_fw.scheduler import core, policy, state


def cd(uuid: str, mem: int, cores: int = 0) -> models.ContainerDevice:
    return models.ContainerDevice(uuid, CW, mem, cores)


def used(s: state.ClusterState, node: str = "n1") -> list[tuple[str, int, int, int]]:
    return [(d.id, d.used, d.usedmem, d.usedcores) for d in s.usage(node)]


def test_place_and_release(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0), dev(1)]})
    p = pod(gpu(1, mem=3000, cores=30))
    s.set_pod(p, "n1", {CW: ((cd("GPU-n1-1", 3000, 30),),)})
    assert s.has_pod(p.uid)
    assert used(s) == [("GPU-n1-0", 0, 0, 0), ("GPU-n1-1", 1, 3000, 30)]
    e = s.entry("n1")
    assert e is not None
    assert e.score == pytest.approx(policy.default_node_score(s.usage("n1")))
    s.remove_pod(p.uid)
    assert not s.has_pod(p.uid)
    assert used(s) == [("GPU-n1-0", 0, 0, 0), ("GPU-n1-1", 0, 0, 0)]
    assert e.score == 0.0
    s.remove_pod("no-such-uid")  # no-op


def test_usage_returns_copies(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    copy = s.usage("n1")
    copy[0].usedmem = 999
    assert used(s) == [("GPU-n1-0", 0, 0, 0)]
    assert s.usage("nope") == []
    assert s.node("nope") is None and s.node("n1") is not None


def test_replacing_a_pod_moves_its_usage(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)], "n2": [dev(0, node="n2")]})
    p = pod(gpu(1, mem=100))
    s.set_pod(p, "n1", {CW: ((cd("GPU-n1-0", 100),),)})
    s.set_pod(p, "n2", {CW: ((cd("GPU-n2-0", 200),),)})
    assert used(s, "n1") == [("GPU-n1-0", 0, 0, 0)]
    assert used(s, "n2") == [("GPU-n2-0", 1, 200, 0)]
    assert s.pods_on("n1") == [] and s.pods_on("n2") == [p.uid]


@pytest.mark.parametrize(
    ("init", "app", "expected"),
    [
        # init peak 12000 vs app 8000 on the same card: 12000, one slot
        ([[cd("GPU-n1-0", 12000, 10)]], [[cd("GPU-n1-0", 8000, 20)]], (1, 12000, 20)),
        # two init containers: the peak, not the sum
        ([[cd("GPU-n1-0", 5000)], [cd("GPU-n1-0", 7000)]], [[cd("GPU-n1-0", 1000)]], (1, 7000, 0)),
        # two app containers: the sum, one slot each
        ([], [[cd("GPU-n1-0", 5000, 10)], [cd("GPU-n1-0", 7000, 10)]], (2, 12000, 20)),
        # init containers without the card: app only
        ([[]], [[cd("GPU-n1-0", 3000)]], (1, 3000, 0)),
    ],
)
def test_collapse_init_peak_versus_app_sum(
    host: plugins.PluginHost,
    init: list[list[models.ContainerDevice]],
    app: list[list[models.ContainerDevice]],
    expected: tuple[int, int, int],
) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    p = pod(*[gpu(1)] * len(app), init=[gpu(1)] * len(init))
    s.set_pod(p, "n1", {CW: tuple(tuple(c) for c in init + app)})
    assert used(s)[0][1:] == expected


def test_init_release_after_init_finished(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0), dev(1)]})
    s.set_quota("default", {"limits.hami.io/fake-gpumem": 100000})
    running = pod(gpu(1, mem=2000), init=[gpu(1, mem=9000)])
    devices = {CW: ((cd("GPU-n1-1", 9000),), (cd("GPU-n1-0", 2000),))}
    s.set_pod(running, "n1", devices)
    assert used(s) == [("GPU-n1-0", 1, 2000, 0), ("GPU-n1-1", 1, 9000, 0)]
    assert s.quota.entry("default", "hami.io/fake-gpumem").used == 11000  # type: ignore[union-attr]
    done = pod(gpu(1, mem=2000), init=[gpu(1, mem=9000)], init_done=True)
    s.set_pod(done, "n1", devices)
    assert used(s) == [("GPU-n1-0", 1, 2000, 0), ("GPU-n1-1", 0, 0, 0)]
    assert s.quota.entry("default", "hami.io/fake-gpumem").used == 2000  # type: ignore[union-attr]
    assert s.snapshot_equals(rebuild(s))


def test_q1_non_gpu_init_and_sidecar_before_the_gpu_container(host: plugins.PluginHost) -> None:
    """Q1: one entry per container under the vendor key, so positions stay container positions.

    HAMi v2.10 pads under the model string (``NVIDIA A100-SXM4-80GB``) instead of the vendor key,
    so its list holds only the GPU container's entry, at position 0: the device plugin serves the
    wrong container and, once the init container finished, the app-only shrink drops the GPU.
    """
    model = "NVIDIA A100-SXM4-80GB"  # the NVML name, as DeviceUsage.Type carries it
    s = cluster(host, {"n1": [dev(0, type=model, mem=81920), dev(1, type="NVIDIA H100 80GB HBM3")]})
    p = pod(
        {"cpu": "1"},  # sidecar without a GPU, before the GPU container
        gpu(1, mem=1000, cores=0),
        init=[{"cpu": "1"}],  # init container without a GPU
        ann={fake.KEYS.use_type: "A100"},
    )
    decision = core.filter_pod(s, host, p, ["n1"])
    assert decision.node == "n1"
    assert set(decision.devices) == {CW}
    assert decision.devices[CW] == ((), (), (cd("GPU-n1-0", 1000),))
    v = host.vendors["fake"]
    encoded = v.encode_allocation(decision.devices[CW])
    assert encoded[fake.KEYS.allocated] == ";;GPU-n1-0,FAKE,1000,0:;"
    s.set_pod(p, "n1", decision.devices)
    assert used(s)[0] == ("GPU-n1-0", 1, 1000, 0)
    # the init container finished: the GPU container's reservation must stay
    finished = pod(
        {"cpu": "1"}, gpu(1, mem=1000, cores=0), init=[{"cpu": "1"}], init_done=True,
        ann={fake.KEYS.use_type: "A100"},
    )  # fmt: skip
    assert finished.init_finished
    s.set_pod(finished, "n1", decision.devices)
    assert used(s)[0] == ("GPU-n1-0", 1, 1000, 0)


def test_reregistering_a_node_keeps_usage_by_uuid(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0), dev(1)]})
    a, b = pod(gpu(1), name="a"), pod(gpu(1), name="b")
    s.set_pod(a, "n1", {CW: ((cd("GPU-n1-0", 100),),)})
    s.set_pod(b, "n1", {CW: ((cd("GPU-n1-1", 200),),)})
    # device 1 disappears, device 2 appears, device 0 turns unhealthy
    view = models.NodeView(name="n1")
    s.set_node(view, {CW: [dev(0, health=False), dev(2)]})
    assert used(s) == [("GPU-n1-0", 1, 100, 0), ("GPU-n1-2", 0, 0, 0)]
    assert [d.health for d in s.usage("n1")] == [False, True]
    # device 1 comes back: pod b's usage is there again
    s.set_node(view, {CW: [dev(0), dev(1), dev(2)]})
    assert used(s)[1] == ("GPU-n1-1", 1, 200, 0)
    assert s.snapshot_equals(rebuild(s))


def test_pods_wait_for_their_node(host: plugins.PluginHost) -> None:
    s = state.ClusterState(host)
    p = pod(gpu(1))
    s.set_pod(p, "later", {CW: ((cd("GPU-later-0", 500),),)})
    assert s.usage("later") == []
    s.set_node(models.NodeView(name="later"), {CW: [dev(0, node="later")]})
    assert used(s, "later") == [("GPU-later-0", 1, 500, 0)]
    s.remove_node("later")
    assert s.node_names() == [] and s.has_pod(p.uid)
    s.set_node(models.NodeView(name="later"), {CW: [dev(0, node="later")]})
    assert used(s, "later") == [("GPU-later-0", 1, 500, 0)]


def test_foreign_uuid_is_skipped(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    p = pod(gpu(2))
    s.set_pod(p, "n1", {CW: ((cd("GPU-elsewhere", 700), cd("GPU-n1-0", 300)),)})
    assert used(s) == [("GPU-n1-0", 1, 300, 0)]
    s.remove_pod(p.uid)
    assert used(s) == [("GPU-n1-0", 0, 0, 0)]


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminated_pods_hold_nothing(host: plugins.PluginHost, phase: str) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    p = pod(gpu(1))
    s.set_pod(p, "n1", {CW: ((cd("GPU-n1-0", 500),),)})
    s.set_pod(pod(gpu(1), phase=phase), "n1", {CW: ((cd("GPU-n1-0", 500),),)})
    assert not s.has_pod(p.uid)
    assert used(s) == [("GPU-n1-0", 0, 0, 0)]


def test_quota_tracks_only_memory_and_core_resources(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    s.set_quota(
        "team",
        {
            "limits.hami.io/fake-gpumem": 5000,
            "limits.hami.io/fake-gpucores": 50,
            "limits.hami.io/fake-gpu": 2,
            "requests.hami.io/fake-gpumem": 1,
            "limits.cpu": 4,
        },
    )
    assert sorted(s.quota.entries["team"]) == ["hami.io/fake-gpucores", "hami.io/fake-gpumem"]
    p = pod(gpu(1), ns="team")
    s.set_pod(p, "n1", {CW: ((cd("GPU-n1-0", 3000, 20),),)})
    mem = s.quota.entry("team", "hami.io/fake-gpumem")
    cores = s.quota.entry("team", "hami.io/fake-gpucores")
    assert mem is not None and cores is not None
    assert (mem.used, mem.limit, cores.used, cores.limit) == (3000, 5000, 20, 50)
    s.remove_pod(p.uid)
    assert (mem.used, cores.used) == (0, 0)
    s.set_quota("team", {})
    assert not mem.limit_set and not cores.limit_set


def test_fingerprint_detects_a_difference(host: plugins.PluginHost) -> None:
    a = cluster(host, {"n1": [dev(0)]})
    b = cluster(host, {"n1": [dev(0)]})
    assert a.snapshot_equals(b)
    a.set_pod(pod(gpu(1)), "n1", {CW: ((cd("GPU-n1-0", 1),),)})
    assert not a.snapshot_equals(b)
    assert a.snapshot_equals(rebuild(a))
