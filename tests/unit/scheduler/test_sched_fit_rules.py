"""Every fit rule and reason code, through ``filter_pod`` on one node (hami-compat.md 4.6, 4.7)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import pytest
from _sched_helpers import (
    A100,
    CW,
    H100,
    KEYS,
    chosen_ids,
    cluster,
    dev,
    gpu,
    hold,
    pod,
)

from hami_core_fw import _names, codec, models, plugins
from hami_core_fw.scheduler import core

NUMA_BIND = {KEYS.numa_bind: "true"}


class Case(NamedTuple):
    devices: Sequence[models.DeviceInfo]
    pod: models.PodView
    # "uuid": (mem, cores) already reserved by other pods
    holds: Mapping[str, tuple[int, int]] = {}
    node_ann: Mapping[str, str] = {}
    # expected: devices per container (ids) or the failure string
    ok: list[list[str]] | None = None
    fail: str | None = None


def g(node_dev: int) -> str:
    return f"GPU-n1-{node_dev}"


FULL = (16384, 0)

CASES: dict[str, Case] = {
    # --- slots -------------------------------------------------------------------------------
    "slots exhausted": Case(
        [dev(0, count=1)], pod(gpu(1, mem=1000)), {g(0): (1000, 0)},
        fail="1/1 CardTimeSlicingExhausted",
    ),
    "last slot free": Case(
        [dev(0, count=2)], pod(gpu(1, mem=1000)), {g(0): (1000, 0)}, ok=[[g(0)]]
    ),
    # --- memory ------------------------------------------------------------------------------
    "memory MiB short": Case(
        [dev(0)], pod(gpu(1, mem=8000)), {g(0): (8385, 0)}, fail="1/1 CardInsufficientMemory"
    ),
    "memory MiB exactly enough": Case(
        [dev(0)], pod(gpu(1, mem=8000)), {g(0): (8384, 0)}, ok=[[g(0)]]
    ),
    "memory percentage short": Case(
        [dev(0)], pod(gpu(1, pct=50)), {g(0): (8193, 0)}, fail="1/1 CardInsufficientMemory"
    ),
    "memory percentage fits": Case([dev(0)], pod(gpu(1, pct=50)), {g(0): (8192, 0)}, ok=[[g(0)]]),
    "no memory given means the whole card": Case(
        [dev(0)], pod(gpu(1, cores=0)), {g(0): (1, 0)}, fail="1/1 CardInsufficientMemory"
    ),
    # --- cores -------------------------------------------------------------------------------
    "cores short": Case(
        [dev(0)], pod(gpu(1, mem=100, cores=30)), {g(0): (100, 80)},
        fail="1/1 CardInsufficientCore",
    ),
    "cores exactly enough": Case(
        [dev(0)], pod(gpu(1, mem=100, cores=30)), {g(0): (100, 70)}, ok=[[g(0)]]
    ),
    "exclusive 100 on a shared card": Case(
        [dev(0)], pod(gpu(1, mem=100, cores=100)), {g(0): (100, 0)},
        fail="1/1 ExclusiveDeviceAllocateConflict",
    ),
    "exclusive 100 on an idle card": Case([dev(0)], pod(gpu(1, mem=100, cores=100)), ok=[[g(0)]]),
    "exclusive rule off when devcore is scaled": Case(
        [dev(0, cores=200)], pod(gpu(1, mem=100, cores=100)), {g(0): (100, 0)}, ok=[[g(0)]]
    ),
    "zero cores on a core-exhausted card": Case(
        [dev(0)], pod(gpu(1, mem=100, cores=0)), {g(0): (100, 100)},
        fail="1/1 CardComputeUnitsExhausted",
    ),
    # --- health, cordon, type, uuid ------------------------------------------------------------
    "unhealthy": Case([dev(0, health=False)], pod(gpu(1, mem=100)), fail="1/1 CardNotHealth"),
    "cordoned": Case(
        [dev(0)], pod(gpu(1, mem=100)), node_ann={_names.ANNOTATION_DEVICE_CORDON: f" {g(0)} ,"},
        fail="1/1 CardCordoned",
    ),
    "cordon skips one card": Case(
        [dev(0), dev(1)], pod(gpu(1, mem=100)),
        node_ann={_names.ANNOTATION_DEVICE_CORDON: g(1)}, ok=[[g(0)]],
    ),
    "blank cordon cordons nothing": Case(
        [dev(0)], pod(gpu(1, mem=100)), node_ann={_names.ANNOTATION_DEVICE_CORDON: " , "},
        ok=[[g(0)]],
    ),
    "type allow is a case-insensitive substring": Case(
        [dev(0, type=H100), dev(1, type=A100)], pod(gpu(1, mem=100), ann={KEYS.use_type: "h100"}),
        ok=[[g(0)]],
    ),
    "type allow matches nothing": Case(
        [dev(0, type=A100)], pod(gpu(1, mem=100), ann={KEYS.use_type: "H100"}),
        fail="1/1 CardTypeMismatch",
    ),
    "type deny": Case(
        [dev(0, type=H100), dev(1, type=A100)],
        pod(gpu(1, mem=100), ann={KEYS.nouse_type: "A100-SXM4"}), ok=[[g(0)]],
    ),
    "uuid allow": Case(
        [dev(0), dev(1)], pod(gpu(1, mem=100), ann={KEYS.use_uuid: f" {g(0)} "}), ok=[[g(0)]]
    ),
    "uuid allow is exact, not a substring": Case(
        [dev(0)], pod(gpu(1, mem=100), ann={KEYS.use_uuid: "GPU-n1"}),
        fail="1/1 CardUuidMismatch",
    ),
    "uuid deny every card": Case(
        [dev(0), dev(1)], pod(gpu(1, mem=100), ann={KEYS.nouse_uuid: f"{g(0)},{g(1)}"}),
        fail="2/2 CardUuidMismatch",
    ),
    "mixed reasons sorted as strings": Case(
        [dev(0, type=H100), dev(1, type=H100), dev(2, type=H100), dev(3, type=A100)],
        pod(gpu(1, mem=100), ann={KEYS.use_type: "A100"}), {g(3): FULL},
        fail="1/4 CardInsufficientMemory, 3/4 CardTypeMismatch",
    ),
    # --- several devices ---------------------------------------------------------------------
    "two devices": Case([dev(i) for i in range(4)], pod(gpu(2, mem=100)), ok=[[g(3), g(2)]]),
    "more devices than the node has": Case(
        [dev(0), dev(1)], pod(gpu(3, mem=100)), fail="NodeInsufficientDevice"
    ),
    "one of two needed fits": Case(
        [dev(0), dev(1)], pod(gpu(2, mem=1000)), {g(0): FULL},
        fail="1/2 AllocatedCardsInsufficientRequest, 1/2 CardInsufficientMemory",
    ),
    # --- numa-bind ---------------------------------------------------------------------------
    "numa-bind keeps one numa node": Case(
        [dev(0, numa=0), dev(1, numa=0), dev(2, numa=1), dev(3, numa=1)],
        pod(gpu(2, mem=100), ann=NUMA_BIND), ok=[[g(3), g(2)]],
    ),
    "numa-bind with one free card per numa node": Case(
        [dev(0, numa=0), dev(1, numa=0), dev(2, numa=1), dev(3, numa=1)],
        pod(gpu(2, mem=1000), ann=NUMA_BIND), {g(0): FULL, g(2): FULL},
        fail="1/4 AllocatedCardsInsufficientRequest, 1/4 NumaNotFit, 2/4 CardInsufficientMemory",
    ),
    "without numa-bind the same cards fit": Case(
        [dev(0, numa=0), dev(1, numa=0), dev(2, numa=1), dev(3, numa=1)],
        pod(gpu(2, mem=1000)), {g(0): FULL, g(2): FULL}, ok=[[g(3), g(1)]],
    ),
    "numa-bind off for a non-true value": Case(
        [dev(0, numa=0), dev(1, numa=0), dev(2, numa=1), dev(3, numa=1)],
        pod(gpu(2, mem=1000), ann={KEYS.numa_bind: "yes"}), {g(0): FULL, g(2): FULL},
        ok=[[g(3), g(1)]],
    ),
    # --- several containers --------------------------------------------------------------------
    "app containers see each other": Case(
        [dev(0), dev(1)], pod(gpu(1, mem=10000), gpu(1, mem=10000)), ok=[[g(1)], [g(0)]]
    ),
    "app containers add up on one card": Case(
        [dev(0)], pod(gpu(1, mem=10000), gpu(1, mem=10000)), fail="1/1 CardInsufficientMemory"
    ),
    "app containers share a card": Case(
        [dev(0)], pod(gpu(1, mem=6000), gpu(1, mem=6000)), ok=[[g(0)], [g(0)]]
    ),
    "app containers take one slot each": Case(
        [dev(0, count=1)], pod(gpu(1, mem=6000), gpu(1, mem=6000)),
        fail="1/1 CardTimeSlicingExhausted",
    ),
    "container without a device gets an empty entry": Case(
        [dev(0)], pod({"cpu": "1"}, gpu(1, mem=100)), ok=[[], [g(0)]]
    ),
    # --- init containers -----------------------------------------------------------------------
    "init and app peak, not sum": Case(
        [dev(0)], pod(gpu(1, mem=12000), init=[gpu(1, mem=12000)]), ok=[[g(0)], [g(0)]]
    ),
    "init containers do not add up": Case(
        [dev(0)], pod(gpu(1, mem=100), init=[gpu(1, mem=12000), gpu(1, mem=12000)]),
        ok=[[g(0)], [g(0)], [g(0)]],
    ),
    "init container too big": Case(
        [dev(0)], pod(gpu(1, mem=100), init=[gpu(1, mem=20000)]),
        fail="1/1 CardInsufficientMemory",
    ),
    # --- mutex -----------------------------------------------------------------------------------
    "mutex takes an idle card": Case(
        [dev(0), dev(1)],
        pod(gpu(1, mem=100), ann={_names.ANNOTATION_GPU_POLICY: "mutex"}), {g(1): (100, 0)},
        ok=[[g(0)]],
    ),
    "mutex with every card in use": Case(
        [dev(0), dev(1)],
        pod(gpu(1, mem=100), ann={_names.ANNOTATION_GPU_POLICY: "mutex"}),
        {g(0): (100, 0), g(1): (100, 0)}, fail="2/2 ExclusiveDeviceAllocateConflict",
    ),
    "mutex in a comma list still filters": Case(
        [dev(0)], pod(gpu(1, mem=100), ann={_names.ANNOTATION_GPU_POLICY: "binpack, mutex"}),
        {g(0): (100, 0)}, fail="1/1 ExclusiveDeviceAllocateConflict",
    ),
}  # fmt: skip


@pytest.mark.parametrize("fit_cache", [True, False], ids=["memo", "no-memo"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_fit_rule(host: plugins.PluginHost, case: Case, fit_cache: bool) -> None:
    st = cluster(
        host, {"n1": case.devices}, node_annotations={"n1": case.node_ann}, fit_cache=fit_cache
    )
    for k, (uuid, (mem, cores)) in enumerate(case.holds.items()):
        hold(st, "n1", uuid, mem=mem, cores=cores, name=f"h{k}")
    decision = core.filter_pod(st, host, case.pod, ["n1"])
    assert decision.error == ""
    if case.fail is not None:
        assert decision.node is None
        assert decision.failed == {"n1": case.fail}
        assert decision.scores == {}
        # the reason string parses back with HAMi's pattern (except the bare reason)
        if "/" in case.fail:
            codec.parse_reasons("failed", case.fail)
    else:
        assert decision.node == "n1", decision.failed
        assert chosen_ids(decision) == case.ok
        assert decision.failed == {}


def test_percentage_resolves_on_the_card_total(host: plugins.PluginHost) -> None:
    st = cluster(host, {"n1": [dev(0, mem=20000)]})
    decision = core.filter_pod(st, host, pod(gpu(1, pct=30, cores=25)), ["n1"])
    (entry,) = decision.devices[CW]
    assert entry == (models.ContainerDevice("GPU-n1-0", CW, 6000, 25),)


def test_vgpu_mode_must_contain_the_device_mode(host: plugins.PluginHost) -> None:
    v = host.vendors["fake"]
    v.keys = dataclasses.replace(KEYS, vgpu_mode="nvidia.com/vgpu-mode")
    st = cluster(
        host,
        {
            "n1": [dev(0, mode="mps"), dev(1, mode="hami-core")],
            "n2": [dev(0, node="n2", mode="mps")],
        },
    )
    p = pod(gpu(1, mem=100), ann={"nvidia.com/vgpu-mode": "hami-core"})
    decision = core.filter_pod(st, host, p, ["n1", "n2"])
    assert decision.node == "n1"
    assert chosen_ids(decision) == [["GPU-n1-1"]]
    assert decision.failed == {"n2": "1/1 CardTypeMismatch"}
    # without the annotation any mode is fine
    assert core.filter_pod(st, host, pod(gpu(1, mem=100)), ["n2"]).node == "n2"


def test_quota_blocks_what_exceeds_the_namespace_limit(host: plugins.PluginHost) -> None:
    st = cluster(host, {"n1": [dev(0), dev(1)]})
    st.set_quota("team", {"limits.hami.io/fake-gpumem": 10000, "limits.hami.io/fake-gpu": 1})
    hold(st, "n1", "GPU-n1-0", mem=6000, ns="team", name="old")
    too_big = core.filter_pod(st, host, pod(gpu(1, mem=4001), ns="team"), ["n1"])
    assert too_big.failed == {"n1": "2/2 ResourceQuotaNotFit"}
    fits = core.filter_pod(st, host, pod(gpu(1, mem=4000), ns="team"), ["n1"])
    assert fits.node == "n1"
    # another namespace has no quota
    assert core.filter_pod(st, host, pod(gpu(1, mem=9000), ns="other"), ["n1"]).node == "n1"


def test_quota_counts_every_device_of_the_pod(host: plugins.PluginHost) -> None:
    st = cluster(host, {"n1": [dev(0), dev(1)]})
    st.set_quota("team", {"limits.hami.io/fake-gpumem": 10000})
    # 2 x 5000 = 10000 fits (equality), 2 x 5001 does not: the second card breaks the quota
    assert core.filter_pod(st, host, pod(gpu(2, mem=5000), ns="team"), ["n1"]).node == "n1"
    over = core.filter_pod(st, host, pod(gpu(2, mem=5001), ns="team"), ["n1"])
    assert over.failed == {"n1": "1/2 AllocatedCardsInsufficientRequest, 1/2 ResourceQuotaNotFit"}


def test_quota_on_cores_and_memory_factor(host: plugins.PluginHost) -> None:
    st = cluster(host, {"n1": [dev(0)]})
    st.set_quota("team", {"limits.hami.io/fake-gpucores": 50})
    assert core.filter_pod(st, host, pod(gpu(1, mem=10, cores=50), ns="team"), ["n1"]).node
    denied = core.filter_pod(st, host, pod(gpu(1, mem=10, cores=51), ns="team"), ["n1"])
    assert denied.failed == {"n1": "1/1 ResourceQuotaNotFit"}


def test_quota_init_peak_not_sum(host: plugins.PluginHost) -> None:
    st = cluster(host, {"n1": [dev(0)]})
    st.set_quota("team", {"limits.hami.io/fake-gpumem": 8000})
    # init 8000 and app 8000 on the same card collapse to 8000: fits
    p = pod(gpu(1, mem=8000), init=[gpu(1, mem=8000)], ns="team")
    decision = core.filter_pod(st, host, p, ["n1"])
    assert decision.node == "n1"
    st.set_pod(p, "n1", decision.devices)
    assert st.quota.entry("team", "hami.io/fake-gpumem").used == 8000  # type: ignore[union-attr]


def test_quota_change_invalidates_memo(host: plugins.PluginHost) -> None:
    st = cluster(host, {"n1": [dev(0)]})
    p = pod(gpu(1, mem=5000), ns="team")
    assert core.filter_pod(st, host, p, ["n1"]).node == "n1"
    st.set_quota("team", {"limits.hami.io/fake-gpumem": 4000})
    assert core.filter_pod(st, host, p, ["n1"]).failed == {"n1": "1/1 ResourceQuotaNotFit"}
    st.set_quota("team", {})
    assert core.filter_pod(st, host, p, ["n1"]).node == "n1"


def test_fit_context_carries_earlier_containers(host: plugins.PluginHost) -> None:
    """The vendor sees the devices chosen for earlier containers, one entry each."""
    seen: list[tuple[int, int, int]] = []
    v = host.vendors["fake"]
    original = v.fit

    def spy(devices, request, ctx):  # type: ignore[no-untyped-def]
        seen.append((ctx.container_index, ctx.n_init, len(ctx.allocated)))
        return original(devices, request, ctx)

    v.fit = spy  # type: ignore[method-assign]
    st = cluster(host, {"n1": [dev(0)]})
    core.filter_pod(st, host, pod({"cpu": "1"}, gpu(1, mem=10), init=[gpu(1, mem=10)]), ["n1"])
    assert seen == [(0, 1, 0), (2, 1, 2)]


def test_quota_usage_elsewhere_invalidates_memo(host: plugins.PluginHost) -> None:
    """A placement on one node changes what fits on every other node of a quota'd namespace."""
    st = cluster(host, {"n1": [dev(0, node="n1")], "n2": [dev(0, node="n2")]})
    st.set_quota("team", {"limits.hami.io/fake-gpumem": 10000})
    first, second = pod(gpu(1, mem=6000), ns="team", name="a"), pod(gpu(1, mem=6000), ns="team")
    decision = core.filter_pod(st, host, first, ["n1", "n2"])
    assert decision.scores.keys() == {"n1", "n2"}
    st.set_pod(first, "n1", decision.devices)
    again = core.filter_pod(st, host, second, ["n1", "n2"])
    assert again.failed == {"n1": "1/1 ResourceQuotaNotFit", "n2": "1/1 ResourceQuotaNotFit"}
