"""Node side: the ONLY module of this plugin that touches the vendor library.

TODO(plugin author): implement device discovery, health and telemetry here.

* Import the vendor's library (Python binding, ``ctypes`` handle, CLI) inside functions only, so
  the plugin's entry point loads on nodes without the vendor's software (style.md 5); a missing
  or broken library raises :class:`~hami_core_fw.errors.VendorUnavailable` with the reason.
* ``discover()`` returns one :class:`~hami_core_fw.models.DeviceInfo` per usable device, already
  scaled and filtered per node configuration; transient failures raise
  :class:`~hami_core_fw.errors.RetryableError` so the registration loop retries.
* Until ``discover()`` is implemented it raises ``VendorUnavailable``: the node registers no
  device of this vendor and logs why.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from hami_core_fw import errors, models


class {{class_name}}Backend:
    """Access to the {{common_word}} devices of one node.

    :param node_name: the node this backend serves
    """

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._closed = threading.Event()

    def discover(self) -> tuple[models.DeviceInfo, ...]:
        """Every usable {{common_word}} device of this node.

        TODO(plugin author): enumerate the devices through the vendor library and return their
        ``DeviceInfo`` (id, count = split count, devmem in MiB, devcore = 100, type, numa, health).

        :raises VendorUnavailable: always, until this method is implemented
        """
        raise errors.VendorUnavailable(
            f"node {self.node_name!r}: device discovery is not implemented yet; implement "
            f"{__name__}.{type(self).__name__}.discover (see its docstring)"
        )

    def poll_health(self, timeout_s: float) -> Mapping[str, bool]:
        """Wait up to ``timeout_s`` for health events; returns ``{uuid: healthy}`` for changes.

        TODO(plugin author): wait on the vendor library's fault events; no events are seen yet.
        """
        self._closed.wait(timeout_s)
        return {}

    def sample(self) -> tuple[models.DeviceSample, ...]:
        """Memory and utilisation of every device (TODO(plugin author): none read yet)."""
        return ()

    def close(self) -> None:
        """Release the vendor library (TODO(plugin author): nothing is held yet)."""
        self._closed.set()
