"""Filter latency of the scheduling core on a synthetic cluster (issue 4). Prints; never asserts.

For each cluster size (default 1,000 and 5,000 nodes of 8 devices each) the benchmark places
``--pods-per-node`` pods directly into the state (5,000 pods at 1,000 nodes), then times
``filter_pod`` over every node for a stream of new pods: single-device pods of several sizes,
multi-device pods, pods with a GPU-type allow list, pods pinned to one GPU UUID, and two-container
pods with an init container. Each placed pod is reserved with ``set_pod`` (as the extender does)
and one random older pod is removed, so the cluster keeps its density and every placement and
removal invalidates the per-node fit memo of the nodes it touches.

Five runs per size:

* exhaustive, memo on, ``templates`` stream: the extender's default ``filter_pod`` over a stream
  drawn from a dozen pod shapes (deployments and jobs repeat shapes): the steady state;
* exhaustive, memo on, ``random`` stream: about a hundred shapes drawn at random, so memo entries
  are often stale or evicted: a pessimistic steady state;
* first-fit (``exhaustive=False``), memo on: stops at the first fitting node in score order;
* exhaustive and first-fit with the memo off: every call fits every node it tries, the cost of a
  pod shape not seen since the nodes last changed (a smaller sample: it is slow).

The garbage collector's view of the long-lived state is frozen (``gc.freeze()``) after the set-up,
as a long-running scheduler would do after its initial sync; otherwise a full collection over the
millions of state objects lands in random filter calls.

Run: ``python bench/filter_bench.py`` (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

from hami_core_fw import models, plugins
from hami_core_fw.builtin import fake
from hami_core_fw.scheduler import core, state

DEVICES_PER_NODE = 8
MODELS = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L40S")
MEMORY = {"NVIDIA-A100-SXM4-80GB": 81920, "NVIDIA-H100-80GB-HBM3": 81559, "NVIDIA-L40S": 46068}
CW = fake.COMMON_WORD
R = fake.FakeVendor().resources
K = fake.KEYS


def build(host: plugins.PluginHost, nodes: int, pods: int, rnd: random.Random, *, memo: bool):
    st = state.ClusterState(host, fit_cache=memo)
    for n in range(nodes):
        name = f"node-{n:05d}"
        model = MODELS[n % len(MODELS)]
        devices = [
            models.DeviceInfo(
                id=f"GPU-{name}-{i}",
                index=i,
                count=10,
                devmem=MEMORY[model],
                devcore=100,
                type=model,
                numa=i // 4,
                vendor=CW,
            )
            for i in range(DEVICES_PER_NODE)
        ]
        st.set_node(models.NodeView(name=name), {CW: devices})
    names = st.node_names()
    placed: list[str] = []
    serial = 0
    while len(placed) < pods:
        node = rnd.choice(names)
        entry = st.entry(node)
        if entry is None:
            continue
        d = rnd.choice(entry.devices[CW])
        mem = rnd.choice((2000, 4000, 8000, 16000))
        cores = rnd.choice((0, 10, 25))
        if d.totalmem - d.usedmem < mem or d.used >= d.count or d.totalcore - d.usedcores < cores:
            continue
        serial += 1
        p = models.PodView(
            namespace="default",
            name=f"old-{serial}",
            uid=f"old-{serial}",
            containers=(
                models.ContainerView(
                    name="c", limits={R.count: "1", R.memory: str(mem), R.cores: str(cores)}
                ),
            ),
        )
        st.set_pod(p, node, {CW: ((models.ContainerDevice(d.id, CW, mem, cores),),)})
        placed.append(p.uid)
    return st, names, placed


def _pod(k: int, kind: str, limits: dict[str, str], ann: dict[str, str]) -> models.PodView:
    containers = [models.ContainerView(name="main", limits=limits)]
    init: tuple[models.ContainerView, ...] = ()
    if kind == "init+2":
        init = (models.ContainerView(name="warm", limits=dict(limits), init=True),)
        containers.append(models.ContainerView(name="side", limits={R.count: "1", R.memory: "500"}))
    return models.PodView(
        namespace="default",
        name=f"new-{k}",
        uid=f"new-{k}",
        annotations=ann,
        init_containers=init,
        containers=tuple(containers),
    )


def _kind(x: float) -> str:
    if x < 0.45:
        return "single"
    if x < 0.65:
        return "multi"
    if x < 0.80:
        return "type"
    if x < 0.90:
        return "uuid"
    return "init+2"


#: the templated stream: a dozen pod shapes, as deployments and jobs produce them
TEMPLATES: tuple[tuple[str, dict[str, str], dict[str, str]], ...] = (
    ("single", {R.count: "1", R.memory: "3000", R.cores: "10"}, {}),
    ("single", {R.count: "1", R.memory: "6000", R.cores: "20"}, {}),
    ("single", {R.count: "1", R.memory: "12000", R.cores: "0"}, {}),
    ("single", {R.count: "1", R.memory: "1000", R.cores: "10"}, {}),
    ("multi", {R.count: "2", R.memory: "6000", R.cores: "20"}, {}),
    ("multi", {R.count: "4", R.memory: "12000", R.cores: "10"}, {}),
    ("type", {R.count: "1", R.memory: "6000", R.cores: "10"}, {K.use_type: "A100"}),
    ("type", {R.count: "1", R.memory: "3000", R.cores: "0"}, {K.use_type: "H100"}),
    ("type", {R.count: "2", R.memory: "3000", R.cores: "10"}, {K.use_type: "L40S,A100"}),
    ("uuid", {R.count: "1", R.memory: "1000", R.cores: "10"}, {}),
    ("init+2", {R.count: "1", R.memory: "3000", R.cores: "10"}, {}),
    ("init+2", {R.count: "1", R.memory: "6000", R.cores: "0"}, {}),
)
WEIGHTS = (45 / 4,) * 4 + (10.0,) * 2 + (5.0,) * 3 + (10.0,) + (5.0,) * 2


def new_pod(
    k: int, rnd: random.Random, names: list[str], stream: str
) -> tuple[str, models.PodView]:
    """One pod of the stream and its kind (the uuid kind names a random GPU of the cluster)."""
    if stream == "templates":
        kind, base, ann = rnd.choices(TEMPLATES, weights=WEIGHTS)[0]
        limits, ann = dict(base), dict(ann)
    else:
        kind = _kind(rnd.random())
        limits = {
            R.count: str(rnd.choice((2, 4)) if kind == "multi" else 1),
            R.memory: str(rnd.choice((1000, 3000, 6000, 12000))),
            R.cores: str(rnd.choice((0, 10, 20))),
        }
        ann = {K.use_type: rnd.choice(("A100", "H100", "L40S,A100"))} if kind == "type" else {}
    if kind == "uuid":
        ann[K.use_uuid] = f"GPU-{rnd.choice(names)}-{rnd.randrange(DEVICES_PER_NODE)}"
    return kind, _pod(k, kind, limits, ann)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    nodes: int, pods: int, calls: int, seed: int, *, memo: bool, exhaustive: bool, stream: str
) -> None:
    host = plugins.make_plugin_manager(autoload=False, env={})
    rnd = random.Random(seed)
    t0 = time.perf_counter()
    st, names, placed = build(host, nodes, pods, rnd, memo=memo)
    setup = time.perf_counter() - t0
    gc.collect()
    gc.freeze()

    fits = 0
    evaluate: Callable[..., object] = core._evaluate

    def counting(entry: object, plan: object) -> object:
        nonlocal fits
        fits += 1
        return evaluate(entry, plan)

    core._evaluate = counting  # type: ignore[assignment]  # bench-only instrumentation
    times: dict[str, list[float]] = defaultdict(list)
    every: list[float] = []
    fits_per_call: list[int] = []
    unplaced = 0
    started = time.perf_counter()
    try:
        for k in range(calls):
            kind, pod = new_pod(k, rnd, names, stream)
            before = fits
            t = time.perf_counter()
            decision = core.filter_pod(st, host, pod, names, exhaustive=exhaustive)
            dt = time.perf_counter() - t
            fits_per_call.append(fits - before)
            times[kind].append(dt)
            every.append(dt)
            if decision.node is None:
                unplaced += 1
                continue
            st.set_pod(pod, decision.node, decision.devices)  # reserve, as the extender does
            placed.append(pod.uid)
            st.remove_pod(placed.pop(rnd.randrange(len(placed) - 1)))  # churn: density stays
    finally:
        core._evaluate = evaluate  # type: ignore[assignment]
        gc.unfreeze()
    total = time.perf_counter() - started
    ms = 1e3
    mode = f"{'exhaustive' if exhaustive else 'first-fit'}, memo {'on' if memo else 'off'}"
    print(
        f"\n{nodes} nodes x {DEVICES_PER_NODE} devices, {pods} placed pods | {mode} | "
        f"stream: {stream} | set-up {setup:.1f} s"
    )
    print(
        f"  filter over {nodes} candidates, {calls} calls: p50 {pct(every, 0.5) * ms:.2f} ms  "
        f"p99 {pct(every, 0.99) * ms:.2f} ms  max {max(every) * ms:.2f} ms  "
        f"mean {statistics.fmean(every) * ms:.2f} ms"
    )
    print(
        f"  {calls / total:.0f} pods/s (filter + reserve + one removal); unplaced {unplaced}; "
        f"nodes fitted per call: median {statistics.median(fits_per_call):.0f}, "
        f"mean {statistics.fmean(fits_per_call):.0f}"
    )
    for kind in ("single", "multi", "type", "uuid", "init+2"):
        if times[kind]:
            v = times[kind]
            print(
                f"    {kind:<7} n={len(v):<5} p50 {pct(v, 0.5) * ms:7.2f} ms   "
                f"p99 {pct(v, 0.99) * ms:7.2f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--pods-per-node", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=2000, help="filter calls per memo mode")
    parser.add_argument(
        "--cold-calls", type=int, default=100, help="filter calls without memo at 1000 nodes"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for nodes in args.nodes:
        pods = int(nodes * args.pods_per_node)
        scale = 1000 / nodes
        cold = max(int(args.cold_calls * scale), 20)
        for exhaustive, memo, stream, calls in (
            (True, True, "templates", args.calls),
            (True, True, "random", args.calls),
            (False, True, "templates", args.calls),
            (True, False, "templates", cold),
            (False, False, "templates", cold),
        ):
            run(nodes, pods, calls, args.seed, memo=memo, exhaustive=exhaustive, stream=stream)


if __name__ == "__main__":
    main()
