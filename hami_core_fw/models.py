"""Plain data the whole project shares: devices, usage, requests, allocations, reasons, views.

Everything here is pure: frozen dataclasses (``DeviceUsage`` excepted: the scheduler mutates it on
private copies) and small functions over them. Kubernetes objects enter as JSON mappings and are
narrowed into :class:`PodView` / :class:`NodeView` so that vendors never see a client object.
"""

from __future__ import annotations

import decimal
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

# ----------------------------------------------------------------------------------------------
# Reasons
# ----------------------------------------------------------------------------------------------


class Reason(enum.StrEnum):
    """Closed set of filter failure reasons; the values are HAMi's exact strings (4.12)."""

    CARD_TYPE_MISMATCH = "CardTypeMismatch"
    CARD_UUID_MISMATCH = "CardUuidMismatch"
    CARD_TIME_SLICING_EXHAUSTED = "CardTimeSlicingExhausted"
    CARD_COMPUTE_UNITS_EXHAUSTED = "CardComputeUnitsExhausted"
    CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
    CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
    CARD_NOT_HEALTH = "CardNotHealth"
    CARD_CORDONED = "CardCordoned"
    NUMA_NOT_FIT = "NumaNotFit"
    EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT = "ExclusiveDeviceAllocateConflict"
    CARD_NOT_FOUND_CUSTOM_FILTER_RULE = "CardNotFoundCustomFilterRule"
    CARD_MIG_TOPOLOGY_INFEASIBLE = "CardMigTopologyInfeasible"
    NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
    ALLOCATED_CARDS_INSUFFICIENT_REQUEST = "AllocatedCardsInsufficientRequest"
    NODE_UNFIT_POD = "NodeUnfitPod"
    NODE_FIT_POD = "NodeFitPod"
    RESOURCE_QUOTA_NOT_FIT = "ResourceQuotaNotFit"
    MODE_NOT_FIT = "ModeNotFit"
    CARD_UNHEALTHY = "CardUnhealthy"
    CARD_QOS_POLICY_MISMATCH = "CardQosPolicyMismatch"
    CARD_APP_CLASS_MISMATCH = "CardAppClassMismatch"


# ----------------------------------------------------------------------------------------------
# Devices as registered by a node
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """A MIG slice interval ``[start, start + size)`` on one GPU."""

    start: int
    size: int

    def overlaps(self, other: Placement) -> bool:
        """Whether the two intervals intersect."""
        return self.start < other.start + other.size and other.start < self.start + self.size


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One dynamic-MIG profile a GPU offers (hami-compat.md 2.2)."""

    name: str
    memory_mb: int
    core: int
    slice_count: int
    placements: tuple[Placement, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device as a node registers it (HAMi ``DeviceInfo``; 2.2).

    :param id: device UUID (NVIDIA ``GPU-...``)
    :param count: concurrent tasks allowed ("slots", the split count)
    :param devmem: memory in MiB, already scaled
    :param devcore: compute capacity, 100 = one device (already scaled)
    :param type: model string, e.g. ``NVIDIA-Tesla T4``
    :param vendor: the CommonWord of the vendor that registered it
    """

    id: str
    count: int
    devmem: int
    devcore: int
    type: str
    index: int = 0
    numa: int = 0
    mode: str = ""
    health: bool = True
    vendor: str = ""
    mig_profiles: tuple[MigProfile, ...] = ()
    custom_info: Mapping[str, object] = field(default_factory=dict, hash=False)
    # topology link scores to peer devices (NVIDIA hami.io/node-nvidia-score), peer uuid -> score
    links: Mapping[str, int] = field(default_factory=dict, hash=False)


@dataclass(slots=True)
class DeviceUsage:
    """Scheduler-side usage of one registered device; mutated only on private copies."""

    id: str
    index: int
    vendor: str
    type: str
    count: int
    totalmem: int
    totalcore: int
    numa: int = 0
    mode: str = ""
    health: bool = True
    used: int = 0
    usedmem: int = 0
    usedcores: int = 0
    mig_profiles: tuple[MigProfile, ...] = ()
    links: Mapping[str, int] = field(default_factory=dict)
    # score computed per container while fitting (hami-compat.md 4.8); not part of usage
    score: float = 0.0

    @classmethod
    def from_info(cls, info: DeviceInfo) -> DeviceUsage:
        """A zero-usage record for a registered device."""
        return cls(
            id=info.id,
            index=info.index,
            vendor=info.vendor,
            type=info.type,
            count=info.count,
            totalmem=info.devmem,
            totalcore=info.devcore,
            numa=info.numa,
            mode=info.mode,
            health=info.health,
            mig_profiles=info.mig_profiles,
            links=info.links,
        )

    def copy(self) -> DeviceUsage:
        """A shallow copy (the mappings are never mutated)."""
        return replace(self)

    def add(self, device: ContainerDevice, slots: int = 1) -> None:
        """Charge one container device to this record."""
        self.used += max(slots, 1)
        self.usedmem += device.usedmem
        self.usedcores += device.usedcores

    def remove(self, device: ContainerDevice, slots: int = 1) -> None:
        """Release one container device from this record (never below zero)."""
        self.used = max(0, self.used - max(slots, 1))
        self.usedmem = max(0, self.usedmem - device.usedmem)
        self.usedcores = max(0, self.usedcores - device.usedcores)


# ----------------------------------------------------------------------------------------------
# Requests and allocations
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """What one container asks of one vendor (HAMi ``ContainerDeviceRequest``).

    :param vendor: the vendor CommonWord (``NVIDIA``)
    :param nums: device count; a request always has ``nums >= 1``
    :param memreq: MiB per device after the memory factor; 0 = use ``mem_percentage``
    :param mem_percentage: percent of each device's memory, or None when not set
    :param coresreq: percent of each device's compute
    """

    vendor: str
    nums: int
    memreq: int = 0
    mem_percentage: int | None = None
    coresreq: int = 0

    def memory_on(self, totalmem: int) -> int:
        """The MiB this request takes on a device with ``totalmem`` MiB."""
        if self.memreq > 0:
            return self.memreq
        if self.mem_percentage is not None:
            return totalmem * self.mem_percentage // 100
        return 0


@dataclass(frozen=True, slots=True)
class ContainerDevice:
    """One device given to one container (HAMi ``ContainerDevice``).

    :param uuid: device id
    :param type: the vendor CommonWord (device type for a few vendors)
    :param usedmem: MiB
    :param usedcores: percent of the device
    """

    uuid: str
    type: str
    usedmem: int
    usedcores: int


#: the devices of one container for one vendor
ContainerDevices = tuple[ContainerDevice, ...]
#: one entry per container of a pod, init containers first, for one vendor
PodSingleDevices = tuple[ContainerDevices, ...]
#: vendor CommonWord -> entries
PodDevices = Mapping[str, PodSingleDevices]


@dataclass(frozen=True, slots=True)
class CollapsedDevice:
    """The usage a pod holds on one device after collapsing its containers (2.3)."""

    uuid: str
    vendor: str
    usedmem: int
    usedcores: int
    slots: int


def collapse_usage(
    entries: Sequence[ContainerDevices], n_init: int, vendor: str, *, app_only: bool = False
) -> tuple[CollapsedDevice, ...]:
    """Collapse a pod's per-container devices into its usage per device (hami-compat.md 2.3).

    Init containers run one at a time, so they hold the *peak* of memory and cores on a device;
    app containers run together, so they hold the *sum*; the effective value is the larger.

    :param entries: one entry per container, init containers first
    :param n_init: how many of the leading entries are init containers
    :param vendor: the vendor CommonWord written on every result
    :param app_only: ignore init containers (after they all finished)
    :returns: one record per UUID, sorted by UUID
    """
    init_peak: dict[str, list[int]] = {}
    app_sum: dict[str, list[int]] = {}
    for position, entry in enumerate(entries):
        is_init = position < n_init
        if is_init and app_only:
            continue
        for dev in entry:
            if is_init:
                peak = init_peak.setdefault(dev.uuid, [0, 0, 0])
                peak[0] = max(peak[0], dev.usedmem)
                peak[1] = max(peak[1], dev.usedcores)
                peak[2] = 1
            else:
                total = app_sum.setdefault(dev.uuid, [0, 0, 0])
                total[0] += dev.usedmem
                total[1] += dev.usedcores
                total[2] += 1
    result = []
    for uuid in sorted(init_peak.keys() | app_sum.keys()):
        a = init_peak.get(uuid, [0, 0, 0])
        b = app_sum.get(uuid, [0, 0, 0])
        result.append(
            CollapsedDevice(
                uuid=uuid,
                vendor=vendor,
                usedmem=max(a[0], b[0]),
                usedcores=max(a[1], b[1]),
                slots=max(a[2], b[2], 1),
            )
        )
    return tuple(result)


# ----------------------------------------------------------------------------------------------
# Views of Kubernetes objects
# ----------------------------------------------------------------------------------------------

_QUANTITY: Final = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<dec>[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?$"
)
_DECIMAL: Final = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def int_quantity(value: object, *, what: str) -> int:
    """Read a device resource quantity as a non-negative whole number (MiB, percent, count).

    The API server rewrites quantities into canonical form (``3000`` arrives as ``3k``), so the
    decimal forms of Kubernetes quantities are accepted: ``3000``, ``3k``, ``3e3``. Binary suffixes
    are refused: HAMi reads ``nvidia.com/gpumem: 1Gi`` as 1073741824 MiB (quirk Q18), which is never
    what the user meant. Fractions (``1.5``, ``500m``) and negative values are refused too.

    :param value: the quantity as found in the manifest (string or int)
    :param what: names the object and resource in the error message
    :raises ValueError: not a whole, non-negative, decimal quantity
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a quantity")  # noqa: TRY004 - callers catch ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: {value!r} is negative; give a non-negative integer")
        return value
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(
            f"{what}: {value!r} is not a quantity; write a whole number "
            "(memory resources are in MiB, cores in percent)"
        )
    if m.group("bin"):
        raise ValueError(
            f"{what}: {value!r} has a binary unit suffix; write the plain number "
            "(memory resources are already in MiB, cores in percent)"
        )
    number = decimal.Decimal(m.group("num"))
    if m.group("dec"):
        number = number.scaleb(_DECIMAL[m.group("dec")])
    elif m.group("exp"):
        number = number.scaleb(int(m.group("exp")))
    if number < 0:
        raise ValueError(f"{what}: {value!r} is negative; give a non-negative integer")
    if number != number.to_integral_value():
        raise ValueError(f"{what}: {value!r} is not a whole number")
    return int(number)


def _str_map(obj: object) -> dict[str, str]:
    if not isinstance(obj, Mapping):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in obj.items()}


def _get(obj: object, *path: str) -> object:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


@dataclass(frozen=True, slots=True)
class ContainerView:
    """The parts of a container spec the device logic reads."""

    name: str
    limits: Mapping[str, str] = field(default_factory=dict)
    requests: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    privileged: bool = False
    init: bool = False

    def resource(self, name: str) -> str | None:
        """The value of resource ``name`` from limits, falling back to requests (HAMi's rule)."""
        if name in self.limits:
            return self.limits[name]
        return self.requests.get(name)

    def uses_any(self, names: Iterable[str]) -> bool:
        """Whether any of the resources appears in limits or requests."""
        return any(n in self.limits or n in self.requests for n in names)

    @classmethod
    def from_manifest(cls, obj: Mapping[str, object], *, init: bool = False) -> ContainerView:
        """Narrow a container JSON object."""
        env: dict[str, str] = {}
        raw_env = obj.get("env")
        if isinstance(raw_env, list):
            for item in raw_env:
                if isinstance(item, Mapping) and "name" in item:
                    env[str(item["name"])] = str(item.get("value") or "")
        return cls(
            name=str(obj.get("name") or ""),
            limits=_str_map(_get(obj, "resources", "limits")),
            requests=_str_map(_get(obj, "resources", "requests")),
            env=env,
            privileged=_get(obj, "securityContext", "privileged") is True,
            init=init,
        )


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a pod the scheduler, webhook and device plugins read."""

    namespace: str
    name: str
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    init_containers: tuple[ContainerView, ...] = ()
    containers: tuple[ContainerView, ...] = ()
    scheduler_name: str = ""
    node_name: str = ""
    phase: str = "Pending"
    deleting: bool = False
    # names of init containers that terminated with exit code 0
    init_succeeded: frozenset[str] = frozenset()

    @property
    def all_containers(self) -> tuple[ContainerView, ...]:
        """Init containers first, then app containers: the order of allocation entries."""
        return self.init_containers + self.containers

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def init_finished(self) -> bool:
        """Whether every init container has terminated successfully."""
        return bool(self.init_containers) and all(
            c.name in self.init_succeeded for c in self.init_containers
        )

    @classmethod
    def from_manifest(cls, obj: Mapping[str, object], *, namespace: str = "") -> PodView:
        """Narrow a pod JSON object (as the API server or a YAML file has it)."""
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        spec = obj.get("spec")
        spec = spec if isinstance(spec, Mapping) else {}
        status = obj.get("status")
        status = status if isinstance(status, Mapping) else {}

        def containers(key: str, *, init: bool) -> tuple[ContainerView, ...]:
            raw = spec.get(key)
            if not isinstance(raw, list):
                return ()
            return tuple(
                ContainerView.from_manifest(c, init=init) for c in raw if isinstance(c, Mapping)
            )

        succeeded: set[str] = set()
        statuses = status.get("initContainerStatuses")
        if isinstance(statuses, list):
            for st in statuses:
                code = _get(st, "state", "terminated", "exitCode")
                if code == 0 and isinstance(st, Mapping):
                    succeeded.add(str(st.get("name")))
        return cls(
            namespace=str(meta.get("namespace") or namespace or "default"),
            name=str(meta.get("name") or meta.get("generateName") or ""),
            uid=str(meta.get("uid") or ""),
            annotations=_str_map(meta.get("annotations")),
            labels=_str_map(meta.get("labels")),
            init_containers=containers("initContainers", init=True),
            containers=containers("containers", init=False),
            scheduler_name=str(spec.get("schedulerName") or ""),
            node_name=str(spec.get("nodeName") or ""),
            phase=str(status.get("phase") or "Pending"),
            deleting=meta.get("deletionTimestamp") is not None,
            init_succeeded=frozenset(succeeded),
        )


@dataclass(frozen=True, slots=True)
class NodeView:
    """The parts of a node the device logic reads."""

    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, obj: Mapping[str, object]) -> NodeView:
        """Narrow a node JSON object."""
        return cls(
            name=str(_get(obj, "metadata", "name") or ""),
            annotations=_str_map(_get(obj, "metadata", "annotations")),
            labels=_str_map(_get(obj, "metadata", "labels")),
            capacity=_str_map(_get(obj, "status", "capacity")),
            allocatable=_str_map(_get(obj, "status", "allocatable")),
        )


# ----------------------------------------------------------------------------------------------
# Resource names and the device-plugin answer
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResourceNames:
    """The extended resources one vendor is requested through (HAMi ``GetResourceNames``).

    :param memory_factor: multiplier from the unit users write to MiB (1 = MiB; 256 for
        Cambricon's 256 MiB units)
    """

    count: str
    memory: str = ""
    memory_percentage: str = ""
    cores: str = ""
    priority: str = ""
    memory_factor: int = 1

    def all(self) -> tuple[str, ...]:
        """Every non-empty resource name, count first."""
        names = (self.count, self.memory, self.memory_percentage, self.cores, self.priority)
        return tuple(n for n in names if n)


@dataclass(frozen=True, slots=True)
class Mount:
    """A bind mount the kubelet adds to a container (device plugin ``Mount``)."""

    container_path: str
    host_path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device node the kubelet adds to a container (device plugin ``DeviceSpec``)."""

    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class ContainerRuntime:
    """What ``Allocate`` answers for one container: env, mounts, device nodes, annotations."""

    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FitResult:
    """The outcome of fitting one container request on one node's devices.

    :param devices: the chosen devices (empty on failure)
    :param reasons: failure reason -> number of devices that failed for it
    :param total: number of candidate devices examined (the ``/<total>`` of reason strings)
    """

    ok: bool
    devices: ContainerDevices = ()
    reasons: Mapping[Reason, int] = field(default_factory=dict)
    total: int = 0


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """A vendor's opinion of its registration on a node (HAMi ``CheckHealth``).

    :param healthy: the registration is alive
    :param update: the cached device list must be re-read from the node
    :param annotations: node annotations to write (``None`` value = delete), e.g. a handshake
    """

    healthy: bool
    update: bool
    annotations: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One telemetry sample of a device, for the monitor."""

    uuid: str
    index: int
    type: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization: float
    memory_utilization: float = 0.0
