"""The vendor passes the core's VendorConformance suite and loads through its entry point."""

from __future__ import annotations

import pytest
from hami_core_fw import errors, models, plugins
from hami_core_fw import vendor as hv
from hami_core_fw.testing import VendorConformance

from {{package}} import vendor as vendor_mod


class Test{{class_name}}Vendor(VendorConformance):
    @pytest.fixture
    def vendor(self) -> hv.DeviceVendor:
        return vendor_mod.{{class_name}}Vendor()

    @pytest.fixture
    def devices(self) -> tuple[models.DeviceInfo, ...]:
        # TODO(plugin author): two devices as the real backend discovers them
        return (
            models.DeviceInfo(
                "{{vendor_id}}-example-0",
                10,
                16384,
                100,
                "{{common_word}}-Example",
            ),
            models.DeviceInfo(
                "{{vendor_id}}-example-1",
                10,
                16384,
                100,
                "{{common_word}}-Example",
                index=1,
            ),
        )


def test_entry_point_registers_the_vendor() -> None:
    host = plugins.make_plugin_manager(only=["{{vendor_id}}"], env={})
    vendor = host.vendors["{{vendor_id}}"]
    assert isinstance(vendor, vendor_mod.{{class_name}}Vendor)
    assert host.vendor_by_common_word("{{common_word}}") is vendor
    info = next(i for i in host.plugins() if i.name == "{{vendor_id}}")
    assert info.distribution == "{{distribution}}"
    assert "{{domain}}/gpu" in info.resources


def test_backend_is_unavailable_until_implemented() -> None:
    # TODO(plugin author): replace with tests of the real backend on a fake vendor library
    backend = vendor_mod.{{class_name}}Vendor().make_backend("node-1")
    with pytest.raises(errors.VendorUnavailable, match="not implemented"):
        backend.discover()
    assert backend.poll_health(0) == {}
    assert backend.sample() == ()
    backend.close()
