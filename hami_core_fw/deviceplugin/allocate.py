"""``Allocate`` with HAMi's semantics (hami-compat.md 9.2), for any vendor.

The kubelet's request carries only device ids - no pod (k8s-protocols.md 2.5). The scheduler wrote
its decision into the pod's ``...-devices-to-allocate`` annotation and took the node lock
(``hami.io/mutex.lock = <time>,<ns>,<pod>``), so :class:`Allocator` finds "the pod being admitted"
through the lock, falling back to listing the node's pending pods, and serves its first container
entry that is not yet served:

1. the entry's device count must equal the kubelet's (else "device number not matched");
2. the vendor's :meth:`~hami_core_fw.vendor.DeviceVendor.container_runtime` gives env and mounts;
   the per-container host directory behind every read-write mount is created (mode 0777);
3. the to-allocate annotation is re-written with that entry emptied; when nothing of this vendor is
   left, ``hami.io/bind-phase=success`` goes into the same patch and the node lock is released.

On every error the pod gets ``hami.io/bind-phase=failed`` and the lock is released (owner-checked),
then the error goes back to the kubelet, which fails the pod's admission. Calls are serialised:
the kubelet may call ``Allocate`` concurrently, and each call must see the previous one's patch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hami_core_fw import _names, codec, errors, models
from hami_core_fw import vendor as hv
from hami_core_fw.deviceplugin import server
from hami_core_fw.k8s import api, lock

logger = logging.getLogger(__name__)


class AllocationFailed(errors.PermanentError):
    """``Allocate`` could not be served; the pod (when known) is marked ``bind-phase=failed``."""


@dataclass(frozen=True, slots=True)
class _Target:
    pod: models.PodView
    entries: models.PodSingleDevices


@dataclass(slots=True)
class _Attempt:
    """The pod an ``Allocate`` call is about, once known (the one to mark failed)."""

    pod: models.PodView | None = None


class Allocator:
    """Serves ``Allocate``/``GetPreferredAllocation`` for one vendor on one node.

    :param kube: API client
    :param vendor: the vendor (configured for this node)
    :param node_name: this node
    :param hook_path: host library root (HAMi ``HOOK_PATH``)
    :param preferred_allocation: kubelet replicas decide the physical device (9.3); otherwise the
        annotation decides and the kubelet's replica choice is irrelevant
    :param shim_library: interposer file name inside ``<hook_path>/vgpu``
    """

    def __init__(
        self,
        kube: api.Kube,
        vendor: hv.DeviceVendor,
        *,
        node_name: str,
        hook_path: str = "/usr/local",
        preferred_allocation: bool = False,
        shim_library: str = "libvgpu.so",
    ) -> None:
        if not vendor.keys.to_allocate:
            raise errors.ConfigError(
                [f"vendor {vendor.vendor_id!r} has no to-allocate annotation key"],
                source="device plugin",
            )
        self._kube = kube
        self._vendor = vendor
        self._node = node_name
        self._hook = hook_path
        self._preferred = preferred_allocation
        self._shim = shim_library
        self._mutex = asyncio.Lock()
        #: seconds each served ``Allocate`` took (successful calls)
        self.durations: list[float] = []

    # ------------------------------------------------------------------ finding the pod

    def _entries(self, pod: models.PodView) -> models.PodSingleDevices | None:
        value = pod.annotations.get(self._vendor.keys.to_allocate)
        if value is None:
            return None
        return codec.decode_pod_devices(self._vendor.keys.to_allocate, value)

    def _pending(self, pod: models.PodView) -> _Target | None:
        entries = self._entries(pod)
        if entries is None or not any(entries):
            return None
        return _Target(pod, entries)

    async def _lock_pod(self) -> models.PodView | None:
        node = await self._kube.get_node(self._node)
        value = (node.get("metadata", {}).get("annotations") or {}).get(self._vendor.keys.lock)
        if not value:
            return None
        try:
            owner = codec.decode_node_lock(self._vendor.keys.lock, value)
        except errors.CodecError as err:
            logger.warning("node %s: ignoring unparsable lock: %s", self._node, err)
            return None
        if owner.legacy:
            return None
        try:
            return models.PodView.from_manifest(
                await self._kube.get_pod(owner.namespace, owner.name)
            )
        except api.NotFound:
            logger.info(
                "node %s: the lock owner %s/%s is gone", self._node, owner.namespace, owner.name
            )
            return None

    async def _listed(self) -> list[models.PodView]:
        doc = await self._kube.list(
            "/api/v1/pods", field_selector=f"spec.nodeName={self._node},status.phase=Pending"
        )
        out = []
        for item in doc.get("items") or ():
            pod = models.PodView.from_manifest(item)
            ann = pod.annotations
            if (
                _names.ANNOTATION_BIND_TIME in ann
                and ann.get(_names.ANNOTATION_BIND_PHASE)
                in (_names.BIND_PHASE_ALLOCATING, _names.BIND_PHASE_SUCCESS)
                and ann.get(_names.ANNOTATION_VGPU_NODE) == self._node
            ):
                out.append(pod)
        return out

    async def _find(self) -> tuple[_Target | None, models.PodView | None]:
        """The pod to serve, and the pod to blame when there is none (the lock owner)."""
        owner = await self._lock_pod()
        if owner is not None:
            target = self._pending(owner)
            if target is not None:
                return target, owner
        for pod in await self._listed():
            target = self._pending(pod)
            if target is not None:
                return target, pod
        blame = owner if owner is not None and self._entries(owner) is not None else None
        return None, blame

    # ------------------------------------------------------------------ serving

    def _container(
        self, pod: models.PodView, entries: models.PodSingleDevices, index: int
    ) -> models.ContainerView:
        """The container of entry ``index``.

        Entries are one per container, init first (3.4). HAMi v2.10 pads only containers that use
        *some* vendor and under the wrong key (Q1), so its strings can have fewer entries than the
        pod has containers; then the k-th non-empty entry belongs to the k-th container using this
        vendor.
        """
        containers = pod.all_containers
        if len(entries) == len(containers) and self._uses(containers[index]):
            return containers[index]
        users = [c for c in containers if self._uses(c)]
        ordinal = sum(1 for e in entries[:index] if e)
        if ordinal < len(users):
            return users[ordinal]
        if index < len(containers):
            return containers[index]
        raise AllocationFailed(
            f"pod {pod.key!r}: allocation entry {index} has no matching container "
            f"({len(containers)} containers)"
        )

    def _uses(self, container: models.ContainerView) -> bool:
        return container.resource(self._vendor.resources.count) is not None

    def _runtime(
        self,
        pod: models.PodView,
        container: models.ContainerView,
        devices: models.ContainerDevices,
    ) -> models.ContainerRuntime:
        ctx = hv.AllocateContext(
            node_name=self._node,
            hook_path=self._hook,
            cache_file=str(uuid.uuid4()),
            shim_library=self._shim,
        )
        runtime = self._vendor.container_runtime(devices, container, pod, ctx)
        for mount in runtime.mounts:
            if not mount.read_only:
                _make_shared_dir(Path(mount.host_path))
        return runtime

    async def _serve(
        self, target: _Target, requests: Sequence[Sequence[str]]
    ) -> tuple[list[models.ContainerRuntime], models.PodSingleDevices]:
        entries = list(target.entries)
        out = []
        for ids in requests:
            index = next((i for i, e in enumerate(entries) if e), None)
            if index is None:
                raise AllocationFailed(
                    f"pod {target.pod.key!r}: no {self._vendor.common_word} devices left to "
                    f"allocate for request {list(ids)}"
                )
            devices = entries[index]
            if len(devices) != len(ids):
                raise AllocationFailed(
                    f"pod {target.pod.key!r}: device number not matched: the kubelet asks for "
                    f"{len(ids)} device(s) {list(ids)}, the scheduler reserved {len(devices)} "
                    f"({codec.encode_container_devices(devices)!r})"
                )
            if self._preferred:
                devices = tuple(
                    replace(d, uuid=server.physical_id(i))
                    for d, i in zip(devices, ids, strict=True)
                )
            container = self._container(target.pod, target.entries, index)
            out.append(self._runtime(target.pod, container, devices))
            entries[index] = ()
        return out, tuple(entries)

    async def _allocate(
        self, requests: Sequence[Sequence[str]], attempt: _Attempt
    ) -> list[models.ContainerRuntime]:
        target, attempt.pod = await self._find()
        if target is None:
            raise AllocationFailed(
                f"no pending pod with {self._vendor.common_word} devices to allocate on "
                f"node {self._node!r}"
            )
        runtimes, remaining = await self._serve(target, requests)
        await self._finish(target.pod, remaining)
        return runtimes

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[models.ContainerRuntime]:
        """Serve one ``AllocateRequest`` (one device id list per container)."""
        async with self._mutex:
            began = time.perf_counter()
            attempt = _Attempt()
            try:
                runtimes = await self._allocate(requests, attempt)
            except Exception as err:  # every error path: bind-phase=failed + lock released
                await self._fail(attempt.pod, err)
                if isinstance(err, errors.HamiError):
                    raise
                raise AllocationFailed(f"allocation failed: {type(err).__name__}: {err}") from err
            self.durations.append(time.perf_counter() - began)
            return runtimes

    async def _finish(self, pod: models.PodView, remaining: models.PodSingleDevices) -> None:
        annotations: dict[str, str | None] = {
            self._vendor.keys.to_allocate: codec.encode_pod_devices(remaining)
        }
        done = not any(remaining)
        if done:
            annotations[_names.ANNOTATION_BIND_PHASE] = _names.BIND_PHASE_SUCCESS
        await self._kube.patch_pod_annotations(pod.namespace, pod.name, annotations)
        logger.info(
            "served pod %s on %s (%s)",
            pod.key,
            self._node,
            "all containers" if done else "more containers to come",
        )
        if done:
            await lock.release_node_lock(
                self._kube, self._node, pod.namespace, pod.name, key=self._vendor.keys.lock
            )

    async def _fail(self, pod: models.PodView | None, err: BaseException) -> None:
        logger.error("allocation on node %s failed: %s", self._node, err)
        if pod is None:
            return
        try:
            await self._kube.patch_pod_annotations(
                pod.namespace,
                pod.name,
                {_names.ANNOTATION_BIND_PHASE: _names.BIND_PHASE_FAILED},
            )
        except errors.HamiError as patch_err:
            logger.error("could not mark pod %s failed: %s", pod.key, patch_err)  # noqa: TRY400
        try:
            await lock.release_node_lock(
                self._kube, self._node, pod.namespace, pod.name, key=self._vendor.keys.lock
            )
        except errors.HamiError as lock_err:
            logger.error("could not release the lock of %s: %s", self._node, lock_err)  # noqa: TRY400

    # ------------------------------------------------------------------ preferred allocation

    async def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """Replicas of the GPUs the scheduler annotated for the next container (9.3).

        Never fails: without a pending pod the kubelet's own order is kept.
        """
        chosen = list(must_include)
        async with self._mutex:
            try:
                target, _ = await self._find()
            except errors.HamiError as err:
                logger.warning("GetPreferredAllocation: cannot read the pending pod: %s", err)
                target = None
        if target is not None:
            entry = next(e for e in target.entries if e)
            for dev in entry:
                pick = next(
                    (i for i in available if server.physical_id(i) == dev.uuid and i not in chosen),
                    None,
                )
                if pick is not None and len(chosen) < size:
                    chosen.append(pick)
        for i in available:
            if len(chosen) >= size:
                break
            if i not in chosen:
                chosen.append(i)
        return chosen

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        """Nothing to prepare (``pre_start_required`` is never advertised)."""


def _make_shared_dir(path: Path) -> None:
    """Create a directory every container user may write (HAMi creates them 0777)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o777)  # noqa: S103 - containers of any uid share it, as in HAMi (9.2)
    except PermissionError as err:
        # an existing directory of another owner (/tmp/vgpulock) keeps its mode
        logger.warning("cannot make %s world-writable: %s", path, err)
