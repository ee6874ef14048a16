"""hami-core-fw: GPU sharing for Kubernetes with a vendor-neutral, pluggy-based core.

The public API for plugin authors: :data:`hookimpl`, the :class:`DeviceVendor` contract and its
ready-made :class:`SharedDeviceVendor`, the models, and the errors.
"""

from __future__ import annotations

import importlib.metadata

from hami_core_fw.errors import (
    AdmissionDenied,
    CodecError,
    ConfigError,
    HamiError,
    InvalidRequest,
    PluginError,
    VendorUnavailable,
)
from hami_core_fw.generic import SharedDeviceVendor, SharingDefaults
from hami_core_fw.hookspecs import hookimpl
from hami_core_fw.models import (
    ContainerDevice,
    ContainerRuntime,
    ContainerView,
    DeviceInfo,
    DeviceRequest,
    DeviceUsage,
    FitResult,
    NodeView,
    PodView,
    Reason,
    ResourceNames,
)
from hami_core_fw.vendor import (
    AllocateContext,
    AnnotationKeys,
    DeviceBackend,
    DeviceVendor,
    FitContext,
)

try:
    __version__ = importlib.metadata.version("hami-core-fw")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0"

__all__ = [
    "AdmissionDenied",
    "AllocateContext",
    "AnnotationKeys",
    "CodecError",
    "ConfigError",
    "ContainerDevice",
    "ContainerRuntime",
    "ContainerView",
    "DeviceBackend",
    "DeviceInfo",
    "DeviceRequest",
    "DeviceUsage",
    "DeviceVendor",
    "FitContext",
    "FitResult",
    "HamiError",
    "InvalidRequest",
    "NodeView",
    "PluginError",
    "PodView",
    "Reason",
    "ResourceNames",
    "SharedDeviceVendor",
    "SharingDefaults",
    "VendorUnavailable",
    "__version__",
    "hookimpl",
]
