"""Hook implementations of the ``{{vendor_id}}`` entry point (thin glue, style.md 5)."""

from __future__ import annotations

import hami_core_fw
from hami_core_fw import config
from hami_core_fw import vendor as hv

from {{package}} import vendor


@hami_core_fw.hookimpl
def hami_register_vendors(register: hv.RegisterVendor, config: config.DeviceConfig) -> None:
    """Register the {{common_word}} vendor.

    The device ConfigMap has no section for this vendor yet (TODO(plugin author): read settings
    here and pass them to the vendor when it gets one).
    """
    register(vendor.{{class_name}}Vendor())
