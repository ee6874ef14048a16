"""The scheduler's in-memory cluster state: nodes, their device usage, reservations and quota.

Usage is kept **incrementally** (hami-compat.md 4.3, 4.5): adding or removing a pod changes only the
records of the devices it holds, and every node keeps running sums for its score (4.9), so a filter
call never rebuilds usage from all pods. A pod's usage is its collapsed allocation (2.3): the peak
of its init containers versus the sum of its app containers per device, or app containers only once
every init container has succeeded.

The state is not thread-safe: the caller serialises updates and filter calls (the extender runs
them on one event loop). Filter calls only read it, apart from a private memo of per-node fit
results that every change of a node (or of a namespace's quota) invalidates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hami_core_fw import models, plugins, quota, vendor
from hami_core_fw.scheduler import policy

#: pods in these phases hold nothing (hami-compat.md 4.3)
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})

#: most memoised fit results kept per node (oldest dropped first)
MEMO_PER_NODE: Final = 256
#: interned filter signatures kept before the table is cleared
MAX_SIGNATURES: Final = 4096


class NodeEntry:
    """One node: its view, its devices' usage per vendor and running sums. Read-only outside state.

    :ivar devices: vendor CommonWord -> usage records, in registration order
    :ivar gen: bumped on every change of the node or of its usage
    :ivar score: HAMi's default node score (4.9) of the current usage
    """

    __slots__ = (
        "by_key",
        "count",
        "devices",
        "flat",
        "gen",
        "ids",
        "memo",
        "score",
        "totalcore",
        "totalmem",
        "used",
        "usedcores",
        "usedmem",
        "view",
    )

    def __init__(
        self, view: models.NodeView, devices: Mapping[str, Sequence[models.DeviceInfo]]
    ) -> None:
        self.view = view
        self.devices: dict[str, list[models.DeviceUsage]] = {}
        self.by_key: dict[tuple[str, str], models.DeviceUsage] = {}
        for common_word in sorted(devices):
            records = []
            for info in devices[common_word]:
                usage = models.DeviceUsage.from_info(info)
                usage.vendor = common_word
                records.append(usage)
                self.by_key[(common_word, info.id)] = usage
            self.devices[common_word] = records
        self.flat: tuple[models.DeviceUsage, ...] = tuple(
            d for records in self.devices.values() for d in records
        )
        self.ids = frozenset(d.id for d in self.flat)
        self.count = sum(d.count for d in self.flat)
        self.totalcore = sum(d.totalcore for d in self.flat)
        self.totalmem = sum(d.totalmem for d in self.flat)
        self.used = self.usedcores = self.usedmem = 0
        self.gen = 0
        self.memo: dict[object, object] = {}
        self.score = 0.0

    def _changed(self) -> None:
        self.gen += 1
        self.memo.clear()
        self.score = policy.node_score_from_sums(
            self.used, self.count, self.usedcores, self.totalcore, self.usedmem, self.totalmem
        )

    def _apply(
        self, collapsed: Mapping[str, tuple[models.CollapsedDevice, ...]], sign: int
    ) -> bool:
        touched = False
        for common_word, devs in collapsed.items():
            for c in devs:
                record = self.by_key.get((common_word, c.uuid))
                if record is None:
                    continue  # stale or foreign UUID: skipped, as HAMi does (4.5)
                slots = max(c.slots, 1)
                record.used += sign * slots
                record.usedmem += sign * c.usedmem
                record.usedcores += sign * c.usedcores
                self.used += sign * slots
                self.usedmem += sign * c.usedmem
                self.usedcores += sign * c.usedcores
                touched = True
        return touched

    def detached_copy(self) -> NodeEntry:
        """A copy whose records may be changed freely (no memo)."""
        clone = NodeEntry.__new__(NodeEntry)
        clone.view = self.view
        clone.devices = {k: [d.copy() for d in v] for k, v in self.devices.items()}
        clone.by_key = {(d.vendor, d.id): d for v in clone.devices.values() for d in v}
        clone.flat = tuple(d for v in clone.devices.values() for d in v)
        clone.ids = self.ids
        clone.count, clone.totalcore, clone.totalmem = self.count, self.totalcore, self.totalmem
        clone.used, clone.usedcores, clone.usedmem = self.used, self.usedcores, self.usedmem
        clone.gen = -1
        clone.memo = {}
        clone.score = self.score
        return clone


@dataclass(slots=True)
class PodRecord:
    """A pod's reservation: where it is, what it was given and what it holds (collapsed)."""

    pod: models.PodView
    node: str
    devices: models.PodDevices
    collapsed: dict[str, tuple[models.CollapsedDevice, ...]]
    #: (resource name, amount) added to the pod's namespace in the quota ledger
    quota_usage: tuple[tuple[str, int], ...] = ()
    app_only: bool = False


@dataclass(slots=True)
class _Counter:
    value: int = 0

    def bump(self) -> int:
        self.value += 1
        return self.value


class ClusterState:
    """Nodes, device usage, reservations and quota, updated incrementally.

    :param host: the plugin host; vendors give the quota resource names
    :param fit_cache: memoise per-node fit results of the filter (exact: every change of a node or
        of a namespace's quota invalidates them); False evaluates every node on every call
    """

    def __init__(self, host: plugins.PluginHost, *, fit_cache: bool = True) -> None:
        self.host = host
        self.fit_cache = fit_cache
        self.quota = quota.QuotaLedger()
        self._nodes: dict[str, NodeEntry] = {}
        self._pods: dict[str, PodRecord] = {}
        self._pods_by_node: dict[str, set[str]] = {}
        self._quota_gen: dict[str, int] = {}
        self._gens = _Counter()
        # interned filter signatures (see core.py): signature -> id, never reused
        self._signatures: dict[object, int] = {}

    # ------------------------------------------------------------------ nodes

    def set_node(
        self, node: models.NodeView, devices: Mapping[str, Sequence[models.DeviceInfo]]
    ) -> None:
        """Add or replace a node and its devices (vendor CommonWord -> devices).

        Pods already placed on the node keep their usage: it is re-applied by UUID to the new
        device records; UUIDs the node no longer has are skipped.
        """
        entry = NodeEntry(node, devices)
        entry.gen = self._gens.bump()
        for uid in sorted(self._pods_by_node.get(node.name, ())):
            entry._apply(self._pods[uid].collapsed, +1)
        entry._changed()
        self._nodes[node.name] = entry

    def remove_node(self, name: str) -> None:
        """Forget a node; reservations of pods on it are kept until their pods go."""
        self._nodes.pop(name, None)

    def node_names(self) -> list[str]:
        """Every known node, sorted."""
        return sorted(self._nodes)

    def node(self, name: str) -> models.NodeView | None:
        """The node's view, or None when unknown."""
        entry = self._nodes.get(name)
        return entry.view if entry is not None else None

    def entry(self, name: str) -> NodeEntry | None:
        """The node's internal entry (for the scheduling core; do not modify)."""
        return self._nodes.get(name)

    def usage(self, name: str) -> list[models.DeviceUsage]:
        """Copies of the node's device usage, vendors sorted, registration order within each."""
        entry = self._nodes.get(name)
        if entry is None:
            return []
        return [d.copy() for d in entry.flat]

    # ------------------------------------------------------------------ pods

    def set_pod(self, pod: models.PodView, node_name: str, devices: models.PodDevices) -> None:
        """Add or replace the reservation of ``pod`` (by uid) on ``node_name``.

        ``devices`` has one entry per container, init containers first (3.4). The pod holds the
        collapse of 2.3: init peak versus app sum per device, or app containers only once
        :attr:`PodView.init_finished`. The quota ledger follows. A pod in phase Succeeded or Failed
        holds nothing, so it is removed instead.
        """
        self.remove_pod(pod.uid)
        if pod.phase in TERMINAL_PHASES:
            return
        app_only = pod.init_finished
        n_init = len(pod.init_containers)
        collapsed = {
            common_word: models.collapse_usage(entries, n_init, common_word, app_only=app_only)
            for common_word, entries in sorted(devices.items())
        }
        quota_usage: list[tuple[str, int]] = []
        for common_word, devs in collapsed.items():
            v = self.host.vendor_by_common_word(common_word)
            if v is None:
                continue
            quota_usage += _quota_amounts(v, devs)
        record = PodRecord(
            pod=pod,
            node=node_name,
            devices={k: tuple(v) for k, v in devices.items()},
            collapsed=collapsed,
            quota_usage=tuple(quota_usage),
            app_only=app_only,
        )
        self._pods[pod.uid] = record
        self._pods_by_node.setdefault(node_name, set()).add(pod.uid)
        entry = self._nodes.get(node_name)
        if entry is not None and entry._apply(collapsed, +1):
            entry._changed()
        self._quota_add(pod.namespace, record.quota_usage, +1)

    def remove_pod(self, uid: str) -> None:
        """Release the reservation of pod ``uid`` (no-op when unknown)."""
        record = self._pods.pop(uid, None)
        if record is None:
            return
        on_node = self._pods_by_node.get(record.node)
        if on_node is not None:
            on_node.discard(uid)
            if not on_node:
                del self._pods_by_node[record.node]
        entry = self._nodes.get(record.node)
        if entry is not None and entry._apply(record.collapsed, -1):
            entry._changed()
        self._quota_add(record.pod.namespace, record.quota_usage, -1)

    def has_pod(self, uid: str) -> bool:
        """Whether pod ``uid`` holds a reservation."""
        return uid in self._pods

    def reservation(self, uid: str) -> PodRecord | None:
        """The reservation of pod ``uid`` (node, devices per container, collapsed usage)."""
        return self._pods.get(uid)

    def pods(self) -> Iterator[PodRecord]:
        """Every reservation, in insertion order."""
        return iter(list(self._pods.values()))

    def pods_on(self, node_name: str) -> list[str]:
        """Uids of the pods reserved on ``node_name``, sorted."""
        return sorted(self._pods_by_node.get(node_name, ()))

    # ------------------------------------------------------------------ quota

    def tracked_quota_resources(self) -> frozenset[str]:
        """The memory and core resource names of every vendor (hami-compat.md 5)."""
        names: set[str] = set()
        for v in self.host.vendors.values():
            names.update(n for n in (v.resources.memory, v.resources.cores) if n)
        return frozenset(names)

    def set_quota(self, namespace: str, hard: Mapping[str, int]) -> None:
        """Replace a namespace's limits from a ResourceQuota ``spec.hard`` (``limits.<r>`` keys).

        Only vendors' memory and core resources are tracked; an empty ``hard`` clears the limits.
        """
        self.quota.set_limits(namespace, hard, self.tracked_quota_resources())
        self._quota_gen[namespace] = self._gens.bump()

    def quota_generation(self, namespace: str) -> int:
        """Changes whenever the namespace's quota limits or usage change."""
        return self._quota_gen.get(namespace, 0)

    def _quota_add(self, namespace: str, amounts: Sequence[tuple[str, int]], sign: int) -> None:
        if not amounts:
            return
        for resource, amount in amounts:
            self.quota.add_usage(namespace, resource, sign * amount)
        self._quota_gen[namespace] = self._gens.bump()

    # ------------------------------------------------------------------ fit memo support

    def signature_id(self, signature: object) -> int:
        """A small int standing for a filter signature (ids are never reused)."""
        sid = self._signatures.get(signature)
        if sid is None:
            if len(self._signatures) >= MAX_SIGNATURES:
                self._signatures.clear()
            sid = self._signatures[signature] = self._gens.bump()
        return sid

    # ------------------------------------------------------------------ comparison

    def fingerprint(self) -> tuple[object, ...]:
        """Everything that decides scheduling, as a comparable value (tests compare rebuilds).

        Nodes with their per-device usage and sums, reservations, and the quota ledger (limits and
        non-zero usage).
        """
        nodes = tuple(
            (
                name,
                e.view,
                tuple(
                    (
                        d.vendor,
                        d.id,
                        d.index,
                        d.type,
                        d.numa,
                        d.mode,
                        d.health,
                        d.count,
                        d.totalmem,
                        d.totalcore,
                        d.used,
                        d.usedmem,
                        d.usedcores,
                    )
                    for d in e.flat
                ),
                (e.used, e.count, e.usedcores, e.totalcore, e.usedmem, e.totalmem, e.score),
            )
            for name, e in sorted(self._nodes.items())
        )
        pods = tuple(
            (uid, r.node, tuple(sorted(r.collapsed.items())), r.quota_usage, r.app_only)
            for uid, r in sorted(self._pods.items())
        )
        ledger = tuple(
            (ns, res, e.used, e.limit, e.limit_set)
            for ns, entries in sorted(self.quota.entries.items())
            for res, e in sorted(entries.items())
            if e.used or e.limit_set
        )
        return (nodes, pods, ledger)

    def snapshot_equals(self, other: ClusterState) -> bool:
        """Whether both states would schedule identically (same :meth:`fingerprint`)."""
        return self.fingerprint() == other.fingerprint()


def _quota_amounts(
    v: vendor.DeviceVendor, devs: Sequence[models.CollapsedDevice]
) -> list[tuple[str, int]]:
    out = []
    mem = sum(c.usedmem for c in devs)
    cores = sum(c.usedcores for c in devs)
    if v.resources.memory and mem:
        out.append((v.resources.memory, mem))
    if v.resources.cores and cores:
        out.append((v.resources.cores, cores))
    return out
