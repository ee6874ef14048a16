"""Removing one specific, stale node lock value (complements :mod:`hami_core_fw.k8s.lock`).

The lock protocol takes a lock over only when it expired (5 minutes) or its owner pod is gone. A
scheduler that is killed between taking the lock and writing the Binding leaves a lock owned by a
pod that still exists but was never bound to that node; every bind for the node would wait the full
expiry. The scheduler decides such a value is stale (from its caches, see
:mod:`hami_core_fw.scheduler.bind`) and removes exactly that value here: the write carries the
node's ``resourceVersion`` and happens only if the annotation still holds the value the decision
was made on, so a lock taken meanwhile by anyone is never removed.
"""

from __future__ import annotations

import logging

from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)


async def remove_lock_value(kube: api.Kube, node_name: str, key: str, value: str) -> bool:
    """Delete annotation ``key`` of the node if it still equals ``value``.

    :returns: whether it was removed (False: the value changed, or a concurrent write won)
    :raises NotFound: the node does not exist
    """
    node = await kube.get_node(node_name)
    meta = node.get("metadata", {})
    if (meta.get("annotations") or {}).get(key) != value:
        return False
    try:
        await kube.patch_node_annotations(
            node_name, {key: None}, resource_version=meta.get("resourceVersion")
        )
    except api.Conflict:
        return False
    logger.info("removed stale lock %s=%r of node %s", key, value, node_name)
    return True
