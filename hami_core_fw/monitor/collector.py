"""The node monitor's ``/metrics``: HAMi's monitor families (hami-compat.md 10.2) at scrape time.

:class:`MonitorCollector` is a custom prometheus-client collector (style.md 9): on every scrape it
asks its source for a :class:`Snapshot` (device telemetry from the vendor backends, the decoded
region of every container of a pod on this node), frees the slots of dead processes with
:func:`~hami_core_fw.monitor.region.exclude_dead`, and builds the families with :func:`families`,
a pure function. Every family carries the constant label ``zone="vGPU"``, as HAMi's wrapping
registerer adds it. Families from ``hami_monitor_collect`` plugins follow.

Per container and device position ``i`` of its region (``i < min(device_num, 16)`` with a UUID,
labelled by the UUID's first 40 characters): memory used = summed ``total`` of the live slots,
limit = ``limit[i]``, utilisation = summed ``sm_util``, context/module/buffer = summed
``context_size``/``module_size``/``data_size``, and the seconds since ``last_kernel_time`` when it
is set. ``--legacy-metrics`` adds HAMi's old names with their old labels.
"""

from __future__ import annotations

import functools
import logging
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import hami_core_fw
from hami_core_fw import errors, models
from hami_core_fw.monitor import region

logger = logging.getLogger(__name__)

__all__ = [
    "UUID_LABEL_LENGTH",
    "ZONE",
    "BuildInfo",
    "ContainerUsage",
    "MonitorCollector",
    "Snapshot",
    "exclude_dead_by_host_pid",
    "families",
]

ZONE: Final = "vGPU"
UUID_LABEL_LENGTH: Final = 40
_HOST = ["node", "device_index", "device_uuid", "device_type"]
_CTR = ["namespace", "pod", "container", "vdevice_index", "device_uuid"]
_LEGACY_HOST = ["nodeid", "deviceidx", "deviceuuid", "devicetype"]
_LEGACY_CTR = ["podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid"]


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    """One container's decoded region, with the names it is labelled by."""

    namespace: str
    pod: str
    container: str
    region: region.Region


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape reports.

    :param node: this node's name (the ``node`` label of the host families)
    :param devices: telemetry of every device, from the vendor backends
    :param containers: the regions of the containers of this node's pods
    :param now: Unix seconds (for ``hami_container_last_kernel_elapsed_seconds``)
    """

    node: str
    devices: tuple[models.DeviceSample, ...]
    containers: tuple[ContainerUsage, ...]
    now: float


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """Labels of ``hami_build_info`` (HAMi's ``go_version`` is ``python_version`` here)."""

    version: str
    revision: str
    build_date: str
    python_version: str
    compiler: str
    platform: str

    @classmethod
    def current(cls, *, revision: str = "unknown", build_date: str = "unknown") -> BuildInfo:
        """The running interpreter and package."""
        return cls(
            version=hami_core_fw.__version__,
            revision=revision,
            build_date=build_date,
            python_version=platform.python_version(),
            compiler=platform.python_implementation(),
            platform=f"{sys.platform}/{platform.machine()}",
        )


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[*labels, "zone"])


def _uuid_label(uuid: str) -> str | None:
    """The first 40 characters; None for a UUID that did not decode (HAMi skips those)."""
    if "\ufffd" in uuid or not uuid.isprintable():
        return None
    return uuid[:UUID_LABEL_LENGTH]


def families(
    snapshot: Snapshot, *, build: BuildInfo | None = None, legacy: bool = False
) -> list[Metric]:
    """Build the monitor's families from a snapshot (pure).

    :param snapshot: device samples and decoded regions (dead slots already excluded)
    :param build: the labels of ``hami_build_info``; None = the running package
    :param legacy: also emit HAMi's pre-2.5 names (``--legacy-metrics``)
    :returns: the families, HAMi's names first
    """
    host_mem = _gauge("hami_host_gpu_memory_used_bytes", "GPU device memory usage in bytes", _HOST)
    host_util = _gauge(
        "hami_host_gpu_utilization_ratio", "GPU core utilization ratio (0-100)", _HOST
    )
    host_mc = _gauge(
        "hami_host_gpu_memory_controller_utilization_ratio",
        "GPU memory controller utilization ratio (0-100)",
        _HOST[1:],
    )
    for d in snapshot.devices:
        labels = [snapshot.node, str(d.index), d.uuid, d.type, ZONE]
        host_mem.add_metric(labels, d.memory_used_bytes)
        host_util.add_metric(labels, d.utilization)
        host_mc.add_metric(labels[1:], d.memory_utilization)

    used = _gauge("hami_vgpu_memory_used_bytes", "vGPU device memory usage in bytes", _CTR)
    limit = _gauge("hami_vgpu_memory_limit_bytes", "vGPU device memory limit in bytes", _CTR)
    ctr_mem = _gauge(
        "hami_container_device_memory_bytes", "Container device memory usage in bytes", _CTR
    )
    ctr_util = _gauge(
        "hami_container_device_utilization_ratio", "Container device SM utilization ratio", _CTR
    )
    last_kernel = _gauge(
        "hami_container_last_kernel_elapsed_seconds",
        "Seconds since last kernel execution in container",
        _CTR,
    )
    context = _gauge(
        "hami_vgpu_memory_context_bytes", "Container device memory context size in bytes", _CTR
    )
    module = _gauge(
        "hami_vgpu_memory_module_bytes", "Container device memory module size in bytes", _CTR
    )
    buffer = _gauge(
        "hami_vgpu_memory_buffer_bytes", "Container device memory buffer size in bytes", _CTR
    )
    old_used = _gauge("vGPU_device_memory_usage_in_bytes", "vGPU device usage", _LEGACY_CTR)
    old_limit = _gauge("vGPU_device_memory_limit_in_bytes", "vGPU device limit", _LEGACY_CTR)
    old_desc = _gauge(
        "Device_memory_desc_of_container",
        "Container device memory description",
        [*_LEGACY_CTR, "context", "module", "data", "offset"],
    )
    old_util = _gauge(
        "Device_utilization_desc_of_container",
        "Container device utilization description",
        _LEGACY_CTR,
    )
    old_kernel = _gauge(
        "Device_last_kernel_of_container", "Container device last kernel description", _LEGACY_CTR
    )
    for c in snapshot.containers:
        r = c.region
        for i in r.devices():
            uuid = _uuid_label(r.uuids[i])
            if uuid is None:
                logger.debug(
                    "device %d of %s/%s container %s has an undecodable uuid; skipped",
                    i,
                    c.namespace,
                    c.pod,
                    c.container,
                )
                continue
            labels = [c.namespace, c.pod, c.container, str(i), uuid, ZONE]
            u = r.usage(i)
            sm = r.sm_util(i)
            used.add_metric(labels, u.total)
            limit.add_metric(labels, r.limits[i])
            ctr_mem.add_metric(labels, u.total)
            ctr_util.add_metric(labels, sm)
            context.add_metric(labels, u.context_size)
            module.add_metric(labels, u.module_size)
            buffer.add_metric(labels, u.data_size)
            elapsed = max(snapshot.now - r.last_kernel_time, 0.0)
            if r.last_kernel_time > 0:
                last_kernel.add_metric(labels, elapsed)
            if legacy:
                old_used.add_metric(labels, u.total)
                old_limit.add_metric(labels, r.limits[i])
                offset = max(u.total - u.context_size - u.module_size - u.data_size, 0)
                parts = [str(u.context_size), str(u.module_size), str(u.data_size), str(offset)]
                old_desc.add_metric([*labels[:-1], *parts, ZONE], u.total)
                old_util.add_metric(labels, sm)
                if r.last_kernel_time > 0:
                    old_kernel.add_metric(labels, elapsed)

    info = build or BuildInfo.current()
    build_family = _gauge(
        "hami_build_info",
        "Build information of the monitor",
        ["version", "revision", "build_date", "python_version", "compiler", "platform"],
    )
    build_family.add_metric(
        [
            info.version,
            info.revision,
            info.build_date,
            info.python_version,
            info.compiler,
            info.platform,
            ZONE,
        ],
        1,
    )
    out: list[Metric] = [
        host_mem,
        host_util,
        host_mc,
        used,
        limit,
        ctr_mem,
        ctr_util,
        last_kernel,
        context,
        module,
        buffer,
        build_family,
    ]
    if legacy:
        old_host_mem = _gauge("HostGPUMemoryUsage", "GPU device memory usage", _LEGACY_HOST)
        old_host_util = _gauge("HostCoreUtilization", "GPU core utilization", _LEGACY_HOST)
        for d in snapshot.devices:
            labels = [snapshot.node, str(d.index), d.uuid, d.type, ZONE]
            old_host_mem.add_metric(labels, d.memory_used_bytes)
            old_host_util.add_metric(labels, d.utilization)
        out += [old_host_mem, old_host_util, old_used, old_limit, old_desc, old_util, old_kernel]
    return out


def exclude_dead_by_host_pid(
    proc_root: str | Path = "/proc",
) -> Callable[[region.Region], region.Region]:
    """The default dead-slot filter: host PIDs checked against ``proc_root``."""
    return functools.partial(region.exclude_dead, proc_root=proc_root, use_hostpid=True)


class MonitorCollector(Collector):
    """HAMi's monitor families plus plugin families, built at scrape time.

    :param source: returns the current snapshot (called once per scrape, on the scrape's thread)
    :param build: ``hami_build_info`` labels; None = the running package
    :param legacy: also emit HAMi's old metric names
    :param extra: returns plugin families (``PluginHost.monitor_collect``); a plugin error is
        logged and the scrape goes on without them
    :param exclude: frees the slots of dead processes in a region (default: host PIDs in /proc)
    """

    def __init__(
        self,
        source: Callable[[], Snapshot],
        *,
        build: BuildInfo | None = None,
        legacy: bool = False,
        extra: Callable[[], list[Metric]] | None = None,
        exclude: Callable[[region.Region], region.Region] | None = None,
    ) -> None:
        self._source = source
        self._build = build or BuildInfo.current()
        self._legacy = legacy
        self._extra = extra
        self._exclude = exclude or exclude_dead_by_host_pid()

    def collect(self) -> Iterator[Metric]:
        """Build every family from the current snapshot."""
        snap = self._source()
        containers = tuple(
            ContainerUsage(c.namespace, c.pod, c.container, self._exclude(c.region))
            for c in snap.containers
        )
        live = Snapshot(snap.node, snap.devices, containers, snap.now)
        yield from families(live, build=self._build, legacy=self._legacy)
        if self._extra is not None:
            try:
                extra = self._extra()
            except errors.PluginError as err:  # a plugin bug must not fail the scrape
                logger.exception("scrape goes on without the metrics of plugin %s", err.plugin)
                return
            for family in extra:
                if isinstance(family, Metric):
                    yield family
                else:
                    logger.error(
                        "hami_monitor_collect returned %s, not a metric family; skipped",
                        type(family).__name__,
                    )
