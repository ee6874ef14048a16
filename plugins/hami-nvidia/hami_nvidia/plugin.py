"""Hook implementations of the ``nvidia`` entry point (thin glue, style.md 5)."""

from __future__ import annotations

import hami_core_fw
from hami_core_fw import config
from hami_core_fw import vendor as hv
from hami_nvidia import vendor


@hami_core_fw.hookimpl
def hami_register_vendors(register: hv.RegisterVendor, config: config.DeviceConfig) -> None:
    """Register the NVIDIA vendor built from the ``nvidia:`` block of the device config."""
    register(vendor.NvidiaVendor(config.nvidia))
