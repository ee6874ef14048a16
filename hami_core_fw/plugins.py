"""The plugin manager factory and :class:`PluginHost`, the typed facade servers use.

Loading order (style.md 3): add the hookspecs -> apply the blocklist -> walk the ``hami`` entry
points ourselves, each import isolated -> register the default plugins by module path ->
``check_pending()`` -> collect vendors through ``hami_register_vendors``.

A plugin that fails to import is logged with its distribution and version and skipped; a plugin
that declares a ``hami-core-fw`` range excluding this core is skipped with a :class:`PluginError`
naming both versions; a hook implementation that does not match its spec fails start-up.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Final

import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from hami_core_fw import _names, config, errors, hookspecs, models, quota, vendor

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

#: the default plugins, registered by module path after the external ones
DEFAULT_PLUGINS: Final = ("hami_core_fw.builtin.fake", "hami_core_fw.builtin.quota")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What ``hami plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str = ""
    version: str = ""
    builtin: bool = False
    hooks: tuple[str, ...] = ()
    vendors: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    error: str = ""


def _core_version() -> str:
    try:
        return importlib.metadata.version(_names.DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def _env_list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    if name not in env:
        return None
    return tuple(p.strip() for p in env[name].split(",") if p.strip())


def _check_core_range(dist: importlib.metadata.Distribution | None, plugin: str) -> None:
    """Raise PluginError when the distribution's hami-core-fw requirement excludes this core."""
    if dist is None:
        return
    core = _core_version()
    for raw in dist.requires or ():
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            continue
        if req.name.replace("_", "-").lower() != _names.DISTRIBUTION or req.marker is not None:
            continue
        if req.specifier and not req.specifier.contains(Version(core), prereleases=True):
            raise errors.PluginError(
                f"distribution {dist.metadata['Name']} {dist.version} requires "
                f"{_names.DISTRIBUTION}{req.specifier} but {core} is installed; "
                f"install a matching version of either",
                plugin=plugin,
            )


class PluginHost:
    """The loaded plugins and vendors, with one typed method per hook.

    Servers call these methods, never ``pm.hook``. Every call uses keyword arguments, and an
    exception raised inside a plugin is re-raised as :class:`PluginError` naming plugin and hook.
    """

    def __init__(self, pm: pluggy.PluginManager, infos: Sequence[PluginInfo]) -> None:
        self._pm = pm
        self._infos = list(infos)
        self._vendors: dict[str, vendor.DeviceVendor] = {}
        self._vendor_plugin: dict[str, str] = {}

    # ------------------------------------------------------------------ vendors

    def _collect_vendors(self, device_config: config.DeviceConfig) -> None:
        caller = self._pm.hook.hami_register_vendors
        for impl in reversed(caller.get_hookimpls()):
            plugin = impl.plugin_name

            def register(v: vendor.DeviceVendor, _plugin: str = plugin) -> None:
                self._add_vendor(v, _plugin)

            try:
                impl.function(register=register, config=device_config)
            except errors.DuplicateVendorError:
                raise
            except Exception as err:  # plugin boundary: attribute and re-raise
                raise errors.PluginError(
                    f"raised {type(err).__name__}: {err}", plugin=plugin, hook=caller.name
                ) from err
        self._infos = [
            _with_vendors(info, [v for v, p in self._vendor_plugin.items() if p == info.name], self)
            for info in self._infos
        ]

    def _add_vendor(self, v: vendor.DeviceVendor, plugin: str) -> None:
        if not isinstance(v, vendor.DeviceVendor):
            raise errors.PluginError(
                f"registered {v!r}, which does not implement DeviceVendor",
                plugin=plugin,
                hook="hami_register_vendors",
            )
        for other in self._vendors.values():
            if other.vendor_id == v.vendor_id or other.common_word == v.common_word:
                raise errors.DuplicateVendorError(
                    f"vendor {v.vendor_id!r} (CommonWord {v.common_word!r}) is already registered "
                    f"by plugin {self._vendor_plugin[other.vendor_id]!r}; block one of them with "
                    f"{_names.ENV_DISABLED_PLUGINS}",
                    plugin=plugin,
                    hook="hami_register_vendors",
                )
        self._vendors[v.vendor_id] = v
        self._vendor_plugin[v.vendor_id] = plugin

    @property
    def vendors(self) -> Mapping[str, vendor.DeviceVendor]:
        """Registered vendors by vendor id, sorted by id."""
        return dict(sorted(self._vendors.items()))

    def vendor_by_common_word(self, common_word: str) -> vendor.DeviceVendor | None:
        """The vendor whose CommonWord is ``common_word``."""
        return next((v for v in self._vendors.values() if v.common_word == common_word), None)

    def plugins(self) -> tuple[PluginInfo, ...]:
        """Every plugin seen, loaded or not, external first."""
        return tuple(self._infos)

    def managed_resources(self) -> tuple[str, ...]:
        """Every resource name of every vendor (for ``managedResources`` and interest checks)."""
        return tuple(n for v in self.vendors.values() for n in v.resources.all())

    # ------------------------------------------------------------------ hooks

    def _call(self, hook: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except errors.HamiError:
            raise
        except Exception as err:  # plugin boundary: attribute and re-raise
            plugin = _blame(err, self._pm, hook)
            raise errors.PluginError(
                f"raised {type(err).__name__}: {err}", plugin=plugin, hook=hook
            ) from err

    def quota_check(
        self,
        *,
        namespace: str,
        resources: models.ResourceNames,
        memory: int,
        cores: int,
        ledger: quota.QuotaLedger,
    ) -> bool:
        """Whether the namespace quota admits the usage (True when no plugin has an opinion)."""
        result = self._call(
            "hami_quota_check",
            lambda: self._pm.hook.hami_quota_check(
                namespace=namespace, resources=resources, memory=memory, cores=cores, ledger=ledger
            ),
        )
        return True if result is None else bool(result)

    def node_filter(self, *, pod: models.PodView, node: models.NodeView) -> list[str]:
        """Every veto reason plugins give for this node (empty = allowed)."""
        results = self._call(
            "hami_node_filter", lambda: self._pm.hook.hami_node_filter(pod=pod, node=node)
        )
        return [str(r) for r in _as_list(results) if r]

    def node_score(self, *, pod: models.PodView, node: models.NodeView, score: float) -> float:
        """The score after every plugin's adjustment."""
        results = self._call(
            "hami_node_score",
            lambda: self._pm.hook.hami_node_score(pod=pod, node=node, score=score),
        )
        deltas = [r for r in _as_list(results) if isinstance(r, int | float)]
        return score + float(sum(deltas))

    def admission_mutate(self, *, pod: MutableMapping[str, object], namespace: str) -> None:
        """Run every admission policy plugin on the pod (may raise AdmissionDenied)."""
        self._call(
            "hami_admission_mutate",
            lambda: self._pm.hook.hami_admission_mutate(pod=pod, namespace=namespace),
        )

    def monitor_collect(self) -> list[Metric]:
        """Extra metric families from every plugin."""
        results = self._call("hami_monitor_collect", self._pm.hook.hami_monitor_collect)
        out: list[Metric] = []
        for families in _as_list(results):
            if isinstance(families, Iterable):
                out.extend(families)
        return out


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _blame(err: BaseException, pm: pluggy.PluginManager, hook: str) -> str:
    """Name the plugin whose hook implementation raised ``err``, from the traceback."""
    codes = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        fn = getattr(impl.function, "__func__", impl.function)
        code = getattr(fn, "__code__", None)
        if code is not None:
            codes[code] = impl.plugin_name
    culprit = "unknown"
    tb = err.__traceback__
    while tb is not None:
        culprit = codes.get(tb.tb_frame.f_code, culprit)
        tb = tb.tb_next
    return culprit


def _with_vendors(info: PluginInfo, vendor_ids: list[str], host: PluginHost) -> PluginInfo:
    vendors = host.vendors
    return replace(
        info,
        vendors=tuple(sorted(vendor_ids)),
        resources=tuple(n for vid in sorted(vendor_ids) for n in vendors[vid].resources.all()),
    )


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, ...]:
    return tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))


def make_plugin_manager(
    *,
    autoload: bool = True,
    only: Iterable[str] | None = None,
    blocked: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, object]] = (),
    device_config: config.DeviceConfig | None = None,
    env: Mapping[str, str] | None = None,
) -> PluginHost:
    """Build a :class:`PluginHost`: load plugins, validate hooks, collect vendors.

    :param autoload: walk the ``hami`` entry points (tests pass False)
    :param only: allowlist of plugin names (external and builtin); None = all. ``HAMI_PLUGINS``
        adds to it from the environment (empty value = none)
    :param blocked: plugin names not to load; ``*`` blocks every external plugin.
        ``HAMI_DISABLED_PLUGINS`` adds to it
    :param extra_plugins: ``(name, plugin object)`` pairs registered first (tests, embedding)
    :param device_config: the device configuration vendors are built from (defaults)
    :param env: environment to read the controls from (default ``os.environ``)
    :raises PluginError: a plugin has an invalid hook implementation, or a vendor is duplicated
    """
    env = os.environ if env is None else env
    allow = set(only) if only is not None else None
    env_allow = _env_list(env, _names.ENV_PLUGINS)
    if env_allow is not None:
        allow = set(env_allow) | (allow or set())
    block = set(blocked) | set(_env_list(env, _names.ENV_DISABLED_PLUGINS) or ())
    if env.get(_names.ENV_DISABLE_AUTOLOAD, "") not in ("", "0", "false"):
        autoload = False

    pm = pluggy.PluginManager(_names.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in block:
        if name != "*":
            pm.set_blocked(name)
    if env.get(_names.ENV_TRACE_PLUGINS, "") not in ("", "0", "false"):
        pm.trace.root.setwriter(lambda msg: logger.debug("pluggy: %s", msg.rstrip()))
        pm.enable_tracing()

    infos: list[PluginInfo] = []

    def wanted(name: str) -> bool:
        return (allow is None or name in allow) and name not in block

    def register(name: str, plugin: object, info: PluginInfo) -> None:
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as err:
            raise errors.PluginError(f"invalid hook implementation: {err}", plugin=name) from err
        infos.append(replace(info, hooks=_hooks_of(pm, plugin)))

    for name, plugin in extra_plugins:
        register(
            name, plugin, PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)))
        )

    if autoload and "*" not in block:
        for ep in sorted(
            importlib.metadata.entry_points(group=_names.ENTRYPOINT_GROUP), key=lambda e: e.name
        ):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else ""
            dist_version = dist.version if dist is not None else ""
            if not wanted(ep.name) or pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            base = PluginInfo(
                name=ep.name, module=ep.value, distribution=dist_name, version=dist_version
            )
            try:
                _check_core_range(dist, ep.name)
                plugin = ep.load()
            except errors.PluginError as err:
                logger.error("skipping plugin: %s", err)  # noqa: TRY400 - expected, no traceback
                infos.append(replace(base, error=str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - one broken plugin must not stop the others
                logger.error(  # noqa: TRY400 - one line per broken plugin; traceback at debug
                    "skipping plugin %r from %s %s: import of %r failed: %s: %s",
                    ep.name,
                    dist_name,
                    dist_version,
                    ep.value,
                    type(err).__name__,
                    err,
                )
                infos.append(replace(base, error=f"{type(err).__name__}: {err}"))
                continue
            register(ep.name, plugin, base)

    core_version = _core_version()
    for module_path in DEFAULT_PLUGINS:
        name = module_path.rsplit(".", 1)[-1]
        if not wanted(name) or pm.is_blocked(name) or pm.has_plugin(name):
            continue
        module: ModuleType = importlib.import_module(module_path)
        register(
            name,
            module,
            PluginInfo(
                name=name,
                module=module_path,
                distribution=_names.DISTRIBUTION,
                version=core_version,
                builtin=True,
            ),
        )

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise errors.PluginError(
            f"implements a hook that does not exist: {err}", plugin=str(pm.get_name(err.plugin))
        ) from err

    host = PluginHost(pm, infos)
    host._collect_vendors(device_config or config.DeviceConfig())
    return host
