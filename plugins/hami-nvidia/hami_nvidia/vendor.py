"""``NvidiaVendor``: HAMi's NVIDIA device (CommonWord ``NVIDIA``) on the shared-device pattern.

Everything scheduler-side - request derivation, admission defaults, fit (4.7), allocation
strings - is :class:`~hami_core_fw.generic.SharedDeviceVendor` configured with HAMi's NVIDIA names
and keys. This module adds what is NVIDIA-specific:

* the topology score annotation ``hami.io/node-nvidia-score`` (read: a registration with a
  score annotation that does not decode fails as a whole, 3.2; write: with topology scoring);
* the container env HAMi's NVIDIA plugin adds per configuration: ``CUDA_OVERSUBSCRIBE=true``
  when memory scaling > 1, ``LIBCUDA_LOG_LEVEL``, ``GPU_CORE_UTILIZATION_POLICY=disable`` with
  ``disableCoreLimit`` (9.2);
* the per-node configuration (``config.json``) and the kubelet-side spec (socket
  ``nvidia-gpu.sock``, NUMA on replicas, preferred allocation);
* :meth:`NvidiaVendor.make_backend`, the only way to the NVML backend (imported lazily).

No method here does I/O except :meth:`~NvidiaVendor.for_node` (reads config.json) and
:meth:`~NvidiaVendor.make_backend` (loads NVML), both node-side only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from hami_core_fw import _names, codec, config, errors, generic, models
from hami_core_fw import vendor as hv
from hami_core_fw.deviceplugin import spec as dpspec
from hami_nvidia import backend
from hami_nvidia import settings as nv_settings

VENDOR_ID: Final = "nvidia"
COMMON_WORD: Final = "NVIDIA"
SCORE_KEY: Final = "hami.io/node-nvidia-score"
VISIBLE_ENV: Final = "NVIDIA_VISIBLE_DEVICES"
SOCKET_NAME: Final = "nvidia-gpu.sock"
MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"

KEYS: Final = hv.AnnotationKeys(
    register="hami.io/node-nvidia-register",
    allocated="hami.io/vgpu-devices-allocated",
    to_allocate="hami.io/vgpu-devices-to-allocate",
    handshake="hami.io/node-handshake",
    use_uuid="nvidia.com/use-gpuuuid",
    nouse_uuid="nvidia.com/nouse-gpuuuid",
    use_type="nvidia.com/use-gputype",
    nouse_type="nvidia.com/nouse-gputype",
    numa_bind="nvidia.com/numa-bind",
    vgpu_mode="nvidia.com/vgpu-mode",
)


#: the registered ``type`` of an NVML model name (``NVIDIA-`` prefix rule)
model_type: Final = backend.model_type


class NvidiaVendor(generic.SharedDeviceVendor):
    """HAMi's NVIDIA vendor.

    :param cfg: the ``nvidia:`` block of the device ConfigMap
    :param node: the effective node configuration (None = cluster-wide defaults, scheduler side)
    :param env: the node-side environment settings (read lazily when None)
    """

    def __init__(
        self,
        cfg: config.NvidiaConfig | None = None,
        *,
        node: nv_settings.NodeSettings | None = None,
        env: nv_settings.NvidiaSettings | None = None,
    ) -> None:
        self.config = cfg or config.NvidiaConfig()
        self.node = node or nv_settings.effective(self.config)
        self.env = env
        super().__init__(
            vendor_id=VENDOR_ID,
            common_word=COMMON_WORD,
            resources=models.ResourceNames(
                count=self.config.resource_count_name,
                memory=self.config.resource_memory_name,
                memory_percentage=self.config.resource_memory_percentage_name,
                cores=self.config.resource_core_name,
                priority=self.config.resource_priority_name,
                memory_factor=self.config.memory_factor,
            ),
            keys=KEYS,
            defaults=generic.SharingDefaults(
                default_memory=self.config.default_memory,
                default_cores=self.config.default_cores,
                default_count=self.config.default_gpu_num,
                overwrite_env=self.config.overwrite_env,
                runtime_class_name=self.config.runtime_class_name,
                core_policy=self.config.gpu_core_policy,
            ),
            visible_env=VISIBLE_ENV,
        )

    # ------------------------------------------------------------------ registration

    def parse_node(self, node: models.NodeView) -> tuple[models.DeviceInfo, ...]:
        """The registration plus each device's topology scores from ``hami.io/node-nvidia-score``.

        :raises CodecError: the registration or a present score annotation does not decode
        """
        devices = super().parse_node(node)
        raw = node.annotations.get(SCORE_KEY)
        if raw is None:
            return devices
        scores = codec.decode_link_scores(SCORE_KEY, raw)
        return tuple(dataclasses.replace(d, links=scores.get(d.id, {})) for d in devices)

    def topology_score_enabled(self) -> bool:
        """Whether this node writes ``hami.io/node-nvidia-score``."""
        return self.env is not None and self.env.enable_topology_score

    def encode_registration(self, devices: Sequence[models.DeviceInfo]) -> dict[str, str]:
        """The JSON registration, plus the score annotation when topology scoring is on."""
        out = super().encode_registration(devices)
        if self.topology_score_enabled() or any(d.links for d in devices):
            out[SCORE_KEY] = codec.encode_link_scores({d.id: dict(d.links) for d in devices})
        return out

    # ------------------------------------------------------------------ allocation

    def runtime_env(self) -> dict[str, str]:
        """The env HAMi's NVIDIA plugin adds to every served container (9.2)."""
        env = {_names.ENV_LOG_LEVEL: str(self.node.log_level)}
        if self.node.memory_scaling > 1:
            env[_names.ENV_OVERSUBSCRIBE] = "true"
        if self.node.disable_core_limit:
            env[_names.ENV_CORE_POLICY] = "disable"
        return env

    def container_runtime(
        self,
        devices: models.ContainerDevices,
        container: models.ContainerView,
        pod: models.PodView,
        ctx: hv.AllocateContext,
    ) -> models.ContainerRuntime:
        """The hami-core answer with the configured env; MIG mode is not served yet."""
        if self.node.mode == MODE_MIG:
            raise errors.PermanentError(
                f"pod {pod.key!r} container {container.name!r}: operating mode 'mig' is not "
                "supported by this plugin yet; use hami-core or mps on this node"
            )
        extra = {**self.runtime_env(), **ctx.extra_env}
        return super().container_runtime(
            devices, container, pod, dataclasses.replace(ctx, extra_env=extra)
        )

    # ------------------------------------------------------------------ node side

    def device_plugin_spec(self) -> dpspec.DevicePluginSpec:
        """HAMi's kubelet-side choices: ``nvidia-gpu.sock``, NUMA and preferred allocation."""
        return dpspec.DevicePluginSpec(
            socket_name=SOCKET_NAME,
            numa_topology=self.node.numa_topology,
            preferred_allocation=self.node.preferred_allocation,
        )

    def _env(self) -> nv_settings.NvidiaSettings:
        return self.env if self.env is not None else nv_settings.NvidiaSettings()

    def for_node(self, node_name: str) -> NvidiaVendor:
        """This vendor with ``node_name``'s entry of ``config.json`` merged (7.2).

        :raises ConfigError: the node configuration file is invalid
        """
        env = self._env()
        node = nv_settings.node_settings(self.config, node_name, env.node_config_file)
        return NvidiaVendor(self.config, node=node, env=env)

    def make_backend(self, node_name: str) -> hv.DeviceBackend:
        """The NVML backend (``pynvml`` is imported only now).

        :raises VendorUnavailable: NVML (``libnvidia-ml.so.1``) cannot be loaded or initialised
        """
        env = self._env()
        return backend.NvidiaBackend(
            self.node,
            sysfs_root=env.sysfs_root,
            topology=env.enable_topology_score,
            health=nv_settings.health_policy(env),
        )
