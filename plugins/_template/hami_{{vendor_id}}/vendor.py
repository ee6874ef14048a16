"""``{{class_name}}Vendor``: CommonWord ``{{common_word}}``, shared the NVIDIA way.

Everything scheduler-side - request derivation, admission defaults, fit, allocation strings - is
:class:`~hami_core_fw.generic.SharedDeviceVendor` configured with the names and keys below.
Override only what differs for {{common_word}} devices. No method here does I/O except
:meth:`{{class_name}}Vendor.make_backend`, which is called on nodes only.
"""

from __future__ import annotations

from typing import Final

from hami_core_fw import generic, models
from hami_core_fw import vendor as hv

VENDOR_ID: Final = "{{vendor_id}}"
COMMON_WORD: Final = "{{common_word}}"
VISIBLE_ENV: Final = "{{env_prefix}}_VISIBLE_DEVICES"

RESOURCES: Final = models.ResourceNames(
    count="{{domain}}/gpu",
    memory="{{domain}}/gpumem",
    memory_percentage="{{domain}}/gpumem-percentage",
    cores="{{domain}}/gpucores",
)

KEYS: Final = hv.AnnotationKeys(
    register="hami.io/node-{{vendor_id}}-register",
    allocated="hami.io/{{vendor_id}}-devices-allocated",
    to_allocate="hami.io/{{vendor_id}}-devices-to-allocate",
    handshake="hami.io/node-handshake-{{vendor_id}}",
    use_uuid="{{domain}}/use-gpuuuid",
    nouse_uuid="{{domain}}/nouse-gpuuuid",
    use_type="{{domain}}/use-gputype",
    nouse_type="{{domain}}/nouse-gputype",
    numa_bind="{{domain}}/numa-bind",
)


class {{class_name}}Vendor(generic.SharedDeviceVendor):
    """The NVIDIA sharing pattern under this vendor's names and keys."""

    def __init__(self) -> None:
        super().__init__(
            vendor_id=VENDOR_ID,
            common_word=COMMON_WORD,
            resources=RESOURCES,
            keys=KEYS,
            defaults=generic.SharingDefaults(),
            visible_env=VISIBLE_ENV,
        )

    def make_backend(self, node_name: str) -> hv.DeviceBackend:
        """The node-side backend (the vendor library is imported by ``backend`` only).

        :raises VendorUnavailable: the vendor library cannot be loaded on this node
        """
        from {{package}} import backend  # noqa: PLC0415 - node side only (style.md 5)

        return backend.{{class_name}}Backend(node_name)
