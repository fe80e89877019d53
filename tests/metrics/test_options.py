"""``--metrics-port`` and ``--metrics-host``: the same options on every command that serves metrics, checked
when the command line is parsed (before anything connects)."""

from __future__ import annotations

import pytest

from hopscope.cli import command_parser

REQUIRED = {
    "probe": ["--iface", "lo", "--point", "p", "--out", "x.jsonl"],
    "agent": ["--config", "agent.yaml"],
    "correlate": ["--kafka", "127.0.0.1:9092", "--store", "chdb:///tmp/x"],
    "ingest": ["--kafka", "127.0.0.1:9092", "--store", "chdb:///tmp/x"],
}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_metrics_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = command_parser(command)
    default = parser.parse_args(REQUIRED[command])
    assert (default.metrics_port, default.metrics_host) == (None, "127.0.0.1")  # no endpoint unless asked
    given = parser.parse_args([*REQUIRED[command], "--metrics-port", "9464", "--metrics-host", "::1"])
    assert (given.metrics_port, given.metrics_host) == (9464, "::1")
    for bad, message in ((["--metrics-port", "65536"], "'65536' is not a TCP port"),
                         (["--metrics-port", "x"], "'x' is not a TCP port"),
                         (["--metrics-host", "localhost"], "'localhost' is not an IP address")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*REQUIRED[command], *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
