"""The NVML backend of the NVIDIA plugin: the ONLY module that touches ``pynvml``.

``pynvml`` (NVIDIA's ``nvidia-ml-py``) loads ``libnvidia-ml.so.1`` through the normal library
search path, so tests put the stand-in NVML of ``shims/testing`` on ``LD_LIBRARY_PATH`` and this
code runs unchanged. The module imports ``pynvml`` inside functions only: the plugin's entry point
loads on machines without NVIDIA software (style.md 5).

Discovery (hami-compat.md 9.1): per GPU the UUID, NVML index, ``type`` = NVML name with the
``NVIDIA-`` prefix rule, ``devmem`` = total MiB x memory scaling (``preConfiguredDeviceMemory``
when NVML does not support the memory query; skipped when neither), ``devcore`` = 100 x core
scaling, ``numa`` from ``<sysfs>/bus/pci/devices/<bus id>/numa_node`` (negative -> 0), ``count``
= split count, ``mode`` = the node's operating mode; GPUs in the node's ``filterdevices`` are
skipped. Health: critical XID and double-bit ECC events make a GPU unhealthy unless the XID is an
application error (13, 31, 43, 45, 68, 109 by default; ``DP_DISABLE_HEALTHCHECKS`` /
``DP_ENABLE_HEALTHCHECKS`` adjust the set). An unhealthy GPU stays unhealthy (no recovery), as in
HAMi.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from hami_core_fw import errors, models
from hami_nvidia import settings as nv_settings

logger = logging.getLogger(__name__)

MIB: Final = 1 << 20
#: NVLink links examined per GPU (HAMi: 1-18 links)
NVLINK_LINKS: Final = 18
#: P2P level -> score (hami-compat.md 9.1); keys are NVML_TOPOLOGY_* values
LEVEL_SCORES: Final = {0: 60, 10: 50, 20: 40, 30: 30, 40: 20, 50: 10}
NVLINK_SCORE: Final = 100


def _nvml() -> ModuleType:
    import pynvml  # noqa: PLC0415 - the vendor library is imported lazily (style.md 5)

    module: ModuleType = pynvml
    return module


def model_type(nvml_name: str) -> str:
    """The registered ``type``: the NVML name prefixed with ``NVIDIA-`` unless it starts so."""
    return nvml_name if nvml_name.startswith("NVIDIA") else f"NVIDIA-{nvml_name}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pair_score(level: int | None, links_ab: int, links_ba: int) -> int:
    """Topology score of a GPU pair: P2P level score + NVLink count x 100.

    Link counts seen from both sides must agree; asymmetric link data scores 0 (HAMi raises the
    ``AsymmetricGPUP2PLink`` event then).
    """
    if links_ab != links_ba:
        return 0
    base = LEVEL_SCORES.get(level, 0) if level is not None else 0
    return base + NVLINK_SCORE * links_ab


def sysfs_bus_id(nvml_bus_id: str) -> str:
    """``00000000:3B:00.0`` (NVML) -> ``0000:3b:00.0`` (sysfs)."""
    domain, _, rest = nvml_bus_id.partition(":")
    return f"{domain[-4:]}:{rest}".lower()


def read_numa(sysfs_root: str | Path, nvml_bus_id: str) -> int:
    """The GPU's NUMA node from sysfs; unknown or negative -> 0."""
    path = Path(sysfs_root) / "bus/pci/devices" / sysfs_bus_id(nvml_bus_id) / "numa_node"
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    return max(value, 0)


class NvidiaBackend:
    """NVML access for one node.

    :param node: the effective node configuration (scaling, split count, filters, mode)
    :param sysfs_root: where ``bus/pci/devices/*/numa_node`` is read
    :param topology: compute topology link scores between GPUs
    :param health: which events make a GPU unhealthy
    :raises VendorUnavailable: NVML cannot be loaded or initialised
    """

    def __init__(
        self,
        node: nv_settings.NodeSettings,
        *,
        sysfs_root: str | Path = "/sys",
        topology: bool = False,
        health: nv_settings.HealthPolicy | None = None,
    ) -> None:
        self._node = node
        self._sysfs = Path(sysfs_root)
        self._topology = topology
        self._health = health or nv_settings.HealthPolicy()
        self._lock = threading.Lock()
        self._unhealthy: set[str] = set()
        self._events: Any = None
        self._closed = threading.Event()
        # held while a thread waits in NVML for events: close() must not free the set under it
        self._poll_lock = threading.Lock()
        try:
            nvml = _nvml()
        except ImportError as err:
            raise errors.VendorUnavailable(f"nvidia-ml-py is not installed: {err}") from err
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise errors.VendorUnavailable(
                f"cannot initialise NVML (libnvidia-ml.so.1): {err}; is the NVIDIA driver "
                "installed and the library on the loader path?"
            ) from err
        self.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        logger.info("NVML initialised, driver %s", self.driver_version)

    # ------------------------------------------------------------------ discovery

    def _handles(self) -> list[tuple[int, str, Any]]:
        nvml = self.nvml
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            index = int(nvml.nvmlDeviceGetIndex(handle))
            if uuid in self._node.filter_uuids or index in self._node.filter_indexes:
                logger.info("GPU %s (index %d) is filtered out by the node config", uuid, index)
                continue
            out.append((index, uuid, handle))
        return out

    def _memory_mib(self, uuid: str, handle: Any) -> int | None:  # noqa: ANN401 - NVML handle
        nvml = self.nvml
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
        except nvml.NVMLError_NotSupported:
            if self._node.preconfigured_memory:
                return self._node.preconfigured_memory
            logger.warning(
                "GPU %s: NVML cannot tell its memory and preConfiguredDeviceMemory is 0; skipped",
                uuid,
            )
            return None

    def discover(self) -> tuple[models.DeviceInfo, ...]:
        """Every usable GPU, scaled and filtered per node configuration.

        :raises RetryableError: NVML failed (the registration loop retries)
        """
        nvml = self.nvml
        node = self._node
        try:
            found = []
            handles = self._handles()
            for index, uuid, handle in handles:
                memory = self._memory_mib(uuid, handle)
                if memory is None:
                    continue
                name = _text(nvml.nvmlDeviceGetName(handle))
                bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
                with self._lock:
                    healthy = uuid not in self._unhealthy
                found.append(
                    models.DeviceInfo(
                        id=uuid,
                        index=index,
                        count=node.split_count,
                        devmem=int(memory * node.memory_scaling),
                        devcore=int(100 * node.core_scaling),
                        type=model_type(name),
                        numa=read_numa(self._sysfs, bus_id),
                        mode=node.mode,
                        health=healthy,
                    )
                )
            if self._topology:
                links = self._links(
                    [(u, h) for _, u, h in handles if any(d.id == u for d in found)]
                )
                found = [dataclasses.replace(d, links=links.get(d.id, {})) for d in found]
        except nvml.NVMLError as err:
            raise errors.RetryableError(f"NVML discovery failed: {err}", delay=5.0) from err
        return tuple(found)

    def _nvlinks(self, a: Any, b_bus: str) -> int:  # noqa: ANN401 - NVML handle
        nvml = self.nvml
        count = 0
        for link in range(NVLINK_LINKS):
            try:
                if nvml.nvmlDeviceGetNvLinkState(a, link) != nvml.NVML_FEATURE_ENABLED:
                    continue
                remote = _text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(a, link).busId)
            except nvml.NVMLError:
                continue
            if remote.lower() == b_bus.lower():
                count += 1
        return count

    def _links(self, handles: list[tuple[str, Any]]) -> dict[str, dict[str, int]]:
        nvml = self.nvml
        bus = {u: _text(nvml.nvmlDeviceGetPciInfo(h).busId) for u, h in handles}
        scores: dict[str, dict[str, int]] = {u: {} for u, _ in handles}
        for (ua, ha), (ub, hb) in itertools.combinations(handles, 2):
            try:
                level: int | None = int(nvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb))
            except nvml.NVMLError:
                level = None
            score = pair_score(level, self._nvlinks(ha, bus[ub]), self._nvlinks(hb, bus[ua]))
            scores[ua][ub] = score
            scores[ub][ua] = score
        return scores

    # ------------------------------------------------------------------ health

    def _event_set(self) -> Any:  # noqa: ANN401 - NVML event set
        nvml = self.nvml
        if self._events is not None:
            return self._events
        events = nvml.nvmlEventSetCreate()
        wanted = nvml.nvmlEventTypeXidCriticalError | nvml.nvmlEventTypeDoubleBitEccError
        for _, uuid, handle in self._handles():
            try:
                supported = int(nvml.nvmlDeviceGetSupportedEventTypes(handle))
                nvml.nvmlDeviceRegisterEvents(handle, wanted & supported, events)
            except nvml.NVMLError as err:
                # HAMi marks such a GPU unhealthy only for XID support; we log and keep it
                logger.warning("GPU %s: cannot register health events: %s", uuid, err)
        self._events = events
        return events

    def poll_health(self, timeout_s: float) -> Mapping[str, bool]:
        """Wait up to ``timeout_s`` for one health event; returns ``{uuid: False}`` on a fault."""
        nvml = self.nvml
        if not self._health.enabled or self._closed.is_set():
            self._closed.wait(timeout_s)
            return {}
        with self._poll_lock:
            if self._closed.is_set():
                return {}
            try:
                data = nvml.nvmlEventSetWait(self._event_set(), max(int(timeout_s * 1000), 1))
            except nvml.NVMLError_Timeout:
                return {}
            except nvml.NVMLError as err:
                logger.warning("waiting for NVML events failed: %s", err)
                data = None
        if data is None:
            self._closed.wait(timeout_s)
            return {}
        event_type = int(data.eventType)
        xid = int(data.eventData)
        uuid = _text(nvml.nvmlDeviceGetUUID(data.device))
        if event_type == nvml.nvmlEventTypeXidCriticalError and xid in self._health.ignored_xids:
            logger.info("GPU %s: XID %d is an application error; ignored", uuid, xid)
            return {}
        logger.warning("GPU %s: critical event type %#x data %d: unhealthy", uuid, event_type, xid)
        with self._lock:
            self._unhealthy.add(uuid)
        return {uuid: False}

    # ------------------------------------------------------------------ telemetry, close

    def sample(self) -> tuple[models.DeviceSample, ...]:
        """Memory and utilisation of every GPU."""
        nvml = self.nvml
        out = []
        for index, uuid, handle in self._handles():
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            out.append(
                models.DeviceSample(
                    uuid=uuid,
                    index=index,
                    type=model_type(_text(nvml.nvmlDeviceGetName(handle))),
                    memory_used_bytes=int(mem.used),
                    memory_total_bytes=int(mem.total),
                    utilization=float(util.gpu),
                    memory_utilization=float(util.memory),
                )
            )
        return tuple(out)

    def close(self) -> None:
        """Free the event set and shut NVML down (once)."""
        if self._closed.is_set():
            return
        self._closed.set()
        nvml = self.nvml
        with self._poll_lock:  # a poll in progress ends within its timeout
            try:
                if self._events is not None:
                    nvml.nvmlEventSetFree(self._events)
                    self._events = None
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                logger.warning("NVML shutdown: %s", err)
