"""Plugin loading through entry points, controls, failures and the typed facade."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hami_core_fw
from hami_core_fw import errors, models, plugins
from hami_core_fw.builtin import fake


def make_dist(
    root: Path,
    name: str,
    module_source: str,
    *,
    entry: str | None = None,
    requires: tuple[str, ...] = (),
    version: str = "1.2.3",
) -> None:
    """Write a real, minimal installed distribution (dist-info + module) under ``root``."""
    module = name.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{module}-{version}.dist-info"
    info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    (info / "entry_points.txt").write_text(f"[hami]\n{entry or module} = {module}\n")
    (info / "RECORD").write_text("")


VENDOR_PLUGIN = """
    import hami_core_fw
    from hami_core_fw import models, vendor

    class AcmeVendor(hami_core_fw.SharedDeviceVendor):
        pass

    @hami_core_fw.hookimpl
    def hami_register_vendors(register, config):
        register(AcmeVendor(
            vendor_id="acme", common_word="ACME",
            resources=models.ResourceNames(count="acme.com/gpu", memory="acme.com/gpumem"),
            keys=vendor.AnnotationKeys(register="hami.io/node-acme-register",
                                       allocated="hami.io/acme-devices-allocated"),
        ))
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_builtins_only(plugin_host: plugins.PluginHost) -> None:
    assert list(plugin_host.vendors) == ["fake"]
    names = {i.name: i for i in plugin_host.plugins()}
    assert names["fake"].builtin
    assert names["fake"].resources == (
        "hami.io/fake-gpu",
        "hami.io/fake-gpumem",
        "hami.io/fake-gpumem-percentage",
        "hami.io/fake-gpucores",
    )
    assert names["quota"].hooks == ("hami_quota_check",)


def test_entry_point_plugin_is_loaded(site: Path) -> None:
    make_dist(site, "hami-acme", VENDOR_PLUGIN, entry="acme", requires=("hami-core-fw>=0.1",))
    host = plugins.make_plugin_manager(env={})
    assert {"acme", "fake"} <= set(host.vendors)
    info = next(i for i in host.plugins() if i.name == "acme")
    assert (info.distribution, info.version, info.vendors) == ("hami-acme", "1.2.3", ("acme",))
    assert info.resources == ("acme.com/gpu", "acme.com/gpumem")
    assert host.vendor_by_common_word("ACME") is host.vendors["acme"]


def test_hami_plugins_cli_lists_an_installed_plugin(site: Path) -> None:
    make_dist(site, "hami-acme", VENDOR_PLUGIN, entry="acme")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hami_core_fw.cli import main; sys.exit(main())",
            "plugins",
        ],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ENTRY", "POINT", "DISTRIBUTION"]
    acme = next(line for line in lines if line.startswith("acme"))
    assert "hami-acme" in acme and "1.2.3" in acme and "acme.com/gpumem" in acme
    assert any(line.startswith("fake (builtin)") for line in lines)


def test_broken_import_is_logged_and_skipped(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_dist(site, "hami-broken", "raise ImportError('libfoo.so missing')\n", entry="broken")
    make_dist(site, "hami-acme", VENDOR_PLUGIN, entry="acme")
    with caplog.at_level(logging.ERROR, logger="hami_core_fw.plugins"):
        host = plugins.make_plugin_manager(env={})
    assert "acme" in host.vendors
    broken = next(i for i in host.plugins() if i.name == "broken")
    assert "libfoo.so missing" in broken.error
    message = caplog.records[0].getMessage()
    assert "'broken'" in message and "hami-broken" in message and "1.2.3" in message


def test_core_version_range_mismatch_is_skipped(site: Path) -> None:
    make_dist(site, "hami-future", VENDOR_PLUGIN, entry="future", requires=("hami-core-fw>=99",))
    host = plugins.make_plugin_manager(env={})
    assert "acme" not in host.vendors
    info = next(i for i in host.plugins() if i.name == "future")
    assert "requires hami-core-fw>=99" in info.error
    assert hami_core_fw.__version__ in info.error


def test_bad_hook_signature_fails_startup(site: Path) -> None:
    make_dist(
        site,
        "hami-badsig",
        """
        import hami_core_fw
        @hami_core_fw.hookimpl
        def hami_quota_check(namespace, wallet):
            return True
        """,
        entry="badsig",
    )
    with pytest.raises(errors.PluginError, match="(?s)badsig.*wallet"):
        plugins.make_plugin_manager(env={})


def test_unknown_hook_fails_startup(site: Path) -> None:
    make_dist(
        site,
        "hami-typo",
        """
        import hami_core_fw
        @hami_core_fw.hookimpl
        def hami_regsiter_vendors(register, config):
            pass
        """,
        entry="typo",
    )
    with pytest.raises(errors.PluginError, match="hami_regsiter_vendors"):
        plugins.make_plugin_manager(env={})


def test_allowlist_and_blocklist(site: Path) -> None:
    # other vendor plugins may be installed in the test environment (hami-nvidia): the checks
    # look only at acme and fake
    make_dist(site, "hami-acme", VENDOR_PLUGIN, entry="acme")

    def ours(env: dict[str, str]) -> list[str]:
        return [v for v in plugins.make_plugin_manager(env=env).vendors if v in ("acme", "fake")]

    assert list(plugins.make_plugin_manager(env={"HAMI_PLUGINS": "acme"}).vendors) == ["acme"]
    assert list(plugins.make_plugin_manager(env={"HAMI_PLUGINS": ""}).vendors) == []
    assert ours({"HAMI_DISABLED_PLUGINS": "acme"}) == ["fake"]
    assert list(plugins.make_plugin_manager(env={"HAMI_DISABLED_PLUGINS": "*"}).vendors) == ["fake"]
    assert ours({"HAMI_DISABLED_PLUGINS": "fake"}) == ["acme"]
    no_autoload = plugins.make_plugin_manager(env={"HAMI_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert list(no_autoload.vendors) == ["fake"]


def test_duplicate_vendor_is_refused() -> None:
    class Twin:
        @hami_core_fw.hookimpl
        def hami_register_vendors(self, register, config):  # type: ignore[no-untyped-def]
            register(fake.FakeVendor())

    with pytest.raises(errors.DuplicateVendorError, match="already registered by plugin 'fake'"):
        plugins.make_plugin_manager(autoload=False, env={}, extra_plugins=[("twin", Twin())])


def test_registering_a_non_vendor_is_refused() -> None:
    class Wrong:
        @hami_core_fw.hookimpl
        def hami_register_vendors(self, register, config):  # type: ignore[no-untyped-def]
            register(object())

    with pytest.raises(errors.PluginError, match="does not implement DeviceVendor"):
        plugins.make_plugin_manager(autoload=False, env={}, extra_plugins=[("wrong", Wrong())])


def test_plugin_exception_is_attributed() -> None:
    class Crashy:
        @hami_core_fw.hookimpl
        def hami_node_score(self, pod, node, score):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("oops")

    host = plugins.make_plugin_manager(autoload=False, env={}, extra_plugins=[("crashy", Crashy())])
    pod = models.PodView(namespace="ns", name="p")
    with pytest.raises(errors.PluginError) as info:
        host.node_score(pod=pod, node=models.NodeView(name="n"), score=1.0)
    assert info.value.plugin == "crashy"
    assert info.value.hook == "hami_node_score"
    assert isinstance(info.value.__cause__, ZeroDivisionError)
