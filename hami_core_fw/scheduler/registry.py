"""Node registration: which devices each node offers, per vendor, and whether they are alive.

HAMi's registration loop (hami-compat.md 3.6, ``register`` in ``pkg/scheduler/scheduler.go``) runs
on node add, every 15 s and on becoming leader. For every node and every vendor it asks the vendor
for a health verdict, writes the handshake annotations the verdict carries, and then:

* unhealthy -> the vendor's devices are dropped from the node (the node goes when none is left);
* ``update`` -> the registration annotation is re-read (``parse_node``): a read error keeps what
  was cached, zero devices drops the vendor;
* otherwise the cached devices are kept.

One deliberate difference: a vendor with nothing cached yet (a fresh scheduler process, a new
node) that is healthy but answers ``update=False`` (a handshake still pending) is read anyway, so
a restarted scheduler does not wait up to 60 s for a handshake before it can place pods.

:class:`Registry` is pure apart from the ``patch`` callback it is given; the scheduler process
passes one that writes through :class:`~hami_core_fw.k8s.api.Kube`, and only while it leads.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hami_core_fw import errors, models, plugins

logger = logging.getLogger(__name__)

#: vendor CommonWord -> devices
NodeDevices = dict[str, tuple[models.DeviceInfo, ...]]
PatchNode = Callable[[str, Mapping[str, str | None]], None]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of one registration pass over one node.

    :param devices: vendor CommonWord -> devices now registered (empty: the node offers nothing)
    :param patch: node annotations the vendors asked to write (None value = delete)
    :param changed: whether ``devices`` differs from before the pass
    """

    devices: NodeDevices
    patch: Mapping[str, str | None] = field(default_factory=dict)
    changed: bool = False


class Registry:
    """Per-node, per-vendor registered devices, updated from node views.

    :param host: the plugin host (its vendors)
    :param selector: only nodes whose labels contain all these pairs are registered
    :param now: the clock (tests pass a fixed one)
    """

    def __init__(
        self,
        host: plugins.PluginHost,
        *,
        selector: Mapping[str, str] | None = None,
        now: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._host = host
        self._selector = dict(selector or {})
        self._now = now
        self._cache: dict[str, NodeDevices] = {}

    def selected(self, node: models.NodeView) -> bool:
        """Whether the node matches the node label selector."""
        return all(node.labels.get(k) == v for k, v in self._selector.items())

    def devices(self, name: str) -> NodeDevices:
        """The devices registered for node ``name``."""
        return dict(self._cache.get(name, {}))

    def evaluate(self, node: models.NodeView) -> Registration:
        """Run one registration pass over ``node`` and remember the result."""
        before = self._cache.get(node.name, {})
        if not self.selected(node):
            self._cache.pop(node.name, None)
            return Registration(devices={}, changed=bool(before))
        now = self._now()
        result: NodeDevices = {}
        patch: dict[str, str | None] = {}
        for v in sorted(self._host.vendors.values(), key=lambda x: x.common_word):
            cw = v.common_word
            cached = before.get(cw)
            try:
                verdict = v.check_health(node, now)
            except Exception:  # plugin boundary: a vendor bug must not unregister other vendors
                logger.exception("vendor %s: check_health failed on node %s", cw, node.name)
                if cached:
                    result[cw] = cached
                continue
            patch.update(verdict.annotations)
            if not verdict.healthy:
                if cached:
                    logger.warning(
                        "node %s: %s registration unhealthy; devices dropped", node.name, cw
                    )
                continue
            if not verdict.update and cached is not None:
                result[cw] = cached
                continue
            try:
                found = v.parse_node(node)
            except errors.CodecError as err:
                if cached:
                    logger.warning(
                        "node %s: %s registration unreadable (%s); keeping cached devices",
                        node.name,
                        cw,
                        err,
                    )
                    result[cw] = cached
                else:
                    logger.debug("node %s: no %s registration: %s", node.name, cw, err)
                continue
            except Exception:  # plugin boundary
                logger.exception("vendor %s: parse_node failed on node %s", cw, node.name)
                if cached:
                    result[cw] = cached
                continue
            if found:
                result[cw] = tuple(found)
        if result:
            self._cache[node.name] = result
        else:
            self._cache.pop(node.name, None)
        patch = {k: val for k, val in patch.items() if node.annotations.get(k) != val}
        return Registration(devices=result, patch=patch, changed=result != before)

    def forget(self, name: str) -> None:
        """Drop a deleted node."""
        self._cache.pop(name, None)
