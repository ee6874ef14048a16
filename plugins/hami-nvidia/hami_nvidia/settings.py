"""Settings of the NVIDIA plugin: process environment and the effective per-node configuration.

* :class:`NvidiaSettings` - what the node-side process reads from its environment
  (``HAMI_DEVICES__NVIDIA__*``, plus HAMi's own names ``ENABLE_TOPOLOGY_SCORE``,
  ``DP_DISABLE_HEALTHCHECKS`` and ``DP_ENABLE_HEALTHCHECKS`` so HAMi manifests keep working).
* :class:`NodeSettings` - the ``nvidia:`` block of the device ConfigMap with this node's entry of
  HAMi's ``config.json`` merged over it (hami-compat.md 7.1, 7.2): non-null node fields win.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hami_core_fw import config, errors

#: XIDs that are application errors, not device faults (hami-compat.md 9.1)
DEFAULT_IGNORED_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})


class NvidiaSettings(BaseSettings):
    """Node-side environment of the NVIDIA plugin."""

    model_config = SettingsConfigDict(
        env_prefix="HAMI_DEVICES__NVIDIA__", extra="ignore", populate_by_name=True
    )

    node_config_file: str = Field(
        "/config/config.json",
        description="HAMi's node configuration (config.json); a missing file means no node entry",
    )
    sysfs_root: str = Field("/sys", description="where NUMA nodes are read (tests: a fake tree)")
    enable_topology_score: bool = Field(
        False,
        validation_alias=AliasChoices(
            "HAMI_DEVICES__NVIDIA__ENABLE_TOPOLOGY_SCORE", "ENABLE_TOPOLOGY_SCORE"
        ),
        description="write hami.io/node-nvidia-score (chart: gpuSchedulerPolicy topology-aware)",
    )
    disable_healthchecks: str = Field(
        "",
        validation_alias=AliasChoices(
            "HAMI_DEVICES__NVIDIA__DISABLE_HEALTHCHECKS", "DP_DISABLE_HEALTHCHECKS"
        ),
        description="'all' or 'xids' turns XID health checks off; a comma list of XIDs ignores "
        "those in addition to the defaults",
    )
    enable_healthchecks: str = Field(
        "",
        validation_alias=AliasChoices(
            "HAMI_DEVICES__NVIDIA__ENABLE_HEALTHCHECKS", "DP_ENABLE_HEALTHCHECKS"
        ),
        description="comma list of XIDs to treat as faults even though ignored by default",
    )


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Which NVML events make a GPU unhealthy.

    :param enabled: False = never mark a device unhealthy from events
    :param ignored_xids: critical XIDs that are not device faults
    """

    enabled: bool = True
    ignored_xids: frozenset[int] = DEFAULT_IGNORED_XIDS


def _xids(text: str, what: str) -> set[int]:
    out: set[int] = set()
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            continue
        if not token.isdigit():
            raise errors.ConfigError(
                [f"{what}: {token!r} is not an XID number (or 'all'/'xids')"],
                source="NVIDIA health checks",
            )
        out.add(int(token))
    return out


def health_policy(settings: NvidiaSettings) -> HealthPolicy:
    """HAMi's ``DP_DISABLE_HEALTHCHECKS`` / ``DP_ENABLE_HEALTHCHECKS`` rules.

    :raises ConfigError: a list contains something that is not an XID
    """
    disable = settings.disable_healthchecks.strip().lower()
    if disable in ("all", "xids"):
        return HealthPolicy(enabled=False, ignored_xids=frozenset())
    ignored = set(DEFAULT_IGNORED_XIDS) | _xids(disable, "DP_DISABLE_HEALTHCHECKS")
    ignored -= _xids(settings.enable_healthchecks, "DP_ENABLE_HEALTHCHECKS")
    return HealthPolicy(enabled=True, ignored_xids=frozenset(ignored))


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The effective NVIDIA configuration of one node.

    :param mode: ``hami-core``, ``mig`` or ``mps`` (registered as the device ``mode``)
    :param split_count: kubelet replicas and registered ``count`` per GPU
    :param memory_scaling: registered memory = NVML total x this (> 1 = oversubscription)
    :param core_scaling: registered ``devcore`` = 100 x this
    :param preconfigured_memory: MiB for GPUs whose NVML memory query is unsupported
    :param log_level: container ``LIBCUDA_LOG_LEVEL``
    :param filter_uuids: GPUs neither exposed nor registered, by UUID
    :param filter_indexes: the same, by NVML index
    """

    mode: str = "hami-core"
    split_count: int = 10
    memory_scaling: float = 1.0
    core_scaling: float = 1.0
    preconfigured_memory: int = 0
    log_level: int = 1
    numa_topology: bool = False
    preferred_allocation: bool = False
    disable_core_limit: bool = False
    filter_uuids: frozenset[str] = frozenset()
    filter_indexes: frozenset[int] = frozenset()


def effective(
    cfg: config.NvidiaConfig, entry: config.NodeConfigEntry | None = None
) -> NodeSettings:
    """Merge a node's ``config.json`` entry over the ``nvidia:`` block (non-null fields win).

    :raises ConfigError: ``libcudaloglevel`` is not an integer 0-4
    """
    base = NodeSettings(
        split_count=cfg.device_split_count,
        memory_scaling=cfg.device_memory_scaling,
        core_scaling=cfg.device_core_scaling,
        preconfigured_memory=cfg.pre_configured_device_memory,
        log_level=cfg.lib_cuda_log_level,
        numa_topology=cfg.enable_numa_topology,
        disable_core_limit=bool(cfg.disable_core_limit),
    )
    if entry is None:
        return base
    log_level = base.log_level
    if entry.libcudaloglevel is not None:
        text = entry.libcudaloglevel.strip()
        if not text.isdigit() or int(text) > 4:
            bad = entry.libcudaloglevel
            problem = f"nodeconfig {entry.name!r}: libcudaloglevel {bad!r} is not 0-4"
            raise errors.ConfigError([problem], source="node config")
        log_level = int(text)
    filt = entry.filterdevices
    return NodeSettings(
        mode=entry.operatingmode or base.mode,
        split_count=entry.devicesplitcount or base.split_count,
        memory_scaling=entry.devicememoryscaling or base.memory_scaling,
        core_scaling=entry.devicecorescaling or base.core_scaling,
        preconfigured_memory=(
            base.preconfigured_memory
            if entry.preconfigureddevicememory is None
            else entry.preconfigureddevicememory
        ),
        log_level=log_level,
        numa_topology=(
            base.numa_topology if entry.enablenumatopology is None else entry.enablenumatopology
        ),
        preferred_allocation=bool(entry.enablegetpreferredallocation),
        disable_core_limit=base.disable_core_limit,
        filter_uuids=frozenset(filt.uuid) if filt else frozenset(),
        filter_indexes=frozenset(filt.index) if filt else frozenset(),
    )


def node_settings(cfg: config.NvidiaConfig, node_name: str, node_config_file: str) -> NodeSettings:
    """The effective settings of ``node_name``; a missing ``config.json`` means no node entry.

    :raises ConfigError: the file exists but is invalid
    """
    path = Path(node_config_file)
    if not node_config_file or not path.exists():
        return effective(cfg)
    return effective(cfg, config.load_node_config(path).for_node(node_name))
