"""``hopscope agent``: capture every interface the configuration selects, on this host, into Kafka.

    hopscope agent --config FILE [--seconds N] [--buffer-batches N] [--metrics-port PORT [--metrics-host HOST]]

The configuration file is documented in deploy/k8s/README.md ("Agent configuration"). The agent runs
until SIGINT or SIGTERM (or ``--seconds``), then stops every capture, sends what it holds for a few
seconds, prints its summary as one JSON line on standard error and exits 0. Kafka being unreachable is
not an error: records wait in a bounded buffer (``--buffer-batches``), the oldest dropped and counted
beyond it, until the broker returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from hopscope import metrics
from hopscope.cli import stop_on_signal
from hopscope.probes.agent_buffer import DEFAULT_MAX_BATCHES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", required=True, metavar="FILE", help="the agent's YAML configuration")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until signalled)")
    p.add_argument("--buffer-batches", type=int, default=DEFAULT_MAX_BATCHES, metavar="N",
                   help=f"record batches held while Kafka is unreachable (default: {DEFAULT_MAX_BATCHES}); "
                   "beyond, the oldest are dropped and counted")  # fmt: skip
    metrics.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from hopscope.errors import ConfigError
    from hopscope.probes.agent import Agent
    from hopscope.probes.agent_config import load_config

    if args.buffer_batches < 1:
        raise ConfigError("--buffer-batches: must be at least 1")
    agent = Agent(load_config(args.config), max_batches=args.buffer_batches)
    endpoint = None
    if args.metrics_port is not None:
        from prometheus_client import CollectorRegistry

        from hopscope.metrics.capture import AgentCollector

        registry = CollectorRegistry()
        registry.register(AgentCollector(agent))
        endpoint = metrics.serve(args, registry)

    try:
        with stop_on_signal(agent.stop):
            summary = agent.run(args.seconds)
    finally:
        if endpoint is not None:
            endpoint.close()
    print(json.dumps({"agent": agent.config.host, **asdict(summary)}, sort_keys=True), file=sys.stderr)
    return 0
