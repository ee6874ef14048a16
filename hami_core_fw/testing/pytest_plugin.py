"""pytest plugin (entry point ``pytest11: hami``): fixtures for core and vendor-plugin tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import pytest

from hami_core_fw import config, models, plugins


@pytest.fixture
def plugin_host() -> plugins.PluginHost:
    """A plugin host with only the built-in plugins (no entry points are walked)."""
    return plugins.make_plugin_manager(autoload=False, env={})


@pytest.fixture
def device_config_factory() -> Callable[..., config.DeviceConfig]:
    """Build a :class:`DeviceConfig` from a plain mapping (the YAML document's shape)."""

    def make(data: Mapping[str, object] | None = None) -> config.DeviceConfig:
        return config.parse_device_config(dict(data or {}))

    return make


@pytest.fixture
def fake_node() -> Callable[..., models.NodeView]:
    """Build a :class:`NodeView` with annotations and allocatable counts."""

    def make(
        name: str = "node-1",
        annotations: Mapping[str, str] | None = None,
        allocatable: Mapping[str, str] | None = None,
    ) -> models.NodeView:
        alloc = dict(allocatable or {})
        return models.NodeView(
            name=name, annotations=dict(annotations or {}), capacity=alloc, allocatable=alloc
        )

    return make


@pytest.fixture
def fake_pod() -> Callable[..., models.PodView]:
    """Build a :class:`PodView` whose app containers have the given limits."""

    def make(
        *limits: Mapping[str, str],
        name: str = "pod-1",
        namespace: str = "default",
        annotations: Mapping[str, str] | None = None,
        init: tuple[Mapping[str, str], ...] = (),
    ) -> models.PodView:
        return models.PodView(
            namespace=namespace,
            name=name,
            uid=f"uid-{namespace}-{name}",
            annotations=dict(annotations or {}),
            init_containers=tuple(
                models.ContainerView(name=f"init{i}", limits=dict(lim), init=True)
                for i, lim in enumerate(init)
            ),
            containers=tuple(
                models.ContainerView(name=f"c{i}", limits=dict(lim)) for i, lim in enumerate(limits)
            ),
        )

    return make


@pytest.fixture(autouse=True)
def _logging_untouched() -> Iterator[None]:
    """Fail a test that leaves the root logger's handlers or level changed (style.md 7)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    assert list(root.handlers) == handlers, "a test left the root logger's handlers changed"
    assert root.level == level, "a test left the root logger's level changed"
