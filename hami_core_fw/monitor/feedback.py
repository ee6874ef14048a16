"""The priority feedback loop of the node monitor (hami-compat.md 10.3, shim-contract.md 8.3).

Every scan interval the monitor ages each container's ``recent_kernel`` heartbeat (the shim sets
it to 2 on kernel launches), counts per GPU UUID and priority the containers still active, and
writes two fields of each region that the shim reads:

* ``recent_kernel = -1`` (block: launches sleep) while a strictly higher-priority container
  (lower number) is active on one of the container's GPUs; a blocked container that is no longer
  outranked gets 0 (unblock);
* ``utilization_switch = 1`` (enforce the SM limit) when a higher-priority container is active on
  one of its GPUs or more than one container of its own priority is; otherwise 0, so a lone
  container may use the whole GPU.

:func:`plan` is the pure decision over :class:`ContainerState` values; :func:`apply` writes one
decision into a mapped region. Deliberate differences from HAMi's ``Observe``: every device of a
container is considered (HAMi stops at the first device it has counts for), priorities are not
limited to 0 and 1 (HAMi indexes a two-element array), and a decrement or unblock is not written
when the shim has stored a new heartbeat since the region was read (the heartbeat wins; HAMi
overwrites it). A block is always written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from hami_core_fw.monitor import region

__all__ = [
    "RECENT_KERNEL_OFFSET",
    "UTILIZATION_SWITCH_OFFSET",
    "ContainerState",
    "Decision",
    "RegionIO",
    "apply",
    "plan",
    "state_of",
]

#: byte offsets of the fields the monitor writes, per layout (shim-contract.md 5.2; v0: 5.2 too)
UTILIZATION_SWITCH_OFFSET: Final[Mapping[str, int]] = {"v1": 2_008_900, "v0": 1_197_884}
RECENT_KERNEL_OFFSET: Final[Mapping[str, int]] = {"v1": 2_008_904, "v0": 1_197_888}


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The feedback fields of one container's region, as read.

    :param key: identifies the container (its directory name)
    :param priority: ``CUDA_TASK_PRIORITY`` stored in the region (lower = higher priority)
    :param recent_kernel: the heartbeat (> 0 active, 0 idle, < 0 blocked)
    :param utilization_switch: 1 = the shim enforces the SM limit
    :param uuids: the GPUs the container uses
    """

    key: str
    priority: int
    recent_kernel: int
    utilization_switch: int
    uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The values the monitor wants in one region after a feedback pass."""

    recent_kernel: int
    utilization_switch: int


def state_of(key: str, r: region.Region) -> ContainerState:
    """The feedback view of a decoded region (its GPUs: positions with a UUID)."""
    return ContainerState(
        key=key,
        priority=r.priority,
        recent_kernel=r.recent_kernel,
        utilization_switch=r.utilization_switch,
        uuids=tuple(r.uuids[i] for i in r.devices()),
    )


def plan(states: Iterable[ContainerState]) -> dict[str, Decision]:
    """One pass of the feedback loop over every container of the node.

    :param states: the containers as read from their regions
    :returns: key -> the values their regions should hold afterwards
    """
    items: Sequence[ContainerState] = list(states)
    aged = {s.key: s.recent_kernel - 1 if s.recent_kernel > 0 else s.recent_kernel for s in items}
    active: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for s in items:
        if aged[s.key] > 0:
            for uuid in set(s.uuids):
                active[uuid][s.priority] += 1
    out: dict[str, Decision] = {}
    for s in items:
        p = s.priority
        outranked = any(
            count > 0 and q < p for uuid in s.uuids for q, count in active.get(uuid, {}).items()
        )
        crowded = any(active.get(uuid, {}).get(p, 0) > 1 for uuid in s.uuids)
        recent = aged[s.key]
        if outranked:
            recent = -1
        elif recent < 0:
            recent = 0
        out[s.key] = Decision(recent, 1 if outranked or crowded else 0)
    return out


class RegionIO(Protocol):
    """Field access to a mapped region (:class:`~hami_core_fw.monitor.scan.MappedRegion`)."""

    def read_i32(self, offset: int) -> int:
        """Read a signed 32-bit field."""
        ...

    def write_i32(self, offset: int, value: int) -> None:
        """Write a signed 32-bit field."""
        ...


def apply(io: RegionIO, layout: str, observed: ContainerState, decision: Decision) -> list[str]:
    """Write a decision into a region, changing only fields whose value differs.

    :param io: the mapped region
    :param layout: ``"v1"`` or ``"v0"`` (from the decoded region)
    :param observed: the state the decision was computed from
    :param decision: what :func:`plan` wants
    :returns: the names of the fields written
    :raises KeyError: an unknown layout
    """
    written: list[str] = []
    switch_off = UTILIZATION_SWITCH_OFFSET[layout]
    recent_off = RECENT_KERNEL_OFFSET[layout]
    if io.read_i32(switch_off) != decision.utilization_switch:
        io.write_i32(switch_off, decision.utilization_switch)
        written.append("utilization_switch")
    current = io.read_i32(recent_off)
    if current != decision.recent_kernel and (
        decision.recent_kernel < 0 or current == observed.recent_kernel
    ):
        io.write_i32(recent_off, decision.recent_kernel)
        written.append("recent_kernel")
    return written
