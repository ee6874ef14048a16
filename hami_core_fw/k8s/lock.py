"""The node lock protocol (``hami.io/mutex.lock``, hami-compat.md 3.7) over the API server.

The scheduler takes the lock in ``/bind`` before binding a pod to a node; the node's device
plugin releases it after the pod's last container was served. Every write carries the node's
``resourceVersion``, so two writers never both believe they hold the lock: the loser's patch
fails with 409, it re-reads the node and sees the winner's value.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Final

from hami_core_fw import _names, codec, errors
from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)

_ATTEMPTS: Final = 5


class LockContended(errors.RetryableError):
    """The node is locked by another live pod and the lock has not expired."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def acquire_node_lock(
    kube: api.Kube,
    node_name: str,
    namespace: str,
    pod_name: str,
    *,
    key: str = _names.ANNOTATION_NODE_LOCK,
    expiry_s: float = _names.NODE_LOCK_EXPIRY_SECONDS,
    now: Callable[[], dt.datetime] = _utcnow,
) -> None:
    """Take the node lock for ``namespace/pod_name``.

    Succeeds when the annotation is absent, already held by the same pod, older than the expiry,
    or held by a pod that no longer exists. Transient API failures and write races are retried.

    :raises LockContended: another live pod holds a fresh lock
    :raises CodecError: the current value does not parse (left untouched)
    :raises NotFound: the node does not exist
    """
    value_new = codec.encode_node_lock(codec.NodeLock(now(), namespace, pod_name))
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        try:
            node = await kube.get_node(node_name)
            meta = node.get("metadata", {})
            current = (meta.get("annotations") or {}).get(key)
            if current is not None:
                lock = codec.decode_node_lock(key, current)
                age = (now() - lock.time).total_seconds()
                if lock.namespace == namespace and lock.name == pod_name:
                    return
                if age <= expiry_s and not await _owner_gone(kube, lock):
                    owner = "a legacy lock" if lock.legacy else f"{lock.namespace}/{lock.name}"
                    raise LockContended(
                        f"node {node_name!r} is locked by {owner} since "
                        f"{codec.format_rfc3339(lock.time)} (expires after {expiry_s:.0f}s)",
                        delay=0.1,
                    )
                logger.info(
                    "taking over node lock on %s from %r (age %.0fs)", node_name, current, age
                )
            await kube.patch_node_annotations(
                node_name, {key: value_new}, resource_version=meta.get("resourceVersion")
            )
        except (api.Conflict, api.Unavailable) as err:
            last = err
            await api.sleep_backoff(attempt)
            continue
        return
    raise errors.RetryableError(
        f"could not take the lock of node {node_name!r} after {_ATTEMPTS} attempts: {last}"
    )


async def _owner_gone(kube: api.Kube, lock: codec.NodeLock) -> bool:
    if lock.legacy:
        return False
    try:
        await kube.get_pod(lock.namespace, lock.name)
    except api.NotFound:
        return True
    return False


async def release_node_lock(
    kube: api.Kube,
    node_name: str,
    namespace: str,
    pod_name: str,
    *,
    key: str = _names.ANNOTATION_NODE_LOCK,
) -> bool:
    """Release the node lock if ``namespace/pod_name`` holds it (or it is a legacy value).

    A lock held by another pod is left in place and is not an error.

    :returns: whether a lock was removed
    :raises NotFound: the node does not exist
    """
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        try:
            node = await kube.get_node(node_name)
            meta = node.get("metadata", {})
            current = (meta.get("annotations") or {}).get(key)
            if current is None or not codec.lock_owned_by(current, namespace, pod_name):
                return False
            await kube.patch_node_annotations(
                node_name, {key: None}, resource_version=meta.get("resourceVersion")
            )
        except (api.Conflict, api.Unavailable) as err:
            last = err
            await api.sleep_backoff(attempt)
            continue
        return True
    raise errors.RetryableError(
        f"could not release the lock of node {node_name!r} after {_ATTEMPTS} attempts: {last}"
    )
