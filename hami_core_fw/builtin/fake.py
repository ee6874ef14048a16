"""The ``fake`` vendor: an NVIDIA-like shared device declared in configuration.

Used by tests, the demo cluster of ``hami simulate`` and the chart's mock DaemonSet, so that the
whole path of a pod runs on machines without accelerators. Resources are ``hami.io/fake-gpu``,
``hami.io/fake-gpumem``, ``hami.io/fake-gpumem-percentage`` and ``hami.io/fake-gpucores``; the
registration has the exact shape HAMi's mock device plugin writes for NVIDIA (hami-compat.md 11).
A device uuid may contain ``{node}``, replaced by the node name on each node.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping
from typing import Final

import hami_core_fw
from hami_core_fw import config, generic, models, vendor

VENDOR_ID: Final = "fake"
COMMON_WORD: Final = "FAKE"
KEYS: Final = vendor.AnnotationKeys(
    register="hami.io/node-fake-register",
    allocated="hami.io/fake-devices-allocated",
    to_allocate="hami.io/fake-devices-to-allocate",
    use_uuid="hami.io/use-fake-uuid",
    nouse_uuid="hami.io/nouse-fake-uuid",
    use_type="hami.io/use-fake-type",
    nouse_type="hami.io/nouse-fake-type",
    numa_bind="hami.io/fake-numa-bind",
)
VISIBLE_ENV: Final = "FAKE_VISIBLE_DEVICES"


class FakeBackend:
    """Node side of the fake vendor: devices from configuration, health changes injectable."""

    def __init__(self, cfg: config.FakeConfig, node_name: str) -> None:
        self._cfg = cfg
        self._node = node_name
        self._events: queue.Queue[tuple[str, bool]] = queue.Queue()

    def discover(self) -> tuple[models.DeviceInfo, ...]:
        """The configured devices, with ``{node}`` in uuids replaced by the node name."""
        return tuple(
            models.DeviceInfo(
                id=d.uuid.replace("{node}", self._node),
                index=i if d.index is None else d.index,
                count=d.count,
                devmem=d.memory,
                devcore=d.cores,
                type=d.type,
                numa=d.numa,
                mode="hami-core",
                health=d.healthy,
                vendor=COMMON_WORD,
            )
            for i, d in enumerate(self._cfg.devices)
        )

    def inject_health(self, uuid: str, healthy: bool) -> None:
        """Queue a health change, as an XID event would (tests)."""
        self._events.put((uuid, healthy))

    def poll_health(self, timeout_s: float) -> Mapping[str, bool]:
        """Wait for injected health changes."""
        changes: dict[str, bool] = {}
        try:
            uuid, healthy = self._events.get(timeout=timeout_s)
        except queue.Empty:
            return changes
        changes[uuid] = healthy
        while True:
            try:
                uuid, healthy = self._events.get_nowait()
            except queue.Empty:
                return changes
            changes[uuid] = healthy

    def sample(self) -> tuple[models.DeviceSample, ...]:
        """Idle telemetry for every device."""
        return tuple(
            models.DeviceSample(
                uuid=d.id,
                index=d.index,
                type=d.type,
                memory_used_bytes=0,
                memory_total_bytes=d.devmem * 2**20,
                utilization=0.0,
            )
            for d in self.discover()
        )

    def close(self) -> None:
        """Nothing to release."""


class FakeVendor(generic.SharedDeviceVendor):
    """The fake vendor: the NVIDIA sharing pattern under ``hami.io/fake-*`` names."""

    def __init__(self, cfg: config.FakeConfig | None = None) -> None:
        self.config = cfg or config.FakeConfig()
        super().__init__(
            vendor_id=VENDOR_ID,
            common_word=COMMON_WORD,
            resources=models.ResourceNames(
                count=self.config.resource_count_name,
                memory=self.config.resource_memory_name,
                memory_percentage=self.config.resource_memory_percentage_name,
                cores=self.config.resource_core_name,
                memory_factor=self.config.memory_factor,
            ),
            keys=KEYS,
            defaults=generic.SharingDefaults(
                default_memory=self.config.default_memory,
                default_cores=self.config.default_cores,
                default_count=self.config.default_gpu_num,
            ),
            visible_env=VISIBLE_ENV,
        )

    def make_backend(self, node_name: str) -> FakeBackend:
        """Devices from configuration; always available."""
        return FakeBackend(self.config, node_name)


@hami_core_fw.hookimpl
def hami_register_vendors(register: vendor.RegisterVendor, config: config.DeviceConfig) -> None:
    """Register the fake vendor built from the ``fake`` section of the device config."""
    register(FakeVendor(config.fake))
