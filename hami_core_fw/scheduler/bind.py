"""``/bind``: node lock, a per-node wait queue, and the Binding that carries the allocation.

HAMi patches the allocation onto the pod in filter and binds in bind (hami-compat.md 4.4, 4.11).
We keep the decision in memory from filter to bind (:class:`~hami_core_fw.scheduler.cluster.Cluster`
reservations) and write it **through the Binding's ``metadata.annotations``**, which the API server
merges into the pod in the same write that sets ``spec.nodeName`` (k8s-protocols.md 4.1): a pod is
never bound without its allocation, nor annotated without being bound. The annotations are
``hami.io/vgpu-node``, ``hami.io/vgpu-time`` (the filter decision), ``hami.io/bind-phase:
allocating``, ``hami.io/bind-time`` and every vendor's ``encode_allocation``.

The label ``hami.io/vgpu-node`` (the monitor selects pods by it) cannot ride on the Binding, so it
is patched onto the pod **before** the Binding: a pod that is bound always carries it, and a bind
that fails afterwards leaves only a label that the next bind overwrites (it is removed on a best-
effort basis).

Order of one bind:

1. refuse at once when this replica does not lead, when the pod has no reservation (filtered by
   another process, expired, released) or its reservation is for another node;
2. enter the node's queue (FIFO, at most ``queue_limit`` waiting, else refused);
3. take the node lock (``hami.io/mutex.lock``, :mod:`hami_core_fw.k8s.lock`) for every lock key of
   every vendor the pod uses in **any** container, init containers included (Q23 fixed), in
   CommonWord order. A lock held by another live pod is **waited for**: the bind sleeps until the
   node changes (watch event) and tries again, up to ``node_lock_wait_seconds`` (25 s, below the
   extender's 30 s ``httpTimeout``);
4. check leadership and the reservation again, label, bind;
5. on any failure release the locks taken (reverse order), drop the reservation, record
   ``BindingFailed`` and answer the error; on success record ``BindingSucceed``. The lock stays
   held: the node's device plugin releases it after ``Allocate`` (or it expires).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from hami_core_fw import _names, codec, config, errors, plugins
from hami_core_fw.k8s import api, events, lock, lock_takeover
from hami_core_fw.scheduler import cluster, extender

logger = logging.getLogger(__name__)

BINDING_FAILED: Final = "BindingFailed"
BINDING_SUCCEED: Final = "BindingSucceed"
#: the longest single wait for a node change before the lock is tried again anyway
_RECHECK_S: Final = 5.0
#: an unbound pod's lock older than this is stale: binding takes milliseconds after locking
STALE_LOCK_GRACE_S: Final = 10.0

Json = dict[str, Any]
BindObserver = Callable[[str], None]


class BindError(errors.HamiError):
    """A bind that cannot go ahead; ``reason`` is a short label for metrics."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(slots=True)
class _NodeQueue:
    lock: asyncio.Lock
    waiting: int = 0


class Binder:
    """Binds reserved pods, one node lock holder at a time per node.

    :param is_leader: read before the bind starts and again right before the Binding is written
    :param queue_limit: binds allowed to wait for one node at the same time
    :param observe: called with ``"success"`` or the failure reason label after every bind
    """

    def __init__(
        self,
        cl: cluster.Cluster,
        host: plugins.PluginHost,
        kube: api.Kube,
        settings: config.SchedulerSettings,
        recorder: events.EventRecorder,
        *,
        is_leader: Callable[[], bool],
        queue_limit: int = 128,
        observe: BindObserver | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cl
        self.host = host
        self.kube = kube
        self.settings = settings
        self.recorder = recorder
        self._is_leader = is_leader
        self.queue_limit = queue_limit
        self._observe = observe
        self._now = now
        self._queues: dict[str, _NodeQueue] = {}

    def waiting(self, node: str) -> int:
        """How many binds wait for ``node`` right now."""
        q = self._queues.get(node)
        return q.waiting if q is not None else 0

    async def bind(self, args: extender.BindingArgs) -> Json:
        """Handle one ``ExtenderBindingArgs``; always answers an ``ExtenderBindingResult``."""
        ref = events.ObjectRef(args.pod_namespace, args.pod_name, args.pod_uid)
        try:
            await self._bind(args)
        except BindError as err:
            logger.warning(
                "bind %s/%s -> %s failed: %s", args.pod_namespace, args.pod_name, args.node, err
            )
            if err.reason != "not_leader":
                self.recorder.record(ref, events.WARNING, BINDING_FAILED, str(err))
            self._note(err.reason)
            return {"Error": str(err)}
        except (api.ApiError, errors.HamiError) as err:
            logger.warning(
                "bind %s/%s -> %s failed: %s", args.pod_namespace, args.pod_name, args.node, err
            )
            self.recorder.record(ref, events.WARNING, BINDING_FAILED, str(err))
            self._note("api_error")
            return {"Error": str(err)}
        self.recorder.record(
            ref,
            events.NORMAL,
            BINDING_SUCCEED,
            f"Successfully binding node [{args.node}] to {args.pod_namespace}/{args.pod_name}",
        )
        self._note("success")
        return {"Error": ""}

    def _note(self, outcome: str) -> None:
        if self._observe is not None:
            self._observe(outcome)

    def _uid(self, args: extender.BindingArgs) -> str:
        if args.pod_uid:
            return args.pod_uid
        pod = self.cluster.pod_by_key(args.pod_namespace, args.pod_name)
        return pod.uid if pod is not None else ""

    async def _bind(self, args: extender.BindingArgs) -> None:
        if not self._is_leader():
            raise BindError(
                "this scheduler replica is not the leader; bind refused", reason="not_leader"
            )
        uid = self._uid(args)
        key = f"{args.pod_namespace}/{args.pod_name}"
        res = self.cluster.reservations.get(uid)
        if res is None:
            pod = self.cluster.pods.get(uid)
            if (
                pod is not None
                and pod.node_name == args.node
                and pod.annotations.get(_names.ANNOTATION_VGPU_NODE) == args.node
            ):
                return  # a retried bind that already succeeded
            raise BindError(
                f"pod {key} (uid {uid or '?'}) has no device reservation in this scheduler: it was "
                "filtered by another scheduler process or its reservation expired; it will be "
                "filtered again",
                reason="no_reservation",
            )
        if res.node != args.node:
            self.cluster.release(uid)
            raise BindError(
                f"pod {key} is reserved on node {res.node!r}, not on {args.node!r}",
                reason="node_mismatch",
            )
        if args.node not in self.cluster.nodes:
            self.cluster.release(uid)
            raise BindError(
                f"node {args.node!r} is not known to the scheduler", reason="unknown_node"
            )
        deadline = time.monotonic() + self.settings.node_lock_wait_seconds
        queue = self._queues.get(args.node)
        if queue is None:
            queue = self._queues[args.node] = _NodeQueue(asyncio.Lock())
        if queue.waiting >= self.queue_limit:
            self.cluster.release(uid)
            raise BindError(
                f"node {args.node!r} has {queue.waiting} binds waiting for its lock (limit "
                f"{self.queue_limit}); pod {key} will be retried",
                reason="queue_full",
            )
        queue.waiting += 1
        try:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    await queue.lock.acquire()
            except TimeoutError as err:
                self.cluster.release(uid)
                raise BindError(
                    f"pod {key} waited {self.settings.node_lock_wait_seconds:.0f}s in the bind "
                    f"queue of node {args.node!r}",
                    reason="lock_timeout",
                ) from err
            try:
                await self._locked_bind(res, deadline)
            finally:
                queue.lock.release()
        finally:
            queue.waiting -= 1

    def _lock_keys(self, res: cluster.Reservation) -> list[str]:
        keys: list[str] = []
        for cw in res.vendors:
            v = self.host.vendor_by_common_word(cw)
            if v is not None and v.keys.lock and v.keys.lock not in keys:
                keys.append(v.keys.lock)
        return keys

    async def _locked_bind(self, res: cluster.Reservation, deadline: float) -> None:
        key = f"{res.namespace}/{res.name}"
        taken: list[str] = []
        try:
            for lock_key in self._lock_keys(res):
                await self._take_lock(res, lock_key, deadline)
                taken.append(lock_key)
            self._still_ours(res, key)
            await self.kube.patch_pod_annotations(
                res.namespace, res.name, {}, labels={_names.LABEL_VGPU_NODE: res.node}
            )
            await self.kube.bind_pod(
                res.namespace, res.name, res.uid, res.node, annotations=self._annotations(res)
            )
            res.bound = True
        except BaseException:
            self.cluster.release(res.uid)
            await self._undo(res, taken)
            raise

    def _still_ours(self, res: cluster.Reservation, key: str) -> None:
        """Leadership and the reservation, checked right before anything is written."""
        if not self._is_leader():
            raise BindError(
                f"lost leadership while binding pod {key}; bind abandoned",
                reason="lost_leadership",
            )
        if self.cluster.reservations.get(res.uid) is not res:
            raise BindError(
                f"the reservation of pod {key} was released while it waited (pod deleted?)",
                reason="no_reservation",
            )

    def _annotations(self, res: cluster.Reservation) -> dict[str, str]:
        out = {
            _names.ANNOTATION_VGPU_NODE: res.node,
            _names.ANNOTATION_VGPU_TIME: str(res.vgpu_time),
            _names.ANNOTATION_BIND_PHASE: _names.BIND_PHASE_ALLOCATING,
            _names.ANNOTATION_BIND_TIME: str(int(self._now())),
        }
        for cw, entries in sorted(res.devices.items()):
            v = self.host.vendor_by_common_word(cw)
            if v is not None and any(entries):
                out.update(v.encode_allocation(entries))
        return out

    async def _undo(self, res: cluster.Reservation, taken: list[str]) -> None:
        for lock_key in reversed(taken):
            try:
                await lock.release_node_lock(
                    self.kube, res.node, res.namespace, res.name, key=lock_key
                )
            except (api.ApiError, errors.HamiError) as err:
                logger.warning("could not release %s on %s: %s", lock_key, res.node, err)
        try:
            await self.kube.patch_pod_annotations(
                res.namespace, res.name, {}, labels={_names.LABEL_VGPU_NODE: None}
            )
        except api.ApiError as err:
            logger.debug(
                "could not remove the node label of %s/%s: %s", res.namespace, res.name, err
            )

    def _lock_state(self, res: cluster.Reservation, lock_key: str) -> tuple[str, str, str]:
        """The lock as the caches see it: (state, holder, value).

        ``free``: absent, ours, expired or owner gone (worth trying the protocol); ``held``: a
        live pod holds it (wait); ``stale``: its owner exists but is not bound to this node (bound
        elsewhere, or unbound and the lock older than :data:`STALE_LOCK_GRACE_S` with no bind of
        ours for this node in flight) - left behind by a scheduler that died between lock and
        Binding.
        """
        view = self.cluster.nodes.get(res.node)
        value = view.annotations.get(lock_key) if view is not None else None
        if value is None:
            return "free", "", ""
        try:
            held = codec.decode_node_lock(lock_key, value)
        except errors.CodecError:
            return "free", "", value  # let the lock protocol report it
        if held.namespace == res.namespace and held.name == res.name:
            return "free", "", value
        age = (dt.datetime.now(dt.UTC) - held.time).total_seconds()
        if age > self.settings.node_lock_timeout_seconds:
            return "free", "", value
        if held.legacy:
            return "held", "a legacy lock", value
        holder = f"{held.namespace}/{held.name}"
        owner = self.cluster.pod_by_key(held.namespace, held.name)
        if owner is None:
            return "free", holder, value  # owner gone (as far as we know): the protocol decides
        if owner.node_name == res.node:
            return "held", holder, value  # bound here: the device plugin releases it
        if owner.node_name:
            return "stale", holder, value  # bound to another node
        ours = self.cluster.reservations.get(owner.uid)
        if age > STALE_LOCK_GRACE_S and (ours is None or ours.node != res.node):
            return "stale", holder, value
        return "held", holder, value

    async def _take_lock(self, res: cluster.Reservation, lock_key: str, deadline: float) -> None:
        holder = ""
        while True:
            if not self._is_leader():
                raise BindError(
                    f"lost leadership while pod {res.namespace}/{res.name} waited for the lock "
                    f"of node {res.node!r}",
                    reason="lost_leadership",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BindError(
                    f"node {res.node!r} stayed locked ({lock_key}) by {holder or 'another pod'} "
                    f"for {self.settings.node_lock_wait_seconds:.0f}s; pod "
                    f"{res.namespace}/{res.name} will be retried",
                    reason="lock_timeout",
                )
            seen = self.cluster.node_generation(res.node)
            status, holder, value = self._lock_state(res, lock_key)
            if status == "stale":
                logger.warning(
                    "node %s: lock %r of %s is stale (its pod is not bound there); removing it",
                    res.node,
                    value,
                    holder,
                )
                await lock_takeover.remove_lock_value(self.kube, res.node, lock_key, value)
                status = "free"
            if status == "free":
                try:
                    await lock.acquire_node_lock(
                        self.kube,
                        res.node,
                        res.namespace,
                        res.name,
                        key=lock_key,
                        expiry_s=self.settings.node_lock_timeout_seconds,
                    )
                except lock.LockContended as err:
                    holder = str(err)
                else:
                    return
            await self.cluster.wait_node_change(res.node, min(remaining, _RECHECK_S), since=seen)
