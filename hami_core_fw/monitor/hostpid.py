"""The node monitor fills the ``hostpid`` of every live process slot (shim-contract.md 7.1).

A process inside a container knows only its namespace PID (the slot's ``pid``); NVML and the
monitor's ``/proc`` speak host PIDs. The monitor runs with host PID visibility, so it finds, for
each region file it maps, the host processes whose ``/proc/<pid>/maps`` maps that very file
(matched by device and inode, not by path: a container sees the file under another path), takes
the PID inside the container from the last field of their ``/proc/<pid>/status`` ``NSpid:`` line,
and writes the host PID into the live slot (``status != 0``) whose ``pid`` equals it.

* :func:`plan` is pure: processes and decoded slots in, the writes out. It writes only when the
  slot's ``hostpid`` differs, and never when the match is ambiguous (two host processes of the file
  with the same namespace PID, or two live slots with the same ``pid``).
* :func:`fill` reads ``proc_root`` and writes through the mapping. When every live slot's recorded
  host PID still names a process that maps the file with the slot's namespace PID, it reads
  nothing more; otherwise it reads ``maps`` of every process once for all files. Unreadable,
  vanished or garbled ``/proc`` entries are skipped. Before a write, the slot's ``pid`` is read
  again so a slot reused since the read is left alone.

The file's identity is taken from ``os.stat`` of its path (not followed through a symlink); a
container that replaces its file can only mislabel its own processes: another container's
processes cannot map a file in this container's directory (links do not cross mounts).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hami_core_fw.monitor import region

logger = logging.getLogger(__name__)

__all__ = [
    "FileId",
    "HostPidWrite",
    "MappedFile",
    "ProcInfo",
    "fill",
    "parse_maps",
    "parse_nspid",
    "plan",
    "read_proc",
    "slot_offset",
]

#: (device, inode) of a file, the device as ``os.stat`` gives it (``os.makedev(major, minor)``)
FileId = tuple[int, int]

#: layout name -> (offset of ``procs[0]``, slot size); ``pid`` is at +0, ``hostpid`` at +4
_SLOTS = {"v1": (1856, 1960), "v0": (1848, 1168)}


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One host process as ``/proc`` shows it.

    :param host_pid: its PID in ``proc_root`` (the host namespace)
    :param ns_pids: the ``NSpid:`` fields, outermost first (the last is the PID in its own
        namespace; a single field when it has no PID namespace of its own)
    :param mapped: the (device, inode) of the files it maps, restricted to the files asked about
    """

    host_pid: int
    ns_pids: tuple[int, ...]
    mapped: frozenset[FileId]


@dataclass(frozen=True, slots=True)
class HostPidWrite:
    """Write ``hostpid`` into slot ``index``, whose ``pid`` is ``pid``."""

    index: int
    pid: int
    hostpid: int


class MappedFile(Protocol):
    """A mapped region file (:class:`~hami_core_fw.monitor.scan.MappedRegion`)."""

    @property
    def path(self) -> Path:
        """The file."""
        ...

    def read(self) -> region.Region:
        """Decode the current contents."""
        ...

    def read_i32(self, offset: int) -> int:
        """Read a signed 32-bit field."""
        ...

    def write_i32(self, offset: int, value: int) -> None:
        """Write a signed 32-bit field."""
        ...


def plan(
    procs: Iterable[ProcInfo], slots: Sequence[region.ProcSlot], file_id: FileId
) -> list[HostPidWrite]:
    """The ``hostpid`` writes one region file needs (pure).

    :param procs: host processes (those not mapping ``file_id`` are ignored)
    :param slots: the file's decoded slots
    :param file_id: the file's (device, inode)
    :returns: one write per live slot whose host process is known unambiguously and whose
        ``hostpid`` differs from it, in slot order
    """
    by_ns: dict[int, set[int]] = {}
    for p in procs:
        if file_id in p.mapped and p.ns_pids and p.host_pid > 0:
            by_ns.setdefault(p.ns_pids[-1], set()).add(p.host_pid)
    live: dict[int, list[region.ProcSlot]] = {}
    for s in slots:
        if s.status != 0 and s.pid > 0:
            live.setdefault(s.pid, []).append(s)
    writes = []
    for pid, same in live.items():
        hosts = by_ns.get(pid, set())
        if len(same) != 1 or len(hosts) != 1:
            continue
        (host,) = hosts
        if same[0].hostpid != host:
            writes.append(HostPidWrite(same[0].index, pid, host))
    return sorted(writes, key=lambda w: w.index)


def parse_nspid(status: str) -> tuple[int, ...] | None:
    """The ``NSpid:`` fields of a ``/proc/<pid>/status``; None when missing or garbled."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            try:
                pids = tuple(int(f) for f in line[len("NSpid:") :].split())
            except ValueError:
                return None
            return pids if pids and all(p > 0 for p in pids) else None
    return None


def parse_maps(maps: str, wanted: Iterable[FileId]) -> frozenset[FileId]:
    """The files among ``wanted`` that a ``/proc/<pid>/maps`` maps; garbled lines are skipped.

    Each line is ``address perms offset major:minor inode [path]``, the device in hex.
    """
    want = frozenset(wanted)
    found: set[FileId] = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        major, sep, minor = fields[3].partition(":")
        try:
            ino = int(fields[4])
            dev = os.makedev(int(major, 16), int(minor, 16)) if sep else -1
        except (ValueError, OverflowError):
            continue
        if ino and (dev, ino) in want:
            found.add((dev, ino))
    return frozenset(found)


def read_proc(proc_root: Path, pid: int, wanted: Iterable[FileId]) -> ProcInfo | None:
    """Read one process's mappings of ``wanted`` files and its ``NSpid``.

    :returns: None when it maps none of them, is gone, unreadable or garbled
    """
    base = proc_root / str(pid)
    try:
        mapped = parse_maps((base / "maps").read_text(errors="replace"), wanted)
        if not mapped:
            return None
        ns_pids = parse_nspid((base / "status").read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    if ns_pids is None:
        return None
    return ProcInfo(pid, ns_pids, mapped)


def slot_offset(layout: str, index: int) -> int:
    """Offset of slot ``index``'s ``pid`` (``hostpid`` is 4 bytes further)."""
    procs_off, size = _SLOTS[layout]
    return procs_off + index * size


def _file_id(path: Path) -> FileId | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _settled(proc_root: Path, r: region.Region, fid: FileId) -> bool:
    """Whether every live slot's ``hostpid`` names a process of the file with the slot's PID."""
    for s in r.live_slots():
        if s.pid <= 0:
            continue
        info = read_proc(proc_root, s.hostpid, (fid,)) if s.hostpid > 0 else None
        if info is None or info.ns_pids[-1] != s.pid:
            return False
    return True


def _all_procs(proc_root: Path, wanted: frozenset[FileId]) -> list[ProcInfo]:
    try:
        names = os.listdir(proc_root)
    except OSError as err:
        logger.debug("cannot list %s: %s", proc_root, err)
        return []
    procs = []
    for name in names:
        if not name.isdigit():
            continue
        info = read_proc(proc_root, int(name), wanted)
        if info is not None:
            procs.append(info)
    return procs


def fill(mapped: Iterable[MappedFile], proc_root: str | Path = "/proc") -> list[HostPidWrite]:
    """Write the host PID of every live slot of every mapped region file where it differs.

    :param mapped: the mapped region files
    :param proc_root: the host's ``/proc``
    :returns: the writes made (all files together)
    """
    root = Path(proc_root)
    pending: list[tuple[MappedFile, region.Region, FileId]] = []
    for m in mapped:
        fid = _file_id(m.path)
        if fid is None:
            continue
        try:
            r = m.read()
        except region.RegionError as err:
            logger.debug("host PIDs of %s not filled: %s", m.path, err)
            continue
        if r.layout in _SLOTS and not _settled(root, r, fid):
            pending.append((m, r, fid))
    if not pending:
        return []
    procs = _all_procs(root, frozenset(fid for _m, _r, fid in pending))
    done: list[HostPidWrite] = []
    for m, r, fid in pending:
        for w in plan(procs, r.slots, fid):
            off = slot_offset(r.layout, w.index)
            try:
                if m.read_i32(off) != w.pid:
                    continue  # the slot was reused since the read
                m.write_i32(off + 4, w.hostpid)
            except (region.RegionError, OSError, ValueError) as err:
                logger.warning("cannot write host PIDs into %s: %s", m.path, err)
                break
            logger.debug("%s slot %d: pid %d is host pid %d", m.path, w.index, w.pid, w.hostpid)
            done.append(w)
    return done
