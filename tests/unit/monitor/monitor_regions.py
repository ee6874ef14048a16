"""Builds shared-region files byte by byte from the layout tables of shim-contract.md 5.2.

Literal offsets, independent of ``hami_core_fw.monitor.region``: what the monitor reads is checked
against files built from the contract, not against the reader's own constants.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = 19920718
V1_SIZE = 2_008_952
V0_SIZE = 1_197_896
EXT_OFFSET = 2_011_136
EXT_MAGIC = 0x584D4148
OUR_FILE_SIZE = EXT_OFFSET + 2176 + 16 * 1024


@dataclass
class Proc:
    """One process slot. ``used`` maps device position -> (context, module, data, total)."""

    pid: int
    hostpid: int = 0
    status: int = 1
    used: Mapping[int, tuple[int, int, int, int]] = field(default_factory=dict)
    sm_util: Mapping[int, int] = field(default_factory=dict)
    start_time: int = 0


def v1(
    *,
    uuids: Sequence[str],
    limits: Sequence[int] = (),
    sm_limits: Sequence[int] = (),
    procs: Sequence[Proc] = (),
    proc_num: int | None = None,
    device_num: int | None = None,
    switch: int = 1,
    recent_kernel: int = 2,
    priority: int = 1,
    last_kernel_time: int = 0,
    minor: int = 2,
    size: int | None = None,
) -> bytearray:
    """A v1 file (HAMi-core: minor 2, size struct + 1; ours: minor >= 100 with the extension)."""
    ours = minor >= 100
    buf = bytearray(size or (OUR_FILE_SIZE if ours else V1_SIZE + 1))
    struct.pack_into("<iIIi", buf, 0, MAGIC, 1, minor, 0)
    struct.pack_into("<Q", buf, 56, len(uuids) if device_num is None else device_num)
    for i, uuid in enumerate(uuids):
        raw = uuid.encode()
        buf[64 + 96 * i : 64 + 96 * i + len(raw)] = raw
    for i, limit in enumerate(limits):
        struct.pack_into("<Q", buf, 1600 + 8 * i, limit)
    for i, sm in enumerate(sm_limits):
        struct.pack_into("<Q", buf, 1728 + 8 * i, sm)
    for n, p in enumerate(procs):
        base = 1856 + 1960 * n
        struct.pack_into("<ii", buf, base, p.pid, p.hostpid)
        for dev, (ctx, mod, data, total) in p.used.items():
            struct.pack_into("<5Q", buf, base + 8 + 64 * dev, ctx, mod, data, 0, total)
        for dev, sm in p.sm_util.items():
            struct.pack_into("<Q", buf, base + 1160 + 48 * dev + 16, sm)
        struct.pack_into("<i", buf, base + 1928, p.status)
    count = len(procs) if proc_num is None else proc_num
    struct.pack_into("<iiii", buf, 2_008_896, count, switch, recent_kernel, priority)
    struct.pack_into("<Q", buf, 2_008_912, last_kernel_time)
    if ours:
        struct.pack_into("<IIQ", buf, EXT_OFFSET, EXT_MAGIC, 1, len(buf) - EXT_OFFSET)
        for n, p in enumerate(procs):
            struct.pack_into("<Q", buf, EXT_OFFSET + 2176 + 16 * n, p.start_time)
    return buf


def v0(
    *,
    uuids: Sequence[str],
    limits: Sequence[int] = (),
    procs: Sequence[Proc] = (),
    switch: int = 1,
    recent_kernel: int = 2,
    priority: int = 1,
) -> bytearray:
    """A v0 file (older HAMi-core: no version fields, 1168-byte slots)."""
    buf = bytearray(V0_SIZE)
    struct.pack_into("<ii", buf, 0, MAGIC, 0)
    struct.pack_into("<Q", buf, 48, len(uuids))
    for i, uuid in enumerate(uuids):
        raw = uuid.encode()
        buf[56 + 96 * i : 56 + 96 * i + len(raw)] = raw
    for i, limit in enumerate(limits):
        struct.pack_into("<Q", buf, 1592 + 8 * i, limit)
    for n, p in enumerate(procs):
        base = 1848 + 1168 * n
        struct.pack_into("<ii", buf, base, p.pid, p.hostpid)
        for dev, (ctx, mod, data, total) in p.used.items():
            struct.pack_into("<5Q", buf, base + 8 + 40 * dev, ctx, mod, data, 0, total)
        for dev, sm in p.sm_util.items():
            struct.pack_into("<Q", buf, base + 776 + 24 * dev + 16, sm)
        struct.pack_into("<i", buf, base + 1160, p.status)
    struct.pack_into("<iiii", buf, 1_197_880, len(procs), switch, recent_kernel, priority)
    return buf


def write_container(
    hook: Path, pod_uid: str, container: str, data: bytes, name: str = "vgpu.cache"
) -> Path:
    """Put a region file where the device plugin mounts it: ``<hook>/containers/<uid>_<ctr>/``."""
    directory = hook / "containers" / f"{pod_uid}_{container}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def fake_proc(root: Path, pid: int, *, start_time: int = 0, state: str = "S") -> None:
    """A ``<root>/<pid>/stat`` as Linux writes it (start time is field 22)."""
    fields = [state, *["0"] * 18, str(start_time), "0"]
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "stat").write_text(f"{pid} (python3 x) " + " ".join(fields) + "\n")
