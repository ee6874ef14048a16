"""End-to-end scheduling throughput through the REAL kube-apiserver and kube-scheduler.

Creates N pods (default 200) asking for a slice of a fake GPU against M fake-GPU nodes (default 50)
and measures, per pod, the time from its creation request to the moment its binding is seen on a
watch. Everything runs for real: etcd, kube-apiserver, kube-scheduler, our webhook and extender
(``hami scheduler`` as a subprocess). No device plugin runs: a LockReleaser plays its part of
releasing the node lock once a pod is bound (tests/e2e/components.py). Prints figures; asserts
nothing.

    python bench/e2e_throughput.py [--pods 200] [--nodes 50]

The binaries come from tests/e2e/cluster/build.sh (built on first use, then cached).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from components import (  # noqa: E402 - the e2e harness is a test-tree module
    MANAGED_RESOURCES,
    SCHEDULER,
    HamiScheduler,
    LockReleaser,
)
from harness import (  # noqa: E402
    ControlPlane,
    ExtenderConfig,
    create_fake_node,
    ensure_binaries,
    register_mutating_webhook,
    request_json,
    scheduler_config,
)


def registration(node: str, devices: int) -> str:
    return json.dumps(
        [
            {
                "id": f"FAKE-{node}-{i}",
                "index": i,
                "count": 10,
                "devmem": 16384,
                "devcore": 100,
                "type": "FAKE-GPU-16G",
                "mode": "hami-core",
                "health": True,
            }
            for i in range(devices)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--devices", type=int, default=4, help="fake GPUs per node")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
    t0 = time.monotonic()
    plane = ControlPlane.start(ensure_binaries(), log_dir=work / "logs")
    print(f"control plane ready in {time.monotonic() - t0:.2f}s (logs: {work / 'logs'})")
    try:
        with plane.api_client() as api:
            request_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
            for i in range(args.nodes):
                name = f"bench-{i:03d}"
                create_fake_node(
                    api,
                    name,
                    extended_resources={"hami.io/fake-gpu": args.devices * 10},
                    annotations={"hami.io/node-fake-register": registration(name, args.devices)},
                )
            hami = HamiScheduler(plane, work)
            t0 = time.monotonic()
            hami.start()
            print(f"hami scheduler ready in {time.monotonic() - t0:.2f}s")
            register_mutating_webhook(
                api,
                url=f"{hami.url}/webhook",
                ca_pem=plane.ca.cert_pem,
                extra={
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "bench"}}
                },
            )
            extender = ExtenderConfig(
                url_prefix=hami.url, ca_pem=plane.ca.cert_pem, managed_resources=MANAGED_RESOURCES
            )
            config = scheduler_config(plane.kubeconfig, scheduler_name=SCHEDULER, extender=extender)
            config["podInitialBackoffSeconds"] = 1
            config["podMaxBackoffSeconds"] = 2
            plane.start_scheduler(config, name="kube-scheduler-bench")
            time.sleep(1.0)  # the API server picks the webhook configuration up asynchronously

            created: dict[str, float] = {}
            with LockReleaser(plane, "bench") as releaser:
                start = time.monotonic()
                for i in range(args.pods):
                    name = f"p{i:04d}"
                    limits = {
                        "hami.io/fake-gpu": "1",
                        "hami.io/fake-gpumem": str(1000 + 500 * (i % 5)),
                        "hami.io/fake-gpucores": str(5 * (i % 4)),
                    }
                    body = {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"name": name},
                        "spec": {
                            "containers": [
                                {"name": "c", "image": "pause", "resources": {"limits": limits}}
                            ]
                        },
                    }
                    created[name] = time.monotonic()
                    request_json(api, "POST", "/api/v1/namespaces/bench/pods", body)
                creation = time.monotonic() - start
                done = releaser.wait_bound(args.pods, timeout=max(120.0, args.pods * 1.0))
                end = time.monotonic()
                latencies = sorted(releaser.bound_at[n] - created[n] for n in releaser.bound)
            bound = len(latencies)
            print(
                f"{args.pods} pods / {args.nodes} nodes x {args.devices} fake GPUs "
                f"(2 cores, shared machine)"
            )
            print(f"  created in {creation:.2f}s ({args.pods / creation:.0f} pods/s submitted)")
            print(f"  bound: {bound}/{args.pods}{'' if done else ' (TIMED OUT)'}")
            if latencies:
                total = max(releaser.bound_at.values()) - start
                print(f"  throughput creation->bound: {bound / total:.1f} pods/s over {total:.2f}s")
                p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                print(
                    f"  creation->bound latency: p50 {statistics.median(latencies) * 1000:.0f} ms, "
                    f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
                )
            print(f"  wall time of the measured phase: {end - start:.2f}s")
            hami.stop()
    finally:
        plane.stop()


if __name__ == "__main__":
    main()
