"""Every pluggy hookspec of hami-core-fw, in lifecycle order.

Hooks are synchronous and do no blocking I/O: the scheduler calls them on its hot path. Arguments
are small immutable values or callbacks, never a server or a client. Per-vendor behaviour is not a
hook: it lives on :class:`~hami_core_fw.vendor.DeviceVendor` objects handed over by
:func:`hami_register_vendors`.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING

import pluggy

from hami_core_fw import _names

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from hami_core_fw import config, models, quota, vendor

_hookspec = pluggy.HookspecMarker(_names.PROJECT_NAME)
#: decorator for plugin hook implementations; re-exported as ``hami_core_fw.hookimpl``
hookimpl = pluggy.HookimplMarker(_names.PROJECT_NAME)

# ==============================================================================================
# Registration
# ==============================================================================================


@_hookspec
def hami_register_vendors(register: vendor.RegisterVendor, config: config.DeviceConfig) -> None:
    """Register the device vendors this plugin provides.

    :param register: call once per vendor; raises DuplicateVendorError when the vendor id or
        CommonWord is already taken
    :param config: the device configuration (HAMi's ``device-config.yaml``) to build vendors from

    Called by: every hami process, once per plugin, while the plugin host is made.

    .. versionadded:: 0.1
    """


# ==============================================================================================
# Admission
# ==============================================================================================


@_hookspec
def hami_admission_mutate(pod: MutableMapping[str, object], namespace: str) -> None:
    """Apply cross-vendor admission policy to a pod after every vendor mutated its containers.

    :param pod: the pod manifest, mutable; changes become the webhook's JSON patch
    :param namespace: the namespace of the admission request
    :raises AdmissionDenied: to reject the pod (message names the object and the fix)

    Called by: the mutating webhook, for every pod that uses a shared-device resource.

    .. versionadded:: 0.1
    """


# ==============================================================================================
# Scheduling
# ==============================================================================================


@_hookspec
def hami_node_filter(pod: models.PodView, node: models.NodeView) -> str | None:
    """Veto a node for a pod before its devices are fitted.

    :param pod: the pod being scheduled
    :param node: a candidate node
    :returns: a reason naming why the node is refused, or None to let it through

    Called by: the scheduling core's filter, per candidate node.

    .. versionadded:: 0.1
    """


@_hookspec
def hami_node_score(pod: models.PodView, node: models.NodeView, score: float) -> float | None:
    """Adjust the score of a node that fits the pod (higher = preferred under binpack ordering).

    :param pod: the pod being scheduled
    :param node: the fitting node
    :param score: the core's score so far
    :returns: a delta added to the score, or None for no change

    Called by: the scheduling core's filter, per fitting node.

    .. versionadded:: 0.1
    """


# ==============================================================================================
# Quota
# ==============================================================================================


@_hookspec(firstresult=True)
def hami_quota_check(
    namespace: str,
    resources: models.ResourceNames,
    memory: int,
    cores: int,
    ledger: quota.QuotaLedger,
) -> bool | None:
    """Decide whether a namespace may use ``memory`` MiB and ``cores`` more of a vendor.

    :param namespace: the pod's namespace
    :param resources: the vendor's resource names and memory factor
    :param memory: MiB (after the memory factor) the pod would add
    :param cores: cores (percent of a device) the pod would add
    :param ledger: current quota limits and usage (read only)
    :returns: True/False, or None when this plugin has no opinion

    This is a ``firstresult`` hook: the first non-None answer wins; the built-in implementation
    (ResourceQuota ``limits.<resource>`` semantics) runs last.

    Called by: the webhook's quota pre-check and every vendor ``fit``.

    .. versionadded:: 0.1
    """


# ==============================================================================================
# Exporter
# ==============================================================================================


@_hookspec
def hami_monitor_collect() -> Iterable[Metric] | None:
    """Return extra metric families to expose at scrape time.

    :returns: metric families, or None

    Called by: ``hami monitor`` and ``hami scheduler`` on every scrape of ``/metrics``.

    .. versionadded:: 0.1
    """
