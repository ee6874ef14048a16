"""The node monitor's scan of the per-container directories (hami-compat.md 10.1).

The device plugin gives every container a directory ``<hook>/containers/<podUID>_<container>``
(the host side of a mount) in which the container's shim keeps its shared-region file
(shim-contract.md 5.3). :class:`ContainerScanner` walks that directory every few seconds:

* a directory name is split on its **first** ``_`` into pod UID and container name;
* a directory whose pod UID is not among the node's pods and whose mtime is older than the resync
  interval is deleted (with its mapping); nothing is deleted before the pod list is known;
* a directory is loaded once: at most 2 entries whose name contains ``libvgpu.so`` or ends in
  ``.cache`` (more is an error), the first ``*.cache`` in name order is mapped read/write, shared;
  other names are ignored. A directory without such a file yet (no process has initialised the
  shim) is tried again on the next scan.

Everything a container can put in its directory is untrusted: unparsable names, symlinks, files of
the wrong size or without the magic are logged (once per directory and problem) and skipped, never
a crash. Region files are opened with ``O_NOFOLLOW`` and must be regular files, so a symlink named
``*.cache`` cannot make the monitor map (and write the feedback fields of) another file.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import shutil
import stat
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hami_core_fw.monitor import region

logger = logging.getLogger(__name__)

__all__ = [
    "CONTAINERS_DIR",
    "MAX_MATCHING_FILES",
    "ContainerKey",
    "ContainerScanner",
    "MappedRegion",
    "ScanError",
    "ScanReport",
    "is_region_entry",
    "parse_dir_name",
    "select_cache_file",
]

CONTAINERS_DIR = "containers"
MAX_MATCHING_FILES = 2


class ScanError(Exception):
    """A container directory that cannot be loaded (too many region files, unreadable)."""


@dataclass(frozen=True, slots=True)
class ContainerKey:
    """One container directory: ``<pod_uid>_<container>``."""

    name: str
    pod_uid: str
    container: str


def parse_dir_name(name: str) -> ContainerKey | None:
    """Split a directory name on its first ``_``; None when either part is empty.

    :param name: the directory's name, e.g. ``"0b1c..._main"``
    :returns: the key, or None for a name that names no container
    """
    pod_uid, sep, container = name.partition("_")
    if not sep or not pod_uid or not container:
        return None
    return ContainerKey(name, pod_uid, container)


def is_region_entry(name: str) -> bool:
    """Whether an entry counts towards the at-most-2 limit (``*libvgpu.so*`` or ``*.cache``)."""
    return "libvgpu.so" in name or name.endswith(".cache")


def select_cache_file(names: Iterable[str]) -> str | None:
    """Choose the region file among a directory's entry names.

    :param names: the entry names of one container directory
    :returns: the first ``*.cache`` name in name order, or None when there is none
    :raises ScanError: more than :data:`MAX_MATCHING_FILES` entries match
    """
    matching = sorted(n for n in names if is_region_entry(n))
    if len(matching) > MAX_MATCHING_FILES:
        raise ScanError(
            f"{len(matching)} region entries {matching!r}, at most {MAX_MATCHING_FILES} allowed"
        )
    caches = [n for n in matching if n.endswith(".cache") and "libvgpu.so" not in n]
    return caches[0] if caches else None


def _checked_size(fd: int, path: Path) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if st.st_size < region.V0_SIZE:
        raise region.RegionError(
            f"region file too small: {st.st_size} bytes, need at least {region.V0_SIZE}"
        )
    return st.st_size


class MappedRegion:
    """One region file mapped read/write and shared, as HAMi's monitor maps it.

    Reads copy the mapping and decode the copy, so a decoded :class:`~region.Region` never refers
    to the mapping. Every access checks first that the file has not shrunk below the mapped size:
    touching a mapped page beyond the end of a truncated file would kill the process (SIGBUS).

    :param path: the ``*.cache`` file
    :raises OSError: it cannot be opened (a symlink, not a regular file, no permission)
    :raises region.RegionError: its contents match no known layout
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.size = _checked_size(fd, self.path)
            self._mm: mmap.mmap | None = mmap.mmap(
                fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            self.layout = self.read().layout
        except BaseException:
            self.close()
            raise

    def _mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise region.RegionError(f"region file {self.path} is no longer mapped")
        size = os.fstat(self._fd).st_size
        if size < self.size:
            raise region.RegionError(
                f"region file {self.path} shrank from {self.size} to {size} bytes"
            )
        return self._mm

    def read(self) -> region.Region:
        """Decode the file's current contents.

        :raises region.RegionError: the contents are not (or no longer) a region
        """
        with self._lock:
            data = self._mapping()[:]
        return region.decode(data)

    def read_i32(self, offset: int) -> int:
        """The signed 32-bit little-endian field at ``offset``."""
        with self._lock:
            (value,) = struct.unpack_from("<i", self._mapping(), offset)
        return int(value)

    def write_i32(self, offset: int, value: int) -> None:
        """Store a signed 32-bit little-endian field at ``offset`` (one aligned 4-byte store)."""
        with self._lock:
            struct.pack_into("<i", self._mapping(), offset, value)

    def close(self) -> None:
        """Unmap and close (idempotent)."""
        with self._lock:
            if self._mm is not None:
                self._mm.close()
                self._mm = None
                os.close(self._fd)


@dataclass(slots=True)
class ScanReport:
    """What one scan did (names are directory names)."""

    loaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class ContainerScanner:
    """Keeps the region files of ``<hook_path>/containers/*`` mapped (hami-compat.md 10.1).

    :meth:`scan` runs on one thread at a time; :meth:`entries` may be called from any thread.

    :param hook_path: the monitor's ``HOOK_PATH`` (``/usr/local/vgpu``: it already includes vgpu)
    :param resync_interval_s: how old a directory of an unknown pod must be before it is deleted
    :param clock: wall-clock seconds (compared with directory mtimes)
    """

    def __init__(
        self,
        hook_path: str | Path,
        *,
        resync_interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(hook_path) / CONTAINERS_DIR
        self.resync_interval_s = resync_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._mapped: dict[str, tuple[ContainerKey, MappedRegion]] = {}
        self._problems: dict[str, str] = {}

    def entries(self) -> list[tuple[ContainerKey, MappedRegion]]:
        """The loaded containers, in directory-name order."""
        with self._lock:
            return [self._mapped[name] for name in sorted(self._mapped)]

    def _problem(self, name: str, message: str) -> None:
        """Log a directory's problem at warning once, then at debug while it stays the same."""
        if self._problems.get(name) != message:
            self._problems[name] = message
            logger.warning("container directory %s skipped: %s", self.root / name, message)
        else:
            logger.debug("container directory %s still skipped: %s", self.root / name, message)

    def _drop(self, name: str) -> None:
        with self._lock:
            item = self._mapped.pop(name, None)
        if item is not None:
            item[1].close()

    def scan(self, pod_uids: Collection[str] | None) -> ScanReport:
        """Load new container directories and delete stale ones.

        :param pod_uids: UIDs of the pods on this node; None while the pod list is not known yet
            (then nothing is deleted)
        :returns: what was loaded, removed, dropped (directory gone) and why some failed
        """
        report = ScanReport()
        try:
            with os.scandir(self.root) as it:
                entries = list(it)
        except OSError as err:
            message = err.strerror or str(err)
            if self._problems.get("") != message:
                logger.warning("cannot list container directory %s: %s", self.root, message)
            self._problems[""] = message
            entries = []
        else:
            self._problems.pop("", None)
        seen: set[str] = set()
        now = self._clock()
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not is_dir:
                continue
            seen.add(name)
            pod_uid = name.partition("_")[0]
            if pod_uids is not None and pod_uid not in pod_uids:
                if self._remove_if_stale(entry, now):
                    report.removed.append(name)
                continue
            if name in self._mapped:
                continue
            key = parse_dir_name(name)
            if key is None:
                self._problem(name, "the name is not <podUID>_<container>")
                report.failed[name] = "bad name"
                continue
            try:
                mapped = self._load(Path(entry.path))
            except (ScanError, region.RegionError, OSError) as err:
                message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
                self._problem(name, message)
                report.failed[name] = message
                continue
            if mapped is None:
                logger.debug("container directory %s has no region file yet", entry.path)
                continue
            with self._lock:
                self._mapped[name] = (key, mapped)
            self._problems.pop(name, None)
            report.loaded.append(name)
            logger.info(
                "loaded region file %s (layout %s) of pod %s container %s",
                mapped.path,
                mapped.layout,
                key.pod_uid,
                key.container,
            )
        for name in [n for n in self._mapped if n not in seen]:
            self._drop(name)
            report.dropped.append(name)
            logger.info("container directory %s is gone; region file unmapped", self.root / name)
        for name in [n for n in self._problems if n and n not in seen]:
            del self._problems[name]
        return report

    def _load(self, directory: Path) -> MappedRegion | None:
        names = os.listdir(directory)
        chosen = select_cache_file(names)
        if chosen is None:
            return None
        return MappedRegion(directory / chosen)

    def _remove_if_stale(self, entry: os.DirEntry[str], now: float) -> bool:
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return False
        except OSError as err:
            self._problem(entry.name, f"cannot stat: {err.strerror or err}")
            return False
        if mtime + self.resync_interval_s > now:
            return False
        self._drop(entry.name)
        try:
            shutil.rmtree(entry.path)
        except FileNotFoundError:
            return False
        except OSError as err:
            self._problem(entry.name, f"cannot remove the directory of a gone pod: {err}")
            return False
        self._problems.pop(entry.name, None)
        logger.info("removed container directory %s: its pod is not on this node", entry.path)
        return True

    def close(self) -> None:
        """Unmap every region file."""
        with self._lock:
            items = list(self._mapped.values())
            self._mapped.clear()
        for _key, mapped in items:
            mapped.close()
