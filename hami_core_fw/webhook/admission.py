"""The mutating admission webhook's decision for one AdmissionReview. Pure: no I/O.

HAMi's handler (hami-compat.md 6) with its quirks fixed (Q10, Q17-Q20):

1. the review must be ``admission.k8s.io/v1`` or ``v1beta1``; the answer uses the same version;
2. anything but a pod CREATE is allowed unchanged;
3. a pod without containers is denied; a pod that already carries the scheduler's allocation
   annotations (``hami.io/vgpu-node``, ``hami.io/bind-phase``, any vendor's allocated or
   to-allocate key) is **denied**: an allocation is only ever written by the scheduler's bind, and
   a forged one would be counted as real usage;
4. a pod assigned to another scheduler is allowed unchanged (``default-scheduler`` is taken over
   when ``force_overwrite_default_scheduler``);
5. every vendor mutates every container (init first) - defaults, whole-card ``cores: 100``,
   priority env, ``runtimeClassName``; input errors are denied with code 400 naming container,
   resource and value;
6. a **privileged** container that requests shared-device resources is denied, naming it;
7. a pod that uses shared devices gets ``spec.schedulerName``; one with ``spec.nodeName`` already
   set is denied (it would bypass the scheduler);
8. ``hami_admission_mutate`` plugins run; then the quota pre-check (5(a)) per vendor;
9. the answer carries the RFC 6902 difference between the original and the mutated pod,
   base64-encoded, or no patch at all when nothing changed.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch

from hami_core_fw import _names, errors, models, plugins, quota

logger = logging.getLogger(__name__)

Json = dict[str, Any]

API_V1: Final = "admission.k8s.io/v1"
API_V1BETA1: Final = "admission.k8s.io/v1beta1"
#: NVIDIA's allocation keys (hami-compat.md 3.3), forbidden on incoming pods even when the NVIDIA
#: plugin is not installed in this scheduler: HAMi components elsewhere would still read them
NVIDIA_ALLOCATED: Final = "hami.io/vgpu-devices-allocated"
NVIDIA_TO_ALLOCATE: Final = "hami.io/vgpu-devices-to-allocate"


class BadReview(ValueError):
    """The body is not an AdmissionReview we can answer (no uid to answer to)."""


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """What the webhook is configured with.

    :param scheduler_name: written into pods that use shared devices (empty = leave it)
    :param force_overwrite_default_scheduler: also take over pods of ``default-scheduler``
    """

    scheduler_name: str = _names.DEFAULT_SCHEDULER_NAME
    force_overwrite_default_scheduler: bool = True


def forbidden_annotations(host: plugins.PluginHost) -> frozenset[str]:
    """Annotation keys only the scheduler may write: a pod arriving with one is denied."""
    keys = {
        _names.ANNOTATION_VGPU_NODE,
        _names.ANNOTATION_BIND_PHASE,
        NVIDIA_ALLOCATED,
        NVIDIA_TO_ALLOCATE,
    }
    for v in host.vendors.values():
        keys.update(k for k in (v.keys.allocated, v.keys.to_allocate) if k)
    return frozenset(keys)


def parse_review(doc: object) -> tuple[str, Json]:
    """The apiVersion and the ``request`` of an AdmissionReview.

    :raises BadReview: not an AdmissionReview v1/v1beta1 with a request uid
    """
    if not isinstance(doc, dict):
        raise BadReview(f"expected an AdmissionReview object, got {type(doc).__name__}")
    version = doc.get("apiVersion")
    if version not in (API_V1, API_V1BETA1):
        raise BadReview(
            f"apiVersion {version!r} is not supported; send {API_V1!r} or {API_V1BETA1!r}"
        )
    if doc.get("kind") != "AdmissionReview":
        raise BadReview(f"kind {doc.get('kind')!r} is not 'AdmissionReview'")
    request = doc.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("the AdmissionReview has no request with a uid")
    return str(version), request


def review(
    doc: object,
    host: plugins.PluginHost,
    ledger: quota.QuotaLedger,
    policy: AdmissionPolicy | None = None,
) -> Json:
    """Answer a whole AdmissionReview document.

    :raises BadReview: the document cannot be answered (the HTTP layer replies 400)
    """
    version, request = parse_review(doc)
    response = admit(request, host, ledger, policy or AdmissionPolicy())
    response["uid"] = request["uid"]
    return {"apiVersion": version, "kind": "AdmissionReview", "response": response}


def _allowed(original: Json | None = None, mutated: Json | None = None) -> Json:
    answer: Json = {"allowed": True}
    if original is not None and mutated is not None:
        ops = jsonpatch.make_patch(original, mutated).patch
        if ops:
            answer["patchType"] = "JSONPatch"
            answer["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    return answer


def _denied(message: str, code: int) -> Json:
    return {
        "allowed": False,
        "status": {"status": "Failure", "code": code, "message": message, "reason": _reason(code)},
    }


def _reason(code: int) -> str:
    return {400: "BadRequest", 403: "Forbidden", 500: "InternalError"}.get(code, "Invalid")


def admit(
    request: Mapping[str, object],
    host: plugins.PluginHost,
    ledger: quota.QuotaLedger,
    policy: AdmissionPolicy,
) -> Json:
    """The ``response`` (without uid) for one admission request."""
    kind = request.get("kind")
    resource = request.get("resource")
    is_pod = (isinstance(kind, Mapping) and kind.get("kind") == "Pod") or (
        isinstance(resource, Mapping) and resource.get("resource") == "pods"
    )
    if not is_pod or request.get("operation", "CREATE") != "CREATE" or request.get("subResource"):
        return _allowed()
    obj = request.get("object")
    if not isinstance(obj, dict):
        return _denied(f"cannot decode the pod: object is {type(obj).__name__}, not an object", 400)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return _denied("cannot decode the pod: spec is missing or not an object", 400)
    for key in ("containers", "initContainers"):
        value = spec.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(c, dict) for c in value)
        ):
            return _denied(f"cannot decode the pod: spec.{key} is not a list of objects", 400)
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    namespace = str(request.get("namespace") or meta.get("namespace") or "default")
    pod_name = str(meta.get("name") or meta.get("generateName") or request.get("name") or "")
    where = f"pod {namespace}/{pod_name}"
    if not spec.get("containers"):
        return _denied(f"{where}: pod has no containers", 400)
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping):
        forged = sorted(set(annotations) & forbidden_annotations(host))
        if forged:
            return _denied(
                f"{where} carries the scheduler's allocation annotation(s) {', '.join(forged)}; "
                "allocations are written only by the scheduler when it binds the pod: remove them",
                403,
            )
    scheduler = str(spec.get("schedulerName") or "")
    if (
        scheduler
        and (
            scheduler != _names.KUBE_DEFAULT_SCHEDULER
            or not policy.force_overwrite_default_scheduler
        )
        and (not policy.scheduler_name or scheduler != policy.scheduler_name)
    ):
        logger.debug("%s: scheduler %r is not ours; admitted unchanged", where, scheduler)
        return _allowed()

    original = obj
    pod: Json = copy.deepcopy(obj)
    try:
        uses = _mutate(pod, host, where)
    except errors.AdmissionDenied as err:
        return _denied(err.message, err.code)
    if not uses:
        return _allowed(original, pod)
    pod_spec: Json = pod["spec"]
    if policy.scheduler_name:
        pod_spec["schedulerName"] = policy.scheduler_name
        if pod_spec.get("nodeName"):
            return _denied(
                f"{where}: pod has node {pod_spec['nodeName']!r} assigned; a pod that uses shared "
                "devices must be placed by the scheduler, remove spec.nodeName",
                403,
            )
    try:
        host.admission_mutate(pod=pod, namespace=namespace)
        _check_quota(pod, host, ledger, namespace, where)
    except errors.AdmissionDenied as err:
        return _denied(err.message, err.code)
    except errors.PluginError as err:
        return _denied(f"{where}: {err}", 500)
    return _allowed(original, pod)


def _mutate(pod: Json, host: plugins.PluginHost, where: str) -> bool:
    """Run every vendor's ``mutate_container`` on every container; deny privileged users."""
    spec: Json = pod["spec"]
    uses_any = False
    containers: list[MutableMapping[str, object]] = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
    ]
    for container in containers:
        name = str(container.get("name") or "")
        used_by: list[str] = []
        for v in host.vendors.values():
            try:
                found = v.mutate_container(container, pod)
            except errors.AdmissionDenied as err:
                raise errors.AdmissionDenied(f"{where}: {err.message}", code=err.code) from err
            except errors.InvalidRequest as err:
                raise errors.AdmissionDenied(f"{where}: {err}", code=400) from err
            except Exception as err:  # plugin boundary: a vendor bug is a webhook failure
                logger.exception("vendor %s failed to mutate container %r", v.vendor_id, name)
                raise errors.AdmissionDenied(
                    f"{where}: vendor {v.vendor_id!r} failed on container {name!r}: "
                    f"{type(err).__name__}: {err}",
                    code=500,
                ) from err
            if found:
                used_by.append(v.vendor_id)
        if used_by and models.ContainerView.from_manifest(container).privileged:
            raise errors.AdmissionDenied(
                f"{where}: container {name!r} is privileged and requests shared devices "
                f"({', '.join(used_by)}); a privileged container sees every device, so sharing "
                "cannot be enforced: drop securityContext.privileged or the device resources",
                code=403,
            )
        uses_any = uses_any or bool(used_by)
    return uses_any


def _check_quota(
    pod: Json, host: plugins.PluginHost, ledger: quota.QuotaLedger, namespace: str, where: str
) -> None:
    """HAMi's webhook quota pre-check (hami-compat.md 5(a)); percentages count as 0 (Q16)."""
    view = models.PodView.from_manifest(pod, namespace=namespace)
    for v in host.vendors.values():
        res = v.resources
        if not (res.memory or res.cores):
            continue
        app = [0, 0]
        init = [0, 0]
        for container in view.all_containers:
            try:
                request = v.request_for(container)
            except errors.InvalidRequest as err:
                raise errors.AdmissionDenied(f"{where}: {err}", code=400) from err
            if request is None:
                continue
            mem, cores = request.memreq * request.nums, request.coresreq * request.nums
            if container.init:
                init = [max(init[0], mem), max(init[1], cores)]
            else:
                app = [app[0] + mem, app[1] + cores]
        memory, cores = max(app[0], init[0]), max(app[1], init[1])
        if memory == 0 and cores == 0:
            continue
        if not host.quota_check(
            namespace=namespace, resources=res, memory=memory, cores=cores, ledger=ledger
        ):
            raise errors.AdmissionDenied(
                f"{where}: exceeding resource quota: namespace {namespace!r} has no room for "
                f"{memory} MiB ({res.memory or '-'}) and {cores} cores ({res.cores or '-'}) more",
                code=403,
            )
