"""``hami simulate``: run a workload over a declared cluster with the real scheduling core.

With no arguments it runs the built-in example (``hami_core_fw/simulate/examples/``, copied under
``examples/simulate/`` in the repository). Output goes to stdout; progress, for workloads of
:data:`PROGRESS_MIN_PODS` pods or more, to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Final, TextIO

from hami_core_fw import config, plugins
from hami_core_fw.scheduler import policy
from hami_core_fw.simulate import report, runner

PROGRESS_MIN_PODS: Final = 500

Handler = Callable[[argparse.Namespace], int]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], handlers: dict[str, Handler]
) -> None:
    """Add the ``simulate`` subcommand (called by :mod:`hami_core_fw.cli`)."""
    p = subparsers.add_parser(
        "simulate",
        help="place a workload on a declared cluster with the real scheduler core (no cluster)",
        description=(
            "Run the scheduling core over a cluster spec and a workload (YAML). Without files it "
            "runs a built-in mixed-vendor example. Prints placements, per-node and per-device "
            "utilisation, fragmentation (free memory no request of the workload can use) and the "
            "pods that did not fit, with HAMi's reasons."
        ),
    )
    p.add_argument("--cluster", metavar="FILE", help="cluster spec (default: built-in example)")
    p.add_argument("--workload", metavar="FILE", help="workload (default: built-in example)")
    p.add_argument(
        "--node-policy",
        default=policy.DEFAULT_NODE_POLICY,
        help="default node policy: binpack or spread (default: %(default)s)",
    )
    p.add_argument(
        "--gpu-policy",
        default=policy.DEFAULT_GPU_POLICY,
        help="default GPU policy: binpack, spread, topology-aware, mutex or a comma list "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--compare",
        metavar="POLICIES",
        help="run several policies side by side, e.g. binpack,spread (each sets the node and GPU "
        "policy) or binpack/spread,spread/binpack (node/GPU)",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--device-config", help="HAMi device-config.yaml to build vendors from")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help=f"progress on stderr (auto: for {PROGRESS_MIN_PODS}+ pods)",
    )
    handlers["simulate"] = _cmd_simulate


def _host(args: argparse.Namespace) -> plugins.PluginHost:
    path = args.device_config or config.Settings().device_config_file
    device_config = config.load_device_config(path) if path else config.DeviceConfig()
    return plugins.make_plugin_manager(device_config=device_config)


def _progress(label: str, stream: TextIO) -> runner.Progress:
    """Report about every 5 %: one line each, or one updated line on a terminal."""

    def report_(done: int, total: int) -> None:
        if done % max(total // 20, 1) and done != total:
            return
        text = f"simulate {label}: {done}/{total} pods"
        if stream.isatty():
            stream.write(f"\r{text}" + ("\n" if done == total else ""))
        else:
            stream.write(text + "\n")
        stream.flush()

    return report_


def _cmd_simulate(args: argparse.Namespace) -> int:
    host = _host(args)
    scenario = runner.load(host, args.cluster, args.workload)
    if args.compare:
        policies = runner.parse_compare(args.compare)
    else:
        policies = [(args.node_policy, args.gpu_policy)]
    show = args.progress == "always" or (
        args.progress == "auto" and len(scenario.workload) >= PROGRESS_MIN_PODS
    )
    results = []
    for node_policy, gpu_policy in policies:
        label = node_policy if node_policy == gpu_policy else f"{node_policy}/{gpu_policy}"
        results.append(
            runner.run(
                host,
                scenario,
                node_policy=node_policy,
                gpu_policy=gpu_policy,
                progress=_progress(label, sys.stderr) if show else None,
            )
        )
    if args.output == "json":
        sys.stdout.write(json.dumps(report.render_json(scenario, results), indent=2) + "\n")
    else:
        sys.stdout.write(report.render_table(scenario, results))
    return 0
