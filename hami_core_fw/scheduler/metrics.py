"""The scheduler's ``/metrics``: HAMi's metric names and labels, read from the state at scrape time.

The device and quota families are produced by a custom :class:`SchedulerCollector` on every scrape
(style.md 9), never kept as gauges that could drift from the state; every family carries the
constant label ``zone="vGPU"`` (hami-compat.md 10.4). Differences from HAMi: ``container_index``
is the position of the container in the pod, init containers first (Q12 fixed); MIG instance
info (``hami_node_gpu_mig_instance_info``) is not exported yet.

Besides HAMi's families: filter and bind latency histograms and per-outcome / per-reason counters,
and gauges of the bind queues. Everything lives in a private :class:`CollectorRegistry`, so tests
and several instances in one process never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hami_core_fw import models, plugins
from hami_core_fw.scheduler import core, state

_ZONE = {"zone": "vGPU"}
_MIB = 1 << 20
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


def _family(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[*labels, "zone"])


class SchedulerCollector(Collector):
    """Per-device allocation, per-pod devices and quota, from the cluster state."""

    def __init__(
        self,
        st: state.ClusterState,
        host: plugins.PluginHost,
        *,
        extra: Callable[[], list[Metric]] | None = None,
    ) -> None:
        self._state = st
        self._host = host
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        """Build every family from the current state."""
        dev = ["node", "device_uuid", "device_index", "device_type"]
        mem_limit = _family("hami_gpu_memory_limit_bytes", "Device memory of a GPU", dev)
        core_limit = _family("hami_gpu_core_limit_ratio", "Device cores of a GPU", dev)
        mem_alloc = _family(
            "hami_gpu_memory_allocated_bytes",
            "Device memory allocated to pods",
            ["node", "device_uuid", "device_index", "device_cores", "device_type"],
        )
        shared = _family("hami_gpu_shared_count", "Number of pods sharing the device", dev)
        core_alloc = _family("hami_gpu_core_allocated_ratio", "Device cores allocated", dev)
        overview = _family(
            "hami_node_gpu_overview",
            "Allocated memory of each GPU with its limits",
            [
                "node",
                "device_uuid",
                "device_index",
                "device_cores",
                "device_memory_limit",
                "device_type",
            ],
        )
        mem_ratio = _family(
            "hami_node_gpu_memory_allocated_ratio", "Allocated share of device memory", dev
        )
        st = self._state
        for node in st.node_names():
            for d in st.usage(node):
                zone = _ZONE["zone"]
                base = [node, d.id, str(d.index), d.type]
                cores = 100 if d.vendor == "AMD" else d.totalcore
                mem_limit.add_metric([*base, zone], d.totalmem * _MIB)
                core_limit.add_metric([*base, zone], cores)
                mem_alloc.add_metric(
                    [node, d.id, str(d.index), str(d.usedcores), d.type, zone], d.usedmem * _MIB
                )
                shared.add_metric([*base, zone], d.used)
                core_alloc.add_metric([*base, zone], d.usedcores)
                overview.add_metric(
                    [node, d.id, str(d.index), str(d.usedcores), str(d.totalmem), d.type, zone],
                    d.usedmem * _MIB,
                )
                mem_ratio.add_metric([*base, zone], d.usedmem / d.totalmem if d.totalmem else 0.0)
        yield from (mem_limit, core_limit, mem_alloc, shared, core_alloc, overview, mem_ratio)

        pod_labels = ["namespace", "node", "pod", "container_index", "device_uuid"]
        vmem = _family("hami_vgpu_memory_allocated_bytes", "Device memory of a pod", pod_labels)
        vcore = _family("hami_vgpu_core_allocated_ratio", "Device cores of a pod", pod_labels)
        for record in st.pods():
            yield_pod(record.pod, record.node, record.devices, vmem, vcore)
        yield from (vmem, vcore)

        used = _family(
            "hami_resource_quota_used", "Quota used", ["namespace", "quota_name", "limit"]
        )
        limit = _family("hami_resource_quota_limit", "Quota limit", ["namespace", "quota_name"])
        for namespace, entries in sorted(st.quota.entries.items()):
            for resource, entry in sorted(entries.items()):
                used.add_metric([namespace, resource, str(entry.limit), "vGPU"], entry.used)
                if entry.limit_set:
                    limit.add_metric([namespace, resource, "vGPU"], entry.limit)
        yield from (used, limit)
        if self._extra is not None:
            yield from self._extra()


def yield_pod(
    pod: models.PodView,
    node: str,
    devices: models.PodDevices,
    vmem: GaugeMetricFamily,
    vcore: GaugeMetricFamily,
) -> None:
    """Add one pod's devices: one sample per container position and device."""
    for _cw, entries in sorted(devices.items()):
        for position, entry in enumerate(entries):
            for d in entry:
                labels = [pod.namespace, node, pod.name, str(position), d.uuid, "vGPU"]
                vmem.add_metric(labels, d.usedmem * _MIB)
                vcore.add_metric(labels, d.usedcores)


class SchedulerMetrics:
    """The private registry: the collector plus request histograms and counters."""

    def __init__(
        self,
        st: state.ClusterState,
        host: plugins.PluginHost,
        *,
        queue_depths: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._host = host
        self._queue_depths = queue_depths
        self.registry.register(SchedulerCollector(st, host, extra=self._queues))
        self.filter_seconds = Histogram(
            "hami_scheduler_filter_duration_seconds",
            "Time to answer one extender filter call",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bind_seconds = Histogram(
            "hami_scheduler_bind_duration_seconds",
            "Time to answer one extender bind call (lock wait included)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.filter_total = Counter(
            "hami_scheduler_filter",
            "Filter calls by outcome (success, unschedulable, error, bad_request)",
            ["outcome"],
            registry=self.registry,
        )
        self.filter_node_failures = Counter(
            "hami_scheduler_filter_node_failures",
            "Nodes rejected by filter, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.bind_total = Counter(
            "hami_scheduler_bind",
            "Bind calls by outcome (success or the failure reason)",
            ["outcome"],
            registry=self.registry,
        )

    def observe_filter(self, outcome: str, failed: Mapping[str, str]) -> None:
        """Count one filter call and the reasons its nodes failed for."""
        self.filter_total.labels(outcome=outcome).inc()
        for reason, nodes in core.summarize_failures(failed).items():
            label = reason if reason.isidentifier() else "other"
            self.filter_node_failures.labels(reason=label).inc(len(nodes))

    def observe_bind(self, outcome: str) -> None:
        """Count one bind call."""
        self.bind_total.labels(outcome=outcome).inc()

    def _queues(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "hami_scheduler_bind_queue_depth", "Binds waiting for a node's lock", labels=["node"]
        )
        if self._queue_depths is not None:
            for node, depth in sorted(self._queue_depths().items()):
                family.add_metric([node], depth)
        return [family, *self._host.monitor_collect()]
