"""The conformance suite every vendor plugin runs by subclassing :class:`VendorConformance`.

A plugin's test module does::

    class TestMyVendor(VendorConformance):
        @pytest.fixture
        def vendor(self) -> DeviceVendor: ...
        @pytest.fixture
        def devices(self) -> tuple[DeviceInfo, ...]: ...

and optionally overrides :meth:`request_limits` when its resources are not count/MiB/percent.
The suite checks what every backend must guarantee: registration round trip, ``fit`` never
exceeding memory, cores or slots, allocation strings round trip, a complete ``Allocate`` answer,
reasons only from the :class:`~hami_core_fw.models.Reason` enum, and malformed input rejected with
a clear error.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence

import pytest

from hami_core_fw import errors, models
from hami_core_fw import vendor as hv

_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-A-Za-z0-9_.]+$")


class VendorConformance:
    """Tests a :class:`~hami_core_fw.hv.DeviceVendor`; subclass it as ``Test<Vendor>``."""

    @pytest.fixture
    def vendor(self) -> hv.DeviceVendor:
        """The vendor under test (override)."""
        raise NotImplementedError("override the 'vendor' fixture")

    @pytest.fixture
    def devices(self) -> tuple[models.DeviceInfo, ...]:
        """Healthy devices as the vendor's backend would discover them on one node (override)."""
        raise NotImplementedError("override the 'devices' fixture")

    def request_limits(
        self, v: hv.DeviceVendor, count: int, memory_mib: int, cores: int
    ) -> dict[str, str]:
        """Container limits asking for ``count`` devices of ``memory_mib`` and ``cores`` each."""
        limits = {v.resources.count: str(count)}
        if v.resources.memory:
            factor = max(v.resources.memory_factor, 1)
            limits[v.resources.memory] = str(max(memory_mib // factor, 1))
        if v.resources.cores:
            limits[v.resources.cores] = str(cores)
        return limits

    # ------------------------------------------------------------------ helpers

    def _node(self, v: hv.DeviceVendor, devices: Sequence[models.DeviceInfo]) -> models.NodeView:
        count = str(sum(d.count for d in devices))
        alloc = {v.resources.count: count}
        return models.NodeView(
            name="conformance-node",
            annotations=v.encode_registration(devices),
            capacity=alloc,
            allocatable=alloc,
        )

    def _pod(self, limits: Mapping[str, str], name: str = "p") -> models.PodView:
        return models.PodView(
            namespace="default",
            name=name,
            uid=f"uid-{name}",
            containers=(models.ContainerView(name="main", limits=dict(limits)),),
        )

    # ------------------------------------------------------------------ identity

    def test_identity(self, vendor: hv.DeviceVendor) -> None:
        """Ids are stable strings and resource names are valid extended resource names."""
        assert re.fullmatch(r"[a-z][a-z0-9_-]*", vendor.vendor_id)
        assert vendor.common_word
        assert not set(vendor.common_word) & {",", ":", ";"}
        for name in vendor.resources.all():
            assert _RESOURCE_NAME.match(name), name
            assert not name.startswith("kubernetes.io/")
        assert vendor.keys.allocated

    # ------------------------------------------------------------------ registration

    def test_registration_round_trip(
        self, vendor: hv.DeviceVendor, devices: tuple[models.DeviceInfo, ...]
    ) -> None:
        """What the node side writes, the scheduler side reads back identically."""
        parsed = vendor.parse_node(self._node(vendor, devices))
        expected = tuple(dataclasses.replace(d, vendor=vendor.common_word) for d in devices)
        assert parsed == expected

    @pytest.mark.parametrize("garbage", ["", "[]", "[{", "not-a-registration", "{}", "[1,2]"])
    def test_malformed_registration_rejected(self, vendor: hv.DeviceVendor, garbage: str) -> None:
        """A registration that does not decode raises CodecError naming the annotation key."""
        if not vendor.keys.register:
            pytest.skip("vendor registers through node capacity")  # pragma: no cover
        node = models.NodeView(name="n", annotations={vendor.keys.register: garbage})
        with pytest.raises(errors.CodecError) as info:
            vendor.parse_node(node)
        assert vendor.keys.register in str(info.value)

    # ------------------------------------------------------------------ requests

    def test_request_derivation(self, vendor: hv.DeviceVendor) -> None:
        """A container without the count resource does not use the vendor; one with it does."""
        assert vendor.request_for(models.ContainerView(name="idle")) is None
        req = vendor.request_for(
            models.ContainerView(name="c", limits=self.request_limits(vendor, 2, 1024, 30))
        )
        assert req is not None
        assert req.vendor == vendor.common_word
        assert req.nums == 2

    def test_request_rejects_unit_suffix(self, vendor: hv.DeviceVendor) -> None:
        """``1Gi`` for a count or MiB resource is an error naming resource and value (Q18)."""
        limits = {vendor.resources.count: "1Gi"}
        with pytest.raises(errors.InvalidRequest, match=re.escape(vendor.resources.count)):
            vendor.request_for(models.ContainerView(name="c", limits=limits))

    # ------------------------------------------------------------------ fit

    def test_fit_never_exceeds_capacity(
        self, vendor: hv.DeviceVendor, devices: tuple[models.DeviceInfo, ...]
    ) -> None:
        """Random request streams never over-commit memory, cores or slots of any device."""
        node = self._node(vendor, devices)
        rng = random.Random(1234)  # noqa: S311 - deterministic test data, not cryptography
        for _round in range(20):
            usage = [models.DeviceUsage.from_info(d) for d in vendor.parse_node(node)]
            for i in range(60):
                limits = self.request_limits(
                    vendor,
                    rng.randint(1, min(2, len(usage))),
                    rng.choice([256, 1024, 4096, 12000, 40000]),
                    rng.choice([0, 10, 30, 50, 100]),
                )
                req = vendor.request_for(models.ContainerView(name="c", limits=limits))
                assert req is not None
                pod = self._pod(limits, name=f"p{i}")
                result = vendor.fit(usage, req, vendor_fit_context(pod, node))
                if not result.ok:
                    assert result.reasons, "a failed fit must give reasons"
                    assert all(isinstance(r, models.Reason) for r in result.reasons)
                    continue
                assert len(result.devices) == req.nums
                assert len({d.uuid for d in result.devices}) == len(result.devices)
                by_id = {u.id: u for u in usage}
                for dev in result.devices:
                    by_id[dev.uuid].add(dev)
                for u in usage:
                    assert u.used <= u.count, f"slots over-committed on {u.id}"
                    assert u.usedmem <= u.totalmem, f"memory over-committed on {u.id}"
                    assert u.usedcores <= u.totalcore, f"cores over-committed on {u.id}"

    def test_fit_failure_reasons(
        self, vendor: hv.DeviceVendor, devices: tuple[models.DeviceInfo, ...]
    ) -> None:
        """Asking for more memory than any device has fails with CardInsufficientMemory."""
        node = self._node(vendor, devices)
        usage = [models.DeviceUsage.from_info(d) for d in vendor.parse_node(node)]
        too_much = max(d.devmem for d in devices) + 1
        limits = self.request_limits(
            vendor, 1, too_much * max(vendor.resources.memory_factor, 1), 0
        )
        req = vendor.request_for(models.ContainerView(name="c", limits=limits))
        assert req is not None
        result = vendor.fit(usage, req, vendor_fit_context(self._pod(limits), node))
        assert not result.ok
        assert result.reasons.get(models.Reason.CARD_INSUFFICIENT_MEMORY) == len(devices)
        assert result.total == len(devices)

    # ------------------------------------------------------------------ allocation strings

    def test_allocation_round_trip(
        self, vendor: hv.DeviceVendor, devices: tuple[models.DeviceInfo, ...]
    ) -> None:
        """Allocation annotations decode to the entries they encode, empty entries included."""
        first = devices[0]
        entries: models.PodSingleDevices = (
            (),
            (models.ContainerDevice(first.id, vendor.common_word, 1000, 30),),
            (),
        )
        annotations = vendor.encode_allocation(entries)
        assert vendor.keys.allocated in annotations
        assert vendor.decode_allocation(annotations) == entries
        assert vendor.decode_allocation({}) is None

    def test_malformed_allocation_rejected(self, vendor: hv.DeviceVendor) -> None:
        """A broken allocation string raises CodecError naming the key and the bad part."""
        bad = {vendor.keys.allocated: "GPU-x,NVIDIA,notanumber,0:;"}
        with pytest.raises(errors.CodecError) as info:
            vendor.decode_allocation(bad)
        assert vendor.keys.allocated in str(info.value)
        assert "notanumber" in str(info.value)

    # ------------------------------------------------------------------ device plugin answer

    def test_allocation_env_complete(
        self, vendor: hv.DeviceVendor, devices: tuple[models.DeviceInfo, ...]
    ) -> None:
        """``container_runtime`` names every device and carries a limit for each of them."""
        chosen = tuple(
            models.ContainerDevice(d.id, vendor.common_word, 1000 + i, 25)
            for i, d in enumerate(devices[:2])
        )
        pod = self._pod({}, name="alloc")
        runtime = vendor.container_runtime(
            chosen,
            pod.containers[0],
            pod,
            vendor_allocate_context(),
        )
        text = " ".join(runtime.envs.values())
        for dev in chosen:
            assert dev.uuid in text, f"device {dev.uuid} missing from the env"
        for k, dev in enumerate(chosen):
            assert runtime.envs.get(f"CUDA_DEVICE_MEMORY_LIMIT_{k}") == f"{dev.usedmem}m"
        assert runtime.envs.get("CUDA_DEVICE_SM_LIMIT") == "25"
        assert "CUDA_DEVICE_MEMORY_SHARED_CACHE" in runtime.envs
        assert any(m.container_path == "/etc/ld.so.preload" for m in runtime.mounts)


def vendor_fit_context(pod: models.PodView, node: models.NodeView) -> hv.FitContext:
    """A fit context for a single-container pod with the default spread policy."""
    return hv.FitContext(pod=pod, node=node, gpu_policy=("spread",))


def vendor_allocate_context() -> hv.AllocateContext:
    """An allocate context with the chart's default hook path."""
    return hv.AllocateContext(node_name="conformance-node", cache_file="conformance")
