"""CPU and memory of many capture points: one `hopscope agent` (a thread per point) beside one
`hopscope probe` process per point, on the same interfaces, publishing to the same Kafka broker.

Run (root, Kafka): .venv/bin/python bench/agent_points.py [--points 8,16] [--pps 0,200] [--seconds 20]
                   [--kafka 127.0.0.1:9092]

Lab: POINTS/2 pairs of network namespaces joined by veth pairs, made here and always removed; each pair
optionally carries PPS UDP datagrams a second (100-byte payloads, from a Python sender in the pair's first
namespace), so every point sees PPS packets a second. The agent is shown the namespaces through a
directory of symbolic links of its own (it sees nothing else on the machine).

Printed per (points, pps) and mode: the CPU time the process(es) used during the first 8 s (start-up:
interpreter, numpy, rings, Kafka connections), the CPU % over the next SECONDS (steady state), and the
resident memory. The topics written are deleted at the end. Both run the same capture code; the
agent's rings hand over a partly filled block after 200 ms (``hopscope.probes.agent.RETIRE_MS``), the
probe's after 50 ms, which is most of the steady-state difference at low packet rates (each block
handed over costs a fixed ~1 ms); idle, start-up and memory figures are threads against processes.

Ends with one ``bench:`` line per figure, the agent's beside the probes' (ratio: the probes' figure over
the agent's, higher is better for the agent):

    bench: agent_points_<points>p_<pps>pps_steady_cpu <cpu> % peer probes <cpu> % ratio <r>
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from _lines import bench_line

PYTHON = sys.executable
STARTUP_S = 8.0
TAG = os.getpid() % 10000


@dataclass
class Pair:
    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    index: int


@dataclass
class Figures:
    startup_cpu_s: float
    steady_cpu_pct: float
    rss_mb: float


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@contextmanager
def lab(points: int, pps: int, links: Path) -> Iterator[list[Pair]]:
    pairs: list[Pair] = []
    senders: list[subprocess.Popen[bytes]] = []
    try:
        for i in range((points + 1) // 2):
            pair = Pair(f"hsagb{TAG}a{i}", f"hsagb{TAG}b{i}", f"hab{TAG % 1000}a{i}", f"hab{TAG % 1000}b{i}", i)
            pairs.append(pair)
            _sh("ip", "netns", "add", pair.ns_a)
            _sh("ip", "netns", "add", pair.ns_b)
            _sh("ip", "link", "add", pair.dev_a, "netns", pair.ns_a, "type", "veth", "peer", "name", pair.dev_b,
                "netns", pair.ns_b)  # fmt: skip
            for ns, dev, host in ((pair.ns_a, pair.dev_a, 1), (pair.ns_b, pair.dev_b, 2)):
                _sh("ip", "-n", ns, "addr", "add", f"10.252.{i}.{host}/24", "dev", dev)
                _sh("ip", "-n", ns, "link", "set", dev, "up")
            (links / f"a{i}").symlink_to(f"/var/run/netns/{pair.ns_a}")
            (links / f"b{i}").symlink_to(f"/var/run/netns/{pair.ns_b}")
            if pps:
                send = (f"import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nwhile True:\n"
                        f"    s.sendto(b'x' * 100, ('10.252.{i}.2', 9999))\n    time.sleep({1 / pps})")  # fmt: skip
                senders.append(subprocess.Popen(["ip", "netns", "exec", pair.ns_a, PYTHON, "-c", send]))
        yield pairs
    finally:
        for proc in senders:
            proc.kill()
            proc.wait()
        for pair in pairs:
            subprocess.run(["ip", "netns", "del", pair.ns_a], capture_output=True)
            subprocess.run(["ip", "netns", "del", pair.ns_b], capture_output=True)


def agent_command(links: Path, kafka: str, prefix: str, work: Path) -> list[list[str]]:
    config = {
        "schema": "hopscope.agent/1", "host": "bench",
        "interfaces": {"include": rf"hab{TAG % 1000}[ab]\d+", "rescan_s": 5},
        "namespaces": {"root": False, "netns_dirs": [str(links)], "proc_root": str(work / "no-proc")},
        "capture": {"ring_mb": 2}, "kafka": {"bootstrap": kafka, "topic_prefix": prefix}, "report_interval_s": 10,
    }  # fmt: skip
    (work / "agent.yaml").write_text(yaml.safe_dump(config))
    return [[PYTHON, "-m", "hopscope", "agent", "--config", str(work / "agent.yaml")]]


def probe_commands(pairs: list[Pair], kafka: str, prefix: str) -> list[list[str]]:
    return [[PYTHON, "-m", "hopscope", "probe", "--iface", dev, "--netns", ns, "--point", dev, "--kafka", kafka,
             "--topic-prefix", prefix, "--ring-mb", "2"]
            for p in pairs for ns, dev in ((p.ns_a, p.dev_a), (p.ns_b, p.dev_b))]  # fmt: skip


def measure(commands: list[list[str]], seconds: float) -> Figures:
    procs = [subprocess.Popen(cmd, stderr=subprocess.DEVNULL) for cmd in commands]
    try:
        time.sleep(STARTUP_S)
        started = sum(_cpu_s(p.pid) for p in procs)
        rss = sum(_rss_mb(p.pid) for p in procs)
        time.sleep(seconds)
        steady = sum(_cpu_s(p.pid) for p in procs) - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    return Figures(round(started, 2), round(100 * steady / seconds, 1), round(rss))


def delete_topics(kafka: str, prefix: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        ours = [t for t in admin.list_topics() if t.startswith(f"{prefix}.")]
        if ours:
            admin.delete_topics(ours)
    finally:
        admin.close()


def run_one(points: int, pps: int, seconds: float, kafka: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        links = work / "netns"
        links.mkdir()
        prefix = f"benchagent{TAG}"
        try:
            with lab(points, pps, links) as pairs:
                agent = measure(agent_command(links, kafka, prefix, work), seconds)
                probes = measure(probe_commands(pairs, kafka, prefix), seconds)
        finally:
            delete_topics(kafka, prefix)
    name = f"agent_points_{points}p_{pps}pps"
    for mode, f in (("agent", agent), ("probes", probes)):
        print(f"{points} points at {pps} packets/s each, {mode}: start-up {f.startup_cpu_s} CPU s, "
              f"steady {f.steady_cpu_pct} % CPU, {f.rss_mb} MB resident")
    for figure, unit, ours, peer in (("steady_cpu", "%", agent.steady_cpu_pct, probes.steady_cpu_pct),
                                     ("startup_cpu", "s", agent.startup_cpu_s, probes.startup_cpu_s),
                                     ("rss", "MB", agent.rss_mb, probes.rss_mb)):  # fmt: skip
        # ratio: the probes' figure over the agent's, higher is better for the agent
        print(bench_line(f"{name}_{figure}", ours, unit, ("probes", peer), peer / ours if ours else None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="8,16", help="capture points, comma-separated (even numbers)")
    parser.add_argument("--pps", default="0,200", help="packets a second each point sees, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state measurement per run")
    parser.add_argument("--kafka", default="127.0.0.1:9092", metavar="BOOTSTRAP")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/agent_points.py needs root (network namespaces)")
    for points in (int(p) for p in args.points.split(",")):
        for pps in (int(p) for p in args.pps.split(",")):
            run_one(points, pps, args.seconds, args.kafka)


if __name__ == "__main__":
    main()
