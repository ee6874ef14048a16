"""hami-nvidia passes the core's VendorConformance suite and loads through its entry point."""

from __future__ import annotations

import pytest
from hami_nvidia import vendor as nv
from nvml_standin import UUID_A, UUID_B, UUID_C

from hami_core_fw import models, plugins
from hami_core_fw import vendor as hv
from hami_core_fw.testing import VendorConformance


class TestNvidiaVendor(VendorConformance):
    @pytest.fixture
    def vendor(self) -> hv.DeviceVendor:
        return nv.NvidiaVendor()

    @pytest.fixture
    def devices(self) -> tuple[models.DeviceInfo, ...]:
        return (
            models.DeviceInfo(
                UUID_A, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB", mode="hami-core"
            ),
            models.DeviceInfo(
                UUID_B, 10, 81920, 100, "NVIDIA A100-SXM4-80GB", index=1, numa=1, mode="hami-core"
            ),
            models.DeviceInfo(UUID_C, 10, 15360, 100, "NVIDIA-Tesla T4", index=2, mode="hami-core"),
        )


def test_entry_point_registers_the_vendor() -> None:
    host = plugins.make_plugin_manager(only=["nvidia"], env={})
    vendor = host.vendors["nvidia"]
    assert isinstance(vendor, nv.NvidiaVendor)
    assert host.vendor_by_common_word("NVIDIA") is vendor
    info = next(i for i in host.plugins() if i.name == "nvidia")
    assert info.distribution == "hami-nvidia"
    assert "nvidia.com/gpu" in info.resources
