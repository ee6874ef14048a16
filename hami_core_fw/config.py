"""Configuration: process settings from ``HAMI_*`` env vars, and HAMi's device and node configs.

* :class:`Settings` - one root ``BaseSettings`` (env prefix ``HAMI_``, ``__`` nesting), built once
  by the CLI and passed down; no singleton.
* :class:`DeviceConfig` - HAMi's device ConfigMap (``device-config.yaml``, hami-compat.md 7.1),
  every key per vendor, plus our ``fake`` section. Unknown keys are reported, not ignored.
* :class:`NodeConfigFile` - HAMi's NVIDIA node configuration (``config.json``, 7.2).

Loading never stops at the first problem: :func:`load_device_config` and :func:`load_node_config`
raise one :class:`~hami_core_fw.errors.ConfigError` listing every problem with its path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

from hami_core_fw import _names, errors


class _Strict(BaseModel):
    """Base of the HAMi file models: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# ----------------------------------------------------------------------------------------------
# HAMi device ConfigMap (7.1)
# ----------------------------------------------------------------------------------------------


class MigProfileRule(_Strict):
    """Which MIG profiles may be used on which GPU models (v2.10 dynamic MIG)."""

    models: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()


class MigGeometryEntry(_Strict):
    """One instance of a legacy full-GPU MIG geometry (<= v2.9)."""

    name: str
    core: int = 0
    memory: int = 0
    count: int = 0


class KnownMigGeometry(_Strict):
    """Legacy MIG geometries for some models (<= v2.9)."""

    models: tuple[str, ...] = ()
    allowed_geometries: tuple[tuple[MigGeometryEntry, ...], ...] = ()


class NvidiaConfig(_Strict):
    """The ``nvidia:`` block of the device ConfigMap."""

    resource_count_name: str = Field("nvidia.com/gpu", description="device count resource")
    resource_memory_name: str = Field("nvidia.com/gpumem", description="MiB per device")
    resource_memory_percentage_name: str = Field(
        "nvidia.com/gpumem-percentage", description="percent of device memory"
    )
    resource_core_name: str = Field("nvidia.com/gpucores", description="percent of compute")
    resource_priority_name: str = Field("nvidia.com/priority", description="task priority")
    overwrite_env: bool = Field(False, description="NVIDIA_VISIBLE_DEVICES=none elsewhere")
    default_memory: int = Field(0, ge=0, description="MiB when no memory is given (0 = 100 %)")
    default_cores: int = Field(0, ge=0, le=100, description="cores when not given")
    default_gpu_num: int = Field(1, ge=0, alias="defaultGPUNum", description="count to add")
    memory_factor: int = Field(1, ge=1, description="multiplier for requested gpumem")
    device_split_count: int = Field(10, ge=1, description="slots per GPU")
    device_memory_scaling: float = Field(1.0, gt=0, description="registered memory multiplier")
    device_core_scaling: float = Field(1.0, gt=0, description="registered devcore = 100 x this")
    pre_configured_device_memory: int = Field(0, ge=0, description="MiB when NVML cannot tell")
    enable_numa_topology: bool = Field(False, description="NUMA on kubelet device replicas")
    lib_cuda_log_level: int = Field(1, ge=0, le=4, description="container LIBCUDA_LOG_LEVEL")
    gpu_core_policy: Literal["default", "force", "disable"] = Field(
        "default", alias="gpuCorePolicy", description="GPU_CORE_UTILIZATION_POLICY"
    )
    disable_core_limit: bool | None = Field(None, description="inject the disable policy")
    runtime_class_name: str = Field("", description="set on GPU pods by the webhook")
    mig_profile_allowlist: tuple[MigProfileRule, ...] = ()
    known_mig_geometries: tuple[KnownMigGeometry, ...] = ()


class CambriconConfig(_Strict):
    """The ``cambricon:`` block."""

    resource_count_name: str = "cambricon.com/vmlu"
    resource_memory_name: str = "cambricon.com/mlu.smlu.vmemory"
    resource_core_name: str = "cambricon.com/mlu.smlu.vcore"


class HygonConfig(_Strict):
    """The ``hygon:`` block."""

    resource_count_name: str = "hygon.com/dcunum"
    resource_memory_name: str = "hygon.com/dcumem"
    resource_core_name: str = "hygon.com/dcucores"
    memory_factor: int = Field(1, ge=1)


class MetaxConfig(_Strict):
    """The ``metax:`` block."""

    resource_count_name: str = "metax-tech.com/gpu"
    resource_v_count_name: str = "metax-tech.com/sgpu"
    resource_v_memory_name: str = "metax-tech.com/vmemory"
    resource_v_core_name: str = "metax-tech.com/vcore"
    sgpu_topology_aware: bool = False


class EnflameConfig(_Strict):
    """The ``enflame:`` block."""

    resource_name_gcu: str = Field("enflame.com/gcu", alias="resourceNameGCU")
    resource_name_drsgcu: str = Field("enflame.com/drs-gcu", alias="resourceNameDRSGCU")
    resource_name_gcu_memory: str = Field("enflame.com/gcu-memory", alias="resourceNameGCUMemory")
    resource_name_gcu_core: str = Field("enflame.com/gcu-core", alias="resourceNameGCUCore")
    resource_name_vgcu: str = Field("enflame.com/vgcu", alias="resourceNameVGCU")
    resource_name_vgcu_percentage: str = Field(
        "enflame.com/vgcu-percentage", alias="resourceNameVGCUPercentage"
    )


class MthreadsConfig(_Strict):
    """The ``mthreads:`` block."""

    resource_count_name: str = "mthreads.com/vgpu"
    resource_memory_name: str = "mthreads.com/sgpu-memory"
    resource_core_name: str = "mthreads.com/sgpu-core"


class IluvatarConfig(_Strict):
    """One entry of the ``iluvatars:`` list."""

    chip_name: str
    common_word: str
    resource_count_name: str = ""
    resource_memory_name: str = ""
    resource_core_name: str = ""


class KunlunConfig(_Strict):
    """The ``kunlun:`` block."""

    resource_count_name: str = "kunlunxin.com/xpu"
    resource_v_count_name: str = "kunlunxin.com/vxpu"
    resource_v_memory_name: str = "kunlunxin.com/vxpu-memory"


class AwsNeuronConfig(_Strict):
    """The ``awsneuron:`` block."""

    resource_count_name: str = "aws.amazon.com/neuron"
    resource_core_name: str = "aws.amazon.com/neuroncore"


class AmdConfig(_Strict):
    """The ``amd:`` block."""

    resource_count_name: str = "amd.com/gpu"
    resource_memory_name: str = "amd.com/gpumem"
    resource_core_name: str = "amd.com/gpucores"


class CountOnlyConfig(_Strict):
    """``vastai:`` / ``biren:``: a count resource only."""

    resource_count_name: str = ""


class VnpuTemplate(_Strict):
    """One Ascend vNPU template."""

    name: str
    memory: int = 0
    ai_core: int = 0
    ai_cpu: int = Field(0, alias="aiCPU")


class VnpuConfig(_Strict):
    """One Ascend chip configuration of ``vnpus.configs``."""

    chip_name: str
    common_word: str
    resource_name: str = ""
    resource_memory_name: str = ""
    resource_core_name: str = ""
    memory_allocatable: int = 0
    memory_capacity: int = 0
    memory_factor: int = 1
    ai_core: int = 0
    ai_cpu: int = Field(0, alias="aiCPU")
    runtime_class_name: str = ""
    overwrite_env: bool = False
    super_pod: bool = False
    templates: tuple[VnpuTemplate, ...] = ()


class VnpusConfig(_Strict):
    """The ``vnpus:`` block (a bare list under ``vnpus`` is accepted too)."""

    hami_vnpu_core: bool = False
    configs: tuple[VnpuConfig, ...] = ()

    @pydantic.model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:  # noqa: ANN401 - pydantic before-validators see raw input
        if isinstance(data, list):
            return {"configs": data}
        return data


class FakeDevice(_Strict):
    """One device of the ``fake`` vendor."""

    uuid: str = Field(validation_alias=AliasChoices("uuid", "id"))
    type: str = "FAKE-GPU-16G"
    memory: int = Field(16384, ge=1, description="MiB")
    cores: int = Field(100, ge=1)
    count: int = Field(10, ge=1, description="slots")
    numa: int = 0
    index: int | None = None
    healthy: bool = True


class FakeConfig(_Strict):
    """Our ``fake`` vendor: devices declared in configuration, used by tests and demos."""

    resource_count_name: str = "hami.io/fake-gpu"
    resource_memory_name: str = "hami.io/fake-gpumem"
    resource_memory_percentage_name: str = "hami.io/fake-gpumem-percentage"
    resource_core_name: str = "hami.io/fake-gpucores"
    default_memory: int = Field(0, ge=0)
    default_cores: int = Field(0, ge=0, le=100)
    default_gpu_num: int = Field(1, ge=0, alias="defaultGPUNum")
    memory_factor: int = Field(1, ge=1)
    devices: tuple[FakeDevice, ...] = ()


class DeviceConfig(_Strict):
    """HAMi's device ConfigMap (``device-config.yaml``), plus our ``fake`` section."""

    nvidia: NvidiaConfig = NvidiaConfig()
    cambricon: CambriconConfig = CambriconConfig()
    hygon: HygonConfig = HygonConfig()
    metax: MetaxConfig = MetaxConfig()
    enflame: EnflameConfig = EnflameConfig()
    mthreads: MthreadsConfig = MthreadsConfig()
    iluvatars: tuple[IluvatarConfig, ...] = ()
    kunlun: KunlunConfig = KunlunConfig()
    awsneuron: AwsNeuronConfig = AwsNeuronConfig()
    amd: AmdConfig = AmdConfig()
    vastai: CountOnlyConfig = CountOnlyConfig(resource_count_name="vastaitech.com/va")
    biren: CountOnlyConfig = CountOnlyConfig(resource_count_name="birentech.com/gpu")
    vnpus: VnpusConfig = VnpusConfig()
    fake: FakeConfig = FakeConfig()


def _problems(err: pydantic.ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            out.append(f"{path}: unknown key (check the spelling against hami-compat.md 7)")
        else:
            out.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    return out


def parse_device_config(data: object, *, source: str = "device config") -> DeviceConfig:
    """Validate an already-loaded device ConfigMap document.

    :raises ConfigError: with every problem found, each with its key path
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise errors.ConfigError(
            [f"top level: expected a mapping, got {type(data).__name__}"], source=source
        )
    try:
        return DeviceConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise errors.ConfigError(_problems(err), source=source) from err


def load_device_config(path: str | Path) -> DeviceConfig:
    """Read ``device-config.yaml`` (the key of HAMi's ConfigMap) from a file.

    :raises ConfigError: unreadable file, invalid YAML, or invalid keys/values (all listed)
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise errors.ConfigError([f"cannot read the file: {err.strerror}"], source=source) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise errors.ConfigError([f"invalid YAML: {err}"], source=source) from err
    if isinstance(data, Mapping) and "device-config.yaml" in data and len(data) == 1:
        # a whole ConfigMap ``data:`` section was given: unwrap the key HAMi uses
        inner = data["device-config.yaml"]
        data = yaml.safe_load(inner) if isinstance(inner, str) else inner
    return parse_device_config(data, source=source)


# ----------------------------------------------------------------------------------------------
# NVIDIA node configuration (7.2)
# ----------------------------------------------------------------------------------------------


class FilterDevices(BaseModel):
    """GPUs neither exposed nor registered, by UUID or index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uuid: tuple[str, ...] = ()
    index: tuple[int, ...] = ()


class NodeConfigEntry(BaseModel):
    """One entry of ``nodeconfig`` (keys are all lower-case in HAMi's file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    operatingmode: Literal["hami-core", "mig", "mps"] | None = None
    devicememoryscaling: float | None = Field(None, gt=0)
    devicesplitcount: int | None = Field(None, ge=1)
    devicecorescaling: float | None = Field(None, gt=0)
    preconfigureddevicememory: int | None = Field(None, ge=0)
    libcudaloglevel: str | None = None
    enablenumatopology: bool | None = None
    migstrategy: Literal["none", "single", "mixed"] | None = None
    filterdevices: FilterDevices | None = None
    enablegetpreferredallocation: bool | None = None


class NodeConfigFile(BaseModel):
    """The whole ``config.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodeconfig: tuple[NodeConfigEntry, ...] = ()

    def for_node(self, node_name: str) -> NodeConfigEntry | None:
        """The entry whose name is ``node_name``, if any."""
        return next((e for e in self.nodeconfig if e.name == node_name), None)


def load_node_config(path: str | Path) -> NodeConfigFile:
    """Read HAMi's node configuration JSON.

    :raises ConfigError: unreadable, invalid JSON, or invalid keys (all listed)
    """
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise errors.ConfigError([f"cannot read the file: {err.strerror}"], source=source) from err
    except json.JSONDecodeError as err:
        raise errors.ConfigError([f"invalid JSON: {err}"], source=source) from err
    try:
        return NodeConfigFile.model_validate(data)
    except pydantic.ValidationError as err:
        raise errors.ConfigError(_problems(err), source=source) from err


# ----------------------------------------------------------------------------------------------
# Process settings
# ----------------------------------------------------------------------------------------------


class SchedulerSettings(BaseModel):
    """``hami scheduler``: policies, names, lock timing."""

    scheduler_name: str = Field(_names.DEFAULT_SCHEDULER_NAME, description="profile name")
    node_scheduler_policy: Literal["binpack", "spread"] = Field(
        "binpack", description="node choice (HAMi default binpack)"
    )
    gpu_scheduler_policy: str = Field("spread", description="device order (HAMi default spread)")
    node_label_selector: dict[str, str] = Field(default_factory=dict)
    node_lock_timeout_seconds: float = Field(
        _names.NODE_LOCK_EXPIRY_SECONDS, gt=0, description="lock expiry (HAMi 5m)"
    )
    node_lock_wait_seconds: float = Field(
        25.0, gt=0, description="how long a bind waits for a node lock; below httpTimeout 30 s"
    )
    force_overwrite_default_scheduler: bool = True
    exhaustive_filter: bool = Field(
        False,
        description=(
            "fit every candidate node on each /filter, so FilteringSucceed lists every fitting "
            "node with its score as HAMi's does; the default stops at the first fitting node in "
            "score order, which chooses the same node and devices much faster"
        ),
    )


class WebhookSettings(BaseModel):
    """Admission webhook TLS files."""

    cert_file: str = "/tls/tls.crt"
    key_file: str = "/tls/tls.key"


class DevicePluginSettings(BaseModel):
    """``hami device-plugin``: kubelet directory and host paths."""

    kubelet_dir: str = "/var/lib/kubelet/device-plugins"
    hook_path: str = "/usr/local"
    node_name: str = ""


class Settings(BaseSettings):
    """Root settings of every ``hami`` process (env ``HAMI_``, nested with ``__``)."""

    model_config = SettingsConfigDict(env_prefix="HAMI_", env_nested_delimiter="__", extra="ignore")

    device_config_file: str = Field(
        "", description="HAMi device-config.yaml path; empty = defaults"
    )
    log_level: str = "INFO"
    log_json: bool = False
    scheduler: SchedulerSettings = SchedulerSettings()
    webhook: WebhookSettings = WebhookSettings()
    deviceplugin: DevicePluginSettings = DevicePluginSettings()

    def device_config(self) -> DeviceConfig:
        """Load the device config file, or the defaults when none is configured."""
        if not self.device_config_file:
            return DeviceConfig()
        return load_device_config(self.device_config_file)
