"""The scheduler-extender protocol: request validation and ``filter`` (k8s-protocols.md 1).

Wire types are Go structs without JSON tags, so every key is PascalCase (``Pod``, ``NodeNames``,
``FailedNodes``, ``Error``); embedded Kubernetes objects keep their lowerCamel JSON. Every problem
is answered in the ``Error`` field with a message naming the offending field and value, never by
an exception escaping to the HTTP layer.

:class:`Extender.filter` answers from memory only (the cluster caches), so a filter call never
waits on the API server: with ``NodeNames`` (``nodeCacheCapable``) it runs the scheduling core on
the cached state, reserves the chosen devices and records HAMi's ``FilteringSucceed`` /
``FilteringFailed`` events in the background; with full ``Nodes`` (a simulation, e.g. Cluster
Autoscaler) it builds device lists from those nodes' annotations alone — no usage, no quota, no
events, no reservation — and answers with the best ``Nodes`` item (hami-compat.md 4.10).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hami_core_fw import config, models, plugins
from hami_core_fw.k8s import events
from hami_core_fw.scheduler import cluster, core, registry, state

logger = logging.getLogger(__name__)

#: the request body limit of HAMi's routes (4.1)
MAX_BODY_BYTES: Final = 1 << 20

Json = dict[str, Any]

FILTERING_FAILED: Final = "FilteringFailed"
FILTERING_SUCCEED: Final = "FilteringSucceed"


class BadRequest(ValueError):
    """The request body is not a valid extender document; the message says what and where."""


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True, slots=True)
class FilterArgs:
    """A validated ``ExtenderArgs``."""

    pod_json: Json
    pod: models.PodView
    node_names: tuple[str, ...] | None
    nodes: tuple[Json, ...] | None


@dataclass(frozen=True, slots=True)
class BindingArgs:
    """A validated ``ExtenderBindingArgs``."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


def _field(doc: Mapping[str, object], name: str) -> object:
    """Go decodes keys case-insensitively: accept ``nodeNames`` for ``NodeNames``."""
    if name in doc:
        return doc[name]
    lower = name.lower()
    for key, value in doc.items():
        if key.lower() == lower:
            return value
    return None


def parse_filter_args(doc: object) -> FilterArgs:
    """Validate an ``ExtenderArgs`` document.

    :raises BadRequest: wrong shape, with the field and the type found
    """
    if not isinstance(doc, dict):
        raise BadRequest(f"ExtenderArgs must be a JSON object, got {_type_name(doc)}")
    pod = _field(doc, "Pod")
    if not isinstance(pod, dict):
        raise BadRequest(f"ExtenderArgs.Pod must be a Pod object, got {_type_name(pod)}")
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        raise BadRequest(f"Pod.metadata must be an object, got {_type_name(meta)}")
    for key in ("name", "namespace", "uid"):
        if not isinstance(meta.get(key, ""), str):
            raise BadRequest(f"Pod.metadata.{key} must be a string, got {_type_name(meta[key])}")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise BadRequest(f"Pod.spec must be an object, got {_type_name(spec)}")
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
            raise BadRequest(f"Pod.spec.{key} must be a list of objects")
        for c in containers:
            resources = c.get("resources")
            if resources is None:
                continue
            if not isinstance(resources, dict):
                raise BadRequest(f"container {c.get('name')!r}: resources must be an object")
            for part in ("limits", "requests"):
                section = resources.get(part)
                if section is not None and not isinstance(section, dict):
                    raise BadRequest(
                        f"container {c.get('name')!r}: resources.{part} must be an object, "
                        f"got {_type_name(section)}"
                    )
    names = _field(doc, "NodeNames")
    nodes = _field(doc, "Nodes")
    node_names: tuple[str, ...] | None = None
    node_items: tuple[Json, ...] | None = None
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest(
                f"ExtenderArgs.NodeNames must be a list of strings or null, got {names!r:.200}"
            )
        node_names = tuple(names)
    if nodes is not None:
        items = nodes.get("items") if isinstance(nodes, dict) else None
        if not isinstance(items, list) or not all(isinstance(n, dict) for n in items):
            raise BadRequest("ExtenderArgs.Nodes must be a NodeList object with an items list")
        node_items = tuple(items)
    if node_names is None and node_items is None:
        raise BadRequest("ExtenderArgs has neither NodeNames nor Nodes")
    return FilterArgs(
        pod_json=pod,
        pod=models.PodView.from_manifest(pod),
        node_names=node_names,
        nodes=node_items,
    )


def parse_binding_args(doc: object) -> BindingArgs:
    """Validate an ``ExtenderBindingArgs`` document.

    :raises BadRequest: a field is missing or not a string
    """
    if not isinstance(doc, dict):
        raise BadRequest(f"ExtenderBindingArgs must be a JSON object, got {_type_name(doc)}")
    values: dict[str, str] = {}
    for key in ("PodName", "PodNamespace", "PodUID", "Node"):
        value = _field(doc, key)
        if not isinstance(value, str) or (key != "PodUID" and not value):
            what = "a string" if key == "PodUID" else "a non-empty string"
            raise BadRequest(f"ExtenderBindingArgs.{key} must be {what}, got {value!r:.100}")
        values[key] = value
    return BindingArgs(
        pod_name=values["PodName"],
        pod_namespace=values["PodNamespace"],
        pod_uid=values["PodUID"],
        node=values["Node"],
    )


def filter_result(
    *,
    node_names: Sequence[str] | None = None,
    nodes: Sequence[Json] | None = None,
    failed: Mapping[str, str] | None = None,
    unresolvable: Mapping[str, str] | None = None,
    error: str = "",
) -> Json:
    """An ``ExtenderFilterResult`` with every key present."""
    return {
        "Nodes": None
        if nodes is None
        else {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": list(nodes)},
        "NodeNames": None if node_names is None else list(node_names),
        "FailedNodes": dict(failed or {}),
        "FailedAndUnresolvableNodes": dict(unresolvable or {}),
        "Error": error,
    }


def failure_messages(failed: Mapping[str, str]) -> list[str]:
    """HAMi's ``FilteringFailed`` messages: ``<n> nodes <Reason>(<n1>,<n2>)`` per reason."""
    return [
        f"{len(nodes)} nodes {reason}({','.join(nodes)})"
        for reason, nodes in core.summarize_failures(failed).items()
    ]


def success_message(node: str, failed: Mapping[str, str], scores: Mapping[str, float]) -> str:
    """HAMi's ``FilteringSucceed`` message."""
    fit = ",".join(f"{n}:{scores[n]:g}" for n in sorted(scores))
    return f"find fit node({node}), {len(failed)} nodes not fit, {len(scores)} nodes fit({fit})"


FilterObserver = Callable[[str, Mapping[str, str]], None]


class Extender:
    """``/filter`` over the cluster state.

    :param observe: called with (outcome, failed nodes) after every filter (metrics)
    """

    def __init__(
        self,
        cl: cluster.Cluster,
        host: plugins.PluginHost,
        settings: config.SchedulerSettings,
        recorder: events.EventRecorder,
        *,
        observe: FilterObserver | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cl
        self.host = host
        self.settings = settings
        self.recorder = recorder
        self._observe = observe
        self._now = now

    def filter(self, args: FilterArgs) -> Json:
        """Answer one filter call from memory."""
        if args.node_names is None:
            return self._simulate(args)
        return self._filter_names(args, args.node_names)

    def _filter_names(self, args: FilterArgs, names: Sequence[str]) -> Json:
        pod = args.pod
        if not pod.uid:
            return filter_result(error="Pod.metadata.uid is empty; the extender needs the pod uid")
        decision = core.filter_pod(
            self.cluster.state,
            self.host,
            pod,
            names,
            node_policy=self.settings.node_scheduler_policy,
            gpu_policy=self.settings.gpu_scheduler_policy,
            exhaustive=self.settings.exhaustive_filter,
        )
        if decision.not_ours:
            return filter_result(node_names=names)
        if decision.error:
            self._note("error", {})
            return filter_result(error=f"pod {pod.key}: {decision.error}")
        failed = {n: m for n, m in decision.failed.items() if m != core.NODE_UNREGISTERED}
        unresolvable = {n: m for n, m in decision.failed.items() if m == core.NODE_UNREGISTERED}
        ref = events.ObjectRef(pod.namespace, pod.name, pod.uid)
        if decision.node is None:
            for message in failure_messages(decision.failed):
                self.recorder.record(ref, events.WARNING, FILTERING_FAILED, message)
            self.recorder.record(
                ref,
                events.WARNING,
                FILTERING_FAILED,
                f"no available node, {len(decision.failed)} nodes do not meet",
            )
            self._note("unschedulable", decision.failed)
            return filter_result(node_names=[], failed=failed, unresolvable=unresolvable)
        self.cluster.reserve(pod, decision.node, decision.devices, now_unix=int(self._now()))
        self.recorder.record(
            ref,
            events.NORMAL,
            FILTERING_SUCCEED,
            success_message(decision.node, decision.failed, decision.scores),
        )
        self._note("success", decision.failed)
        return filter_result(node_names=[decision.node], failed=failed, unresolvable=unresolvable)

    def _simulate(self, args: FilterArgs) -> Json:
        """Full-Nodes path: devices from the given nodes' annotations only (4.10)."""
        items = args.nodes or ()
        sim = state.ClusterState(self.host, fit_cache=False)
        reg = registry.Registry(self.host, selector=self.settings.node_label_selector)
        by_name: dict[str, Json] = {}
        for item in items:
            view = models.NodeView.from_manifest(item)
            if not view.name:
                continue
            by_name[view.name] = item
            devices = reg.evaluate(view).devices
            if devices:
                sim.set_node(view, devices)
        decision = core.filter_pod(
            sim,
            self.host,
            args.pod,
            list(by_name),
            node_policy=self.settings.node_scheduler_policy,
            gpu_policy=self.settings.gpu_scheduler_policy,
        )
        if decision.not_ours:
            return filter_result(nodes=items)
        if decision.error:
            return filter_result(error=f"pod {args.pod.key}: {decision.error}")
        chosen = [by_name[decision.node]] if decision.node is not None else []
        return filter_result(nodes=chosen, failed=decision.failed)

    def _note(self, outcome: str, failed: Mapping[str, str]) -> None:
        if self._observe is not None:
            self._observe(outcome, failed)
