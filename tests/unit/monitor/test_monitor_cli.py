"""``hami monitor`` options: HAMi's environment defaults, flags, durations, errors."""

from __future__ import annotations

import pytest

from hami_core_fw import cli, errors
from hami_core_fw.monitor import app
from hami_core_fw.monitor import cli as monitor_cli


def parse(*argv: str):
    if not cli._EXTRA_COMMANDS:
        cli._load_extra_commands()
    parser, handlers = cli.build_parser()
    args = parser.parse_args(["monitor", *argv])
    assert handlers["monitor"] is monitor_cli.run_command
    return args


def test_defaults_follow_hami_environment():
    env = {
        "NODE_NAME": "n1",
        "HOOK_PATH": "/hook/vgpu",
        "KUBECONFIG": "/k",
        "HAMI_RESYNC_INTERVAL": "90s",
    }
    opts = monitor_cli.build(parse(), env)
    assert opts == app.MonitorOptions(
        node_name="n1",
        hook_path="/hook/vgpu",
        metrics_bind=":9394",
        kubeconfig="/k",
        resync_interval_s=90.0,
    )


def test_without_environment():
    opts = monitor_cli.build(parse("--node-name", "n2"), {})
    assert (opts.hook_path, opts.kubeconfig, opts.resync_interval_s) == (
        "/usr/local/vgpu",
        None,
        300.0,
    )


def test_flags_win():
    args = parse(
        "--node-name",
        "n3",
        "--hook-path",
        "/h",
        "--resync-interval",
        "1h30m",
        "--vendor",
        "fake",
        "--vendor",
        "nvidia",
        "--vendor",
        "fake",
        "--legacy-metrics",
        "--no-feedback",
        "--metrics-bind-address",
        "127.0.0.1:9999",
        "--scan-interval",
        "2",
    )
    opts = monitor_cli.build(args, {"NODE_NAME": "ignored", "HAMI_RESYNC_INTERVAL": "bad"})
    assert opts.node_name == "n3" and opts.hook_path == "/h"
    assert opts.resync_interval_s == 5400.0 and opts.scan_interval_s == 2.0
    assert opts.vendors == ("fake", "nvidia")
    assert opts.legacy_metrics and not opts.feedback
    assert opts.metrics_bind == "127.0.0.1:9999"


def test_every_problem_at_once():
    with pytest.raises(errors.ConfigError) as info:
        monitor_cli.build(
            parse("--metrics-bind-address", "nope"), {"HAMI_RESYNC_INTERVAL": "5 minutes"}
        )
    problems = info.value.problems
    assert len(problems) == 3
    assert "node name is unknown" in problems[0]
    assert "HAMI_RESYNC_INTERVAL" in problems[1]
    assert "'nope' is not host:port" in problems[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("300", 300.0),
    ],
)
def test_parse_duration(text, seconds):
    assert app.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m garbage", "0", "-1", "0s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        app.parse_duration(text)
