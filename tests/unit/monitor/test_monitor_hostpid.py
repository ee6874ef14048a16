"""The monitor fills the slots' host PIDs (shim-contract.md 7.1) from /proc maps and NSpid."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import pytest
from monitor_regions import Proc, v0, v1, write_container

from hami_core_fw.monitor import hostpid, region, scan

UUID = "GPU-11111111-2222-3333-4444-555555555555"
V1_PROCS, V1_SLOT = 1856, 1960
V0_PROCS, V0_SLOT = 1848, 1168


def hostpids(path: Path, procs_off: int = V1_PROCS, slot: int = V1_SLOT) -> list[int]:
    data = path.read_bytes()
    (count,) = struct.unpack_from("<i", data, 2_008_896 if slot == V1_SLOT else 1_197_880)
    return [struct.unpack_from("<i", data, procs_off + i * slot + 4)[0] for i in range(count)]


def maps_line(path: Path, *, dev: int | None = None, ino: int | None = None) -> str:
    st = path.stat()
    d = st.st_dev if dev is None else dev
    i = st.st_ino if ino is None else ino
    return f"7f3a00000000-7f3a001ea000 rw-s 00000000 {os.major(d):02x}:{os.minor(d):02x} {i} {path}"


def fake_proc(root: Path, pid: int, nspid: str | None, maps: list[str]) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    status = f"Name:\tpython3\nState:\tS (sleeping)\nPid:\t{pid}\n"
    if nspid is not None:
        status += f"NSpid:\t{nspid}\n"
    (d / "status").write_text(status + "Threads:\t1\n")
    (d / "maps").write_text(
        "\n".join(["55d0c0000000-55d0c0001000 r--p 00000000 fd:01 1234 /usr/bin/python3", *maps])
        + "\n"
    )


@pytest.fixture
def region_file(tmp_path: Path) -> Path:
    data = v1(
        uuids=[UUID],
        procs=[Proc(pid=7), Proc(pid=9, hostpid=4242), Proc(pid=11, status=0), Proc(pid=13)],
        minor=100,
    )
    return write_container(tmp_path / "hook", "uid", "main", bytes(data))


def fill(path: Path, proc_root: Path) -> list[hostpid.HostPidWrite]:
    mapped = scan.MappedRegion(path)
    try:
        return hostpid.fill([mapped], proc_root)
    finally:
        mapped.close()


# ---------------------------------------------------------------------------- pure part


def slots(*specs: tuple[int, int, int]) -> tuple[region.ProcSlot, ...]:
    return tuple(
        region.ProcSlot(i, pid, host, status, (), (), ())
        for i, (pid, host, status) in enumerate(specs)
    )


FID = (2049, 77)


def test_plan_writes_the_matching_slot_only_when_it_differs() -> None:
    procs = [
        hostpid.ProcInfo(5001, (5001, 7), frozenset({FID})),
        hostpid.ProcInfo(5002, (5002, 9), frozenset({FID})),
    ]
    got = hostpid.plan(procs, slots((7, 0, 1), (9, 5002, 1), (8, 0, 1)), FID)
    assert got == [hostpid.HostPidWrite(0, 7, 5001)]


def test_plan_ignores_processes_of_other_files_free_slots_and_ambiguity() -> None:
    procs = [
        hostpid.ProcInfo(6001, (6001, 7), frozenset({(2049, 78)})),  # another file
        hostpid.ProcInfo(6002, (6002, 3), frozenset({FID})),  # slot 3 is free
        hostpid.ProcInfo(6003, (6003, 4), frozenset({FID})),
        hostpid.ProcInfo(6004, (6004, 4), frozenset({FID})),  # two host processes claim pid 4
        hostpid.ProcInfo(6005, (6005, 5), frozenset({FID})),  # two live slots claim pid 5
    ]
    got = hostpid.plan(procs, slots((7, 0, 1), (3, 0, 0), (4, 0, 1), (5, 0, 1), (5, 0, 1)), FID)
    assert got == []


@pytest.mark.parametrize(
    "status",
    ["NSpid:\t1 x\n", "NSpid:\n", "NSpid:\t-3\n", "Pid:\t1\n", "\x00\xff garbage", ""],
)
def test_parse_nspid_garbage(status: str) -> None:
    assert hostpid.parse_nspid(status) is None


def test_parse_maps_matches_dev_and_inode_in_hex() -> None:
    fid = (os.makedev(0xFD, 0x1A), 99)
    text = (
        "garbage\n"
        "1000-2000 rw-s 00000000 zz:01 99 /x\n"
        "1000-2000 rw-s 00000000 fd:1a notanumber /x\n"
        "1000-2000 rw-s 00000000 fd:1a 98 /x\n"
        "1000-2000 rw-s 00000000 fd:1a 99 /other/path/vgpu.cache\n"
    )
    assert hostpid.parse_maps(text, [fid]) == frozenset({fid})
    assert hostpid.parse_maps(text.replace("fd:1a 99", "fd:1b 99"), [fid]) == frozenset()


# ---------------------------------------------------------------------------- I/O part


def test_fill_writes_the_host_pid_into_the_slot(region_file: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 5007, "5007 7", [maps_line(region_file)])
    fake_proc(proc, 4242, "4242 9", [maps_line(region_file)])
    fake_proc(proc, 5013, "5013\t300\t13", [maps_line(region_file)])  # nested namespaces
    got = fill(region_file, proc)
    assert [(w.index, w.hostpid) for w in got] == [(0, 5007), (3, 5013)]
    assert hostpids(region_file) == [5007, 4242, 0, 5013]
    assert region.read_file(region_file).slots[0].hostpid == 5007


def test_fill_does_not_rewrite_an_equal_host_pid(region_file: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 4242, "4242 9", [maps_line(region_file)])
    before = region_file.stat().st_mtime_ns
    assert fill(region_file, proc) == []
    assert hostpids(region_file) == [0, 4242, 0, 0]
    assert region_file.stat().st_mtime_ns == before


def test_fill_never_writes_a_wrong_slot(region_file: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    other = tmp_path / "other.cache"
    other.write_bytes(b"\0" * 4096)
    fake_proc(proc, 6001, "6001 7", [maps_line(other)])  # another file, same namespace pid
    fake_proc(proc, 6002, "6002 7", [maps_line(region_file, ino=region_file.stat().st_ino + 1)])
    fake_proc(proc, 6003, "6003 8", [maps_line(region_file)])  # no slot has pid 8
    fake_proc(proc, 6004, "6004 11", [maps_line(region_file)])  # slot of pid 11 is free
    fake_proc(proc, 6005, "6005 9", [maps_line(region_file)])  # 9 and 13: claimed twice
    fake_proc(proc, 6006, "6006 13", [maps_line(region_file)])
    fake_proc(proc, 6007, "6007 13", [maps_line(region_file)])
    got = fill(region_file, proc)
    assert got == [hostpid.HostPidWrite(1, 9, 6005)]  # 4242 is gone: the live process wins
    assert hostpids(region_file) == [0, 6005, 0, 0]


def test_fill_skips_garbage_in_proc(region_file: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()
    (proc / "notapid").write_text("x")
    (proc / "100").write_text("a file, not a directory")
    (proc / "101").mkdir()  # no status, no maps
    fake_proc(proc, 102, None, [maps_line(region_file)])  # no NSpid line
    fake_proc(proc, 103, "abc", [maps_line(region_file)])
    fake_proc(proc, 104, "104 7", ["\x00\x01\x02", "1-2 rw-s 0 :: x y", "short"])
    (proc / "105").mkdir()
    (proc / "105" / "maps").write_bytes(b"\xff\xfe" + maps_line(region_file).encode())
    (proc / "105" / "status").write_bytes(b"NSpid:\t105 \xff7\n")
    fake_proc(proc, 5013, "5013 13", [maps_line(region_file)])
    got = fill(region_file, proc)
    assert got == [hostpid.HostPidWrite(3, 13, 5013)]
    assert fill(region_file, tmp_path / "no-proc") == []


def test_fill_leaves_a_slot_reused_since_the_read(region_file: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 5007, "5007 7", [maps_line(region_file)])
    mapped = scan.MappedRegion(region_file)

    class Reused:
        path = mapped.path
        read = mapped.read
        write_i32 = mapped.write_i32

        def read_i32(self, offset: int) -> int:
            return 8  # another process took the slot

    try:
        assert hostpid.fill([Reused()], proc) == []
    finally:
        mapped.close()
    assert hostpids(region_file) == [0, 4242, 0, 0]


def test_fill_handles_v0_files(tmp_path: Path) -> None:
    path = write_container(
        tmp_path / "hook", "uid", "main", bytes(v0(uuids=[UUID], procs=[Proc(1), Proc(2)]))
    )
    proc = tmp_path / "proc"
    fake_proc(proc, 902, "902 2", [maps_line(path)])
    assert fill(path, proc) == [hostpid.HostPidWrite(1, 2, 902)]
    assert hostpids(path, V0_PROCS, V0_SLOT) == [0, 902]


def test_fill_with_the_real_process_and_proc(tmp_path: Path) -> None:
    """This process maps a region file; the real /proc gives its host PID (no PID namespace)."""
    me = os.getpid()
    path = write_container(
        tmp_path / "hook",
        "uid",
        "main",
        bytes(v1(uuids=[UUID], procs=[Proc(pid=me + 1), Proc(pid=me)], minor=100)),
    )
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED) as shim_view:
        got = fill(path, Path("/proc"))
        assert hostpid.HostPidWrite(1, me, me) in got
        (written,) = struct.unpack_from("<i", shim_view, V1_PROCS + V1_SLOT + 4)
        assert written == me
        assert struct.unpack_from("<i", shim_view, V1_PROCS + 4) == (0,)
        assert fill(path, Path("/proc")) == []  # settled: nothing rewritten
    assert region.read_file(path).slots[1].hostpid == me
