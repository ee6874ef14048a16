"""Reader of the per-container shared-region file written by the in-container shim.

Decodes HAMi's v1 layout (``shim-contract.md`` 5.2; HAMi-core files and ours), the older v0 layout,
and the versioned extension area our shim appends at :data:`EXT_OFFSET` (``shims/README.md``).
Selection and summing follow HAMi's monitor (5.3): v0 when ``V0_SIZE <= size < V1_SIZE``, v1 when
``major_version == 1`` and ``size >= V1_SIZE``; per device, the sums run over slots
``0 .. proc_num - 1`` (clamped to ``0 .. 1024``) whose ``status`` is not 0.

Decoding is pure: :func:`decode` takes bytes (or any buffer) and returns frozen dataclasses.
:func:`read_file` reads the file; :func:`exclude_dead` and :func:`process_alive` read ``/proc``.

Slots of processes that died without exiting cleanly (SIGKILL, crash) keep ``status != 0`` until a
process of the container releases them: every live process's shim sweeps the slots every 250 ms,
so a dead process's usage is gone within about 0.4 s while any process of the container runs. When
none remains, nobody rewrites the file; a reader then applies :func:`exclude_dead`, which treats
slots whose process is gone (or whose PID was reused: start time differs) as free.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXT_MAGIC",
    "EXT_OFFSET",
    "MAGIC",
    "MAX_DEVICES",
    "MAX_PROCS",
    "V0_SIZE",
    "V1_SIZE",
    "DeviceExtension",
    "DeviceUsage",
    "Extension",
    "ProcSlot",
    "Region",
    "RegionError",
    "decode",
    "exclude_dead",
    "process_alive",
    "read_file",
]

MAGIC = 19920718
MAX_DEVICES = 16
MAX_PROCS = 1024
UUID_LEN = 96
V0_SIZE = 1_197_896
V1_SIZE = 2_008_952
EXT_OFFSET = 2_011_136
EXT_MAGIC = 0x584D4148  # "HAMX"
EXT_HEADER = 2176
OUR_MINOR_MIN = 100


class RegionError(ValueError):
    """The buffer is not a shared-region file this reader understands."""


@dataclass(frozen=True)
class DeviceUsage:
    """One process's usage of one device, in bytes."""

    context_size: int
    module_size: int
    data_size: int
    total: int


@dataclass(frozen=True)
class ProcSlot:
    """One process slot (``procs[index]``)."""

    index: int
    pid: int
    hostpid: int
    status: int
    used: tuple[DeviceUsage, ...]
    monitorused: tuple[int, ...]
    sm_util: tuple[int, ...]


@dataclass(frozen=True)
class DeviceExtension:
    """Per-device state of our extension area."""

    reserved: int
    tokens: int
    last_refill_ns: int
    rate: float
    util_x100: int
    flags: int


@dataclass(frozen=True)
class Extension:
    """Our versioned extension area (files with ``minor_version >= 100``)."""

    version: int
    size: int
    devices: tuple[DeviceExtension, ...]
    slot_start_times: tuple[int, ...]


@dataclass(frozen=True)
class Region:
    """A decoded shared-region file."""

    layout: str
    major_version: int
    minor_version: int
    device_num: int
    uuids: tuple[str, ...]
    limits: tuple[int, ...]
    sm_limits: tuple[int, ...]
    proc_num: int
    slots: tuple[ProcSlot, ...]
    utilization_switch: int
    recent_kernel: int
    priority: int
    last_kernel_time: int
    extension: Extension | None

    @property
    def written_by_us(self) -> bool:
        """Whether hami-core-fw's shim wrote the file (``minor_version >= 100``)."""
        return self.layout == "v1" and self.minor_version >= OUR_MINOR_MIN

    def live_slots(self) -> tuple[ProcSlot, ...]:
        """Slots the monitor counts: index below ``proc_num`` and ``status != 0``."""
        return tuple(s for s in self.slots if s.status != 0)

    def devices(self) -> tuple[int, ...]:
        """Device positions the monitor reports: ``i < min(device_num, 16)`` with a UUID."""
        return tuple(i for i in range(min(self.device_num, MAX_DEVICES)) if self.uuids[i])

    def usage(self, device: int) -> DeviceUsage:
        """Container usage of a device position, summed over live slots."""
        live = self.live_slots()
        return DeviceUsage(
            context_size=sum(s.used[device].context_size for s in live),
            module_size=sum(s.used[device].module_size for s in live),
            data_size=sum(s.used[device].data_size for s in live),
            total=sum(s.used[device].total for s in live),
        )

    def sm_util(self, device: int) -> int:
        """Summed ``sm_util`` (percent) of live slots on a device position."""
        return sum(s.sm_util[device] for s in self.live_slots())


@dataclass(frozen=True)
class _Layout:
    name: str
    head: str  # struct format of the fixed header fields we read
    num_off: int
    uuids_off: int
    limit_off: int
    sm_limit_off: int
    procs_off: int
    slot_size: int
    used_stride: int
    monitorused_off: int
    util_off: int
    util_stride: int
    status_off: int
    tail_off: int  # proc_num, utilization_switch, recent_kernel, priority


_V1 = _Layout(
    name="v1",
    head="<iIIi",
    num_off=56,
    uuids_off=64,
    limit_off=1600,
    sm_limit_off=1728,
    procs_off=1856,
    slot_size=1960,
    used_stride=64,
    monitorused_off=1032,
    util_off=1160,
    util_stride=48,
    status_off=1928,
    tail_off=2_008_896,
)

_V0 = _Layout(
    name="v0",
    head="<ii",
    num_off=48,
    uuids_off=56,
    limit_off=1592,
    sm_limit_off=1720,
    procs_off=1848,
    slot_size=1168,
    used_stride=40,
    monitorused_off=648,
    util_off=776,
    util_stride=24,
    status_off=1160,
    tail_off=1_197_880,
)


def _uuid(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def _slot(buf: memoryview, lay: _Layout, index: int) -> ProcSlot:
    base = lay.procs_off + index * lay.slot_size
    pid, hostpid = struct.unpack_from("<ii", buf, base)
    used = []
    for d in range(MAX_DEVICES):
        off = base + 8 + d * lay.used_stride
        ctx, mod, data, _offset, total = struct.unpack_from("<5Q", buf, off)
        used.append(DeviceUsage(ctx, mod, data, total))
    monitorused = struct.unpack_from("<16Q", buf, base + lay.monitorused_off)
    sm_util = tuple(
        struct.unpack_from("<Q", buf, base + lay.util_off + d * lay.util_stride + 16)[0]
        for d in range(MAX_DEVICES)
    )
    (status,) = struct.unpack_from("<i", buf, base + lay.status_off)
    return ProcSlot(index, pid, hostpid, status, tuple(used), tuple(monitorused), sm_util)


def _extension(buf: memoryview) -> Extension | None:
    if len(buf) < EXT_OFFSET + EXT_HEADER:
        return None
    magic, version, size = struct.unpack_from("<IIQ", buf, EXT_OFFSET)
    if magic != EXT_MAGIC:
        return None
    devices = []
    for d in range(MAX_DEVICES):
        off = EXT_OFFSET + 128 + d * 128
        reserved, tokens, last, rate, util, flags = struct.unpack_from("<QqQdQI", buf, off + 64)
        devices.append(DeviceExtension(reserved, tokens, last, rate, util, flags))
    starts: tuple[int, ...] = ()
    if len(buf) >= EXT_OFFSET + EXT_HEADER + 16 * MAX_PROCS:
        starts = tuple(
            struct.unpack_from("<Q", buf, EXT_OFFSET + EXT_HEADER + 16 * i)[0]
            for i in range(MAX_PROCS)
        )
    return Extension(version, size, tuple(devices), starts)


def decode(data: bytes | bytearray | memoryview) -> Region:
    """Decode a shared-region file's contents.

    :param data: the whole file (bytes, or a buffer such as an ``mmap``)
    :returns: the decoded region
    :raises RegionError: the magic is missing or the size/version matches no known layout
    """
    buf = memoryview(data).cast("B")
    size = len(buf)
    if size < V0_SIZE:
        raise RegionError(f"region file too small: {size} bytes, need at least {V0_SIZE}")
    (flag,) = struct.unpack_from("<i", buf, 0)
    if flag != MAGIC:
        raise RegionError(f"region file not initialised: magic {flag!r}, expected {MAGIC}")
    if size < V1_SIZE:
        lay, major, minor = _V0, 0, 0
    else:
        _flag, major, minor, _sm_init = struct.unpack_from(_V1.head, buf, 0)
        if major != 1:
            raise RegionError(f"unsupported region major version {major!r}, expected 1")
        lay = _V1
    (device_num,) = struct.unpack_from("<Q", buf, lay.num_off)
    uuids = tuple(
        _uuid(bytes(buf[lay.uuids_off + i * UUID_LEN : lay.uuids_off + (i + 1) * UUID_LEN]))
        for i in range(MAX_DEVICES)
    )
    limits = struct.unpack_from("<16Q", buf, lay.limit_off)
    sm_limits = struct.unpack_from("<16Q", buf, lay.sm_limit_off)
    proc_num, switch, recent, priority = struct.unpack_from("<iiii", buf, lay.tail_off)
    count = min(max(proc_num, 0), MAX_PROCS)
    slots = tuple(_slot(buf, lay, i) for i in range(count))
    last_kernel_time = 0
    extension = None
    if lay is _V1:
        (last_kernel_time,) = struct.unpack_from("<Q", buf, lay.tail_off + 16)
        if minor >= OUR_MINOR_MIN:
            extension = _extension(buf)
    return Region(
        layout=lay.name,
        major_version=major,
        minor_version=minor,
        device_num=device_num,
        uuids=uuids,
        limits=tuple(limits),
        sm_limits=tuple(sm_limits),
        proc_num=proc_num,
        slots=slots,
        utilization_switch=switch,
        recent_kernel=recent,
        priority=priority,
        last_kernel_time=last_kernel_time,
        extension=extension,
    )


def read_file(path: str | Path) -> Region:
    """Read and decode a shared-region file.

    :param path: the ``*.cache`` file
    :returns: the decoded region
    :raises RegionError: the contents match no known layout
    :raises OSError: the file cannot be read
    """
    return decode(Path(path).read_bytes())


def process_alive(pid: int, start_time: int = 0, proc_root: str | Path = "/proc") -> bool:
    """Whether ``pid`` names a running process (not a zombie) started at ``start_time``.

    :param pid: a process ID in the namespace of ``proc_root``
    :param start_time: ``/proc/<pid>/stat`` field 22 recorded for the slot; 0 = not recorded (only
        existence is checked)
    :param proc_root: the ``/proc`` mount to look in
    :returns: False when the process is gone, a zombie, or the PID now names another process
    """
    if pid <= 0:
        return False
    try:
        raw = (Path(proc_root) / str(pid) / "stat").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable (restricted /proc): never release a slot on a guess
    # the command name may contain spaces and parentheses: fields follow the last ')'
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return True  # unparsable: keep the slot
    if fields[0] in (b"Z", b"X", b"x"):
        return False
    return not start_time or int(fields[19]) == start_time


def exclude_dead(
    region: Region, proc_root: str | Path = "/proc", *, use_hostpid: bool = False
) -> Region:
    """A copy of ``region`` in which the slots of dead processes are free (``status`` 0).

    Our files record each slot's process start time in the extension, so a reused PID is told
    apart; HAMi-core files are checked by existence only.

    :param region: a decoded region
    :param proc_root: the ``/proc`` mount whose PIDs the slots are checked against
    :param use_hostpid: check ``hostpid`` (a reader in the host PID namespace, such as the node
        monitor) instead of the container-namespace ``pid``; slots with no host PID yet are kept
    :returns: the region with dead slots marked free; usage sums then exclude them
    """
    starts = region.extension.slot_start_times if region.extension else ()
    slots = []
    for s in region.slots:
        pid = s.hostpid if use_hostpid else s.pid
        start = starts[s.index] if s.index < len(starts) else 0
        dead = s.status != 0 and pid != 0 and not process_alive(pid, start, proc_root)
        if s.status != 0 and not use_hostpid and pid == 0:
            dead = True  # a counted slot without a process
        slots.append(dataclasses.replace(s, status=0) if dead else s)
    return dataclasses.replace(region, slots=tuple(slots))
