"""The ``hami`` CLI: help lists what exists, version, plugins table and JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from hami_core_fw import cli


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("version", "plugins"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith("hami-core-fw ")


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    fake = next(p for p in doc if p["name"] == "fake")
    assert fake["builtin"] and fake["vendors"] == ["fake"]
    assert "hami.io/fake-gpumem" in fake["resources"]


def test_bad_device_config_is_a_clear_error(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dc.yaml"  # type: ignore[operator]
    path.write_text("fake:\n  devicez: []\n")
    assert cli.main(["plugins", "--device-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "fake.devicez: unknown key" in err
