"""The scheduler process's view of the cluster, kept from watch events.

:class:`Cluster` owns the incremental :class:`~hami_core_fw.scheduler.state.ClusterState` and
applies the typed events of the :mod:`hami_core_fw.k8s.cache` caches to it (hami-compat.md 4.3):

* **nodes** go through the :class:`~hami_core_fw.scheduler.registry.Registry` (vendors'
  ``check_health`` and ``parse_node``); handshake annotations are written only by the leader;
* **pods** carrying ``hami.io/vgpu-node`` are tracked with every vendor's ``decode_allocation``;
  a pod whose allocation does not decode is logged and not tracked; pods that Succeeded or
  Failed, and deleted pods, release their usage; a ``deletionTimestamp`` keeps the reservation
  until the pod is gone; when every init container has succeeded the state shrinks the pod to
  app-only usage;
* **resource quotas** of a namespace are merged (the smallest limit of each resource wins) and
  handed to the state.

Filter decisions are reserved here too (:meth:`Cluster.reserve`): the pod holds its devices in
memory from filter until the bind writes the allocation onto the pod, the watch brings it back,
and the pod is tracked from its annotations like any other. A reservation that never sees a bind
expires after ``reservation_ttl_s``.

Everything runs on one event loop; nothing here awaits, so a filter call sees a consistent state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hami_core_fw import _names, errors, models, plugins
from hami_core_fw.k8s import cache
from hami_core_fw.scheduler import registry, state

logger = logging.getLogger(__name__)

#: node annotation writes: (node name, annotations) -> scheduled by the process
PatchNode = Callable[[str, Mapping[str, str | None]], None]


@dataclass(slots=True)
class Reservation:
    """A filter decision waiting for its bind.

    :param vgpu_time: the Unix time of the decision (``hami.io/vgpu-time``)
    :param created: monotonic time of the decision, for expiry
    :param bound: the bind succeeded; kept until the watch shows the annotations
    """

    uid: str
    namespace: str
    name: str
    node: str
    devices: models.PodDevices
    vgpu_time: int
    created: float
    bound: bool = False
    vendors: tuple[str, ...] = field(default=())


class Cluster:
    """Cluster state fed by watch events, plus filter reservations and node-change signals.

    :param host: the plugin host
    :param node_selector: only nodes with these labels are registered
    :param patch_node: writes node annotations (handshakes); called only while ``leader``
    :param reservation_ttl_s: an unbound reservation older than this is dropped
    """

    def __init__(
        self,
        host: plugins.PluginHost,
        *,
        node_selector: Mapping[str, str] | None = None,
        patch_node: PatchNode | None = None,
        reservation_ttl_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.state = state.ClusterState(host)
        self.registry = registry.Registry(host, selector=node_selector)
        self.patch_node = patch_node
        self.reservation_ttl_s = reservation_ttl_s
        self._clock = clock
        self.leader = False
        self.nodes: dict[str, models.NodeView] = {}
        self.pods: dict[str, models.PodView] = {}
        self._uid_by_key: dict[str, str] = {}
        self.reservations: dict[str, Reservation] = {}
        self._quotas: dict[str, dict[str, Mapping[str, int]]] = {}
        self._node_events: dict[str, asyncio.Event] = {}
        self._node_gen: dict[str, int] = {}
        #: pods whose allocation did not decode (uid -> error), for logs and tests
        self.undecodable: dict[str, str] = {}

    # ------------------------------------------------------------------ nodes

    def on_node(self, event: cache.CacheEvent[models.NodeView]) -> None:
        """Apply a node cache event."""
        view = event.obj
        name = view.name
        if event.kind == cache.EventKind.DELETED:
            self.nodes.pop(name, None)
            self.registry.forget(name)
            self.state.remove_node(name)
        else:
            self.nodes[name] = view
            self.register(view)
        self._signal(name)

    def register(self, view: models.NodeView) -> None:
        """One registration pass over ``view`` (node event, periodic pass, new leader)."""
        reg = self.registry.evaluate(view)
        if reg.patch and self.leader and self.patch_node is not None:
            self.patch_node(view.name, reg.patch)
        if not reg.devices:
            if self.state.node(view.name) is not None:
                logger.info("node %s: no device registered any more", view.name)
                self.state.remove_node(view.name)
            return
        # node status heartbeats do not change the view: only real changes rebuild the entry
        if reg.changed or self.state.node(view.name) != view:
            if self.state.node(view.name) is None:
                logger.info(
                    "node %s registered: %s",
                    view.name,
                    ", ".join(f"{cw} x{len(d)}" for cw, d in sorted(reg.devices.items())),
                )
            self.state.set_node(view, reg.devices)

    def registration_pass(self) -> None:
        """Re-evaluate every known node (HAMi: every 15 s and on becoming leader)."""
        for view in list(self.nodes.values()):
            self.register(view)

    def node_generation(self, name: str) -> int:
        """A counter bumped by every event of node ``name`` (see :meth:`wait_node_change`)."""
        return self._node_gen.get(name, 0)

    def _signal(self, name: str) -> None:
        self._node_gen[name] = self._node_gen.get(name, 0) + 1
        event = self._node_events.pop(name, None)
        if event is not None:
            event.set()

    async def wait_node_change(
        self, name: str, timeout_s: float, *, since: int | None = None
    ) -> bool:
        """Wait for an event of node ``name`` (or ``timeout_s``); True if one came.

        :param since: a :meth:`node_generation` read earlier: return at once if the node changed
            after it (an event that arrived while the caller was awaiting something else)
        """
        if since is not None and self.node_generation(name) != since:
            return True
        event = self._node_events.get(name)
        if event is None:
            event = self._node_events[name] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    def wake_all(self) -> None:
        """Wake every waiter (e.g. leadership changed)."""
        for name in list(self._node_events):
            event = self._node_events.pop(name)
            event.set()

    # ------------------------------------------------------------------ pods

    def pod_by_key(self, namespace: str, name: str) -> models.PodView | None:
        """The cached pod ``namespace/name``."""
        uid = self._uid_by_key.get(f"{namespace}/{name}")
        return self.pods.get(uid) if uid is not None else None

    def on_pod(self, event: cache.CacheEvent[models.PodView]) -> None:
        """Apply a pod cache event."""
        pod = event.obj
        uid = event.key
        if event.kind == cache.EventKind.DELETED:
            self.pods.pop(uid, None)
            if self._uid_by_key.get(pod.key) == uid:
                del self._uid_by_key[pod.key]
            self.reservations.pop(uid, None)
            self.undecodable.pop(uid, None)
            self.state.remove_pod(uid)
            return
        self.pods[uid] = pod
        self._uid_by_key[pod.key] = uid
        self.track(pod)

    def decode(self, pod: models.PodView) -> models.PodDevices:
        """Every vendor's allocation on the pod (vendors without one are left out).

        :raises CodecError: one of the allocations does not decode
        """
        devices: dict[str, models.PodSingleDevices] = {}
        for v in self.host.vendors.values():
            entries = v.decode_allocation(pod.annotations)
            if entries is not None:
                devices[v.common_word] = entries
        return devices

    def track(self, pod: models.PodView) -> None:
        """Bring the state in line with one pod's current view."""
        uid = pod.uid
        if pod.phase in state.TERMINAL_PHASES:
            self.reservations.pop(uid, None)
            self.state.remove_pod(uid)
            return
        node = pod.annotations.get(_names.ANNOTATION_VGPU_NODE)
        if not node:
            if uid not in self.reservations:
                self.state.remove_pod(uid)
            return
        try:
            devices = self.decode(pod)
        except errors.CodecError as err:
            if self.undecodable.get(uid) != str(err):
                logger.warning("pod %s: allocation does not decode, not tracked: %s", pod.key, err)
            self.undecodable[uid] = str(err)
            self.reservations.pop(uid, None)
            self.state.remove_pod(uid)
            return
        self.undecodable.pop(uid, None)
        if not devices:
            # hami.io/vgpu-node without any allocation: nothing to hold
            self.reservations.pop(uid, None)
            self.state.remove_pod(uid)
            return
        self.reservations.pop(uid, None)
        record = self.state.reservation(uid)
        if (
            record is not None
            and record.node == node
            and record.app_only == pod.init_finished
            and dict(record.devices) == {k: tuple(v) for k, v in devices.items()}
        ):
            record.pod = pod
            return
        self.state.set_pod(pod, node, devices)

    # ------------------------------------------------------------------ quotas

    def on_quota(self, event: cache.CacheEvent[cache.QuotaView]) -> None:
        """Apply a resource quota event (limits of all quotas of a namespace merged)."""
        quota = event.obj
        per_ns = self._quotas.setdefault(quota.namespace, {})
        if event.kind == cache.EventKind.DELETED:
            per_ns.pop(quota.name, None)
        else:
            per_ns[quota.name] = quota.hard
        merged: dict[str, int] = {}
        for hard in per_ns.values():
            for key, value in hard.items():
                merged[key] = min(value, merged.get(key, value))
        if not per_ns:
            del self._quotas[quota.namespace]
        self.state.set_quota(quota.namespace, merged)

    # ------------------------------------------------------------------ reservations

    def reserve(
        self, pod: models.PodView, node: str, devices: models.PodDevices, *, now_unix: int
    ) -> Reservation:
        """Hold ``devices`` on ``node`` for ``pod`` until its bind (replaces an older hold)."""
        self.state.set_pod(pod, node, devices)
        res = Reservation(
            uid=pod.uid,
            namespace=pod.namespace,
            name=pod.name,
            node=node,
            devices=devices,
            vgpu_time=now_unix,
            created=self._clock(),
            vendors=tuple(sorted(cw for cw, entries in devices.items() if any(entries))),
        )
        self.reservations[pod.uid] = res
        return res

    def release(self, uid: str) -> None:
        """Drop a reservation that will not be bound (bind failed, pod gone)."""
        res = self.reservations.pop(uid, None)
        if res is not None and not res.bound:
            self.state.remove_pod(uid)

    def expire_reservations(self) -> list[str]:
        """Drop unbound reservations older than the TTL; returns their uids."""
        now = self._clock()
        stale = [
            uid
            for uid, res in self.reservations.items()
            if not res.bound and now - res.created > self.reservation_ttl_s
        ]
        for uid in stale:
            res = self.reservations[uid]
            logger.info(
                "reservation of pod %s/%s on %s expired without a bind",
                res.namespace,
                res.name,
                res.node,
            )
            self.release(uid)
        return stale
