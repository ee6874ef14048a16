"""The scheduling core: choose one node and the devices of every container of a pod. Pure.

:func:`filter_pod` is HAMi's ``Filter`` (hami-compat.md 4.4-4.9) without the I/O: the extender,
``hami simulate`` and the benchmarks run exactly this code. Per candidate node:

1. ``hami_node_filter`` plugins may veto the node;
2. every init container is fitted on the node's current usage (they run one at a time), then the
   app containers cumulatively (4.6); per container and vendor (vendors sorted, Q22) the vendor's
   devices are scored for the request (4.8, Q2 fixed), ordered by the GPU policy and handed to the
   vendor's ``fit``, which walks them from the end and applies every fit rule (4.7);
3. a fitting node scores HAMi's default node score of its usage before the pod (4.9) plus each
   vendor's ``score_node`` bonus, then ``hami_node_score`` plugins adjust it;
4. the node the node policy orders last wins (ties: smallest node name, Q21).

The chosen devices have one entry per container of the pod, init containers first, empty entries
included, for every vendor the pod uses (Q1 fixed).

Per-node fit results are memoised in the state, keyed by the node's generation and a signature of
everything the fit reads; the memo is exact, because any change of the node or of the namespace's
quota invalidates it. For vendors built on :class:`~hami_core_fw.generic.SharedDeviceVendor` whose
fit is not overridden, the signature holds only the annotations that fit reads (UUID lists reduced
to the node's own devices); for any other vendor it holds the pod's namespace, annotations and
labels, so such a vendor's fit must depend on nothing else of the pod (not its name or uid).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

from hami_core_fw import _names, codec, errors, generic, models, plugins, quota, vendor
from hami_core_fw.scheduler import policy
from hami_core_fw.scheduler import state as cluster_state

NODE_UNREGISTERED: Final = "node unregistered"

_QUOTA_HOOK: Final = "hami_quota_check"
_FILTER_HOOK: Final = "hami_node_filter"
_SCORE_HOOK: Final = "hami_node_score"
_MIG_MODE: Final = "mig"

#: one container's requests: vendor CommonWord -> request
ContainerRequests = dict[str, models.DeviceRequest]


@dataclass(frozen=True, slots=True)
class FilterDecision:
    """The outcome of :func:`filter_pod`.

    :param node: the chosen node, or None
    :param devices: vendor CommonWord -> one entry per container (init first, empty entries
        included) for every vendor the pod uses; empty when no node was chosen
    :param failed: node -> why it does not fit (``"n/total Reason, ..."``,
        ``NodeInsufficientDevice``, ``node unregistered`` or a plugin's veto)
    :param scores: fitting node -> its score
    :param error: set when the pod itself is invalid (bad request value, bad scoring weights);
        no node was evaluated
    :param not_ours: the pod requests no device of any vendor: the extender answers with the
        candidates unchanged
    :param node_policy: the node policy applied (annotation or default)
    :param gpu_policy: the GPU policy applied (annotation or default)
    """

    node: str | None
    devices: models.PodDevices = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    error: str = ""
    not_ours: bool = False
    node_policy: str = ""
    gpu_policy: str = ""


def pod_requests(host: plugins.PluginHost, pod: models.PodView) -> list[ContainerRequests]:
    """Every container's requests, init containers first (hami-compat.md 2.3).

    Each entry maps the CommonWord of every vendor the container uses (sorted) to its request;
    containers that use no vendor get an empty mapping.

    :raises InvalidRequest: a resource value a vendor cannot honour
    """
    vendors = sorted(host.vendors.values(), key=lambda v: v.common_word)
    out: list[ContainerRequests] = []
    for container in pod.all_containers:
        reqs: ContainerRequests = {}
        for v in vendors:
            request = v.request_for(container)
            if request is not None and request.nums > 0:
                reqs[v.common_word] = request
        out.append(reqs)
    return out


# ----------------------------------------------------------------------------------------------
# The plan: everything about the pod that does not depend on the node
# ----------------------------------------------------------------------------------------------


def _plain_generic(v: vendor.DeviceVendor) -> bool:
    """Whether ``v`` fits exactly as :class:`SharedDeviceVendor` does (its signature is known)."""
    if not isinstance(v, generic.SharedDeviceVendor):
        return False
    cls, base = type(v), generic.SharedDeviceVendor
    return all(
        getattr(cls, name) is getattr(base, name)
        for name in ("fit", "numa_bind", "_pod_filters", "_quota_ok")
    )


@dataclass(slots=True)
class _VendorPlan:
    vendor: vendor.DeviceVendor
    sort_key: policy.SortKey
    numa_bind: bool
    mig_allowed: bool
    neutral: bool
    plain: bool
    # score_node is SharedDeviceVendor's, which is always 0: not called
    zero_bonus: bool
    quota_fits: Callable[[int, int], bool] | None = None
    # generic vendors only: the pod's UUID allow (None = no list) and deny lists
    uuid_allow: frozenset[str] | None = None
    uuid_deny: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Plan:
    pod: models.PodView
    containers: list[tuple[tuple[str, models.DeviceRequest], ...]]
    n_init: int
    last_app: int
    vendors: dict[str, _VendorPlan]
    gpu_policy: str
    gpu_tokens: tuple[str, ...]
    node_policy: str
    weights: codec.ScoringWeights


#: a node's chosen devices as nested tuples of plain values: per vendor ``(cw, entries)``, each
#: entry a tuple of ``(uuid, type, usedmem, usedcores)``. The memo keeps these rather than model
#: objects: the garbage collector stops tracking tuples of plain values, so a memo of thousands of
#: results does not make full collections (hundreds of ms) land in filter calls.
_Packed = tuple[tuple[str, tuple[tuple[tuple[str, str, int, int], ...], ...]], ...]
#: the outcome on one node: the failure message, or (vendor bonus, packed devices)
_Outcome = str | tuple[float, _Packed]


def _pack(devices: Mapping[str, models.PodSingleDevices]) -> _Packed:
    return tuple(
        (cw, tuple(tuple((d.uuid, d.type, d.usedmem, d.usedcores) for d in e) for e in entries))
        for cw, entries in devices.items()
    )


def _unpack(packed: _Packed) -> dict[str, models.PodSingleDevices]:
    return {
        cw: tuple(tuple(models.ContainerDevice(*d) for d in e) for e in entries)
        for cw, entries in packed
    }


def _annotation(pod: models.PodView, key: str) -> str | None:
    return pod.annotations.get(key) if key else None


def _quota_check(
    host: plugins.PluginHost,
    namespace: str,
    resources: models.ResourceNames,
    ledger: quota.QuotaLedger,
) -> Callable[[int, int], bool]:
    def fits(memory: int, cores: int) -> bool:
        return host.quota_check(
            namespace=namespace, resources=resources, memory=memory, cores=cores, ledger=ledger
        )

    return fits


def _quota_limited(ledger: quota.QuotaLedger, namespace: str, v: vendor.DeviceVendor) -> bool:
    for resource in (v.resources.memory, v.resources.cores):
        if resource:
            entry = ledger.entry(namespace, resource)
            if entry is not None and entry.limit_set:
                return True
    return False


def _make_plan(
    host: plugins.PluginHost,
    pod: models.PodView,
    reqs: Sequence[ContainerRequests],
    node_policy: str,
    gpu_policy: str,
    weights: codec.ScoringWeights,
    ledger: quota.QuotaLedger,
    third_party_quota: bool,
) -> _Plan:
    tokens = policy.policy_tokens(gpu_policy)
    used = sorted({cw for c in reqs for cw in c})
    vendors: dict[str, _VendorPlan] = {}
    for cw in used:
        v = host.vendor_by_common_word(cw)
        if v is None:  # pragma: no cover - requests come from registered vendors
            raise errors.PermanentError(f"no vendor registered for CommonWord {cw!r}")
        numa_bind = v.numa_bind(pod)
        mode = _annotation(pod, v.keys.vgpu_mode)
        vp = _VendorPlan(
            vendor=v,
            sort_key=policy.device_sort_key(gpu_policy, numa_bind),
            numa_bind=numa_bind,
            mig_allowed=mode is None or _MIG_MODE in mode,
            neutral=bool(getattr(v, "policy_neutral", False)),
            plain=_plain_generic(v),
            zero_bonus=isinstance(v, generic.SharedDeviceVendor)
            and type(v).score_node is generic.SharedDeviceVendor.score_node,
        )
        if third_party_quota or _quota_limited(ledger, pod.namespace, v):
            vp.quota_fits = _quota_check(host, pod.namespace, v.resources, ledger)
        if vp.plain:
            allow = codec.split_list(_annotation(pod, v.keys.use_uuid))
            vp.uuid_allow = frozenset(allow) if allow else None
            vp.uuid_deny = frozenset(codec.split_list(_annotation(pod, v.keys.nouse_uuid)))
        vendors[cw] = vp
    n_init = len(pod.init_containers)
    containers = [tuple(sorted(c.items())) for c in reqs]
    last_app = max((i for i, c in enumerate(containers) if c and i >= n_init), default=-1)
    return _Plan(
        pod=pod,
        containers=containers,
        n_init=n_init,
        last_app=last_app,
        vendors=vendors,
        gpu_policy=gpu_policy,
        gpu_tokens=tokens,
        node_policy=node_policy,
        weights=weights,
    )


def _signature(plan: _Plan, quota_token: object) -> object:
    """Everything besides the node that a fit result depends on (see the module docstring)."""
    pod = plan.pod
    parts: list[object] = []
    for cw, vp in plan.vendors.items():
        if vp.plain:
            keys = vp.vendor.keys
            parts.append(
                (
                    cw,
                    vp.numa_bind,
                    _annotation(pod, keys.use_type),
                    _annotation(pod, keys.nouse_type),
                    _annotation(pod, keys.vgpu_mode),
                )
            )
        else:
            parts.append(
                (
                    cw,
                    pod.namespace,
                    frozenset(pod.annotations.items()),
                    frozenset(pod.labels.items()),
                )
            )
    return (
        tuple(plan.containers),
        plan.n_init,
        plan.gpu_policy,
        plan.node_policy,
        plan.weights,
        tuple(parts),
        quota_token,
    )


# ----------------------------------------------------------------------------------------------
# Fitting one node
# ----------------------------------------------------------------------------------------------


def _charge(
    records: list[models.DeviceUsage], chosen: Sequence[models.ContainerDevice]
) -> list[models.DeviceUsage]:
    """A copy of ``records`` where the chosen devices carry one more use."""
    out = list(records)
    for dev in chosen:
        for i, rec in enumerate(out):
            if rec.id == dev.uuid:
                copy = rec.copy()
                copy.add(dev)
                out[i] = copy
                break
    return out


def _is_mig_request(vp: _VendorPlan, devices: Sequence[models.DeviceUsage]) -> bool:
    return vp.mig_allowed and any(d.mode == _MIG_MODE for d in devices)


def _evaluate(entry: cluster_state.NodeEntry, plan: _Plan) -> _Outcome:
    """Fit every container of the pod on one node (hami-compat.md 4.6)."""
    base = entry.devices
    app = base
    allocated: dict[str, list[models.ContainerDevices]] = {cw: [] for cw in plan.vendors}
    for ci, creq in enumerate(plan.containers):
        if not creq:
            for entries in allocated.values():
                entries.append(())
            continue
        is_init = ci < plan.n_init
        devices = base if is_init else app
        chosen: dict[str, models.ContainerDevices] = {}
        for cw, request in creq:
            vp = plan.vendors[cw]
            candidates = devices.get(cw, ())
            if request.nums > len(candidates) and not _is_mig_request(vp, candidates):
                return models.Reason.NODE_INSUFFICIENT_DEVICE.value
            ordered = policy.order_devices_by(candidates, request, vp.sort_key, plan.weights)
            ctx = vendor.FitContext(
                pod=plan.pod,
                node=entry.view,
                gpu_policy=plan.gpu_tokens,
                container_index=ci,
                n_init=plan.n_init,
                allocated=tuple(allocated[cw]),
                quota_fits=vp.quota_fits,
            )
            result = vp.vendor.fit(ordered, request, ctx)
            if not result.ok:
                message = codec.format_reasons(result.reasons, result.total)
                return message or models.Reason.NODE_UNFIT_POD.value
            chosen[cw] = result.devices
        for cw, entries in allocated.items():
            entries.append(chosen.get(cw, ()))
        if not is_init and ci < plan.last_app:
            # later app containers run beside this one: they see its usage
            app = dict(app)
            for cw, devs in chosen.items():
                app[cw] = _charge(app[cw], devs)
    devices_out = {cw: tuple(entries) for cw, entries in allocated.items()}
    bonus = 0.0
    for cw, per_container in devices_out.items():
        vp = plan.vendors[cw]
        if vp.zero_bonus:
            continue
        value = vp.vendor.score_node(entry.view, per_container, entry.flat, plan.node_policy)
        if vp.neutral:
            value *= -10000 if plan.node_policy == policy.SPREAD else 10000
        bonus += value
    return (bonus, _pack(devices_out))


# ----------------------------------------------------------------------------------------------
# Filter
# ----------------------------------------------------------------------------------------------


def _hooked(host: plugins.PluginHost, hook: str, *, external_only: bool = False) -> bool:
    return any(
        hook in info.hooks and not (external_only and info.builtin) for info in host.plugins()
    )


def _without(
    st: cluster_state.ClusterState, record: cluster_state.PodRecord
) -> tuple[cluster_state.NodeEntry | None, quota.QuotaLedger]:
    """The pod's node and the quota ledger as if its earlier reservation were gone (4.4)."""
    entry = st.entry(record.node)
    detached = None
    if entry is not None:
        detached = entry.detached_copy()
        detached._apply(record.collapsed, -1)
        detached.score = policy.node_score_from_sums(
            detached.used,
            detached.count,
            detached.usedcores,
            detached.totalcore,
            detached.usedmem,
            detached.totalmem,
        )
    ledger = quota.QuotaLedger(entries=dict(st.quota.entries))
    namespace = record.pod.namespace
    if record.quota_usage and namespace in ledger.entries:
        ledger.entries[namespace] = {
            k: quota.QuotaEntry(e.used, e.limit, e.limit_set)
            for k, e in ledger.entries[namespace].items()
        }
        for resource, amount in record.quota_usage:
            ledger.add_usage(namespace, resource, -amount)
    return detached, ledger


def filter_pod(
    state: cluster_state.ClusterState,
    host: plugins.PluginHost,
    pod: models.PodView,
    candidates: Sequence[str],
    *,
    node_policy: str = policy.DEFAULT_NODE_POLICY,
    gpu_policy: str = policy.DEFAULT_GPU_POLICY,
    exhaustive: bool = True,
) -> FilterDecision:
    """Choose a node among ``candidates`` and the devices of every container. No I/O.

    The pod's annotations ``hami.io/node-scheduler-policy``, ``hami.io/gpu-scheduler-policy`` and
    ``hami.io/device-scoring-weights`` override the defaults. A reservation the pod already holds
    is ignored (as if released first, 4.4); the state is not changed: the caller reserves the
    result with :meth:`ClusterState.set_pod`.

    :param exhaustive: fit every candidate, so that ``failed`` and ``scores`` cover every node
        (what HAMi's events report). False stops at the first fitting node in score order when a
        node's score is known before fitting it (no vendor bonus, no ``hami_node_score`` plugin):
        the same node and devices, but ``failed`` then lists only the nodes tried before it and
        ``scores`` only the chosen node. When no node fits, every node was tried either way.

    :returns: the decision; ``error`` is set (and no node evaluated) for an invalid request value
        or malformed scoring weights; ``not_ours`` for a pod that requests no vendor's devices
    """
    try:
        reqs = pod_requests(host, pod)
    except errors.InvalidRequest as err:
        return FilterDecision(node=None, error=str(err))
    if not any(reqs):
        return FilterDecision(node=None, not_ours=True)
    annotations = pod.annotations
    node_pol = annotations.get(_names.ANNOTATION_NODE_POLICY, "").strip() or node_policy
    gpu_pol = annotations.get(_names.ANNOTATION_GPU_POLICY, "").strip() or gpu_policy
    weights = policy.DEFAULT_WEIGHTS
    raw_weights = annotations.get(_names.ANNOTATION_SCORING_WEIGHTS)
    if raw_weights is not None:
        try:
            weights = codec.decode_scoring_weights(_names.ANNOTATION_SCORING_WEIGHTS, raw_weights)
        except errors.CodecError as err:
            return FilterDecision(
                node=None, error=str(err), node_policy=node_pol, gpu_policy=gpu_pol
            )

    record = state.reservation(pod.uid) if pod.uid else None
    own_entry: cluster_state.NodeEntry | None = None
    ledger = state.quota
    if record is not None:
        own_entry, ledger = _without(state, record)
    third_party_quota = _hooked(host, _QUOTA_HOOK, external_only=True)
    plan = _make_plan(host, pod, reqs, node_pol, gpu_pol, weights, ledger, third_party_quota)

    memo = state.fit_cache and record is None
    sid = 0
    per_node: list[_VendorPlan] = []
    if memo:
        quota_active = any(vp.quota_fits is not None for vp in plan.vendors.values())
        token = (pod.namespace, state.quota_generation(pod.namespace)) if quota_active else None
        sid = state.signature_id(_signature(plan, token))
        per_node = [vp for vp in plan.vendors.values() if vp.uuid_allow is not None or vp.uuid_deny]
    veto = _hooked(host, _FILTER_HOOK)
    adjust = _hooked(host, _SCORE_HOOK)

    def judge(entry: cluster_state.NodeEntry) -> _Outcome:
        """The pod on one node: a plugin veto, or the (memoised) fit of every container."""
        if veto:
            reasons = host.node_filter(pod=pod, node=entry.view)
            if reasons:
                return ", ".join(reasons)
        if not memo:
            return _evaluate(entry, plan)
        key: object = sid
        if per_node:
            ids = entry.ids
            key = (
                sid,
                tuple(
                    (
                        None if vp.uuid_allow is None else tuple(sorted(vp.uuid_allow & ids)),
                        tuple(sorted(vp.uuid_deny & ids)),
                    )
                    for vp in per_node
                ),
            )
        cached = entry.memo.get(key)
        if cached is not None:
            return cast("_Outcome", cached)
        result = _evaluate(entry, plan)
        if len(entry.memo) >= cluster_state.MEMO_PER_NODE:
            del entry.memo[next(iter(entry.memo))]
        entry.memo[key] = result
        return result

    failed: dict[str, str] = {}
    scores: dict[str, float] = {}
    entries: list[tuple[str, cluster_state.NodeEntry]] = []
    for name in candidates:
        entry = own_entry if record is not None and name == record.node else state.entry(name)
        if entry is None:
            failed[name] = NODE_UNREGISTERED
        else:
            entries.append((name, entry))

    if not exhaustive and not adjust and all(vp.zero_bonus for vp in plan.vendors.values()):
        # a node's score is known before fitting it: try the nodes best first, stop at the
        # first fit; it is the node the exhaustive walk would choose (same score, same tie-break)
        sign = 1.0 if node_pol.strip() == policy.SPREAD else -1.0
        by_name = dict(entries)
        # a heap, not a sort: usually only the first few nodes are tried
        heap = [(sign * e.score, name) for name, e in by_name.items()]
        heapq.heapify(heap)
        # a node without any UUID of a plain vendor's allow list cannot fit: it is judged (for
        # its exact reasons) only if no node fits at all
        pinned = [vp.uuid_allow for vp in plan.vendors.values() if vp.uuid_allow is not None]
        hopeless: list[str] = []
        while heap:
            name = heapq.heappop(heap)[1]
            entry = by_name[name]
            if pinned and any(not (allow & entry.ids) for allow in pinned):
                hopeless.append(name)
                continue
            result = judge(entry)
            if not isinstance(result, str):
                return FilterDecision(
                    node=name,
                    devices=_unpack(result[1]),
                    failed=failed,
                    scores={name: entry.score},
                    node_policy=node_pol,
                    gpu_policy=gpu_pol,
                )
            failed[name] = result
        for name in hopeless:
            outcome = judge(by_name[name])
            if not isinstance(outcome, str):  # never expected; fitting wins over the shortcut
                return FilterDecision(
                    node=name,
                    devices=_unpack(outcome[1]),
                    failed=failed,
                    scores={name: by_name[name].score},
                    node_policy=node_pol,
                    gpu_policy=gpu_pol,
                )
            failed[name] = outcome
        return FilterDecision(node=None, failed=failed, node_policy=node_pol, gpu_policy=gpu_pol)

    fitting: dict[str, _Packed] = {}
    fast = memo and not veto and not per_node
    for name, entry in entries:
        # the memo hit inlined for the common case: this loop runs for every candidate node
        hit = entry.memo.get(sid) if fast else None
        outcome = judge(entry) if hit is None else cast("_Outcome", hit)
        if isinstance(outcome, str):
            failed[name] = outcome
            continue
        score = entry.score + outcome[0]
        if adjust:
            score = host.node_score(pod=pod, node=entry.view, score=score)
        scores[name] = score
        fitting[name] = outcome[1]
    best = policy.choose_node(scores, node_pol)
    return FilterDecision(
        node=best,
        devices=_unpack(fitting[best]) if best is not None else {},
        failed=failed,
        scores=scores,
        node_policy=node_pol,
        gpu_policy=gpu_pol,
    )


def summarize_failures(failed: Mapping[str, str]) -> dict[str, list[str]]:
    """Group failed nodes by reason code, as HAMi's ``FilteringFailed`` events do (4.12).

    ``"1/4 CardInsufficientMemory, 3/4 CardTypeMismatch"`` counts the node under both reasons;
    messages that are not reason strings (``node unregistered``, plugin vetoes) are kept whole.

    :returns: reason -> sorted node names, reasons sorted
    """
    groups: dict[str, list[str]] = {}
    for node, message in failed.items():
        try:
            parsed = codec.parse_reasons("failed", message)
            reasons = [r.value for r in parsed]
        except errors.CodecError:
            reasons = [message]
        for reason in reasons:
            groups.setdefault(reason, []).append(node)
    return {r: sorted(groups[r]) for r in sorted(groups)}
