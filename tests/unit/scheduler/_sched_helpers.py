"""Builders shared by the scheduling-core tests: fake-vendor devices, nodes, pods, states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hami_core_fw import models, plugins
from hami_core_fw.builtin import fake
from hami_core_fw.scheduler import core, state

CW = fake.COMMON_WORD
KEYS = fake.KEYS
A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"
T4 = "NVIDIA-Tesla T4"

RES = fake.FakeVendor().resources
GPU, MEM, PCT, CORES = RES.count, RES.memory, RES.memory_percentage, RES.cores


def make_host(*extra: tuple[str, object]) -> plugins.PluginHost:
    return plugins.make_plugin_manager(autoload=False, env={}, extra_plugins=extra)


def dev(
    i: int,
    *,
    node: str = "n1",
    mem: int = 16384,
    count: int = 10,
    cores: int = 100,
    type: str = A100,
    numa: int = 0,
    health: bool = True,
    mode: str = "hami-core",
    links: Mapping[str, int] | None = None,
) -> models.DeviceInfo:
    return models.DeviceInfo(
        id=f"GPU-{node}-{i}",
        index=i,
        count=count,
        devmem=mem,
        devcore=cores,
        type=type,
        numa=numa,
        health=health,
        mode=mode,
        vendor=CW,
        links=dict(links or {}),
    )


def gpu(
    n: int = 1, mem: int | None = None, pct: int | None = None, cores: int | None = None
) -> dict[str, str]:
    limits = {GPU: str(n)}
    if mem is not None:
        limits[MEM] = str(mem)
    if pct is not None:
        limits[PCT] = str(pct)
    if cores is not None:
        limits[CORES] = str(cores)
    return limits


def pod(
    *containers: Mapping[str, str],
    init: Sequence[Mapping[str, str]] = (),
    ann: Mapping[str, str] | None = None,
    name: str = "p",
    ns: str = "default",
    init_done: bool = False,
    phase: str = "Pending",
) -> models.PodView:
    inits = tuple(
        models.ContainerView(name=f"init{i}", limits=dict(lim), init=True)
        for i, lim in enumerate(init)
    )
    return models.PodView(
        namespace=ns,
        name=name,
        uid=f"uid-{ns}-{name}",
        annotations=dict(ann or {}),
        init_containers=inits,
        containers=tuple(
            models.ContainerView(name=f"c{i}", limits=dict(lim)) for i, lim in enumerate(containers)
        ),
        init_succeeded=frozenset(c.name for c in inits) if init_done else frozenset(),
        phase=phase,
    )


def cluster(
    host: plugins.PluginHost,
    nodes: Mapping[str, Sequence[models.DeviceInfo]],
    *,
    node_annotations: Mapping[str, Mapping[str, str]] | None = None,
    fit_cache: bool = True,
) -> state.ClusterState:
    st = state.ClusterState(host, fit_cache=fit_cache)
    for name, devices in nodes.items():
        ann = dict((node_annotations or {}).get(name, {}))
        st.set_node(models.NodeView(name=name, annotations=ann), {CW: devices})
    return st


def hold(
    st: state.ClusterState,
    node: str,
    uuid: str,
    *,
    mem: int = 0,
    cores: int = 0,
    name: str | None = None,
    ns: str = "default",
) -> models.PodView:
    """Reserve one container device on ``uuid`` for a fresh pod (existing usage)."""
    name = name or f"holder-{uuid}-{len(st.pods_on(node))}"
    p = pod(gpu(1, mem=mem or None, cores=cores), name=name, ns=ns)
    st.set_pod(p, node, {CW: ((models.ContainerDevice(uuid, CW, mem, cores),),)})
    return p


def chosen_ids(decision: core.FilterDecision, vendor: str = CW) -> list[list[str]]:
    return [[d.uuid for d in entry] for entry in decision.devices.get(vendor, ())]


def rebuild(s: state.ClusterState, *, fit_cache: bool = True) -> state.ClusterState:
    """The same cluster computed from scratch: nodes, quotas, then every reservation."""
    fresh = state.ClusterState(s.host, fit_cache=fit_cache)
    for name in s.node_names():
        e = s.entry(name)
        assert e is not None
        fresh.set_node(
            e.view,
            {
                cw: [
                    models.DeviceInfo(
                        id=d.id, count=d.count, devmem=d.totalmem, devcore=d.totalcore,
                        type=d.type, index=d.index, numa=d.numa, mode=d.mode, health=d.health,
                        vendor=cw, links=d.links,
                    )
                    for d in records
                ]
                for cw, records in e.devices.items()
            },
        )  # fmt: skip
    for ns, entries in s.quota.entries.items():
        hard = {f"limits.{r}": e.limit for r, e in entries.items() if e.limit_set}
        if hard:
            fresh.set_quota(ns, hard)
    for record in sorted(s.pods(), key=lambda r: r.pod.uid, reverse=True):
        fresh.set_pod(record.pod, record.node, record.devices)
    return fresh
