"""The YAML inputs of ``hami simulate``: a cluster spec and a workload, validated with paths.

Cluster spec (``cluster.yaml``)::

    nodes:
      - name: a100-{i}            # "{i}" is replaced by 0..replicas-1 (else "-<i>" is appended)
        replicas: 4
        labels: {accelerator: nvidia-a100}
        annotations: {hami.io/device-cordon: ""}
        devices:
          - vendor: fake          # a vendor id from `hami plugins`
            type: NVIDIA-A100-SXM4-80GB
            count: 4              # devices in this group
            memory: 81920         # MiB per device
            cores: 100            # per device (100 = one device)
            split: 10             # concurrent tasks per device
            numaNodes: 2          # devices spread evenly over this many NUMA nodes
            unhealthy: [3]        # indexes within the group that are unhealthy
    pods: []                      # pods already running, each with `node:` (workload pod format)
    quotas:
      - namespace: research
        hard: {limits.hami.io/fake-gpumem: 200000}

Workload (``workload.yaml``)::

    pods:
      - name: llm-7b
        namespace: inference
        replicas: 12
        annotations: {hami.io/use-fake-type: "A100,H100"}
        nodeSelector: {accelerator: nvidia-a100}
        initContainers: []
        containers:
          - name: server
            resources: {limits: {hami.io/fake-gpu: 1, hami.io/fake-gpumem: 16000}}
            # or, shorter:  limits: {hami.io/fake-gpu: 1}

Every problem is reported at once, each as ``<file>: <path inside it>: <problem>; <fix>``.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from hami_core_fw import errors, models, plugins

#: the package resources of the built-in example
EXAMPLE_CLUSTER: Final = "cluster.yaml"
EXAMPLE_WORKLOAD: Final = "workload.yaml"


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


Quantity = int | str


class ResourcesSpec(_Spec):
    """Kubernetes-style ``resources``."""

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)


class ContainerSpec(_Spec):
    """A container: a name and its resources (``resources.limits`` or the ``limits`` shorthand)."""

    name: str = ""
    resources: ResourcesSpec = ResourcesSpec()
    limits: dict[str, Quantity] = Field(default_factory=dict)


class PodSpec(_Spec):
    """A pod template, replicated ``replicas`` times (names get ``-<i>`` when replicas > 1)."""

    name: str = Field(min_length=1)
    namespace: str = "default"
    replicas: int = Field(1, ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    init_containers: tuple[ContainerSpec, ...] = ()
    containers: tuple[ContainerSpec, ...] = ()
    #: existing pods only: the node the pod runs on
    node: str = ""


class DeviceGroupSpec(_Spec):
    """``count`` identical devices of one vendor on a node."""

    vendor: str = Field(min_length=1)
    type: str = Field(min_length=1)
    count: int = Field(1, ge=1)
    memory: int = Field(gt=0)
    cores: int = Field(100, gt=0)
    split: int = Field(10, ge=1)
    numa_nodes: int = Field(1, ge=1)
    mode: str = "hami-core"
    unhealthy: tuple[int, ...] = ()


class NodeSpec(_Spec):
    """A node template, replicated ``replicas`` times."""

    name: str = Field(min_length=1)
    replicas: int = Field(1, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    devices: tuple[DeviceGroupSpec, ...] = ()


class QuotaSpec(_Spec):
    """A namespace's ResourceQuota ``spec.hard`` (only ``limits.<memory|cores>`` act)."""

    namespace: str = Field(min_length=1)
    hard: dict[str, int] = Field(default_factory=dict)


class ClusterSpec(_Spec):
    """The cluster: nodes, pods already running, quotas."""

    nodes: tuple[NodeSpec, ...] = ()
    pods: tuple[PodSpec, ...] = ()
    quotas: tuple[QuotaSpec, ...] = ()


class WorkloadSpec(_Spec):
    """The pods to place, in order."""

    pods: tuple[PodSpec, ...] = ()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_FIXES: Final = {
    "missing": "add this key",
    "extra_forbidden": "remove it or check the spelling",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "string_type": "write a string (quote it)",
    "dict_type": "write a mapping of key: value",
    "tuple_type": "write a list",
    "list_type": "write a list",
    "model_type": "write a mapping of key: value",
    "model_attributes_type": "write a mapping of key: value",
    "greater_than": "use a larger number",
    "greater_than_equal": "use a larger number",
    "too_short": "give at least one entry",
    "string_too_short": "give a non-empty string",
}


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str"):  # the branch of a union; not part of the document path
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clip(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problems(err: pydantic.ValidationError) -> list[str]:
    seen: set[str] = set()
    out = []
    for e in err.errors():
        path = _path(e["loc"])
        if path in seen:  # a union reports each branch; one line per place is enough
            continue
        seen.add(path)
        fix = _FIXES.get(e["type"], "see the format at the top of hami_core_fw/simulate/spec.py")
        message = e["msg"][0].lower() + e["msg"][1:]
        got = "" if e["type"] == "missing" else f" (got {_clip(e.get('input'))})"
        out.append(f"{path}: {message}{got}; {fix}")
    return out


@dataclass(frozen=True, slots=True)
class Source:
    """Where a spec came from: a file path, or a built-in example."""

    name: str
    text: str


def read_source(path: str | None, example: str) -> Source:
    """The text of ``path``, or of the built-in example when ``path`` is None.

    :raises ConfigError: the file cannot be read
    """
    if path is None:
        resource = importlib.resources.files("hami_core_fw.simulate").joinpath("examples", example)
        return Source(name=f"(built-in) {example}", text=resource.read_text(encoding="utf-8"))
    try:
        return Source(name=path, text=Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise errors.ConfigError(
            [f"cannot read the file: {err.strerror}; check the path"], source=path
        ) from err


def _yaml(source: Source) -> object:
    try:
        return yaml.safe_load(source.text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(err, "problem", None) or str(err)
        raise errors.ConfigError(
            [f"{where}: invalid YAML: {problem}; fix the syntax (indentation, colons, quotes)"],
            source=source.name,
        ) from err


def parse_cluster(source: Source) -> ClusterSpec:
    """Validate a cluster spec.

    :raises ConfigError: every problem, with its path
    """
    data = _yaml(source)
    try:
        cluster = ClusterSpec.model_validate(data)
    except pydantic.ValidationError as err:
        raise errors.ConfigError(_problems(err), source=source.name) from err
    if not cluster.nodes:
        raise errors.ConfigError(
            ["nodes: no node is defined; add at least one"], source=source.name
        )
    return cluster


def parse_workload(source: Source) -> WorkloadSpec:
    """Validate a workload.

    :raises ConfigError: every problem, with its path
    """
    data = _yaml(source)
    try:
        workload = WorkloadSpec.model_validate(data)
    except pydantic.ValidationError as err:
        raise errors.ConfigError(_problems(err), source=source.name) from err
    if not workload.pods:
        raise errors.ConfigError(["pods: no pod is defined; add at least one"], source=source.name)
    return workload


# ----------------------------------------------------------------------------------------------
# Building the core's inputs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimNode:
    """One concrete node: its view and its devices per vendor CommonWord."""

    view: models.NodeView
    devices: Mapping[str, tuple[models.DeviceInfo, ...]]


@dataclass(frozen=True, slots=True)
class SimPod:
    """One concrete pod (a replica of a template), with the index of its template."""

    view: models.PodView
    template: int
    node_selector: Mapping[str, str]
    node: str = ""


def _expand(name: str, i: int, replicas: int) -> str:
    if "{i}" in name:
        return name.replace("{i}", str(i))
    return f"{name}-{i}" if replicas > 1 else name


def build_nodes(spec: ClusterSpec, host: plugins.PluginHost) -> tuple[list[SimNode], list[str]]:
    """Concrete nodes, and the problems found (unknown vendors, duplicate names, bad indexes)."""
    problems: list[str] = []
    nodes: list[SimNode] = []
    seen: set[str] = set()
    installed = ", ".join(sorted(host.vendors)) or "none"
    for n, node in enumerate(spec.nodes):
        for g, group in enumerate(node.devices):
            if group.vendor not in host.vendors:
                problems.append(
                    f"nodes[{n}].devices[{g}].vendor: vendor {group.vendor!r} is not installed "
                    f"(installed: {installed}); install its plugin (see `hami plugins`) or use an "
                    "installed vendor id"
                )
            bad = [u for u in group.unhealthy if not 0 <= u < group.count]
            if bad:
                problems.append(
                    f"nodes[{n}].devices[{g}].unhealthy: indexes {bad} are outside "
                    f"0..{group.count - 1}; list positions within this group"
                )
        for i in range(node.replicas):
            name = _expand(node.name, i, node.replicas)
            if name in seen:
                problems.append(
                    f"nodes[{n}].name: node {name!r} is defined twice; give every node a unique "
                    "name (use {i} with replicas)"
                )
            seen.add(name)
            devices: dict[str, list[models.DeviceInfo]] = {}
            index: dict[str, int] = {}
            for group in node.devices:
                v = host.vendors.get(group.vendor)
                if v is None:
                    continue
                cw = v.common_word
                per_numa = -(-group.count // group.numa_nodes)
                for k in range(group.count):
                    idx = index.get(cw, 0)
                    index[cw] = idx + 1
                    devices.setdefault(cw, []).append(
                        models.DeviceInfo(
                            id=f"{name}-{group.vendor}-{idx}",
                            index=idx,
                            count=group.split,
                            devmem=group.memory,
                            devcore=group.cores,
                            type=group.type,
                            numa=k // per_numa,
                            mode=group.mode,
                            health=k not in group.unhealthy,
                            vendor=cw,
                        )
                    )
            view = models.NodeView(
                name=name, annotations=dict(node.annotations), labels=dict(node.labels)
            )
            nodes.append(SimNode(view, {cw: tuple(d) for cw, d in devices.items()}))
    return nodes, problems


def _container(c: ContainerSpec, k: int, *, init: bool) -> models.ContainerView:
    limits = {**{n: str(v) for n, v in c.resources.limits.items()}}
    limits.update({n: str(v) for n, v in c.limits.items()})
    requests = {n: str(v) for n, v in c.resources.requests.items()}
    name = c.name or (f"init-{k}" if init else f"c{k}")
    return models.ContainerView(name=name, limits=limits, requests=requests, init=init)


def build_pods(
    pods: Sequence[PodSpec], key: str, *, existing: bool, node_names: set[str]
) -> tuple[list[SimPod], list[str]]:
    """Concrete pods (replicas expanded, in order), and the problems found."""
    problems: list[str] = []
    out: list[SimPod] = []
    seen: set[str] = set()
    for t, p in enumerate(pods):
        if existing and not p.node:
            problems.append(
                f"{key}[{t}].node: a running pod needs the node it runs on; add `node: <name>`"
            )
        elif existing and p.node not in node_names:
            problems.append(
                f"{key}[{t}].node: unknown node {p.node!r}; use a node name of the cluster spec"
            )
        elif not existing and p.node:
            problems.append(
                f"{key}[{t}].node: workload pods are placed by the scheduler; remove `node` "
                "(or move the pod to the cluster spec's `pods`)"
            )
        if not p.containers:
            problems.append(f"{key}[{t}].containers: no container; add at least one")
        inits = tuple(_container(c, k, init=True) for k, c in enumerate(p.init_containers))
        apps = tuple(_container(c, k, init=False) for k, c in enumerate(p.containers))
        for i in range(p.replicas):
            name = _expand(p.name, i, p.replicas)
            full = f"{p.namespace}/{name}"
            if full in seen:
                problems.append(
                    f"{key}[{t}].name: pod {full!r} is defined twice; give every pod a unique name"
                )
            seen.add(full)
            view = models.PodView(
                namespace=p.namespace,
                name=name,
                uid=f"sim-{key}-{p.namespace}-{name}",
                annotations=dict(p.annotations),
                labels=dict(p.labels),
                init_containers=inits,
                containers=apps,
            )
            out.append(SimPod(view, t, dict(p.node_selector), p.node))
    return out, problems
