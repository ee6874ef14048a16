"""Device score (Q2 fixed), device ordering table, node score and node choice (4.8, 4.9, Q21)."""

from __future__ import annotations

import pytest
from _sched_helpers import CW, chosen_ids, cluster, dev, gpu, hold, pod
from hypothesis import given
from hypothesis import strategies as st

from hami_core_fw import _names, codec, models, plugins
from hami_core_fw.scheduler import core, policy


def usage(
    i: int,
    *,
    numa: int = 0,
    used: int = 0,
    count: int = 10,
    usedmem: int = 0,
    totalmem: int = 16000,
    usedcores: int = 0,
    totalcore: int = 100,
    vendor: str = CW,
) -> models.DeviceUsage:
    return models.DeviceUsage(
        id=f"d{i}",
        index=i,
        vendor=vendor,
        type="NVIDIA-A100-SXM4-80GB",
        count=count,
        totalmem=totalmem,
        totalcore=totalcore,
        numa=numa,
        used=used,
        usedmem=usedmem,
        usedcores=usedcores,
    )


def req(
    mem: int = 0, pct: int | None = None, cores: int = 0, vendor: str = CW
) -> models.DeviceRequest:
    return models.DeviceRequest(
        vendor=vendor, nums=1, memreq=mem, mem_percentage=pct, coresreq=cores
    )


# ----------------------------------------------------------------------------------------------
# device score
# ----------------------------------------------------------------------------------------------

BUSY = usage(0, used=2, usedcores=30, usedmem=4000)


@pytest.mark.parametrize(
    ("request_", "weights", "expected"),
    [
        (None, codec.ScoringWeights(), 7.5),  # 10 * (2/10 + 30/100 + 4000/16000)
        (req(mem=4000, cores=20), codec.ScoringWeights(), 13.0),  # 10 * (.3 + .5 + .5)
        (req(pct=25, cores=20), codec.ScoringWeights(), 13.0),  # 25 % of 16000 = 4000
        (req(mem=4000, cores=20), codec.ScoringWeights(slot=2, core=0, memory=1), 11.0),
        (req(mem=4000, cores=20, vendor="OTHER"), codec.ScoringWeights(), 7.5),
    ],
)
def test_device_score(
    request_: models.DeviceRequest | None, weights: codec.ScoringWeights, expected: float
) -> None:
    assert policy.device_score(BUSY, request_, weights) == pytest.approx(expected)


@pytest.mark.parametrize("field", ["count", "totalmem", "totalcore"])
def test_device_score_zero_total(field: str) -> None:
    d = usage(0, used=1, usedmem=10, usedcores=10)
    setattr(d, field, 0)
    assert policy.device_score(d, req(mem=10, cores=10)) == 0.0


@given(
    used=st.integers(0, 10),
    usedmem=st.integers(0, 16000),
    usedcores=st.integers(0, 100),
    mem=st.integers(0, 16000),
    pct=st.one_of(st.none(), st.integers(1, 100)),
    cores=st.integers(0, 100),
    w=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)),
)
def test_inlined_score_orders_like_device_score(
    used: int, usedmem: int, usedcores: int, mem: int, pct: int | None, cores: int,
    w: tuple[int, int, int],
) -> None:  # fmt: skip
    """The filter's inlined score equals :func:`device_score` bit for bit (same sort keys)."""
    weights = codec.ScoringWeights(*w)
    d = usage(0, used=used, usedmem=usedmem, usedcores=usedcores)
    r = req(mem=mem, pct=pct, cores=cores)
    seen: list[float] = []

    def key(dd: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
        seen.append(s)
        return (s,)

    policy.order_devices_by([d], r, key, weights)
    policy.order_devices_by([d], None, key, weights)
    assert seen == [policy.device_score(d, r, weights), policy.device_score(d, None, weights)]


def test_q2_binpack_picks_the_card_the_request_fills_best(host: plugins.PluginHost) -> None:
    """Q2: two half-used GPUs; the request fills the smaller one completely: binpack takes it.

    HAMi ignores the request (its type never equals a model string): both cards then score the
    same and the tie decides. The card that fits best has the lower index, so the tie-break alone
    would pick the other one.
    """
    small = dev(0, mem=16384, type="NVIDIA A100-PCIE-16GB")  # half used: 8192 free
    big = dev(1, mem=32768, type="NVIDIA A100-SXM4-32GB")  # half used: 16384 free
    s = cluster(host, {"n1": [small, big]})
    hold(s, "n1", small.id, mem=8192)
    hold(s, "n1", big.id, mem=16384)
    binpack = {_names.ANNOTATION_GPU_POLICY: "binpack"}
    decision = core.filter_pod(s, host, pod(gpu(1, mem=8192), ann=binpack), ["n1"])
    assert chosen_ids(decision) == [[small.id]]
    # spread takes the other one, so the choice above is the request's doing
    spread = core.filter_pod(s, host, pod(gpu(1, mem=8192)), ["n1"])
    assert chosen_ids(spread) == [[big.id]]
    # the scores tell why: the request fills the small card (1.0 memory) more than the big (0.75)
    e = s.entry("n1")
    assert e is not None
    r = req(mem=8192)
    assert policy.device_score(e.devices[CW][0], r) > policy.device_score(e.devices[CW][1], r)


# ----------------------------------------------------------------------------------------------
# device ordering
# ----------------------------------------------------------------------------------------------

# d0: numa 0 idle, d1: numa 1 busy, d2: numa 0 busy, d3: numa 1 idle (busy = score 5, idle = 0)
TABLE = [
    usage(0, numa=0),
    usage(1, numa=1, used=5),
    usage(2, numa=0, used=5),
    usage(3, numa=1),
]


@pytest.mark.parametrize(
    ("value", "numa_bind", "order"),
    [
        ("binpack", False, [0, 3, 2, 1]),  # score asc, ties numa asc
        ("spread", False, [2, 1, 0, 3]),  # score desc, ties numa asc
        ("topology-aware", False, [2, 1, 0, 3]),  # unrecognised single value = spread
        ("no-such-policy", False, [2, 1, 0, 3]),
        ("binpack", True, [3, 1, 0, 2]),  # numa desc, then score asc
        ("spread", True, [2, 0, 1, 3]),  # numa asc, then score desc
        ("topology-aware", True, [2, 0, 1, 3]),
        ("numa", False, [0, 2, 1, 3]),  # the single key numa, then index
        ("numa,binpack", False, [0, 2, 3, 1]),
        ("binpack, numa", False, [0, 3, 2, 1]),
        ("spread,binpack", False, [1, 2, 0, 3]),  # ties by index, not numa, in a chain
        ("mutex,binpack", False, [0, 3, 1, 2]),  # mutex is no sort key
        ("mutex,topology-aware", False, [1, 2, 0, 3]),  # no key left = spread
        ("binpack,numa", True, [0, 2, 3, 1]),  # numa moved to the front
        ("binpack,mutex", True, [0, 2, 3, 1]),  # numa put in front under numa-bind
        ("spread,spread,numa", False, [2, 1, 0, 3]),  # duplicates dropped
    ],
)
def test_device_ordering(value: str, numa_bind: bool, order: list[int]) -> None:
    ordered = policy.order_devices(TABLE, None, value, numa_bind=numa_bind)
    assert [d.index for d in ordered] == order


def test_mutex_orders_by_slots_in_use_not_score() -> None:
    # d0: no slot in use but memory-heavy (score 5), d1: one slot in use (score 1)
    devs = [usage(0, usedmem=8000), usage(1, used=1)]
    assert [d.index for d in policy.order_devices(devs, None, "spread")] == [0, 1]
    assert [d.index for d in policy.order_devices(devs, None, "mutex")] == [1, 0]
    assert [d.index for d in policy.order_devices(devs, None, "mutex", numa_bind=True)] == [1, 0]


def test_request_changes_the_order() -> None:
    """With the request counted (Q2), a card the request would fill tops binpack."""
    small = usage(0, usedmem=4000, totalmem=8000)  # 4000 MiB free
    big = usage(1, usedmem=8000, totalmem=16000)
    assert [d.index for d in policy.order_devices([small, big], None, "binpack")] == [0, 1]
    ordered = policy.order_devices([small, big], req(mem=4000), "binpack")
    assert [d.index for d in ordered] == [1, 0]  # small is last: tried first


@given(st.permutations(list(range(6))), st.sampled_from(["binpack", "spread", "mutex", "numa"]))
def test_ties_never_depend_on_input_order(perm: list[int], value: str) -> None:
    """Q21: equal devices come out by index whatever the order they arrive in."""
    devs = [usage(i, numa=i % 2) for i in perm]
    ordered = policy.order_devices(devs, None, value)
    again = policy.order_devices(sorted(devs, key=lambda d: d.index), None, value)
    assert [d.index for d in ordered] == [d.index for d in again]


# ----------------------------------------------------------------------------------------------
# node score and choice
# ----------------------------------------------------------------------------------------------


def test_default_node_score() -> None:
    devs = [
        usage(0, used=1, usedcores=20, usedmem=2000, totalmem=16000),
        usage(1, used=2, usedcores=30, usedmem=6000, totalmem=16000),
    ]
    # 10 * (3/20 + 50/200 + 8000/32000)
    assert policy.default_node_score(devs) == pytest.approx(6.5)
    assert policy.default_node_score([usage(0, totalcore=0, used=1)]) == 0.0
    assert policy.default_node_score([]) == 0.0


@pytest.mark.parametrize(
    ("scores", "value", "order"),
    [
        ({"b": 1.0, "a": 1.0, "c": 0.5}, "binpack", ["c", "b", "a"]),
        ({"b": 1.0, "a": 1.0, "c": 0.5}, "spread", ["b", "a", "c"]),
        ({"b": 0.5, "a": 0.5, "c": 1.0}, "spread", ["c", "b", "a"]),
        ({"b": 0.5, "a": 0.5, "c": 1.0}, "whatever", ["b", "a", "c"]),  # anything else = binpack
    ],
)
def test_node_order_and_tie_break(scores: dict[str, float], value: str, order: list[str]) -> None:
    assert policy.order_nodes(scores, value) == order
    assert policy.choose_node(scores, value) == order[-1]


@given(
    st.dictionaries(st.text("abcd", min_size=1, max_size=3), st.sampled_from([0.0, 0.5, 1.0, 2.5])),
    st.sampled_from(["binpack", "spread"]),
)
def test_choose_node_is_the_last_of_the_order(scores: dict[str, float], value: str) -> None:
    expected = policy.order_nodes(scores, value)[-1] if scores else None
    assert policy.choose_node(scores, value) == expected


def test_node_policies_through_filter(host: plugins.PluginHost) -> None:
    s = cluster(host, {n: [dev(0, node=n), dev(1, node=n)] for n in ("busy", "idle", "half")})
    hold(s, "busy", "GPU-busy-0", mem=12000, cores=50)
    hold(s, "half", "GPU-half-0", mem=4000, cores=10)
    p = pod(gpu(1, mem=1000))
    names = ["idle", "half", "busy"]
    binpack = core.filter_pod(s, host, p, names)
    assert binpack.node == "busy"
    assert binpack.scores["busy"] > binpack.scores["half"] > binpack.scores["idle"] == 0.0
    spread = core.filter_pod(s, host, p, names, node_policy="spread")
    assert spread.node == "idle"
    # the pod's annotation overrides the default
    annotated = pod(gpu(1, mem=1000), ann={_names.ANNOTATION_NODE_POLICY: "spread"})
    assert core.filter_pod(s, host, annotated, names).node == "idle"
    # the GPU policy default is overridable too
    on_busy = core.filter_pod(s, host, p, ["busy"], gpu_policy="binpack")
    assert chosen_ids(on_busy) == [["GPU-busy-0"]]
    assert chosen_ids(core.filter_pod(s, host, p, ["busy"])) == [["GPU-busy-1"]]


def test_node_tie_goes_to_the_smallest_name(host: plugins.PluginHost) -> None:
    s = cluster(host, {n: [dev(0, node=n)] for n in ("n3", "n1", "n2")})
    p = pod(gpu(1, mem=1000))
    for names in (["n3", "n1", "n2"], ["n2", "n3", "n1"]):
        assert core.filter_pod(s, host, p, names).node == "n1"
        assert core.filter_pod(s, host, p, names, node_policy="spread").node == "n1"


def test_per_pod_weights_change_the_device_order(host: plugins.PluginHost) -> None:
    # d0: two slots in use, little memory; d1: one slot in use, 12000 MiB
    s = cluster(host, {"n1": [dev(0, count=4, mem=16000), dev(1, count=4, mem=16000)]})
    hold(s, "n1", "GPU-n1-0", mem=10, name="a")
    hold(s, "n1", "GPU-n1-0", mem=10, name="b")
    hold(s, "n1", "GPU-n1-1", mem=12000, name="c")
    binpack = {_names.ANNOTATION_GPU_POLICY: "binpack"}
    slots = {**binpack, _names.ANNOTATION_SCORING_WEIGHTS: " slot = 10, core=1, memory=0"}
    memory = {**binpack, _names.ANNOTATION_SCORING_WEIGHTS: "memory=10,slot=0,core=1"}
    assert chosen_ids(core.filter_pod(s, host, pod(gpu(1, mem=100), ann=slots), ["n1"])) == [
        ["GPU-n1-0"]
    ]
    assert chosen_ids(core.filter_pod(s, host, pod(gpu(1, mem=100), ann=memory), ["n1"])) == [
        ["GPU-n1-1"]
    ]
    assert chosen_ids(core.filter_pod(s, host, pod(gpu(1, mem=100), ann=binpack), ["n1"])) == [
        ["GPU-n1-1"]
    ]


@pytest.mark.parametrize(
    "value",
    ["", "slot=1,core=1", "slot=1,core=1,memory=-1", "slot=0,core=0,memory=0", "a=1,b=2,c=3"],
)
def test_malformed_weights_fail_the_whole_filter(host: plugins.PluginHost, value: str) -> None:
    s = cluster(host, {"n1": [dev(0)]})
    p = pod(gpu(1, mem=1), ann={_names.ANNOTATION_SCORING_WEIGHTS: value})
    decision = core.filter_pod(s, host, p, ["n1"])
    assert decision.node is None
    assert decision.failed == {} and decision.scores == {}
    assert _names.ANNOTATION_SCORING_WEIGHTS in decision.error
