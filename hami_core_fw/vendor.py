"""The per-vendor contract: :class:`DeviceVendor` (pure) and :class:`DeviceBackend` (node side).

A vendor plugin hands :class:`DeviceVendor` objects to the core through the
``hami_register_vendors`` hook. Everything HAMi's 13-method ``Devices`` interface does
(hami-compat.md 2.1) has a place here:

=============================  ==============================================================
HAMi ``Devices``               ``DeviceVendor``
=============================  ==============================================================
``CommonWord``                 :attr:`~DeviceVendor.common_word`
``GetResourceNames``           :attr:`~DeviceVendor.resources`
(annotation key tables)        :attr:`~DeviceVendor.keys`
``GetNodeDevices``             :meth:`~DeviceVendor.parse_node`
``CheckHealth``/``NodeCleanUp``:meth:`~DeviceVendor.check_health` (verdict carries the patch)
``GenerateResourceRequests``   :meth:`~DeviceVendor.request_for`
``MutateAdmission``            :meth:`~DeviceVendor.mutate_container`
``Fit``                        :meth:`~DeviceVendor.fit`
``ScoreNode``                  :meth:`~DeviceVendor.score_node`
``PatchAnnotations``           :meth:`~DeviceVendor.encode_allocation`
(pod cache decode)             :meth:`~DeviceVendor.decode_allocation`
``LockNode``/``Release...``    :attr:`AnnotationKeys.lock` (the core runs the lock protocol)
(device plugin side)           :meth:`~DeviceVendor.encode_registration`,
                               :meth:`~DeviceVendor.container_runtime`,
                               :meth:`~DeviceVendor.make_backend` -> :class:`DeviceBackend`
(telemetry)                    :meth:`DeviceBackend.sample`
=============================  ==============================================================

Everything on ``DeviceVendor`` is pure: no I/O, no vendor library. Node-side work that needs
NVML, DCMI and friends sits behind :class:`DeviceBackend`, created lazily on the node only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hami_core_fw import _names

if TYPE_CHECKING:
    from hami_core_fw import models


@dataclass(frozen=True, slots=True)
class AnnotationKeys:
    """The annotation keys one vendor reads and writes (hami-compat.md 3.1, 3.3, section 8).

    :param register: node registration annotation; empty when devices come from capacity
    :param to_allocate: pod key the device plugin consumes container by container (may be empty)
    :param allocated: pod key the scheduler's usage cache decodes
    :param handshake: node handshake key, empty for vendors without one
    :param lock: node lock key, empty for vendors that take no lock
    """

    register: str
    allocated: str
    to_allocate: str = ""
    handshake: str = ""
    lock: str = _names.ANNOTATION_NODE_LOCK
    use_uuid: str = ""
    nouse_uuid: str = ""
    use_type: str = ""
    nouse_type: str = ""
    numa_bind: str = ""
    vgpu_mode: str = ""


@dataclass(frozen=True, slots=True)
class FitContext:
    """Everything ``fit`` may consult besides the devices and the request.

    :param pod: the pod being placed
    :param node: the candidate node
    :param gpu_policy: GPU policy tokens in order (``("binpack",)``, ``("spread", "numa")``)
    :param container_index: position of this container among init + app containers
    :param n_init: number of init containers of the pod
    :param allocated: this vendor's devices already chosen for the pod's earlier containers,
        one entry per earlier container
    :param quota_fits: ``(memory_mib, cores)`` of the pod's hypothetical collapsed usage ->
        whether the namespace quota admits it; None = no quota applies
    """

    pod: models.PodView
    node: models.NodeView
    gpu_policy: tuple[str, ...] = ("spread",)
    container_index: int = 0
    n_init: int = 0
    allocated: Sequence[models.ContainerDevices] = ()
    quota_fits: Callable[[int, int], bool] | None = None


@dataclass(frozen=True, slots=True)
class AllocateContext:
    """Node-side facts the device plugin passes to :meth:`DeviceVendor.container_runtime`.

    :param hook_path: host library root (HAMi ``HOOK_PATH``, chart ``/usr/local``)
    :param cache_file: file name of the shared-region cache inside ``<hook>/vgpu``
    :param extra_env: env every container of this vendor gets (log level, policies)
    """

    node_name: str
    hook_path: str = "/usr/local"
    cache_file: str = ""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    shim_library: str = "libvgpu.so"


@runtime_checkable
class DeviceBackend(Protocol):
    """Node-side access to one vendor's hardware (NVML, DCMI, a CLI); created only on nodes."""

    def discover(self) -> tuple[models.DeviceInfo, ...]:
        """Enumerate the node's devices, already scaled and filtered per node configuration."""
        ...

    def poll_health(self, timeout_s: float) -> Mapping[str, bool]:
        """Wait up to ``timeout_s`` for health events; return uuid -> healthy for changes."""
        ...

    def sample(self) -> tuple[models.DeviceSample, ...]:
        """Read current telemetry of every device."""
        ...

    def close(self) -> None:
        """Release the vendor library."""
        ...


@runtime_checkable
class DeviceVendor(Protocol):
    """One device family as the core sees it. Pure: no I/O in any method."""

    #: stable lowercase id, the entry-point name (``nvidia``)
    vendor_id: str
    #: HAMi's vendor key (``NVIDIA``); the ``type`` of allocation strings
    common_word: str
    resources: models.ResourceNames
    keys: AnnotationKeys

    def parse_node(self, node: models.NodeView) -> tuple[models.DeviceInfo, ...]:
        """Read the node's registration into device records stamped with ``common_word``.

        :raises CodecError: the registration is missing, does not decode, or lists no device
        """
        ...

    def check_health(self, node: models.NodeView, now: dt.datetime) -> models.HealthVerdict:
        """Decide whether this vendor's registration on ``node`` is alive (hami-compat.md 3.6)."""
        ...

    def request_for(self, container: models.ContainerView) -> models.DeviceRequest | None:
        """Derive the container's request; ``None`` when it does not use this vendor.

        :raises InvalidRequest: a resource value we cannot honour (names resource and value)
        """
        ...

    def numa_bind(self, pod: models.PodView) -> bool:
        """Whether the pod asks for all devices of a container from one NUMA node."""
        ...

    def fit(
        self,
        devices: Sequence[models.DeviceUsage],
        request: models.DeviceRequest,
        ctx: FitContext,
    ) -> models.FitResult:
        """Choose devices for one container; ``devices`` are policy-sorted, tried from the end.

        Must never choose a device whose remaining memory, cores or slots are short.
        """
        ...

    def score_node(
        self,
        node: models.NodeView,
        chosen: models.PodSingleDevices,
        before: Sequence[models.DeviceUsage],
        policy: str,
    ) -> float:
        """Vendor bonus added to the node score (most vendors: 0)."""
        ...

    def encode_allocation(self, entries: models.PodSingleDevices) -> dict[str, str]:
        """Pod annotations that carry the allocation (to-allocate, allocated, extras)."""
        ...

    def decode_allocation(self, annotations: Mapping[str, str]) -> models.PodSingleDevices | None:
        """Read the pod's allocated devices; ``None`` when the pod has no allocation here.

        :raises CodecError: the annotation does not decode
        """
        ...

    def mutate_container(
        self, container: MutableMapping[str, object], pod: MutableMapping[str, object]
    ) -> bool:
        """Default and validate one container at admission; return whether it uses this vendor.

        :raises AdmissionDenied: the container asks for something invalid
        """
        ...

    def encode_registration(self, devices: Sequence[models.DeviceInfo]) -> dict[str, str]:
        """Node annotations a device plugin writes for these devices."""
        ...

    def container_runtime(
        self,
        devices: models.ContainerDevices,
        container: models.ContainerView,
        pod: models.PodView,
        ctx: AllocateContext,
    ) -> models.ContainerRuntime:
        """Env, mounts and device nodes for one container served by ``Allocate``."""
        ...

    def make_backend(self, node_name: str) -> DeviceBackend:
        """Create the node-side backend (imports the vendor library lazily).

        :raises VendorUnavailable: the vendor library is missing on this node
        """
        ...


#: the callback a plugin receives in ``hami_register_vendors``
RegisterVendor = Callable[[DeviceVendor], None]
