"""The node registration loop of a device plugin (hami-compat.md 3.1, 3.6, 9.1).

Every ``interval_s`` (sooner when woken by a health change, ``error_interval_s`` after a failure)
:class:`Registrar` rebuilds the vendor's registration annotations from the current devices and
PATCHes the node **only when a value differs** from what the node holds - HAMi's plugins write
``hami.io/node-nvidia-register`` "only when changed", and every needless write wakes every watcher
of nodes. Comparing with the node (not with our last write) also repairs an annotation somebody
else removed.

Handshake: when the vendor has a handshake key and the scheduler left ``Requesting_<time>`` there,
the answer ``Reported <time>`` goes into the same patch (older HAMi schedulers and other vendors'
schedulers wait for it; HAMi's NVIDIA plugin stopped answering in v2.8 and its scheduler copes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence

from hami_core_fw import _names, codec, errors, models
from hami_core_fw import vendor as hv
from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Registrar:
    """Keeps one vendor's registration annotations on one node up to date.

    :param answer_handshake: write ``Reported <time>`` when the scheduler is requesting
    """

    def __init__(
        self,
        kube: api.Kube,
        vendor: hv.DeviceVendor,
        node_name: str,
        *,
        interval_s: float = 30.0,
        error_interval_s: float = 5.0,
        answer_handshake: bool = True,
        now: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._kube = kube
        self._vendor = vendor
        self._node = node_name
        self._interval = interval_s
        self._error_interval = error_interval_s
        self._answer = answer_handshake
        self._now = now
        #: node PATCHes written so far
        self.writes = 0
        #: passes completed without error
        self.passes = 0
        #: set after the first successful pass
        self.synced = asyncio.Event()
        self.last_error: str = ""

    def desired(
        self, devices: Sequence[models.DeviceInfo], current: dict[str, str]
    ) -> dict[str, str]:
        """The annotations to write: registration values that differ, plus a handshake answer."""
        patch = {
            k: v
            for k, v in self._vendor.encode_registration(devices).items()
            if current.get(k) != v
        }
        key = self._vendor.keys.handshake
        if key and self._answer and _names.HANDSHAKE_REQUESTING in current.get(key, ""):
            patch[key] = codec.encode_handshake_report(self._now())
        return patch

    async def sync(self, devices: Sequence[models.DeviceInfo]) -> bool:
        """One pass: read the node, write what changed; returns whether a PATCH was sent.

        :raises HamiError: the node cannot be read or written
        """
        node = await self._kube.get_node(self._node)
        current = dict(node.get("metadata", {}).get("annotations") or {})
        patch = self.desired(devices, current)
        if not patch:
            return False
        await self._kube.patch_node_annotations(self._node, patch)
        self.writes += 1
        logger.info("node %s: wrote %s", self._node, ", ".join(sorted(patch)))
        return True

    async def run(
        self,
        devices: Callable[[], Sequence[models.DeviceInfo]],
        stop: asyncio.Event,
        wake: asyncio.Event,
    ) -> None:
        """Sync until ``stop``; ``devices`` is called (in a thread) at the start of each pass.

        ``wake`` triggers an immediate pass (a device's health changed).
        """
        while not stop.is_set():
            wake.clear()
            delay = self._interval
            try:
                current = await asyncio.to_thread(devices)
                if not current:
                    raise errors.RetryableError(
                        f"node {self._node}: no {self._vendor.common_word} device found"
                    )
                await self.sync(current)
            except errors.HamiError as err:
                self.last_error = str(err)
                logger.warning("registration of node %s failed: %s", self._node, err)
                delay = self._error_interval
            else:
                self.passes += 1
                self.synced.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(stop, wake), timeout=delay)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    ta, tb = asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())
    try:
        await asyncio.wait({ta, tb}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ta.cancel()
        tb.cancel()
