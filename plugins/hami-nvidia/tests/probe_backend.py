"""Child process of the backend tests: run NvidiaBackend on the stand-in NVML, print JSON.

argv[1] is a JSON request: ``{"node": {...NodeSettings fields}, "sysfs": path, "topology": bool,
"health": {"disable": str, "enable": str}, "xids": [[uuid, code], ...], "polls": n}``. XID lines
are appended to the device table file (the stand-in re-reads them while waiting for events).
"""

from __future__ import annotations

import dataclasses
import json
import sys

from hami_nvidia import backend, settings


def main() -> None:
    req = json.loads(sys.argv[1])
    node_fields = dict(req.get("node") or {})
    for key in ("filter_uuids", "filter_indexes"):
        if key in node_fields:
            node_fields[key] = frozenset(node_fields[key])
    node = settings.NodeSettings(**node_fields)
    health = req.get("health") or {}
    policy = settings.health_policy(
        settings.NvidiaSettings(
            disable_healthchecks=health.get("disable", ""),
            enable_healthchecks=health.get("enable", ""),
        )
    )
    b = backend.NvidiaBackend(
        node,
        sysfs_root=req.get("sysfs") or "/nonexistent",
        topology=bool(req.get("topology")),
        health=policy,
    )
    out: dict[str, object] = {"driver": b.driver_version}
    out["devices"] = [dataclasses.asdict(d) for d in b.discover()]
    table = req.get("table")
    events = []
    b.poll_health(0.01)  # register the event set before faults are injected
    for uuid, code in req.get("xids") or []:
        with open(table, "a", encoding="utf-8") as f:
            f.write(f"xid {uuid} {code}\n")
        events.append(dict(b.poll_health(float(req.get("poll_timeout", 5.0)))))
    out["events"] = events
    out["after"] = [dataclasses.asdict(d) for d in b.discover()]
    out["samples"] = [dataclasses.asdict(s) for s in b.sample()]
    b.close()
    sys.stdout.write(json.dumps(out, default=list) + "\n")


if __name__ == "__main__":
    main()
