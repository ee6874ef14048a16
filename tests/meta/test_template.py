"""plugins/_template renders, installs, lists and passes its own tests (style.md 5, 16.4).

Everything happens under tmp_path: the rendered plugin is installed with ``pip --target`` into a
private site directory that only the child processes see (no network, no build isolation).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "plugins" / "_template" / "render.py"
ARGS = ["--vendor-id", "acme", "--common-word", "ACME", "--domain", "acme.com"]
RESOURCES = ["acme.com/gpu", "acme.com/gpumem", "acme.com/gpumem-percentage", "acme.com/gpucores"]


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _render(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, str(RENDER), *extra, "--out", str(out)], cwd=out.parent)


def _child_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAMI_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("template") / "hami-acme"
    proc = _render(out, *ARGS)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def site(rendered: Path) -> Path:
    target = rendered.parent / "site"
    proc = _run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
            "--no-index", "--target", str(target), str(rendered),
        ],
        cwd=rendered.parent,
        env=_child_env(target),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_render_substitutes_every_placeholder(rendered: Path) -> None:
    files = sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "hami_acme/__init__.py",
        "hami_acme/backend.py",
        "hami_acme/plugin.py",
        "hami_acme/py.typed",
        "hami_acme/vendor.py",
        "pyproject.toml",
        "tests/test_plugin.py",
    ]
    for name in files:
        text = (rendered / name).read_text()
        assert "{{" not in text, name
        assert "}}" not in text, name
    pyproject = (rendered / "pyproject.toml").read_text()
    assert 'name = "hami-acme"' in pyproject
    assert '"hami-core-fw>=0.1,<0.2"' in pyproject
    assert '[project.entry-points.hami]\nacme = "hami_acme.plugin"' in pyproject
    vendor = (rendered / "hami_acme" / "vendor.py").read_text()
    assert 'register="hami.io/node-acme-register"' in vendor
    assert "class AcmeVendor(generic.SharedDeviceVendor)" in vendor


def test_rendered_plugin_is_listed_by_hami_plugins(rendered: Path, site: Path) -> None:
    proc = _run(
        [sys.executable, "-m", "hami_core_fw.cli", "plugins", "-o", "json"],
        cwd=rendered.parent,
        env=_child_env(site),
    )
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    acme = infos["acme"]
    assert acme["distribution"] == "hami-acme"
    assert acme["error"] in ("", None)
    assert acme["vendors"] == ["acme"]
    assert acme["resources"] == RESOURCES


def test_rendered_plugin_tests_pass(rendered: Path, site: Path) -> None:
    proc = _run(
        [sys.executable, "-m", "pytest", str(rendered / "tests"), "-q", "-p", "no:cacheprovider"],
        cwd=rendered,
        env=_child_env(site),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    assert "failed" not in proc.stdout


def test_rendered_plugin_is_ruff_clean(rendered: Path) -> None:
    assert importlib.util.find_spec("ruff") is not None, "ruff is a dependency of the py env"
    for check in (["check"], ["format", "--check"]):
        proc = _run(
            [sys.executable, "-m", "ruff", *check, "--no-cache", "."], cwd=rendered, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vendor-id", "Acme", "--common-word", "ACME", "--domain", "acme.com"], "--vendor-id"),
        (["--vendor-id", "ac-me", "--common-word", "ACME", "--domain", "acme.com"], "--vendor-id"),
        (["--vendor-id", "1acme", "--common-word", "ACME", "--domain", "acme.com"], "--vendor-id"),
        (["--vendor-id", "acme", "--common-word", "AC,ME", "--domain", "acme.com"], "','"),
        (["--vendor-id", "acme", "--common-word", "AC:ME", "--domain", "acme.com"], "':'"),
        (["--vendor-id", "acme", "--common-word", "AC;ME", "--domain", "acme.com"], "';'"),
        (["--vendor-id", "acme", "--common-word", "ACME", "--domain", "Acme"], "--domain"),
    ],
)
def test_render_refuses_invalid_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    proc = _render(out, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "invalid" in proc.stderr
    assert not out.exists()


def test_render_refuses_a_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _render(out, *ARGS)
    assert proc.returncode == 2
    assert "not an empty directory" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
