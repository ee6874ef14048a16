"""The container directory scan (hami-compat.md 10.1): names, file choice, deletion, garbage."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from monitor_regions import V1_SIZE, v1, write_container

from hami_core_fw.monitor import region, scan

UUID = "GPU-11111111-2222-3333-4444-555555555555"
NOW = 1_800_000_000.0


def good() -> bytearray:
    return v1(uuids=[UUID], limits=[1 << 30])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("uid-1_main", ("uid-1", "main")),
        ("uid-1_a_b", ("uid-1", "a_b")),  # split on the FIRST '_'
        ("nounderscore", None),
        ("_main", None),
        ("uid-1_", None),
    ],
)
def test_parse_dir_name(name, expected):
    key = scan.parse_dir_name(name)
    assert (None if key is None else (key.pod_uid, key.container)) == expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["a.cache"], "a.cache"),
        (["libvgpu.so", "b.cache"], "b.cache"),
        (["z.cache", "a.cache"], "a.cache"),  # name order decides
        (["a.cache", "notes.txt", "ld.so.preload", "x"], "a.cache"),  # others ignored
        (["libvgpu.so"], None),
        (["libvgpu.so.cache"], None),  # a libvgpu.so name is never the region file
        ([], None),
    ],
)
def test_select_cache_file(names, expected):
    assert scan.select_cache_file(names) == expected


def test_more_than_two_region_entries_is_an_error():
    with pytest.raises(scan.ScanError, match="3 region entries"):
        scan.select_cache_file(["a.cache", "b.cache", "libvgpu.so"])


def age(path: Path, seconds: float) -> None:
    os.utime(path, (NOW - seconds, NOW - seconds))


def scanner(hook: Path, resync: float = 300.0) -> scan.ContainerScanner:
    return scan.ContainerScanner(hook, resync_interval_s=resync, clock=lambda: NOW)


def test_loads_a_container_once_and_reads_it_live(tmp_path):
    path = write_container(tmp_path, "uid-1", "main", good())
    s = scanner(tmp_path)
    report = s.scan({"uid-1"})
    assert report.loaded == ["uid-1_main"]
    ((key, mapped),) = s.entries()
    assert (key.pod_uid, key.container, mapped.path) == ("uid-1", "main", path)
    assert mapped.read().limits[0] == 1 << 30
    # the mapping is shared: a write by the shim is seen without reloading
    with path.open("r+b") as f:
        f.seek(1600)
        f.write((2 << 30).to_bytes(8, "little"))
    assert s.scan({"uid-1"}).loaded == []
    assert s.entries()[0][1].read().limits[0] == 2 << 30
    s.close()


def test_stale_directory_of_a_gone_pod_is_removed(tmp_path):
    write_container(tmp_path, "gone", "main", good())
    fresh = write_container(tmp_path, "new", "main", good()).parent
    age(tmp_path / "containers" / "gone_main", 301)
    age(fresh, 10)
    s = scanner(tmp_path)
    report = s.scan(set())
    assert report.removed == ["gone_main"]
    assert not (tmp_path / "containers" / "gone_main").exists()
    # too young to delete, and not loaded while its pod is unknown (HAMi's rule)
    assert fresh.exists()
    assert s.entries() == []


def test_a_loaded_directory_is_unmapped_when_its_pod_is_gone_and_it_is_old(tmp_path):
    write_container(tmp_path, "uid-1", "main", good())
    s = scanner(tmp_path)
    s.scan({"uid-1"})
    ((_key, mapped),) = s.entries()
    age(tmp_path / "containers" / "uid-1_main", 1000)
    assert s.scan(set()).removed == ["uid-1_main"]
    assert s.entries() == []
    with pytest.raises(region.RegionError, match="no longer mapped"):
        mapped.read()


def test_nothing_is_deleted_before_the_pod_list_is_known(tmp_path):
    write_container(tmp_path, "uid-1", "main", good())
    age(tmp_path / "containers" / "uid-1_main", 10_000)
    s = scanner(tmp_path)
    report = s.scan(None)
    assert report.removed == []
    assert report.loaded == ["uid-1_main"]
    s.close()


def test_directory_that_disappears_is_dropped(tmp_path):
    path = write_container(tmp_path, "uid-1", "main", good())
    s = scanner(tmp_path)
    s.scan({"uid-1"})
    path.unlink()
    path.parent.rmdir()
    assert s.scan({"uid-1"}).dropped == ["uid-1_main"]
    assert s.entries() == []


def test_directory_without_a_region_file_yet_is_retried(tmp_path):
    directory = tmp_path / "containers" / "uid-1_main"
    directory.mkdir(parents=True)
    (directory / "libvgpu.so").write_bytes(b"\x7fELF")
    s = scanner(tmp_path)
    assert s.scan({"uid-1"}).loaded == []
    (directory / "vgpu.cache").write_bytes(good())
    assert s.scan({"uid-1"}).loaded == ["uid-1_main"]
    s.close()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.cache": b"\0" * 64}, "too small"),
        ({"a.cache": b"\0" * V1_SIZE}, "not initialised"),
        ({"a.cache": b"", "b.cache": b"", "c.cache": b""}, "3 region entries"),
    ],
    ids=["short", "no-magic", "three-files"],
)
def test_garbage_is_logged_once_and_skipped(tmp_path, caplog, files, message):
    directory = tmp_path / "containers" / "uid-1_main"
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    write_container(tmp_path, "uid-2", "main", good())
    s = scanner(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="hami_core_fw.monitor.scan"):
        first = s.scan({"uid-1", "uid-2"})
        second = s.scan({"uid-1", "uid-2"})
    assert message in first.failed["uid-1_main"]
    assert message in second.failed["uid-1_main"]
    assert [k.name for k, _ in s.entries()] == ["uid-2_main"]  # the good neighbour is served
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0].getMessage()
    s.close()


def test_symlinked_region_file_is_never_mapped(tmp_path):
    victim = tmp_path / "victim.cache"
    victim.write_bytes(good())
    before = victim.read_bytes()
    directory = tmp_path / "containers" / "uid-1_main"
    directory.mkdir(parents=True)
    (directory / "vgpu.cache").symlink_to(victim)
    s = scanner(tmp_path)
    report = s.scan({"uid-1"})
    assert "uid-1_main" in report.failed
    assert s.entries() == []
    assert victim.read_bytes() == before


def test_symlinked_directory_and_plain_files_are_ignored(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "vgpu.cache").write_bytes(good())
    containers = tmp_path / "containers"
    containers.mkdir()
    (containers / "uid-1_main").symlink_to(real, target_is_directory=True)
    (containers / "uid-2_main").write_bytes(b"not a directory")
    age(containers / "uid-2_main", 1000)
    s = scanner(tmp_path)
    report = s.scan(set())  # even with every entry old and its pod unknown
    assert report.loaded == report.removed == [] and report.failed == {}
    assert (real / "vgpu.cache").exists()
    assert (containers / "uid-2_main").exists()


def test_unparsable_directory_name_is_skipped(tmp_path):
    (tmp_path / "containers" / "nounderscore").mkdir(parents=True)
    s = scanner(tmp_path)
    assert s.scan(None).failed == {"nounderscore": "bad name"}


def test_missing_containers_directory_is_not_a_crash(tmp_path, caplog):
    s = scanner(tmp_path / "absent")
    with caplog.at_level(logging.WARNING, logger="hami_core_fw.monitor.scan"):
        s.scan(None)
        s.scan(None)
    assert s.entries() == []
    assert len(caplog.records) == 1
    assert "cannot list" in caplog.records[0].getMessage()


def test_a_file_that_shrinks_after_mapping_is_an_error_not_a_crash(tmp_path):
    path = write_container(tmp_path, "uid-1", "main", good())
    mapped = scan.MappedRegion(path)
    os.truncate(path, 100)
    with pytest.raises(region.RegionError, match="shrank"):
        mapped.read()
    with pytest.raises(region.RegionError, match="shrank"):
        mapped.write_i32(2_008_900, 0)
    mapped.close()
    mapped.close()  # idempotent
