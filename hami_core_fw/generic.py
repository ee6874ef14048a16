"""A ready-made :class:`~hami_core_fw.vendor.DeviceVendor` for devices shared the NVIDIA way.

Most HAMi vendors follow the NVIDIA pattern (hami-compat.md 8.0: "Unless stated, Fit follows the
NVIDIA pattern"): a count resource, memory in MiB or percent, cores in percent, a JSON or CSV
registration annotation, a ``uuid,type,mem,cores`` allocation string and the CUDA-style shim
environment. :class:`SharedDeviceVendor` implements that pattern once; a vendor plugin subclasses
it and overrides only what differs. Every method is pure.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Final

from hami_core_fw import _names, codec, errors, models, vendor

_INT32_MAX: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class SharingDefaults:
    """Admission and request defaults of one vendor (HAMi device ConfigMap, 7.1).

    :param default_memory: MiB when neither memory nor percentage is given (0 = 100 %)
    :param default_cores: cores when not given
    :param default_count: count the webhook adds when only memory/cores are given
    :param overwrite_env: set the visible-devices env to ``none`` in non-device containers
    :param runtime_class_name: set on device pods by the webhook when non-empty
    :param core_policy: ``default``, ``force`` or ``disable`` (env ``GPU_CORE_UTILIZATION_POLICY``)
    """

    default_memory: int = 0
    default_cores: int = 0
    default_count: int = 1
    overwrite_env: bool = False
    runtime_class_name: str = ""
    core_policy: str = "default"


@dataclass(frozen=True, slots=True)
class _PodFilters:
    """A pod's device selection annotations, parsed (hami-compat.md 2.3)."""

    allow_types: tuple[str, ...]
    deny_types: tuple[str, ...]
    allow_uuids: frozenset[str]
    deny_uuids: frozenset[str]
    mode: str | None
    numa_bind: bool

    def type_ok(self, dev_type: str) -> bool:
        """Upper-cased tokens are substrings of the upper-cased model; empty lists allow all."""
        if not self.allow_types and not self.deny_types:
            return True
        upper = dev_type.upper()
        if self.allow_types and not any(t in upper for t in self.allow_types):
            return False
        return not any(t in upper for t in self.deny_types)


def _env_list(container: MutableMapping[str, object]) -> list[dict[str, object]]:
    env = container.get("env")
    if not isinstance(env, list):
        env = []
        container["env"] = env
    return env


def set_env(container: MutableMapping[str, object], name: str, value: str) -> None:
    """Set (or replace) one env var on a container manifest."""
    env = _env_list(container)
    for item in env:
        if isinstance(item, dict) and item.get("name") == name:
            item["value"] = value
            item.pop("valueFrom", None)
            return
    env.append({"name": name, "value": value})


def _resources(container: MutableMapping[str, object], part: str) -> dict[str, object]:
    res = container.get("resources")
    if not isinstance(res, dict):
        res = {}
        container["resources"] = res
    section = res.get(part)
    if not isinstance(section, dict):
        section = {}
        res[part] = section
    return section


def _peek(container: Mapping[str, object], part: str) -> Mapping[str, object]:
    res = container.get("resources")
    if isinstance(res, Mapping):
        section = res.get(part)
        if isinstance(section, Mapping):
            return section
    return {}


class SharedDeviceVendor:
    """The NVIDIA sharing pattern, parameterised by names and keys.

    :param vendor_id: entry-point id (``nvidia``)
    :param common_word: HAMi vendor key (``NVIDIA``)
    :param resources: resource names and memory factor
    :param keys: annotation keys
    :param defaults: admission/request defaults
    :param visible_env: env var listing the container's device ids (``NVIDIA_VISIBLE_DEVICES``)
    """

    def __init__(
        self,
        *,
        vendor_id: str,
        common_word: str,
        resources: models.ResourceNames,
        keys: vendor.AnnotationKeys,
        defaults: SharingDefaults | None = None,
        visible_env: str = "",
    ) -> None:
        self.vendor_id = vendor_id
        self.common_word = common_word
        self.resources = resources
        self.keys = keys
        self.defaults = defaults or SharingDefaults()
        self.visible_env = visible_env
        self._filters_memo: tuple[models.PodView, _PodFilters] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vendor_id!r}, common_word={self.common_word!r})"

    # ------------------------------------------------------------------ registration and health

    def parse_node(self, node: models.NodeView) -> tuple[models.DeviceInfo, ...]:
        """Decode the registration annotation (JSON or legacy CSV), stamped with our vendor."""
        key = self.keys.register
        value = node.annotations.get(key)
        if value is None:
            raise errors.CodecError(key, "", "", f"node {node.name!r} has no registration")
        return codec.decode_registration(key, value, vendor=self.common_word)

    def encode_registration(self, devices: Sequence[models.DeviceInfo]) -> dict[str, str]:
        """The registration annotation as JSON (what HAMi v2.8+ plugins write)."""
        return {self.keys.register: codec.encode_registration_json(devices)}

    def _allocatable_count(self, node: models.NodeView) -> int:
        raw = node.allocatable.get(self.resources.count, "0")
        try:
            return int(raw)
        except ValueError:
            return 0

    def check_health(self, node: models.NodeView, now: dt.datetime) -> models.HealthVerdict:
        """HAMi's handshake algorithm when the vendor has a handshake key, else allocatable > 0."""
        key = self.keys.handshake
        if not key:
            healthy = (
                self._allocatable_count(node) > 0 or self.resources.count not in node.allocatable
            )
            return models.HealthVerdict(healthy=healthy, update=healthy)
        shake = codec.decode_handshake(node.annotations.get(key, ""))
        if shake.kind == _names.HANDSHAKE_REQUESTING:
            if shake.time is None:
                return models.HealthVerdict(healthy=True, update=False)
            if now < shake.time + dt.timedelta(seconds=_names.HANDSHAKE_TIMEOUT_SECONDS):
                return models.HealthVerdict(healthy=True, update=False)
            if self._allocatable_count(node) > 0:
                return models.HealthVerdict(healthy=True, update=False)
            return models.HealthVerdict(healthy=False, update=False, annotations={key: None})
        return models.HealthVerdict(
            healthy=True, update=True, annotations={key: codec.encode_handshake_request(now)}
        )

    # ------------------------------------------------------------------ requests

    def _quantity(self, container: models.ContainerView, name: str) -> int | None:
        if not name:
            return None
        raw = container.resource(name)
        if raw is None:
            return None
        try:
            return models.int_quantity(raw, what=f"container {container.name!r} resource {name!r}")
        except ValueError as err:
            raise errors.InvalidRequest(str(err)) from err

    def request_for(self, container: models.ContainerView) -> models.DeviceRequest | None:
        """HAMi's request derivation (4.7), refusing values HAMi silently mangles (Q17-Q19)."""
        res = self.resources
        count = self._quantity(container, res.count)
        if not count:
            return None
        mem = self._quantity(container, res.memory) or 0
        factor = max(res.memory_factor, 1)
        if mem * factor > _INT32_MAX:
            raise errors.InvalidRequest(
                f"container {container.name!r} resource {res.memory!r}: {mem} is too large "
                f"(at most {_INT32_MAX // factor})"
            )
        mem *= factor
        pct = self._quantity(container, res.memory_percentage)
        percentage: int | None = None
        if pct is not None and pct > 0:
            percentage = min(pct, 100)
        if percentage is None and mem == 0:
            if self.defaults.default_memory:
                mem = self.defaults.default_memory
            else:
                percentage = 100
        cores = self._quantity(container, res.cores)
        if cores is None:
            cores = self.defaults.default_cores
        if cores > 100:
            raise errors.InvalidRequest(
                f"container {container.name!r} resource {res.cores!r}: {cores} is above 100 "
                "(cores are a percentage of one device, 0-100)"
            )
        return models.DeviceRequest(
            vendor=self.common_word,
            nums=count,
            memreq=mem,
            mem_percentage=percentage,
            coresreq=cores,
        )

    def numa_bind(self, pod: models.PodView) -> bool:
        """The vendor's numa-bind annotation in Go's boolean literal set."""
        if not self.keys.numa_bind:
            return False
        return codec.go_bool(pod.annotations.get(self.keys.numa_bind, "")) is True

    # ------------------------------------------------------------------ fit

    def _pod_filters(self, pod: models.PodView) -> _PodFilters:
        """The pod's device filters, parsed once per pod (filter runs one pod on every node)."""
        memo = self._filters_memo
        if memo is not None and memo[0] is pod:
            return memo[1]
        keys, ann = self.keys, pod.annotations

        def tokens(key: str) -> tuple[str, ...]:
            return codec.split_list(ann.get(key)) if key else ()

        filters = _PodFilters(
            allow_types=tuple(t.upper() for t in tokens(keys.use_type)),
            deny_types=tuple(t.upper() for t in tokens(keys.nouse_type)),
            allow_uuids=frozenset(tokens(keys.use_uuid)),
            deny_uuids=frozenset(tokens(keys.nouse_uuid)),
            mode=ann.get(keys.vgpu_mode) if keys.vgpu_mode else None,
            numa_bind=self.numa_bind(pod),
        )
        self._filters_memo = (pod, filters)
        return filters

    def _quota_ok(
        self,
        ctx: vendor.FitContext,
        chosen: Sequence[models.ContainerDevice],
        candidate: models.ContainerDevice,
    ) -> bool:
        if ctx.quota_fits is None:
            return True
        entries = list(ctx.allocated[: ctx.container_index])
        entries += [()] * (ctx.container_index - len(entries))
        entries.append((*chosen, candidate))
        collapsed = models.collapse_usage(entries, ctx.n_init, self.common_word)
        return ctx.quota_fits(
            sum(c.usedmem for c in collapsed), sum(c.usedcores for c in collapsed)
        )

    def fit(
        self,
        devices: Sequence[models.DeviceUsage],
        request: models.DeviceRequest,
        ctx: vendor.FitContext,
    ) -> models.FitResult:
        """HAMi's NVIDIA ``Fit`` (4.7), walking the policy-sorted list from the end."""
        topo = "topology-aware" in ctx.gpu_policy
        mutex = "mutex" in ctx.gpu_policy
        pf = self._pod_filters(ctx.pod)
        numa_bind = pf.numa_bind
        cordon = ctx.node.annotations.get(_names.ANNOTATION_DEVICE_CORDON)
        cordoned = frozenset(codec.split_list(cordon)) if cordon else frozenset()
        reasons: Counter[models.Reason] = Counter()
        needed = request.nums
        chosen: list[models.ContainerDevice] = []
        prev_numa: int | None = None
        for dev in reversed(devices):
            if not dev.health:
                reasons[models.Reason.CARD_NOT_HEALTH] += 1
                continue
            if dev.id in cordoned:
                reasons[models.Reason.CARD_CORDONED] += 1
                continue
            if not pf.type_ok(dev.type) or (pf.mode is not None and dev.mode not in pf.mode):
                reasons[models.Reason.CARD_TYPE_MISMATCH] += 1
                continue
            if numa_bind and dev.numa != prev_numa:
                if needed != request.nums:
                    reasons[models.Reason.NUMA_NOT_FIT] += len(chosen)
                needed = request.nums
                chosen = []
                prev_numa = dev.numa
            if (pf.allow_uuids and dev.id not in pf.allow_uuids) or dev.id in pf.deny_uuids:
                reasons[models.Reason.CARD_UUID_MISMATCH] += 1
                continue
            if dev.count <= dev.used:
                reasons[models.Reason.CARD_TIME_SLICING_EXHAUSTED] += 1
                continue
            if mutex and dev.used > 0:
                reasons[models.Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT] += 1
                continue
            cores = min(request.coresreq, 100)
            mem = request.memory_on(dev.totalmem)
            candidate = models.ContainerDevice(dev.id, self.common_word, mem, cores)
            if not self._quota_ok(ctx, chosen, candidate):
                reasons[models.Reason.RESOURCE_QUOTA_NOT_FIT] += 1
                continue
            if dev.totalmem - dev.usedmem < mem:
                reasons[models.Reason.CARD_INSUFFICIENT_MEMORY] += 1
                continue
            if dev.totalcore - dev.usedcores < cores:
                reasons[models.Reason.CARD_INSUFFICIENT_CORE] += 1
                continue
            if dev.totalcore == 100 and cores == 100 and dev.used > 0:
                reasons[models.Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT] += 1
                continue
            if dev.totalcore != 0 and dev.usedcores == dev.totalcore and cores == 0:
                reasons[models.Reason.CARD_COMPUTE_UNITS_EXHAUSTED] += 1
                continue
            chosen.append(candidate)
            if not topo:
                needed -= 1
                if needed == 0:
                    return models.FitResult(ok=True, devices=tuple(chosen), total=len(devices))
        if topo and len(chosen) >= request.nums:
            by_id = {d.id: d for d in devices}
            picked = _topology_pick(chosen, request.nums, by_id)
            return models.FitResult(ok=True, devices=picked, total=len(devices))
        if chosen:
            reasons[models.Reason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] += len(chosen)
        return models.FitResult(ok=False, reasons=dict(reasons), total=len(devices))

    def score_node(
        self,
        node: models.NodeView,
        chosen: models.PodSingleDevices,
        before: Sequence[models.DeviceUsage],
        policy: str,
    ) -> float:
        """No vendor bonus (NVIDIA, Hygon, Cambricon, ...: 0)."""
        return 0.0

    # ------------------------------------------------------------------ allocation annotations

    def encode_allocation(self, entries: models.PodSingleDevices) -> dict[str, str]:
        """The same string under the to-allocate and allocated keys (3.3)."""
        value = codec.encode_pod_devices(entries)
        out = {self.keys.allocated: value}
        if self.keys.to_allocate:
            out[self.keys.to_allocate] = value
        return out

    def decode_allocation(self, annotations: Mapping[str, str]) -> models.PodSingleDevices | None:
        """Decode the allocated key; ``None`` when absent."""
        value = annotations.get(self.keys.allocated)
        if value is None:
            return None
        return codec.decode_pod_devices(self.keys.allocated, value)

    # ------------------------------------------------------------------ admission

    def _validate_container(self, container: MutableMapping[str, object], name: str) -> None:
        res = self.resources
        for part in ("limits", "requests"):
            section = _peek(container, part)
            for rname in res.all():
                if rname == res.priority or rname not in section:
                    continue
                what = f"container {name!r} {part} {rname!r}"
                try:
                    value = models.int_quantity(section[rname], what=what)
                except ValueError as err:
                    raise errors.AdmissionDenied(str(err), code=400) from err
                if rname in (res.memory_percentage, res.cores) and value > 100:
                    raise errors.AdmissionDenied(
                        f"{what}: {value} is outside the allowed range 0-100", code=400
                    )
                factor = max(res.memory_factor, 1)
                if rname == res.memory and value * factor > _INT32_MAX:
                    raise errors.AdmissionDenied(
                        f"{what}: {value} is too large (at most {_INT32_MAX // factor})", code=400
                    )

    def mutate_container(
        self, container: MutableMapping[str, object], pod: MutableMapping[str, object]
    ) -> bool:
        """HAMi's NVIDIA admission mutation (section 6), with input errors denied as 400."""
        res = self.resources
        name = str(container.get("name") or "")
        self._validate_container(container, name)
        limits = _peek(container, "limits")
        requests = _peek(container, "requests")
        if res.priority and res.priority in limits:
            set_env(container, _names.ENV_TASK_PRIORITY, str(limits[res.priority]))
        if self.defaults.core_policy not in ("", "default"):
            set_env(container, _names.ENV_CORE_POLICY, self.defaults.core_policy)
        uses = False
        if res.count in limits:
            uses = True
        elif self.defaults.default_count > 0 and any(
            n and n in limits for n in (res.cores, res.memory, res.memory_percentage)
        ):
            _resources(container, "limits")[res.count] = str(self.defaults.default_count)
            limits = _peek(container, "limits")
            uses = True
        count_present = res.count in limits or res.count in requests
        cores_absent = not res.cores or (res.cores not in limits and res.cores not in requests)
        if count_present and cores_absent and res.cores:
            pct_section = limits if res.memory_percentage in limits else requests
            if res.memory_percentage and res.memory_percentage in pct_section:
                exclusive = str(pct_section[res.memory_percentage]).strip() == "100"
            else:
                exclusive = not res.memory or (
                    res.memory not in limits and res.memory not in requests
                )
            if exclusive:
                _resources(container, "limits")[res.cores] = "100"
                uses = True
        spec = pod.get("spec")
        if (
            uses
            and self.defaults.runtime_class_name
            and isinstance(spec, dict)
            and not spec.get("runtimeClassName")
        ):
            spec["runtimeClassName"] = self.defaults.runtime_class_name
        if not uses and self.defaults.overwrite_env and self.visible_env:
            set_env(container, self.visible_env, "none")
        return uses

    # ------------------------------------------------------------------ device plugin side

    def container_runtime(
        self,
        devices: models.ContainerDevices,
        container: models.ContainerView,
        pod: models.PodView,
        ctx: vendor.AllocateContext,
    ) -> models.ContainerRuntime:
        """The hami-core answer of ``Allocate`` (9.2): visible devices, limits, shim mounts."""
        if not devices:
            raise errors.PermanentError(
                f"pod {pod.key!r} container {container.name!r}: no {self.common_word} devices"
            )
        hook = ctx.hook_path.rstrip("/")
        vgpu = f"{hook}/vgpu"
        envs: dict[str, str] = {}
        if self.visible_env:
            envs[self.visible_env] = ",".join(d.uuid for d in devices)
        for k, dev in enumerate(devices):
            envs[f"{_names.ENV_MEMORY_LIMIT}_{k}"] = f"{dev.usedmem}m"
            envs[f"{_names.ENV_SM_LIMIT}_{k}"] = str(dev.usedcores)
        envs[_names.ENV_SM_LIMIT] = str(devices[0].usedcores)
        cache = ctx.cache_file or f"{pod.uid}_{container.name}"
        envs[_names.ENV_SHARED_CACHE] = f"{vgpu}/{cache}.cache"
        envs.update(ctx.extra_env)
        mounts = [
            models.Mount(
                f"{vgpu}/{ctx.shim_library}", f"{vgpu}/{ctx.shim_library}", read_only=True
            ),
            models.Mount(vgpu, f"{vgpu}/containers/{pod.uid}_{container.name}"),
            models.Mount("/tmp/vgpulock", "/tmp/vgpulock"),  # noqa: S108 - protocol path (9.2)
        ]
        if codec.go_bool(container.env.get(_names.ENV_DISABLE_CONTROL, "")) is not True:
            mounts.append(
                models.Mount("/etc/ld.so.preload", f"{vgpu}/ld.so.preload", read_only=True)
            )
        return models.ContainerRuntime(envs=envs, mounts=tuple(mounts))

    def make_backend(self, node_name: str) -> vendor.DeviceBackend:
        """No node-side backend unless a subclass provides one."""
        raise errors.VendorUnavailable(
            f"vendor {self.vendor_id!r} has no node-side backend on node {node_name!r}"
        )


def _topology_pick(
    chosen: Sequence[models.ContainerDevice],
    nums: int,
    usage: Mapping[str, models.DeviceUsage],
) -> models.ContainerDevices:
    """HAMi's topology-aware choice among every fitting card (4.7, ``if topo``)."""
    if len(chosen) == nums:
        return tuple(chosen)

    def link(a: str, b: str) -> int:
        dev = usage.get(a)
        return int(dev.links.get(b, 0)) if dev else 0

    if nums == 1:
        # keep the card least connected to the others: leave well-connected cards free
        best = min(
            range(len(chosen)),
            key=lambda i: (
                sum(link(chosen[i].uuid, o.uuid) for j, o in enumerate(chosen) if j != i),
                i,
            ),
        )
        return (chosen[best],)
    best_combo: tuple[int, ...] = ()
    best_score: int | None = None
    for combo in itertools.combinations(range(len(chosen)), nums):
        score = sum(
            link(chosen[a].uuid, chosen[b].uuid) for a, b in itertools.combinations(combo, 2)
        )
        if best_score is None or score > best_score:
            best_combo, best_score = combo, score
    return tuple(chosen[i] for i in best_combo)
