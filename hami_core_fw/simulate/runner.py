"""Run a workload through the scheduling core over a declared cluster; collect the outcome.

The very same :func:`~hami_core_fw.scheduler.core.filter_pod` the extender calls places every pod,
in workload order, over an incremental :class:`~hami_core_fw.scheduler.state.ClusterState`; a placed
pod is reserved exactly as the extender reserves it. Pods already running (cluster spec ``pods``)
are placed first on their node, with HAMi's default GPU policy whatever policy is simulated, so
every compared policy starts from the same usage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hami_core_fw import errors, models, plugins, vendor
from hami_core_fw.scheduler import core, policy, state
from hami_core_fw.simulate import spec

#: progress callback: (pods done, pods total)
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated cluster and workload, ready to run under any policy."""

    cluster_source: str
    workload_source: str
    nodes: tuple[spec.SimNode, ...]
    quotas: tuple[spec.QuotaSpec, ...]
    #: running pods with the devices they hold
    existing: tuple[tuple[spec.SimPod, models.PodDevices], ...]
    workload: tuple[spec.SimPod, ...]


def _problems_of_requests(
    host: plugins.PluginHost, pods: Sequence[spec.SimPod], key: str
) -> list[str]:
    problems = []
    done: set[int] = set()
    for p in pods:
        if p.template in done:
            continue
        done.add(p.template)
        try:
            core.pod_requests(host, p.view)
        except errors.InvalidRequest as err:
            problems.append(f"{key}[{p.template}]: {err}; fix the resource value")
    return problems


def load(host: plugins.PluginHost, cluster_path: str | None, workload_path: str | None) -> Scenario:
    """Read, validate and prepare a scenario (None = the built-in example file).

    :raises ConfigError: every problem of a file at once, naming the file and the path inside it
    """
    c_src = spec.read_source(cluster_path, spec.EXAMPLE_CLUSTER)
    w_src = spec.read_source(workload_path, spec.EXAMPLE_WORKLOAD)
    cluster = spec.parse_cluster(c_src)
    workload = spec.parse_workload(w_src)
    nodes, problems = spec.build_nodes(cluster, host)
    names = {n.view.name for n in nodes}
    existing, more = spec.build_pods(cluster.pods, "pods", existing=True, node_names=names)
    problems += more + _problems_of_requests(host, existing, "pods")
    if problems:
        raise errors.ConfigError(problems, source=c_src.name)
    pods, problems = spec.build_pods(workload.pods, "pods", existing=False, node_names=names)
    problems += _problems_of_requests(host, pods, "pods")
    if problems:
        raise errors.ConfigError(problems, source=w_src.name)

    st = _fresh_state(host, nodes, cluster.quotas)
    placed: list[tuple[spec.SimPod, models.PodDevices]] = []
    for p in existing:
        decision = core.filter_pod(st, host, p.view, [p.node])
        if decision.node is None:
            why = decision.error or decision.failed.get(p.node, "")
            problems.append(
                f"pods[{p.template}]: running pod {p.view.key!r} does not fit node {p.node!r} "
                f"({why}); give the node more capacity or remove the pod"
            )
            continue
        st.set_pod(p.view, decision.node, decision.devices)
        placed.append((p, decision.devices))
    if problems:
        raise errors.ConfigError(problems, source=c_src.name)
    return Scenario(
        cluster_source=c_src.name,
        workload_source=w_src.name,
        nodes=tuple(nodes),
        quotas=cluster.quotas,
        existing=tuple(placed),
        workload=tuple(pods),
    )


def _fresh_state(
    host: plugins.PluginHost, nodes: Sequence[spec.SimNode], quotas: Sequence[spec.QuotaSpec]
) -> state.ClusterState:
    st = state.ClusterState(host)
    for n in nodes:
        st.set_node(n.view, n.devices)
    for q in quotas:
        st.set_quota(q.namespace, q.hard)
    return st


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodOutcome:
    """Where one workload pod went, or why it did not fit."""

    pod: str
    containers: tuple[str, ...]
    node: str | None
    devices: models.PodDevices = field(default_factory=dict)
    #: reason -> nodes (grouped as HAMi's FilteringFailed events); empty when placed
    reasons: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: node -> the filter's message for it; empty when placed
    failed: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class DeviceStat:
    """One device after the run."""

    node: str
    id: str
    vendor: str
    type: str
    health: bool
    used: int
    count: int
    usedmem: int
    totalmem: int
    usedcores: int
    totalcore: int
    #: free MiB that no request of the workload can use (0 when some request fits the device)
    stranded: int


@dataclass(frozen=True, slots=True)
class NodeStat:
    """One node after the run (sums over its devices)."""

    name: str
    devices: int
    in_use: int
    used: int
    count: int
    usedmem: int
    totalmem: int
    usedcores: int
    totalcore: int
    stranded: int


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything one policy produced."""

    node_policy: str
    gpu_policy: str
    outcomes: tuple[PodOutcome, ...]
    devices: tuple[DeviceStat, ...]
    nodes: tuple[NodeStat, ...]
    wall_s: float

    @property
    def label(self) -> str:
        """``binpack`` when both policies agree, else ``node/gpu``."""
        if self.node_policy == self.gpu_policy:
            return self.node_policy
        return f"{self.node_policy}/{self.gpu_policy}"

    def summary(self) -> dict[str, float | int]:
        """Headline numbers (counts, MiB and percentages)."""
        healthy = [d for d in self.devices if d.health]
        in_use = [d for d in healthy if d.used > 0]
        free = sum(d.totalmem - d.usedmem for d in healthy)
        stranded = sum(d.stranded for d in healthy)
        totalmem = sum(d.totalmem for d in healthy)
        usedmem = sum(d.usedmem for d in healthy)
        totalcore = sum(d.totalcore for d in healthy)
        usedcores = sum(d.usedcores for d in healthy)
        placed = sum(1 for o in self.outcomes if o.node is not None)
        return {
            "pods": len(self.outcomes),
            "placed": placed,
            "unplaced": len(self.outcomes) - placed,
            "devices": len(healthy),
            "devices_in_use": len(in_use),
            "nodes": len(self.nodes),
            "nodes_in_use": sum(1 for n in self.nodes if n.in_use),
            "memory_mib": totalmem,
            "memory_used_mib": usedmem,
            "memory_used_pct": _pct(usedmem, totalmem),
            "cores_used_pct": _pct(usedcores, totalcore),
            "memory_used_pct_of_devices_in_use": _pct(
                sum(d.usedmem for d in in_use), sum(d.totalmem for d in in_use)
            ),
            "stranded_mib": stranded,
            "stranded_pct_of_free": _pct(stranded, free),
        }


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def _candidates(
    nodes: Sequence[spec.SimNode], selector: Mapping[str, str], cache: dict[object, list[str]]
) -> list[str]:
    key = frozenset(selector.items())
    names = cache.get(key)
    if names is None:
        names = [
            n.view.name
            for n in nodes
            if all(n.view.labels.get(k) == v for k, v in selector.items())
        ]
        cache[key] = names
    return names


def _shapes(
    host: plugins.PluginHost, pods: Sequence[spec.SimPod]
) -> list[tuple[vendor.DeviceVendor, models.DeviceRequest, models.PodView]]:
    """Every distinct single-device request of the workload (for fragmentation)."""
    seen: set[object] = set()
    out = []
    for p in pods:
        for creq in core.pod_requests(host, p.view):
            for cw, req in creq.items():
                one = dataclasses.replace(req, nums=1)
                key = (cw, one, frozenset(p.view.annotations.items()))
                v = host.vendor_by_common_word(cw)
                if key in seen or v is None:
                    continue
                seen.add(key)
                out.append((v, one, p.view))
    return out


def _stranded(
    d: models.DeviceUsage,
    node: models.NodeView,
    shapes: Sequence[tuple[vendor.DeviceVendor, models.DeviceRequest, models.PodView]],
) -> int:
    free = d.totalmem - d.usedmem
    if not d.health or free <= 0:
        return 0
    for v, req, pod in shapes:
        if v.common_word != d.vendor:
            continue
        gpu_policy = pod.annotations.get("hami.io/gpu-scheduler-policy", policy.DEFAULT_GPU_POLICY)
        ctx = vendor.FitContext(pod=pod, node=node, gpu_policy=policy.policy_tokens(gpu_policy))
        if v.fit([d], req, ctx).ok:
            return 0
    return free


def run(
    host: plugins.PluginHost,
    scenario: Scenario,
    *,
    node_policy: str = policy.DEFAULT_NODE_POLICY,
    gpu_policy: str = policy.DEFAULT_GPU_POLICY,
    progress: Progress | None = None,
) -> RunResult:
    """Place the workload under the given default policies (pod annotations still override)."""
    started = time.perf_counter()
    st = _fresh_state(host, scenario.nodes, scenario.quotas)
    for p, held in scenario.existing:
        st.set_pod(p.view, p.node, held)
    cache: dict[object, list[str]] = {}
    outcomes = []
    total = len(scenario.workload)
    for k, p in enumerate(scenario.workload):
        if progress is not None and k:
            progress(k, total)
        names = [c.name for c in p.view.all_containers]
        candidates = _candidates(scenario.nodes, p.node_selector, cache)
        if not candidates:
            outcomes.append(
                PodOutcome(
                    pod=p.view.key,
                    containers=tuple(names),
                    node=None,
                    reasons={"no node matches nodeSelector": []},
                    error=f"no node matches nodeSelector {dict(p.node_selector)!r}",
                )
            )
            continue
        decision = core.filter_pod(
            st, host, p.view, candidates, node_policy=node_policy, gpu_policy=gpu_policy
        )
        if decision.node is not None:
            st.set_pod(p.view, decision.node, decision.devices)
            outcomes.append(
                PodOutcome(p.view.key, tuple(names), decision.node, devices=decision.devices)
            )
        else:
            outcomes.append(
                PodOutcome(
                    pod=p.view.key,
                    containers=tuple(names),
                    node=None,
                    reasons=core.summarize_failures(decision.failed),
                    failed=dict(decision.failed),
                    error=decision.error,
                )
            )
    if progress is not None and total:
        progress(total, total)
    shapes = _shapes(host, scenario.workload)
    devices: list[DeviceStat] = []
    nodes: list[NodeStat] = []
    for n in scenario.nodes:
        usage = st.usage(n.view.name)
        stats = [
            DeviceStat(
                node=n.view.name,
                id=d.id,
                vendor=d.vendor,
                type=d.type,
                health=d.health,
                used=d.used,
                count=d.count,
                usedmem=d.usedmem,
                totalmem=d.totalmem,
                usedcores=d.usedcores,
                totalcore=d.totalcore,
                stranded=_stranded(d, n.view, shapes),
            )
            for d in usage
        ]
        devices += stats
        nodes.append(
            NodeStat(
                name=n.view.name,
                devices=len(stats),
                in_use=sum(1 for d in stats if d.used > 0),
                used=sum(d.used for d in stats),
                count=sum(d.count for d in stats),
                usedmem=sum(d.usedmem for d in stats),
                totalmem=sum(d.totalmem for d in stats),
                usedcores=sum(d.usedcores for d in stats),
                totalcore=sum(d.totalcore for d in stats),
                stranded=sum(d.stranded for d in stats),
            )
        )
    return RunResult(
        node_policy=node_policy,
        gpu_policy=gpu_policy,
        outcomes=tuple(outcomes),
        devices=tuple(devices),
        nodes=tuple(nodes),
        wall_s=time.perf_counter() - started,
    )


def parse_compare(value: str) -> list[tuple[str, str]]:
    """``binpack,spread`` -> [(binpack, binpack), (spread, spread)]; ``node/gpu`` sets both.

    :raises ConfigError: an empty list or an empty policy name
    """
    out = []
    for item in value.split(","):
        node, _, gpu = item.strip().partition("/")
        node, gpu = node.strip(), (gpu.strip() if gpu else node.strip())
        if not node or not gpu:
            raise errors.ConfigError(
                [f"--compare: {value!r} has an empty policy; write e.g. binpack,spread or "
                 "binpack/spread,spread/binpack (node policy/GPU policy)"],
                source="command line",
            )  # fmt: skip
        out.append((node, gpu))
    return out
