"""HAMi v2.10 wire formats, both directions, exact to the byte (hami-compat.md section 3).

Every decoder raises :class:`~hami_core_fw.errors.CodecError` naming the annotation key, the whole
value and the offending part; none lets an ``IndexError`` or a bare ``ValueError`` escape. Encoders
produce what HAMi's Go code writes (compact JSON with Go's escaping, omitted zero values).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hami_core_fw import errors, models

_INT32_MAX: Final = 2**31 - 1
_INT32_MIN: Final = -(2**31)
_GO_TRUE: Final = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def go_bool(text: str) -> bool | None:
    """Parse a boolean in Go's ``strconv.ParseBool`` literal set; ``None`` when not one."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


def go_json(obj: object) -> str:
    """Serialise like Go's ``encoding/json``: compact, UTF-8, ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _int(key: str, value: str, part: str, field: str, *, bits32: bool = True) -> int:
    text = part.strip() if field == "numa" else part
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise errors.CodecError(key, value, part, f"{field} is not an integer")
    number = int(text)
    if bits32 and not _INT32_MIN <= number <= _INT32_MAX:
        raise errors.CodecError(key, value, part, f"{field} does not fit in 32 bits")
    return number


# ----------------------------------------------------------------------------------------------
# Node registration (3.2)
# ----------------------------------------------------------------------------------------------


def _profile_to_json(profile: models.MigProfile) -> dict[str, object]:
    return {
        "name": profile.name,
        "memoryMB": profile.memory_mb,
        "core": profile.core,
        "sliceCount": profile.slice_count,
        "placements": [{"start": p.start, "size": p.size} for p in profile.placements],
    }


def encode_registration_json(devices: Iterable[models.DeviceInfo]) -> str:
    """Encode device records as HAMi's plugins do: keys in table order, zero values omitted."""
    out: list[dict[str, object]] = []
    for d in devices:
        doc: dict[str, object] = {"id": d.id}
        if d.index:
            doc["index"] = d.index
        if d.count:
            doc["count"] = d.count
        if d.devmem:
            doc["devmem"] = d.devmem
        if d.devcore:
            doc["devcore"] = d.devcore
        if d.type:
            doc["type"] = d.type
        if d.numa:
            doc["numa"] = d.numa
        if d.mode:
            doc["mode"] = d.mode
        if d.mig_profiles:
            doc["migProfiles"] = [_profile_to_json(p) for p in d.mig_profiles]
        if d.health:
            doc["health"] = True
        if d.vendor:
            doc["devicevendor"] = d.vendor
        if d.custom_info:
            doc["custominfo"] = dict(d.custom_info)
        out.append(doc)
    return go_json(out)


def _fold(doc: Mapping[str, object]) -> dict[str, object]:
    """Go matches JSON object keys case-insensitively; the first exact-or-folded key wins."""
    folded: dict[str, object] = {}
    for k, v in doc.items():
        folded.setdefault(k.lower(), v)
    return folded


def _json_int(key: str, value: str, part: object, field: str) -> int:
    if part is None:
        return 0
    if isinstance(part, bool) or not isinstance(part, int | float):
        raise errors.CodecError(key, value, json.dumps(part), f"{field} is not a number")
    if isinstance(part, float) and not part.is_integer():
        raise errors.CodecError(key, value, json.dumps(part), f"{field} is not an integer")
    return int(part)


def _json_str(key: str, value: str, part: object, field: str) -> str:
    if part is None:
        return ""
    if not isinstance(part, str):
        raise errors.CodecError(key, value, json.dumps(part), f"{field} is not a string")
    return part


def _decode_profile(key: str, value: str, raw: object) -> models.MigProfile:
    if not isinstance(raw, Mapping):
        raise errors.CodecError(key, value, json.dumps(raw), "a MIG profile is not an object")
    doc = _fold(raw)
    placements = []
    raw_placements = doc.get("placements") or []
    if not isinstance(raw_placements, list):
        raise errors.CodecError(key, value, json.dumps(raw_placements), "placements is not a list")
    for p in raw_placements:
        if not isinstance(p, Mapping):
            raise errors.CodecError(key, value, json.dumps(p), "a placement is not an object")
        pd = _fold(p)
        placements.append(
            models.Placement(
                start=_json_int(key, value, pd.get("start"), "start"),
                size=_json_int(key, value, pd.get("size"), "size"),
            )
        )
    return models.MigProfile(
        name=_json_str(key, value, doc.get("name"), "name"),
        memory_mb=_json_int(key, value, doc.get("memorymb"), "memoryMB"),
        core=_json_int(key, value, doc.get("core"), "core"),
        slice_count=_json_int(key, value, doc.get("slicecount"), "sliceCount"),
        placements=tuple(placements),
    )


def decode_registration_json(
    key: str, value: str, *, vendor: str = ""
) -> tuple[models.DeviceInfo, ...]:
    """Decode a JSON registration with Go's rules (case-insensitive keys, unknown keys ignored).

    :param key: the annotation key, for error messages
    :param vendor: CommonWord stamped on every record (HAMi sets ``devicevendor`` likewise)
    :raises CodecError: not valid JSON, not an array of objects, a field of the wrong type, or an
        empty array ("no device found")
    """
    try:
        raw = json.loads(value)
    except json.JSONDecodeError as err:
        raise errors.CodecError(
            key, value, value[max(0, err.pos - 10) : err.pos + 10], f"invalid JSON ({err.msg})"
        ) from err
    if not isinstance(raw, list):
        raise errors.CodecError(key, value, value[:40], "the value is not a JSON array")
    if not raw:
        raise errors.CodecError(key, value, value, "no device found (empty array)")
    devices = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise errors.CodecError(key, value, json.dumps(item), "a device is not a JSON object")
        doc = _fold(item)
        health = doc.get("health")
        if health is not None and not isinstance(health, bool):
            raise errors.CodecError(key, value, json.dumps(item), "health is not a boolean")
        profiles = doc.get("migprofiles") or []
        if not isinstance(profiles, list):
            raise errors.CodecError(key, value, json.dumps(profiles), "migProfiles is not a list")
        custom = doc.get("custominfo") or {}
        if not isinstance(custom, Mapping):
            raise errors.CodecError(key, value, json.dumps(custom), "custominfo is not an object")
        devices.append(
            models.DeviceInfo(
                id=_json_str(key, value, doc.get("id"), "id"),
                index=_json_int(key, value, doc.get("index"), "index"),
                count=_json_int(key, value, doc.get("count"), "count"),
                devmem=_json_int(key, value, doc.get("devmem"), "devmem"),
                devcore=_json_int(key, value, doc.get("devcore"), "devcore"),
                type=_json_str(key, value, doc.get("type"), "type"),
                numa=_json_int(key, value, doc.get("numa"), "numa"),
                mode=_json_str(key, value, doc.get("mode"), "mode"),
                health=bool(health),
                vendor=vendor or _json_str(key, value, doc.get("devicevendor"), "devicevendor"),
                mig_profiles=tuple(_decode_profile(key, value, p) for p in profiles),
                custom_info=dict(custom),
            )
        )
    return tuple(devices)


def encode_registration_csv(devices: Iterable[models.DeviceInfo]) -> str:
    """Encode the legacy 9-field CSV: ``id,count,devmem,devcore,type,numa,health,index,mode:``."""
    parts = []
    for d in devices:
        if "," in d.type or ":" in d.type or "," in d.id or ":" in d.id:
            raise ValueError(f"device {d.id!r}: type {d.type!r} cannot be written as CSV")
        parts.append(
            f"{d.id},{d.count},{d.devmem},{d.devcore},{d.type},{d.numa},"
            f"{'true' if d.health else 'false'},{d.index},{d.mode}:"
        )
    return "".join(parts)


def decode_registration_csv(
    key: str, value: str, *, vendor: str = ""
) -> tuple[models.DeviceInfo, ...]:
    """Decode the legacy CSV form (7 or 9 fields per device, ``:`` after each device).

    Empty segments are skipped, so ``:`` decodes to zero devices (callers treat that as an error).
    """
    if ":" not in value:
        raise errors.CodecError(key, value, value, "no ':' device separator")
    devices = []
    for segment in value.split(":"):
        if not segment:
            continue
        if "," not in segment:
            raise errors.CodecError(key, value, segment, "a device has no ',' separated fields")
        fields = segment.split(",")
        if len(fields) not in (7, 9):
            raise errors.CodecError(
                key, value, segment, f"a device has {len(fields)} fields, expected 7 or 9"
            )
        health = go_bool(fields[6])
        if health is None:
            raise errors.CodecError(key, value, fields[6], "health is not a boolean")
        index, mode = 0, "hami-core"
        if len(fields) == 9:
            index = _int(key, value, fields[7], "index", bits32=False)
            if index < 0:
                raise errors.CodecError(key, value, fields[7], "index is negative")
            mode = fields[8]
        devices.append(
            models.DeviceInfo(
                id=fields[0],
                count=_int(key, value, fields[1], "count"),
                devmem=_int(key, value, fields[2], "devmem"),
                devcore=_int(key, value, fields[3], "devcore"),
                type=fields[4],
                numa=_int(key, value, fields[5], "numa", bits32=False),
                health=health,
                index=index,
                mode=mode,
                vendor=vendor,
            )
        )
    return tuple(devices)


def decode_registration(key: str, value: str, *, vendor: str = "") -> tuple[models.DeviceInfo, ...]:
    """Decode either form: JSON when the value starts with ``[``, legacy CSV otherwise.

    :raises CodecError: the value does not decode or holds no device
    """
    if value.lstrip().startswith("["):
        return decode_registration_json(key, value, vendor=vendor)
    devices = decode_registration_csv(key, value, vendor=vendor)
    if not devices:
        raise errors.CodecError(key, value, value, "no device found")
    return devices


def decode_link_scores(key: str, value: str) -> dict[str, dict[str, int]]:
    """Decode ``hami.io/node-nvidia-score``: ``[{"uuid": ..., "score": {peer: int}}]``."""
    try:
        raw = json.loads(value)
    except json.JSONDecodeError as err:
        raise errors.CodecError(key, value, value[:40], f"invalid JSON ({err.msg})") from err
    if not isinstance(raw, list):
        raise errors.CodecError(key, value, value[:40], "the value is not a JSON array")
    out: dict[str, dict[str, int]] = {}
    for item in raw:
        if not isinstance(item, Mapping):
            raise errors.CodecError(key, value, json.dumps(item), "an entry is not an object")
        doc = _fold(item)
        uuid = _json_str(key, value, doc.get("uuid"), "uuid")
        scores = doc.get("score") or {}
        if not isinstance(scores, Mapping):
            raise errors.CodecError(key, value, json.dumps(scores), "score is not an object")
        out[uuid] = {str(p): _json_int(key, value, s, "score") for p, s in scores.items()}
    return out


def encode_link_scores(scores: Mapping[str, Mapping[str, int]]) -> str:
    """Encode topology link scores in the shape of ``hami.io/node-nvidia-score``."""
    return go_json([{"uuid": u, "score": dict(s)} for u, s in scores.items()])


# ----------------------------------------------------------------------------------------------
# Pod device strings (3.4)
# ----------------------------------------------------------------------------------------------


def encode_container_devices(devices: Iterable[models.ContainerDevice]) -> str:
    """One container entry: ``uuid,type,mem,cores:`` per device (no ``;``)."""
    return "".join(f"{d.uuid},{d.type},{d.usedmem},{d.usedcores}:" for d in devices)


def encode_pod_devices(entries: Sequence[models.ContainerDevices]) -> str:
    """A whole pod for one vendor: each container entry followed by ``;``, empty ones included."""
    return "".join(encode_container_devices(e) + ";" for e in entries)


def strip_legacy_mig_suffix(key: str, value: str, uuid: str) -> str:
    """Remove a ``[<template>-<slot>]`` suffix (HAMi <= v2.9 MIG; tolerated on read only)."""
    if "[" not in uuid and "]" not in uuid:
        return uuid
    start, end = uuid.find("["), uuid.find("]")
    if start < 0 or end < 0 or end < start:
        raise errors.CodecError(key, value, uuid, "unbalanced MIG suffix brackets")
    inner = uuid[start + 1 : end].split("-")
    if len(inner) != 2 or not all(re.fullmatch(r"[0-9]+", p) for p in inner):
        raise errors.CodecError(key, value, uuid, "MIG suffix is not [<template>-<slot>]")
    return uuid[:start]


def decode_pod_devices(key: str, value: str) -> models.PodSingleDevices:
    """Decode a vendor's pod device string into one entry per container.

    Empty entries are kept (the entry position is the container position). The empty piece after
    a final ``;`` is not an entry (HAMi yields it as an extra empty entry past the last container;
    dropping it keeps ``decode(encode(x)) == x``). A value with no ``;`` is one entry, and the empty
    string is one empty entry.

    :raises CodecError: a device with fewer than 4 fields, or memory/cores not a 32-bit integer
    """
    pieces = value.split(";")
    if len(pieces) > 1 and pieces[-1] == "":
        pieces.pop()
    entries = []
    for piece in pieces:
        devices = []
        for dev in piece.split(":"):
            if "," not in dev:
                continue
            fields = dev.split(",")
            if len(fields) < 4:
                raise errors.CodecError(
                    key,
                    value,
                    dev,
                    f"a device has {len(fields)} fields, expected uuid,type,mem,cores",
                )
            devices.append(
                models.ContainerDevice(
                    uuid=strip_legacy_mig_suffix(key, value, fields[0]),
                    type=fields[1],
                    usedmem=_int(key, value, fields[2], "memory"),
                    usedcores=_int(key, value, fields[3], "cores"),
                )
            )
        entries.append(tuple(devices))
    return tuple(entries)


# ----------------------------------------------------------------------------------------------
# MIG allocations (3.5)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigAllocation:
    """One MIG instance reserved for (container, device) (``hami.io/vgpu-mig-allocations``)."""

    container_index: int
    device_index: int
    gpu_uuid: str
    profile: str
    placement: models.Placement
    mig_uuid: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


def encode_mig_allocations(allocations: Iterable[MigAllocation]) -> str:
    """Encode the JSON array; the runtime identity is written only when it is known."""
    out = []
    for a in allocations:
        doc: dict[str, object] = {
            "containerIndex": a.container_index,
            "deviceIndex": a.device_index,
            "gpuUUID": a.gpu_uuid,
            "profile": a.profile,
            "placement": {"start": a.placement.start, "size": a.placement.size},
        }
        if a.mig_uuid is not None:
            doc["migUUID"] = a.mig_uuid
            doc["gpuInstanceID"] = a.gpu_instance_id
            doc["computeInstanceID"] = a.compute_instance_id
        out.append(doc)
    return go_json(out)


def decode_mig_allocations(key: str, value: str) -> tuple[MigAllocation, ...]:
    """Decode and validate MIG allocations (hami-compat.md 3.5)."""
    try:
        raw = json.loads(value)
    except json.JSONDecodeError as err:
        raise errors.CodecError(key, value, value[:40], f"invalid JSON ({err.msg})") from err
    if not isinstance(raw, list):
        raise errors.CodecError(key, value, value[:40], "the value is not a JSON array")
    seen: set[tuple[int, int]] = set()
    out = []
    for item in raw:
        part = json.dumps(item)
        if not isinstance(item, Mapping):
            raise errors.CodecError(key, value, part, "an allocation is not an object")
        doc = _fold(item)
        ci = _json_int(key, value, doc.get("containerindex"), "containerIndex")
        di = _json_int(key, value, doc.get("deviceindex"), "deviceIndex")
        if ci < 0 or di < 0:
            raise errors.CodecError(key, value, part, "containerIndex/deviceIndex is negative")
        gpu = _json_str(key, value, doc.get("gpuuuid"), "gpuUUID")
        profile = _json_str(key, value, doc.get("profile"), "profile")
        if not gpu or not profile:
            raise errors.CodecError(key, value, part, "gpuUUID and profile must be non-empty")
        raw_placement = doc.get("placement")
        if not isinstance(raw_placement, Mapping):
            raise errors.CodecError(key, value, part, "placement is missing")
        pd = _fold(raw_placement)
        placement = models.Placement(
            start=_json_int(key, value, pd.get("start"), "start"),
            size=_json_int(key, value, pd.get("size"), "size"),
        )
        if placement.size <= 0:
            raise errors.CodecError(key, value, part, "placement.size must be > 0")
        identity = (doc.get("miguuid"), doc.get("gpuinstanceid"), doc.get("computeinstanceid"))
        if any(x is not None for x in identity) and any(x is None for x in identity):
            raise errors.CodecError(
                key, value, part, "migUUID, gpuInstanceID and computeInstanceID are all-or-nothing"
            )
        if (ci, di) in seen:
            raise errors.CodecError(key, value, part, "duplicate (containerIndex, deviceIndex)")
        seen.add((ci, di))
        has_identity = identity[0] is not None
        out.append(
            MigAllocation(
                container_index=ci,
                device_index=di,
                gpu_uuid=gpu,
                profile=profile,
                placement=placement,
                mig_uuid=_json_str(key, value, identity[0], "migUUID") if has_identity else None,
                gpu_instance_id=(
                    _json_int(key, value, identity[1], "gpuInstanceID") if has_identity else None
                ),
                compute_instance_id=(
                    _json_int(key, value, identity[2], "computeInstanceID")
                    if has_identity
                    else None
                ),
            )
        )
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Node lock (3.7)
# ----------------------------------------------------------------------------------------------

_RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def format_rfc3339(when: dt.datetime) -> str:
    """Go's ``time.RFC3339`` of a UTC time, e.g. ``2025-10-20T03:07:02Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> dt.datetime | None:
    """Parse an RFC 3339 timestamp strictly; ``None`` when it is not one."""
    if not _RFC3339.match(text):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class NodeLock:
    """The value of ``hami.io/mutex.lock``; namespace and name are empty for a legacy value."""

    time: dt.datetime
    namespace: str = ""
    name: str = ""

    @property
    def legacy(self) -> bool:
        """A bare timestamp without an owner."""
        return not self.namespace and not self.name


def encode_node_lock(lock: NodeLock) -> str:
    """``<RFC3339>,<namespace>,<pod>``, or the bare time for an owner-less lock."""
    stamp = format_rfc3339(lock.time)
    return stamp if lock.legacy else f"{stamp},{lock.namespace},{lock.name}"


def decode_node_lock(key: str, value: str) -> NodeLock:
    """Parse a lock value: a bare RFC 3339 time, or exactly three comma-separated parts."""
    if "," not in value:
        when = parse_rfc3339(value)
        if when is None:
            raise errors.CodecError(key, value, value, "not an RFC 3339 time")
        return NodeLock(time=when)
    parts = value.split(",")
    if len(parts) != 3:
        raise errors.CodecError(
            key, value, value, f"{len(parts)} comma-separated parts, expected <time>,<ns>,<pod>"
        )
    when = parse_rfc3339(parts[0])
    if when is None:
        raise errors.CodecError(key, value, parts[0], "not an RFC 3339 time")
    return NodeLock(time=when, namespace=parts[1], name=parts[2])


def lock_owned_by(value: str, namespace: str, name: str) -> bool:
    """HAMi's release test: a plain suffix match, or a legacy owner-less value."""
    return "," not in value or value.endswith(f",{namespace},{name}")


# ----------------------------------------------------------------------------------------------
# Handshake (3.6)
# ----------------------------------------------------------------------------------------------

HANDSHAKE_LAYOUT: Final = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class Handshake:
    """A decoded handshake annotation.

    :param kind: ``Requesting``, ``Reported``, ``Deleted`` or ``""`` for anything else
    :param time: the parsed time for ``Requesting``/``Deleted`` values when it parses, else None
    """

    kind: str
    time: dt.datetime | None = None


def encode_handshake_request(now: dt.datetime) -> str:
    """``Requesting_<YYYY-MM-DD HH:MM:SS>`` in UTC (we fix the zone, Q13)."""
    return "Requesting_" + now.astimezone(dt.UTC).strftime(HANDSHAKE_LAYOUT)


def encode_handshake_report(now: dt.datetime) -> str:
    """``Reported <time>``, the answer a device plugin writes."""
    return "Reported " + now.astimezone(dt.UTC).strftime(HANDSHAKE_LAYOUT)


def decode_handshake(value: str) -> Handshake:
    """Classify a handshake value; never raises (unknown values are kind ``""``)."""
    for kind in ("Requesting", "Deleted"):
        if kind in value:
            _, sep, rest = value.partition("_")
            when = None
            if sep:
                for layout in (HANDSHAKE_LAYOUT, "%Y.%m.%d %H:%M:%S"):
                    try:
                        when = dt.datetime.strptime(rest, layout).replace(tzinfo=dt.UTC)
                        break
                    except ValueError:
                        continue
            return Handshake(kind=kind, time=when)
    if value.startswith("Reported"):
        return Handshake(kind="Reported")
    return Handshake(kind="")


# ----------------------------------------------------------------------------------------------
# Filter reason strings (4.12) and scoring weights (3.3)
# ----------------------------------------------------------------------------------------------

_REASON: Final = re.compile(r"^(\d+)/(\d+) (\w+)$")


def format_reasons(reasons: Mapping[models.Reason, int], total: int) -> str:
    """``"<n>/<total> <Reason>"`` per reason, sorted as strings, joined by ``", "``."""
    return ", ".join(sorted(f"{n}/{total} {r.value}" for r, n in reasons.items() if n > 0))


def parse_reasons(key: str, text: str) -> dict[models.Reason, tuple[int, int]]:
    """Parse a reason string back into reason -> (count, total)."""
    out: dict[models.Reason, tuple[int, int]] = {}
    for part in text.split(", "):
        m = _REASON.match(part)
        if not m:
            raise errors.CodecError(key, text, part, "not '<count>/<total> <Reason>'")
        try:
            reason = models.Reason(m.group(3))
        except ValueError as err:
            raise errors.CodecError(key, text, part, "unknown reason") from err
        out[reason] = (int(m.group(1)), int(m.group(2)))
    return out


@dataclass(frozen=True, slots=True)
class ScoringWeights:
    """Device-score weights from ``hami.io/device-scoring-weights`` (default 1/1/1)."""

    slot: int = 1
    core: int = 1
    memory: int = 1


def decode_scoring_weights(key: str, value: str) -> ScoringWeights:
    """Parse ``slot=a,core=b,memory=c`` (any order, whitespace ignored, ints >= 0, not all 0)."""
    entries = value.split(",")
    if len(entries) != 3:
        raise errors.CodecError(key, value, value, "expected exactly slot=,core=,memory= entries")
    seen: dict[str, int] = {}
    for entry in entries:
        if "=" not in entry:
            raise errors.CodecError(key, value, entry, "entry without '='")
        name, _, number = entry.partition("=")
        name, number = name.strip(), number.strip()
        if name not in ("slot", "core", "memory"):
            raise errors.CodecError(key, value, entry, "unknown key (use slot, core, memory)")
        if name in seen:
            raise errors.CodecError(key, value, entry, "duplicate key")
        if not re.fullmatch(r"[0-9]+", number):
            raise errors.CodecError(key, value, entry, "weight is not a non-negative integer")
        seen[name] = int(number)
    if not any(seen.values()):
        raise errors.CodecError(key, value, value, "all three weights are 0")
    return ScoringWeights(slot=seen["slot"], core=seen["core"], memory=seen["memory"])


def split_list(value: str | None) -> tuple[str, ...]:
    """Split a comma list annotation; tokens trimmed, empty tokens dropped."""
    if not value:
        return ()
    return tuple(t.strip() for t in value.split(",") if t.strip())
