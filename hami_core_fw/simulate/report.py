"""Render simulation results: plain-text tables (one policy, or several side by side) and JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hami_core_fw import models
from hami_core_fw.simulate import runner


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _short(node: str, uuid: str) -> str:
    """Device ids the simulator made (``<node>-<vendor>-<i>``) without the node prefix."""
    prefix = f"{node}-"
    return uuid[len(prefix) :] if uuid.startswith(prefix) else uuid


def _frac(used: int, total: int) -> str:
    pct = 100.0 * used / total if total else 0.0
    return f"{used}/{total} ({pct:.0f}%)"


def _per_container(o: runner.PodOutcome) -> list[tuple[str, list[models.ContainerDevice]]]:
    out: list[tuple[str, list[models.ContainerDevice]]] = [(c, []) for c in o.containers]
    for entries in o.devices.values():
        for k, entry in enumerate(entries):
            if k < len(out):
                out[k][1].extend(entry)
    return [(c, devs) for c, devs in out if devs]


def _devices_long(o: runner.PodOutcome) -> str:
    node = o.node or ""
    parts = []
    for container, devs in _per_container(o):
        inner = ", ".join(f"{_short(node, d.uuid)} ({d.usedmem} MiB, {d.usedcores}%)" for d in devs)
        parts.append(f"{container}: {inner}")
    return "; ".join(parts)


def _devices_short(o: runner.PodOutcome) -> str:
    if o.node is None:
        return "-- " + (", ".join(o.reasons) or o.error or "unplaced")
    node = o.node
    ids: list[str] = []
    for _, devs in _per_container(o):
        for d in devs:
            short = _short(node, d.uuid)
            if short not in ids:
                ids.append(short)
    return f"{node}: {'+'.join(ids)}"


def _reasons(o: runner.PodOutcome) -> str:
    if o.error and not o.failed:
        return o.error
    return ", ".join(
        f"{len(nodes)} node{'' if len(nodes) == 1 else 's'} {reason}"
        for reason, nodes in o.reasons.items()
    )


Summary = Mapping[str, float | int]

_SUMMARY_ROWS: tuple[tuple[str, Callable[[Summary], str]], ...] = (
    ("pods placed", lambda s: f"{s['placed']}/{s['pods']}"),
    ("devices in use", lambda s: f"{s['devices_in_use']}/{s['devices']}"),
    ("nodes in use", lambda s: f"{s['nodes_in_use']}/{s['nodes']}"),
    ("memory allocated", lambda s: f"{s['memory_used_mib']} MiB ({s['memory_used_pct']}%)"),
    ("cores allocated", lambda s: f"{s['cores_used_pct']}%"),
    ("memory used on busy devices", lambda s: f"{s['memory_used_pct_of_devices_in_use']}%"),
    (
        "fragmentation (stranded free MiB)",
        lambda s: f"{s['stranded_mib']} MiB ({s['stranded_pct_of_free']}% of free)",
    ),
)


def _summary_lines(results: Sequence[runner.RunResult]) -> list[str]:
    summaries = [r.summary() for r in results]
    header = ["", *(r.label for r in results)]
    rows = [[name, *(fmt(s) for s in summaries)] for name, fmt in _SUMMARY_ROWS]
    rows.append(["simulation time", *(f"{r.wall_s:.3f} s" for r in results)])
    return _table(header, rows)


def render_table(scenario: runner.Scenario, results: Sequence[runner.RunResult]) -> str:
    """One policy: placements, unplaced pods, nodes, devices, summary. Several: side by side."""
    lines = [
        f"cluster:  {scenario.cluster_source} ({len(scenario.nodes)} nodes, "
        f"{sum(len(d) for n in scenario.nodes for d in n.devices.values())} devices, "
        f"{len(scenario.existing)} running pods)",
        f"workload: {scenario.workload_source} ({len(scenario.workload)} pods)",
        "policies: "
        + ", ".join(f"{r.label} (node {r.node_policy}, GPU {r.gpu_policy})" for r in results),
        "",
    ]
    if len(results) == 1:
        lines += _single(results[0])
    else:
        lines += _side_by_side(results)
    lines += ["", "SUMMARY", *_summary_lines(results)]
    return "\n".join(lines) + "\n"


def _single(r: runner.RunResult) -> list[str]:
    lines = ["PLACEMENTS"]
    placed = [o for o in r.outcomes if o.node is not None]
    lines += _table(
        ["POD", "NODE", "DEVICES"], [[o.pod, o.node or "", _devices_long(o)] for o in placed]
    )
    unplaced = [o for o in r.outcomes if o.node is None]
    lines += ["", f"UNPLACED ({len(unplaced)})"]
    if unplaced:
        lines += _table(["POD", "WHY"], [[o.pod, _reasons(o)] for o in unplaced])
    else:
        lines.append("none")
    lines += ["", "NODES"]
    lines += _table(
        ["NODE", "DEVICES IN USE", "MEMORY MiB", "CORES", "SLOTS", "STRANDED MiB"],
        [
            [
                n.name,
                f"{n.in_use}/{n.devices}",
                _frac(n.usedmem, n.totalmem),
                _frac(n.usedcores, n.totalcore),
                f"{n.used}/{n.count}",
                str(n.stranded),
            ]
            for n in r.nodes
        ],
    )
    lines += ["", "DEVICES"]
    lines += _table(
        ["NODE", "DEVICE", "TYPE", "MEMORY MiB", "CORES", "SLOTS", "STRANDED MiB"],
        [
            [
                d.node,
                _short(d.node, d.id) + ("" if d.health else " (unhealthy)"),
                d.type,
                _frac(d.usedmem, d.totalmem),
                _frac(d.usedcores, d.totalcore),
                f"{d.used}/{d.count}",
                str(d.stranded),
            ]
            for d in r.devices
        ],
    )
    return lines


def _side_by_side(results: Sequence[runner.RunResult]) -> list[str]:
    labels = [r.label for r in results]
    lines = ["PLACEMENTS"]
    rows = []
    for k, first in enumerate(results[0].outcomes):
        rows.append([first.pod, *(_devices_short(r.outcomes[k]) for r in results)])
    lines += _table(["POD", *labels], rows)
    lines += ["", "UNPLACED"]
    rows = []
    for k, first in enumerate(results[0].outcomes):
        if any(r.outcomes[k].node is None for r in results):
            rows.append(
                [
                    first.pod,
                    *(
                        "placed" if r.outcomes[k].node is not None else _reasons(r.outcomes[k])
                        for r in results
                    ),
                ]
            )
    lines += _table(["POD", *labels], rows) if rows else ["none"]
    lines += ["", "NODES (devices in use, memory allocated)"]
    rows = []
    for k, node in enumerate(results[0].nodes):
        cells = []
        for r in results:
            n = r.nodes[k]
            cells.append(f"{n.in_use}/{n.devices}  {_frac(n.usedmem, n.totalmem)}")
        rows.append([node.name, *cells])
    lines += _table(["NODE", *labels], rows)
    lines += ["", "DEVICES (memory allocated, slots)"]
    rows = []
    for k, device in enumerate(results[0].devices):
        cells = []
        for r in results:
            d = r.devices[k]
            cells.append(f"{_frac(d.usedmem, d.totalmem):<20} {d.used}/{d.count}")
        rows.append([device.node, _short(device.node, device.id), *cells])
    lines += _table(["NODE", "DEVICE", *labels], rows)
    return lines


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------


def _devices_json(devices: models.PodDevices) -> dict[str, list[list[dict[str, object]]]]:
    return {
        cw: [
            [
                {"uuid": d.uuid, "type": d.type, "usedmem": d.usedmem, "usedcores": d.usedcores}
                for d in e
            ]
            for e in entries
        ]
        for cw, entries in devices.items()
    }


def _result_json(r: runner.RunResult) -> dict[str, object]:
    return {
        "node_policy": r.node_policy,
        "gpu_policy": r.gpu_policy,
        "summary": r.summary(),
        "wall_s": round(r.wall_s, 4),
        "placements": [
            {
                "pod": o.pod,
                "containers": list(o.containers),
                "node": o.node,
                "devices": _devices_json(o.devices),
                "reasons": {k: list(v) for k, v in o.reasons.items()},
                "failed": dict(o.failed),
                "error": o.error,
            }
            for o in r.outcomes
        ],
        "nodes": [_asdict(n) for n in r.nodes],
        "devices": [_asdict(d) for d in r.devices],
    }


def _asdict(obj: runner.NodeStat | runner.DeviceStat) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def render_json(
    scenario: runner.Scenario, results: Sequence[runner.RunResult]
) -> Mapping[str, object]:
    """A JSON-ready document: the inputs and one entry per policy."""
    return {
        "cluster": scenario.cluster_source,
        "workload": scenario.workload_source,
        "nodes": len(scenario.nodes),
        "pods": len(scenario.workload),
        "results": [_result_json(r) for r in results],
    }
