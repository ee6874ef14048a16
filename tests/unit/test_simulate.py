"""``hami simulate``: the built-in example, policies compared, output formats, spec errors."""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hami_core_fw import cli, errors, plugins
from hami_core_fw.simulate import runner, spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def host() -> plugins.PluginHost:
    return plugins.make_plugin_manager(autoload=False, env={})


@pytest.fixture
def example(host: plugins.PluginHost) -> runner.Scenario:
    return runner.load(host, None, None)


def test_example_copies_match_the_package_data() -> None:
    installed = importlib.resources.files("hami_core_fw.simulate").joinpath("examples")
    for name in (spec.EXAMPLE_CLUSTER, spec.EXAMPLE_WORKLOAD):
        text = installed.joinpath(name).read_text(encoding="utf-8")
        assert (REPO / "examples" / "simulate" / name).read_text(encoding="utf-8") == text


def _outcome(result: runner.RunResult, pod: str) -> runner.PodOutcome:
    return next(o for o in result.outcomes if o.pod == pod)


def test_example_binpack_uses_fewer_devices_than_spread(
    host: plugins.PluginHost, example: runner.Scenario
) -> None:
    assert len(example.nodes) == 14 and len(example.workload) == 64 and len(example.existing) == 2
    binpack = runner.run(host, example, node_policy="binpack", gpu_policy="binpack")
    spread = runner.run(host, example, node_policy="spread", gpu_policy="spread")
    b, s = binpack.summary(), spread.summary()
    assert b["devices_in_use"] < s["devices_in_use"]
    assert b["nodes_in_use"] < s["nodes_in_use"]
    assert b["memory_used_pct_of_devices_in_use"] > s["memory_used_pct_of_devices_in_use"]
    assert [o.node for o in binpack.outcomes] != [o.node for o in spread.outcomes]
    # binpack keeps an Ascend node whole for the 8-device training job; spread does not
    assert _outcome(binpack, "ascend/pangu-train").node is not None
    assert _outcome(spread, "ascend/pangu-train").node is None
    for result in (binpack, spread):
        # the research quota admits 8 notebooks of 24000 MiB (200000 MiB)
        unplaced = [o.pod for o in result.outcomes if o.node is None]
        assert "research/notebook-8" in unplaced and "research/notebook-7" not in unplaced
        assert "ResourceQuotaNotFit" in _outcome(result, "research/notebook-9").reasons
        giant = _outcome(result, "training/giant")
        assert list(giant.reasons) == ["NodeInsufficientDevice"]
        assert len(giant.reasons["NodeInsufficientDevice"]) == 14
        # an init container with a GPU, a sidecar without, then the GPU container: 3 entries
        vllm = _outcome(result, "inference/vllm-warmup-0")
        (entries,) = vllm.devices.values()
        assert vllm.containers == ("warmup", "metrics-sidecar", "vllm")
        assert [len(e) for e in entries] == [1, 0, 1]
        # no device is over-committed
        for d in result.devices:
            assert d.usedmem <= d.totalmem and d.usedcores <= d.totalcore and d.used <= d.count


def test_existing_pods_hold_their_devices_under_every_policy(
    host: plugins.PluginHost, example: runner.Scenario
) -> None:
    for policies in (("binpack", "binpack"), ("spread", "spread")):
        result = runner.run(host, example, node_policy=policies[0], gpu_policy=policies[1])
        a100 = [d for d in result.devices if d.node == "a100-0"]
        assert sum(d.usedcores for d in a100) >= 200  # bert-pretrain: two whole cards


def test_cli_default_runs_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate"]) == 0
    out = capsys.readouterr().out
    for section in ("PLACEMENTS", "UNPLACED (", "NODES", "DEVICES", "SUMMARY"):
        assert section in out
    assert "training/giant" in out and "14 nodes NodeInsufficientDevice" in out
    assert "fragmentation (stranded free MiB)" in out


def test_cli_compare_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--compare", "binpack,spread"]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("SUMMARY") :]
    header = summary.splitlines()[1].split()
    assert header == ["binpack", "spread"]
    devices_row = next(line for line in summary.splitlines() if line.startswith("devices in use"))
    used = [int(cell.split("/")[0]) for cell in devices_row.split()[3:]]
    assert used[0] < used[1]


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "-o", "json", "--compare", "binpack/spread,spread"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["node_policy"], r["gpu_policy"]) for r in doc["results"]] == [
        ("binpack", "spread"),
        ("spread", "spread"),
    ]
    first = doc["results"][0]
    assert first["summary"]["pods"] == 64
    placed = next(p for p in first["placements"] if p["pod"] == "training/llama-finetune-0")
    assert placed["containers"] == ["fetch-weights", "trainer"]
    assert [len(e) for e in placed["devices"]["FAKE"]] == [0, 4]


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CLUSTER_OK = """
nodes:
  - name: n
    devices: [{vendor: fake, type: NVIDIA-L4, memory: 10000}]
"""
WORKLOAD_OK = """
pods:
  - name: p
    containers: [{limits: {hami.io/fake-gpu: 1, hami.io/fake-gpumem: 1000}}]
"""


@pytest.mark.parametrize(
    ("cluster", "workload", "bad", "fragments"),
    [
        (
            "nodes:\n  - name: n\n    devices: [{vendor: fake, type: X, memory: lots}]\n",
            WORKLOAD_OK,
            "cluster",
            ["nodes[0].devices[0].memory", "write a whole number", "'lots'"],
        ),
        (
            "nodes:\n  - name: n\n    devices: [{vendor: fake, type: X, memory: 1, cuont: 2}]\n",
            WORKLOAD_OK,
            "cluster",
            ["nodes[0].devices[0].cuont", "remove it or check the spelling"],
        ),
        (
            "nodes:\n  - name: n\n    devices: [{vendor: nosuchvendor, type: X, memory: 1}]\n",
            WORKLOAD_OK,
            "cluster",
            ["nodes[0].devices[0].vendor", "'nosuchvendor' is not installed", "installed: fake"],
        ),
        (
            CLUSTER_OK + "pods:\n  - {name: r, node: ghost, containers: [{name: c}]}\n",
            WORKLOAD_OK,
            "cluster",
            ["pods[0].node", "unknown node 'ghost'"],
        ),
        (
            "nodes:\n  - name: n\n    devices: [{vendor: fake, type: X, memory: 1}\n",
            WORKLOAD_OK,
            "cluster",
            ["line 4", "invalid YAML", "fix the syntax"],
        ),
        ("nodes: []\n", WORKLOAD_OK, "cluster", ["nodes: no node is defined", "add at least one"]),
        (
            CLUSTER_OK,
            "pods:\n  - name: p\n    containers: [{limits: {hami.io/fake-gpucores: 150, "
            "hami.io/fake-gpu: 1}}]\n",
            "workload",
            ["pods[0]", "'hami.io/fake-gpucores': 150 is above 100", "fix the resource value"],
        ),
        (
            CLUSTER_OK,
            "pods:\n  - {name: p, replicas: -1, containers: [{name: c}]}\n",
            "workload",
            ["pods[0].replicas", "greater than or equal to 0"],
        ),
        (
            CLUSTER_OK,
            "pods:\n  - {name: p, containers: []}\n",
            "workload",
            ["pods[0].containers: no container", "add at least one"],
        ),
        (CLUSTER_OK, "- just a list\n", "workload", ["(top level)", "mapping"]),
    ],
)
def test_malformed_spec_is_one_clear_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cluster: str,
    workload: str,
    bad: str,
    fragments: list[str],
) -> None:
    paths = {
        "cluster": _write(tmp_path, "cluster.yaml", cluster),
        "workload": _write(tmp_path, "workload.yaml", workload),
    }
    rc = cli.main(["simulate", "--cluster", paths["cluster"], "--workload", paths["workload"]])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hami simulate: error: {paths[bad]} has ")
    for fragment in fragments:
        assert fragment in err


def test_unreadable_file_and_bad_compare(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--cluster", "/no/such/file.yaml"]) == 1
    assert "/no/such/file.yaml" in capsys.readouterr().err
    with pytest.raises(errors.ConfigError, match="empty policy"):
        runner.parse_compare("binpack,,spread")
    assert runner.parse_compare(" binpack , spread/binpack") == [
        ("binpack", "binpack"),
        ("spread", "binpack"),
    ]


def test_fragmentation_counts_free_memory_no_request_can_use(
    tmp_path: Path, host: plugins.PluginHost
) -> None:
    cluster = _write(
        tmp_path,
        "c.yaml",
        """
nodes:
  - name: n
    devices: [{vendor: fake, type: NVIDIA-L4, count: 2, memory: 10000}]
pods:
  - name: old
    node: n
    containers: [{limits: {hami.io/fake-gpu: 1, hami.io/fake-gpumem: 7000}}]
""",
    )
    workload = _write(
        tmp_path,
        "w.yaml",
        """
pods:
  - name: big
    replicas: 2
    containers: [{limits: {hami.io/fake-gpu: 1, hami.io/fake-gpumem: 5000}}]
""",
    )
    scenario = runner.load(host, cluster, workload)
    result = runner.run(host, scenario, gpu_policy="binpack")
    # the old pod holds card 1; card 0 takes both 5000 MiB pods; card 1 keeps 3000 MiB that no
    # request of the workload can use
    assert [o.node for o in result.outcomes] == ["n", "n"]
    assert [d.usedmem for d in result.devices] == [10000, 7000]
    assert [d.stranded for d in result.devices] == [0, 3000]
    assert result.summary()["stranded_mib"] == 3000
    assert result.summary()["stranded_pct_of_free"] == 100.0


def test_node_selector_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = _write(
        tmp_path,
        "c.yaml",
        """
nodes:
  - name: gpu-{i}
    replicas: 3
    labels: {pool: a}
    devices: [{vendor: fake, type: NVIDIA-L4, count: 2, memory: 100000, split: 200}]
""",
    )
    workload = _write(
        tmp_path,
        "w.yaml",
        """
pods:
  - name: tiny
    replicas: 600
    containers: [{limits: {hami.io/fake-gpu: 1, hami.io/fake-gpumem: 10}}]
  - name: lost
    nodeSelector: {pool: b}
    containers: [{limits: {hami.io/fake-gpu: 1}}]
""",
    )
    assert cli.main(["simulate", "--cluster", cluster, "--workload", workload]) == 0
    captured = capsys.readouterr()
    assert "simulate binpack/spread: 601/601 pods" in captured.err
    assert "no node matches nodeSelector {'pool': 'b'}" in captured.out
    assert "placed 600/601" not in captured.out  # the summary is a table row
    assert "600/601" in captured.out
