"""What a vendor tells the device-plugin framework about its kubelet-side behaviour.

The :class:`~hami_core_fw.vendor.DeviceVendor` contract is pure and shared with the scheduler; the
few node-side choices the framework needs (socket name, NUMA on replicas, preferred allocation)
come from an optional ``device_plugin_spec()`` method and an optional ``for_node(node_name)``
method that returns the vendor with the node's own configuration merged (NVIDIA's
``config.json``, hami-compat.md 7.2). Vendors without them get :func:`default_spec`.

This module imports no gRPC so that vendor modules may import it on any process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hami_core_fw import vendor as hv


@dataclass(frozen=True, slots=True)
class DevicePluginSpec:
    """Kubelet-side choices of one vendor's device plugin.

    :param socket_name: the plugin's socket file name in the device-plugin directory
        (HAMi NVIDIA: ``nvidia-gpu.sock``)
    :param numa_topology: advertise each replica's NUMA node to the kubelet
    :param preferred_allocation: advertise ``GetPreferredAllocation`` so the kubelet picks
        replicas of the GPUs the scheduler annotated (hami-compat.md 9.3)
    :param pre_start_required: ask the kubelet to call ``PreStartContainer``
    """

    socket_name: str
    numa_topology: bool = False
    preferred_allocation: bool = False
    pre_start_required: bool = False


@runtime_checkable
class SpecProvider(Protocol):
    """A vendor that chooses its own :class:`DevicePluginSpec`."""

    def device_plugin_spec(self) -> DevicePluginSpec:
        """The vendor's kubelet-side choices."""
        ...


@runtime_checkable
class NodeConfigurable(Protocol):
    """A vendor whose configuration differs per node."""

    def for_node(self, node_name: str) -> hv.DeviceVendor:
        """The vendor with ``node_name``'s configuration merged over the cluster-wide one.

        :raises ConfigError: the node configuration is invalid
        """
        ...


def default_spec(v: hv.DeviceVendor) -> DevicePluginSpec:
    """``<vendor_id>-<resource suffix>.sock`` and no optional kubelet features."""
    suffix = v.resources.count.rsplit("/", 1)[-1]
    return DevicePluginSpec(socket_name=f"{v.vendor_id}-{suffix}.sock")


def spec_for(v: hv.DeviceVendor) -> DevicePluginSpec:
    """The vendor's own spec when it provides one, else :func:`default_spec`."""
    if isinstance(v, SpecProvider):
        return v.device_plugin_spec()
    return default_spec(v)


def vendor_for_node(v: hv.DeviceVendor, node_name: str) -> hv.DeviceVendor:
    """The vendor configured for ``node_name`` (itself when it has no per-node configuration)."""
    if isinstance(v, NodeConfigurable):
        return v.for_node(node_name)
    return v
