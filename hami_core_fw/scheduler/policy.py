"""Device and node scores and orderings (hami-compat.md 4.8 and 4.9). Pure.

A vendor's ``fit`` walks its candidate devices **from the end** of the list it is given, so the
device ordering decides which device is tried first; the node ordering puts the chosen node last.

Two HAMi quirks are fixed here (hami-compat.md 14):

* Q2: HAMi's device score counts a request only when its type equals the device's model string,
  which never happens for NVIDIA, so the pending request never influences the order. We count the
  container's request of the device's **vendor**.
* Q21: HAMi sorts with an unstable sort. We sort stably with explicit final keys: the device index
  (then the position in the node's list) for devices, the node name for nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from hami_core_fw import codec, models

BINPACK: Final = "binpack"
SPREAD: Final = "spread"
MUTEX: Final = "mutex"
NUMA: Final = "numa"
TOPOLOGY_AWARE: Final = "topology-aware"

#: HAMi's defaults (``--node-scheduler-policy``, ``--gpu-scheduler-policy``)
DEFAULT_NODE_POLICY: Final = BINPACK
DEFAULT_GPU_POLICY: Final = SPREAD

_SORT_KEYS: Final = (BINPACK, SPREAD, NUMA)

DEFAULT_WEIGHTS: Final = codec.ScoringWeights()

#: a device sort key: built from (device, its score, its position in the node's list)
SortKey = Callable[[models.DeviceUsage, float, int], tuple[float, ...]]


def policy_tokens(value: str) -> tuple[str, ...]:
    """The tokens of a GPU policy value (``"binpack, numa"`` -> ``("binpack", "numa")``)."""
    return tuple(t.strip() for t in value.split(",") if t.strip())


# ----------------------------------------------------------------------------------------------
# Device score (4.8, fixed per Q2)
# ----------------------------------------------------------------------------------------------


def request_memory_for_score(request: models.DeviceRequest, totalmem: int) -> int:
    """The memory a request adds to a device's score: HAMi resolves a percentage first.

    (Fit resolves ``memreq`` first; the two differ only when a container sets both.)
    """
    if request.mem_percentage is not None and request.mem_percentage != 0:
        return totalmem * request.mem_percentage // 100
    return request.memreq


def device_score(
    dev: models.DeviceUsage,
    request: models.DeviceRequest | None,
    weights: codec.ScoringWeights = DEFAULT_WEIGHTS,
) -> float:
    """HAMi's device score including the pending request of the device's vendor (Q2 fixed).

    ``10 * (w_slot * (n + used) / count + w_core * (cores + usedcores) / totalcore
    + w_mem * (mem + usedmem) / totalmem)``, where ``n``, ``cores`` and ``mem`` come from the
    container's request of this device's vendor (``n = 1``: ``nums`` is not used, as in HAMi).

    :param dev: the device's current usage
    :param request: the container's request of ``dev.vendor``, or None when it has none
    :param weights: per-pod weights (``hami.io/device-scoring-weights``)
    :returns: 0 when the device has no slots, no cores or no memory
    """
    if dev.count == 0 or dev.totalcore == 0 or dev.totalmem == 0:
        return 0.0
    n = cores = mem = 0
    if request is not None and request.vendor == dev.vendor:
        n = 1
        cores = request.coresreq
        mem = request_memory_for_score(request, dev.totalmem)
    return 10 * (
        weights.slot * (n + dev.used) / dev.count
        + weights.core * (cores + dev.usedcores) / dev.totalcore
        + weights.memory * (mem + dev.usedmem) / dev.totalmem
    )


# ----------------------------------------------------------------------------------------------
# Device ordering (4.8 table)
# ----------------------------------------------------------------------------------------------


def _binpack(d: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
    return (s, d.numa, d.index, i)


def _spread(d: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
    return (-s, d.numa, d.index, i)


def _mutex(d: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
    return (-d.used, d.numa, d.index, i)


def _binpack_numa(d: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
    return (-d.numa, s, d.index, i)


def _spread_numa(d: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
    return (d.numa, -s, d.index, i)


def _chain(keys: tuple[str, ...]) -> SortKey:
    def key(d: models.DeviceUsage, s: float, i: int) -> tuple[float, ...]:
        parts: list[float] = []
        for k in keys:
            if k == BINPACK:
                parts.append(s)
            elif k == SPREAD:
                parts.append(-s)
            else:
                parts.append(d.numa)
        parts += (d.index, i)
        return tuple(parts)

    return key


def chain_keys(value: str, numa_bind: bool) -> tuple[str, ...]:
    """The sort keys of a comma-list GPU policy (4.8, last table row).

    Only ``binpack``, ``spread`` and ``numa`` are sort keys (first occurrence kept); no key left
    means ``spread``; with numa-bind, ``numa`` goes first (added when absent, so that the devices of
    one NUMA node are contiguous for the fit's NUMA walk).
    """
    keys: list[str] = []
    for token in policy_tokens(value):
        if token in _SORT_KEYS and token not in keys:
            keys.append(token)
    if not keys:
        keys.append(SPREAD)
    if numa_bind:
        if NUMA in keys:
            keys.remove(NUMA)
        keys.insert(0, NUMA)
    return tuple(keys)


def device_sort_key(policy: str, numa_bind: bool) -> SortKey:
    """The sort key of the GPU policy ``policy`` (the raw annotation or default value).

    ========================  ==========================================
    ``binpack``               score ascending, NUMA ascending
    ``spread`` (and unknown)  score descending, NUMA ascending
    ``mutex``                 ``used`` descending, NUMA ascending
    ``binpack`` + numa-bind   NUMA descending, score ascending
    ``spread`` + numa-bind    NUMA ascending, score descending
    comma list, ``numa``      see :func:`chain_keys`
    ========================  ==========================================

    Every key ends with the device index, then the device's position in the node's list.
    """
    value = policy.strip()
    if "," in value or value == NUMA:
        return _chain(chain_keys(value, numa_bind))
    if value == MUTEX:
        return _mutex
    if value == BINPACK:
        return _binpack_numa if numa_bind else _binpack
    return _spread_numa if numa_bind else _spread


def order_devices(
    devices: Sequence[models.DeviceUsage],
    request: models.DeviceRequest | None,
    policy: str,
    *,
    numa_bind: bool = False,
    weights: codec.ScoringWeights = DEFAULT_WEIGHTS,
) -> list[models.DeviceUsage]:
    """Score ``devices`` for ``request`` and sort them by ``policy``; the LAST is tried first."""
    return order_devices_by(devices, request, device_sort_key(policy, numa_bind), weights)


def _first(item: tuple[tuple[float, ...], models.DeviceUsage]) -> tuple[float, ...]:
    return item[0]


def order_devices_by(
    devices: Sequence[models.DeviceUsage],
    request: models.DeviceRequest | None,
    key: SortKey,
    weights: codec.ScoringWeights = DEFAULT_WEIGHTS,
) -> list[models.DeviceUsage]:
    """:func:`order_devices` with a key from :func:`device_sort_key` (the filter's hot path).

    The score is :func:`device_score`, inlined: this runs for every device of every node.
    """
    ws, wc, wm = weights.slot, weights.core, weights.memory
    keyed: list[tuple[tuple[float, ...], models.DeviceUsage]] = []
    spread, binpack = key is _spread, key is _binpack
    for i, d in enumerate(devices):
        count, totalcore, totalmem = d.count, d.totalcore, d.totalmem
        if count == 0 or totalcore == 0 or totalmem == 0:
            score = 0.0
        elif request is not None and request.vendor == d.vendor:
            pct = request.mem_percentage
            mem = totalmem * pct // 100 if pct else request.memreq
            score = 10 * (
                ws * (1 + d.used) / count
                + wc * (request.coresreq + d.usedcores) / totalcore
                + wm * (mem + d.usedmem) / totalmem
            )
        else:
            score = 10 * (
                ws * d.used / count + wc * d.usedcores / totalcore + wm * d.usedmem / totalmem
            )
        # the two default keys inlined (the filter's hottest loop); same tuples as _spread/_binpack
        if spread:
            keyed.append(((-score, d.numa, d.index, i), d))
        elif binpack:
            keyed.append(((score, d.numa, d.index, i), d))
        else:
            keyed.append((key(d, score, i), d))
    keyed.sort(key=_first)
    return [d for _, d in keyed]


# ----------------------------------------------------------------------------------------------
# Node score and choice (4.9)
# ----------------------------------------------------------------------------------------------


def node_score_from_sums(
    used: int, count: int, usedcores: int, totalcore: int, usedmem: int, totalmem: int
) -> float:
    """HAMi's default node score from summed usage: 0 when any total is 0."""
    if count == 0 or totalcore == 0 or totalmem == 0:
        return 0.0
    return 10 * (used / count + usedcores / totalcore + usedmem / totalmem)


def default_node_score(devices: Iterable[models.DeviceUsage]) -> float:
    """HAMi's default node score over every device of a node, before the pod is placed."""
    used = count = usedcores = totalcore = usedmem = totalmem = 0
    for d in devices:
        used += d.used
        count += d.count
        usedcores += d.usedcores
        totalcore += d.totalcore
        usedmem += d.usedmem
        totalmem += d.totalmem
    return node_score_from_sums(used, count, usedcores, totalcore, usedmem, totalmem)


def order_nodes(scores: Mapping[str, float], policy: str) -> list[str]:
    """Node names sorted by ``policy``; the LAST one is chosen (4.9).

    ``spread`` sorts by score descending (least used last), anything else ascending (most used
    last). Ties: the node whose name sorts first ends last, so the choice never depends on the
    order the candidates arrived in (Q21).
    """
    by_name = sorted(scores, reverse=True)
    return sorted(by_name, key=scores.__getitem__, reverse=policy.strip() == SPREAD)


def choose_node(scores: Mapping[str, float], policy: str) -> str | None:
    """The node :func:`order_nodes` puts last, in one pass; None when ``scores`` is empty."""
    best: str | None = None
    best_score = 0.0
    spread = policy.strip() == SPREAD
    for name, score in scores.items():
        if best is None:
            best, best_score = name, score
            continue
        better = score < best_score if spread else score > best_score
        if better or (score == best_score and name < best):
            best, best_score = name, score
    return best
