"""filter_pod: pods that are not ours, errors, hooks, vendor bonuses, topology, re-filtering."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from _sched_helpers import CW, KEYS, chosen_ids, cluster, dev, gpu, hold, make_host, pod

import hami_core_fw
from hami_core_fw import _names, codec, config, models, plugins, vendor
from hami_core_fw.builtin import fake
from hami_core_fw.scheduler import core, state


def test_pod_without_device_requests_is_not_ours(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    decision = core.filter_pod(s, host, pod({"cpu": "1"}, init=[{"memory": "1Gi"}]), ["n1", "x"])
    assert decision.not_ours
    assert decision.node is None and decision.failed == {} and decision.error == ""


def test_pod_requests_init_first_with_empty_entries(host: plugins.PluginHost) -> None:
    p = pod({"cpu": "1"}, gpu(2, mem=100, cores=5), init=[gpu(1, pct=50)])
    reqs = core.pod_requests(host, p)
    assert reqs == [
        {CW: models.DeviceRequest(CW, 1, 0, 50, 0)},
        {},
        {CW: models.DeviceRequest(CW, 2, 100, None, 5)},
    ]


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [(gpu(1, cores=150), "above 100"), ({**gpu(1), "hami.io/fake-gpumem": "1Gi"}, "1Gi")],
)
def test_invalid_request_is_an_error(
    host: plugins.PluginHost, limits: dict[str, str], fragment: str
) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    decision = core.filter_pod(s, host, pod(limits), ["n1"])
    assert decision.node is None and not decision.not_ours
    assert fragment in decision.error
    with pytest.raises(hami_core_fw.errors.InvalidRequest):
        core.pod_requests(host, pod(limits))


def test_unknown_candidates_are_unregistered(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    decision = core.filter_pod(s, host, pod(gpu(1, mem=1)), ["ghost", "n1"])
    assert decision.node == "n1"
    assert decision.failed == {"ghost": core.NODE_UNREGISTERED}


def test_reason_strings_per_node_and_summary(host: plugins.PluginHost) -> None:
    s = cluster(
        host,
        {
            "a": [
                dev(i, node="a", type=fake.COMMON_WORD if i else "NVIDIA-H100") for i in range(4)
            ],
            "b": [dev(0, node="b")],
            "c": [dev(0, node="c", health=False), dev(1, node="c")],
        },
    )
    hold(s, "c", "GPU-c-1", mem=16000)
    p = pod(gpu(1, mem=1000), ann={KEYS.use_type: "H100"})
    decision = core.filter_pod(s, host, p, ["a", "b", "c"])
    assert decision.node == "a"
    assert decision.failed == {
        "b": "1/1 CardTypeMismatch",
        "c": "1/2 CardNotHealth, 1/2 CardTypeMismatch",
    }
    big = core.filter_pod(s, host, pod(gpu(2, mem=1000), ann={KEYS.use_type: "H100"}), ["a", "b"])
    assert big.failed == {
        "a": "1/4 AllocatedCardsInsufficientRequest, 3/4 CardTypeMismatch",
        "b": "NodeInsufficientDevice",
    }
    assert core.summarize_failures({**big.failed, "x": core.NODE_UNREGISTERED}) == {
        "AllocatedCardsInsufficientRequest": ["a"],
        "CardTypeMismatch": ["a"],
        "NodeInsufficientDevice": ["b"],
        "node unregistered": ["x"],
    }


# ----------------------------------------------------------------------------------------------
# hooks and vendor bonuses
# ----------------------------------------------------------------------------------------------


class Veto:
    @hami_core_fw.hookimpl
    def hami_node_filter(self, pod: models.PodView, node: models.NodeView) -> str | None:
        return "node is draining" if node.labels.get("drain") else None


class Boost:
    @hami_core_fw.hookimpl
    def hami_node_score(
        self, pod: models.PodView, node: models.NodeView, score: float
    ) -> float | None:
        return 100.0 if node.name == "idle" else None


def test_node_filter_and_score_hooks() -> None:
    h = make_host(("veto", Veto()), ("boost", Boost()))
    s = state.ClusterState(h)
    s.set_node(models.NodeView(name="busy"), {CW: [dev(0, node="busy")]})
    s.set_node(models.NodeView(name="idle"), {CW: [dev(0, node="idle")]})
    s.set_node(models.NodeView(name="gone", labels={"drain": "1"}), {CW: [dev(0, node="gone")]})
    hold(s, "busy", "GPU-busy-0", mem=8000)
    decision = core.filter_pod(s, h, pod(gpu(1, mem=10)), ["busy", "idle", "gone"])
    assert decision.failed == {"gone": "node is draining"}
    assert decision.scores["idle"] == 100.0
    assert decision.node == "idle"  # binpack would take "busy" without the boost


def _bonus_config() -> config.FakeConfig:
    return config.FakeConfig(
        resource_count_name="bonus.example/gpu",
        resource_memory_name="bonus.example/gpumem",
        resource_memory_percentage_name="bonus.example/gpumem-percentage",
        resource_core_name="bonus.example/gpucores",
    )


class BonusVendor(fake.FakeVendor):
    """A second vendor whose score_node favours node n2."""

    neutral = False

    def __init__(self) -> None:
        super().__init__(_bonus_config())
        self.vendor_id = "bonus"
        self.common_word = "BONUS"
        self.calls: list[tuple[str, int, int, str]] = []

    def score_node(
        self,
        node: models.NodeView,
        chosen: models.PodSingleDevices,
        before: Sequence[models.DeviceUsage],
        policy: str,
    ) -> float:
        self.calls.append((node.name, len(chosen), len(before), policy))
        return 10.0 if node.name == "n2" else 0.0


class BonusPlugin:
    def __init__(self, v: BonusVendor) -> None:
        self.v = v

    @hami_core_fw.hookimpl
    def hami_register_vendors(
        self, register: vendor.RegisterVendor, config: config.DeviceConfig
    ) -> None:
        register(self.v)


def bonus_cluster(
    v: BonusVendor,
) -> tuple[plugins.PluginHost, state.ClusterState]:
    h = make_host(("bonus", BonusPlugin(v)))
    s = state.ClusterState(h)
    for n in ("n1", "n2"):
        bonus = [
            models.DeviceInfo(
                id=f"B-{n}", count=4, devmem=8000, devcore=100, type="X", vendor="BONUS"
            )
        ]
        s.set_node(models.NodeView(name=n), {CW: [dev(0, node=n)], "BONUS": bonus})
    hold(s, "n1", "GPU-n1-0", mem=4000)
    return h, s


def test_vendor_score_node_bonus_and_multi_vendor_entries() -> None:
    v = BonusVendor()
    h, s = bonus_cluster(v)
    p = pod(gpu(1, mem=10), {"bonus.example/gpu": "1", "bonus.example/gpumem": "100"})
    decision = core.filter_pod(s, h, p, ["n1", "n2"])
    e1, e2 = s.entry("n1"), s.entry("n2")
    assert e1 is not None and e2 is not None
    assert decision.scores == {"n1": e1.score, "n2": e2.score + 10.0}
    assert e1.score > e2.score  # binpack alone would take n1
    assert decision.node == "n2"
    assert decision.devices == {
        CW: ((models.ContainerDevice("GPU-n2-0", CW, 10, 0),), ()),
        "BONUS": ((), (models.ContainerDevice("B-n2", "BONUS", 100, 0),)),
    }
    # called once per vendor the pod uses, with every device of the node before the pod
    assert sorted(v.calls) == [("n1", 2, 2, "binpack"), ("n2", 2, 2, "binpack")]


@pytest.mark.parametrize(("node_policy", "score"), [("binpack", 100000.0), ("spread", -100000.0)])
def test_policy_neutral_vendor_bonus(node_policy: str, score: float) -> None:
    v = BonusVendor()
    v.policy_neutral = True  # type: ignore[attr-defined]
    h, s = bonus_cluster(v)
    p = pod({"bonus.example/gpu": "1", "bonus.example/gpumem": "100"})
    decision = core.filter_pod(s, h, p, ["n1", "n2"], node_policy=node_policy)
    e2 = s.entry("n2")
    assert e2 is not None
    assert decision.scores["n2"] == e2.score + score
    assert decision.node == "n2"  # preferred under either policy


# ----------------------------------------------------------------------------------------------
# topology-aware
# ----------------------------------------------------------------------------------------------


def _linked(node: str = "n1") -> list[models.DeviceInfo]:
    pairs = {(0, 1): 10, (2, 3): 50}

    def links(i: int) -> dict[str, int]:
        out = {}
        for j in range(4):
            if j != i:
                out[f"GPU-{node}-{j}"] = pairs.get((min(i, j), max(i, j)), 1)
        return out

    return [dev(i, node=node, links=links(i)) for i in range(4)]


@pytest.mark.parametrize(("nums", "expected"), [(2, ["GPU-n1-3", "GPU-n1-2"]), (1, ["GPU-n1-1"])])
def test_topology_aware(host: plugins.PluginHost, nums: int, expected: list[str]) -> None:
    s = cluster(host, {"n1": _linked()})
    p = pod(gpu(nums, mem=100), ann={_names.ANNOTATION_GPU_POLICY: "topology-aware"})
    assert chosen_ids(core.filter_pod(s, host, p, ["n1"])) == [expected]


# ----------------------------------------------------------------------------------------------
# a pod that already holds a reservation
# ----------------------------------------------------------------------------------------------


def test_refilter_ignores_the_pods_own_reservation(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)], "n2": [dev(0, node="n2")]})
    s.set_quota("default", {"limits.hami.io/fake-gpumem": 16384})
    p = pod(gpu(1, mem=16384))
    first = core.filter_pod(s, host, p, ["n1", "n2"])
    assert first.node == "n1"
    s.set_pod(p, "n1", first.devices)
    before = s.fingerprint()
    again = core.filter_pod(s, host, p, ["n1", "n2"])
    assert again.node == "n1" and again.devices == first.devices
    assert again.scores == first.scores
    assert s.fingerprint() == before
    # another pod of the same shape does not fit anywhere: the quota is used up
    other = core.filter_pod(s, host, pod(gpu(1, mem=16384), name="q"), ["n1", "n2"])
    assert other.failed == {
        "n1": "1/1 ResourceQuotaNotFit",
        "n2": "1/1 ResourceQuotaNotFit",
    }


def test_memo_is_invalidated_by_placements(host: plugins.PluginHost) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    p1, p2 = pod(gpu(1, mem=10000), name="a"), pod(gpu(1, mem=10000), name="b")
    d1 = core.filter_pod(s, host, p1, ["n1"])
    assert d1.node == "n1"
    assert core.filter_pod(s, host, p2, ["n1"]).node == "n1"  # memo hit, same answer
    s.set_pod(p1, "n1", d1.devices)
    assert core.filter_pod(s, host, p2, ["n1"]).failed == {"n1": "1/1 CardInsufficientMemory"}
    s.remove_pod(p1.uid)
    assert core.filter_pod(s, host, p2, ["n1"]).node == "n1"


def test_memo_distinguishes_uuid_lists_per_node(host: plugins.PluginHost) -> None:
    s = cluster(host, {n: [dev(0, node=n), dev(1, node=n)] for n in ("n1", "n2")})
    for target in ("GPU-n1-0", "GPU-n2-1", "GPU-n1-1", "GPU-n2-0"):
        decision = core.filter_pod(
            s, host, pod(gpu(1, mem=1), ann={KEYS.use_uuid: target}), ["n1", "n2"]
        )
        assert chosen_ids(decision) == [[target]]
        other = "n2" if target.startswith("GPU-n1") else "n1"
        assert decision.failed == {other: "2/2 CardUuidMismatch"}
    deny = core.filter_pod(s, host, pod(gpu(1, mem=1), ann={KEYS.nouse_uuid: "GPU-n1-1"}), ["n1"])
    assert chosen_ids(deny) == [["GPU-n1-0"]]


def test_weights_codec_error_names_the_annotation() -> None:
    with pytest.raises(hami_core_fw.errors.CodecError):
        codec.decode_scoring_weights(_names.ANNOTATION_SCORING_WEIGHTS, "slot=1")


def test_q3_candidates_are_the_vendors_own_devices() -> None:
    """Q3: HAMi takes every device whose type contains the request type; we take the vendor's.

    The node has only BONUS devices whose model string contains ``FAKE``: a FAKE request must not
    land on them.
    """
    v = BonusVendor()
    h = make_host(("bonus", BonusPlugin(v)))
    s = state.ClusterState(h)
    impostor = models.DeviceInfo(
        id="B-0", count=4, devmem=8000, devcore=100, type="FAKE-lookalike", vendor="BONUS"
    )
    s.set_node(models.NodeView(name="n1"), {"BONUS": [impostor]})
    decision = core.filter_pod(s, h, pod(gpu(1, mem=10)), ["n1"])
    assert decision.failed == {"n1": "NodeInsufficientDevice"}
    ok = core.filter_pod(s, h, pod({"bonus.example/gpu": "1", "bonus.example/gpumem": "1"}), ["n1"])
    assert ok.node == "n1"


def test_q22_vendors_of_one_container_in_sorted_order() -> None:
    """Q22: vendors of one container are fitted in CommonWord order: the first failure is stable."""
    v = BonusVendor()
    h, s = bonus_cluster(v)
    order: list[str] = []
    for vend in h.vendors.values():
        original = vend.fit

        def spy(devices, request, ctx, _orig=original, _cw=vend.common_word):  # type: ignore[no-untyped-def]
            order.append(_cw)
            return _orig(devices, request, ctx)

        vend.fit = spy  # type: ignore[method-assign]
    both = {**gpu(1, mem=99999), "bonus.example/gpu": "1", "bonus.example/gpumem": "99999"}
    decision = core.filter_pod(s, h, pod(both), ["n1"])
    assert order == ["BONUS"]  # BONUS < FAKE; it fails first, so FAKE is not tried
    assert decision.failed == {"n1": "1/1 CardInsufficientMemory"}
    order.clear()
    fits = {**gpu(1, mem=10), "bonus.example/gpu": "1", "bonus.example/gpumem": "10"}
    assert core.filter_pod(s, h, pod(fits), ["n1"]).node == "n1"
    assert order == ["BONUS", "FAKE"]


def test_first_fit_stops_early_and_falls_back_with_score_hooks(host: plugins.PluginHost) -> None:
    s = cluster(host, {n: [dev(0, node=n)] for n in ("a", "b", "c")})
    hold(s, "b", "GPU-b-0", mem=16000)  # b is the busiest but too full for the pod
    hold(s, "c", "GPU-c-0", mem=100)
    p = pod(gpu(1, mem=1000))
    full = core.filter_pod(s, host, p, ["a", "b", "c", "ghost"])
    first = core.filter_pod(s, host, p, ["a", "b", "c", "ghost"], exhaustive=False)
    assert full.node == first.node == "c"
    assert full.failed == {"b": "1/1 CardInsufficientMemory", "ghost": core.NODE_UNREGISTERED}
    assert first.failed == full.failed  # b was tried before c; a never was
    assert first.scores == {"c": full.scores["c"]} and set(full.scores) == {"a", "c"}
    spread = core.filter_pod(s, host, p, ["a", "b", "c"], node_policy="spread", exhaustive=False)
    assert spread.node == "a" and spread.failed == {}
    # a score plugin can reorder nodes: every node is fitted then
    h = make_host(("boost", Boost()))
    s2 = cluster(h, {n: [dev(0, node=n)] for n in ("idle", "busy")})
    hold(s2, "busy", "GPU-busy-0", mem=100)
    boosted = core.filter_pod(s2, h, p, ["idle", "busy"], exhaustive=False)
    assert boosted.node == "idle" and set(boosted.scores) == {"idle", "busy"}
