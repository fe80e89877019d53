"""Live probe throughput at rising packet rates: `hopscope probe` (and tcpdump) on a flood between two namespaces.

Run (root): .venv/bin/python bench/probe_live.py [--rates 400000,600000,800000,1000000,0] [--seconds 5]
            [--frames 1000000] [--ring-mb 128] [--rps] [--profile] [--skip-tcpdump] [--l7] [--agent BOOTSTRAP]

Lab: two network namespaces joined by a veth pair, made here and always removed. The traffic is the
realistic mix of bench/probe_speed.py (var/bench/probe_mix_v2_1000000.pcap, generated if missing: many
concurrent TCP connections with handshakes, HTTP-like requests, multi-segment responses, FIN/RST closes,
plus DNS over UDP; 613 bytes per frame on average), replayed in namespace A on CPU 0 by ``lab/flood.c``
(C; sendmmsg on a packet socket with the qdisc bypassed, 256 frames per call; paced to the rate asked,
0 = flat out; each replay cycle renumbers the IPv4 addresses so every cycle is new connections). The
frames are addressed to a MAC that is not B's, so B's stack drops each one right after the packet taps.
The probe runs on CPU 1 in namespace B on B's veth end (TPACKET_V3 ring -> decoder -> flow meter -> L7),
records to a file.

Printed per rate: offered pps (what the generator sent per second), captured pps (frames the probe read
per second of flood), kernel drops (PACKET_STATISTICS), the probe's CPU % during the flood (its process's
user + system time over the flood's wall time, from /proc), and records emitted; the bench lines add the
probe's peak resident memory (VmHWM: its ring, flow table and L7 state included). On a veth pair the
receive path (the kernel copying each frame into the probe's ring) runs in the sender's softirq on
CPU 0, so the generator's core bounds the offered rate. ``--rps`` steers B's receive work to CPU 1 (the
probe's core) instead: the generator then offers more, and the probe shares its core with that kernel
work (reported as CPU 1's softirq %).

Ends with one ``bench:`` line per figure and rate (``probe_live_<rate>pps_...``, ``probe_live_flat_out_...``);
flat out, the captured rate and kernel drops stand beside tcpdump's on the same flood (ratio: the probe's
captured rate over tcpdump's, higher is better; for drops, tcpdump's over the probe's).

``--agent BOOTSTRAP`` also runs ``hopscope agent`` at each rate on the same core, capturing B's veth end
(configured to see only that namespace and interface, with the probe's ring size and L7 setting) and
publishing to that Kafka: the probe's capture inside the agent's process, with its buffer and Kafka
sender; its CPU %, kernel drops and peak memory stand beside the probe's (ratio: the probe's over the
agent's).

``--profile`` runs the probe at the last rate under cProfile (var/bench/probe_live.prof) and prints the
top functions.

``--nice N`` runs the probe and the CPU 0 generator each in a session of its own whose scheduler
autogroup gets nice N (with autogroups, a plain nice only weighs a process against its own session's,
and other sessions' work on a shared machine starved both). ``--second-generator P`` adds a generator on
the probe's CPU below the probe's priority: one core cannot both send and receive more than ~530k of
these frames per second (the veth receive path runs in the sender's context).

Figures: docs/DESIGN.md, "Measured figures".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from _lines import bench_line

from hopscope.lab.flood import FloodResult, build_flood, prioritized, run_flood
from hopscope.lab.services import start_watched

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("HOPSCOPE_VAR", ROOT / "var"))
NS_A, NS_B = f"hsbench{os.getpid()}a", f"hsbench{os.getpid()}b"
VETH_A, VETH_B = f"hbva{os.getpid() % 10000}", f"hbvb{os.getpid() % 10000}"
PYTHON = sys.executable
GEN_CPU, PROBE_CPU = "0", "1"
MIX_PACKETS = 1_000_000


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def setup(rps: bool) -> None:
    _sh("ip", "netns", "add", NS_A)
    _sh("ip", "netns", "add", NS_B)
    _sh("ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B)
    _sh("ip", "-n", NS_A, "link", "set", VETH_A, "up")
    _sh("ip", "-n", NS_B, "link", "set", VETH_B, "up")
    if rps:  # B's receive work (taps, ring copy, IP drop) on the probe's CPU instead of the sender's
        mask = f"{1 << int(PROBE_CPU):x}"
        _sh("ip", "netns", "exec", NS_B, "sh", "-c", f"echo {mask} > /sys/class/net/{VETH_B}/queues/rx-0/rps_cpus")


def teardown() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def traffic() -> Path:
    """The probe_speed mix capture (generated once, cached under var/bench/)."""
    capture = VAR / "bench" / f"probe_mix_v2_{MIX_PACKETS}.pcap"
    if not capture.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from probe_speed import generate

        capture.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {capture} ...", flush=True)
        generate(capture, MIX_PACKETS)
    return capture


def flood(capture: Path, pps: int, args: argparse.Namespace) -> FloodResult:
    """The flood from CPU 0; with ``--second-generator PRIORITY`` also from the probe's CPU (half the rate
    each, addresses of their own) at a lower priority than the probe ("idle": SCHED_IDLE; a number: that
    nice level in an autogroup of its own), so the probe's idle time sends too. Returns the sum."""
    kw = {"seconds": args.seconds, "netns": NS_A, "max_frames": args.frames}
    if not args.second_generator:
        return run_flood(VETH_A, capture, pps=pps, cpu=GEN_CPU, priority=args.nice, **kw)  # type: ignore[arg-type]
    results: list[FloodResult] = []
    second = threading.Thread(
        target=lambda: results.append(
            run_flood(VETH_A, capture, pps=pps // 2, cpu=PROBE_CPU, priority=args.second_generator, tag=1, **kw)  # type: ignore[arg-type]
        )
    )
    second.start()
    first = run_flood(VETH_A, capture, pps=pps - pps // 2, cpu=GEN_CPU, priority=args.nice, **kw)  # type: ignore[arg-type]
    second.join()
    both = [first, *results]
    return FloodResult(
        sent=sum(r.sent for r in both), seconds=max(r.seconds for r in both), frames=first.frames,
        cycles=sum(r.cycles for r in both), errors=sum(r.errors for r in both),
    )  # fmt: skip


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory of process ``pid`` (VmHWM), MB; 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) / 1024 if found else 0.0


def _softirq_s(cpu: str) -> float:
    """Softirq seconds CPU ``cpu`` has spent since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            return int(line.split()[7]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def bench_probe(
    capture: Path, pps: int, args: argparse.Namespace, profile: str = "", backlog: bool = False
) -> dict[str, object]:
    """The probe on CPU 1 during one flood at ``pps`` (0: flat out). With ``backlog`` the probe is stopped
    (SIGSTOP) while the flood fills its ring (``--backlog-mb``) and continued afterwards: it drains a full
    ring at its own top speed, whatever rate the generator reached."""
    out = os.path.join(args.tmp, "probe.hsrb")
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    probe = [PYTHON, *prof, "-m", "hopscope", "-v", "probe"]
    cmd = ["ip", "netns", "exec", NS_B, "taskset", "-c", PROBE_CPU,
           *(prioritized(args.nice, probe) if args.nice else probe),
           "--iface", VETH_B, "--point", "bench", "--out", out, "--report-interval", "2",
           "--ring-mb", str(args.backlog_mb if backlog else args.ring_mb),
           *([] if args.l7 else ["--no-l7"])]  # fmt: skip
    watched = start_watched(cmd, "capturing on", cwd=ROOT)  # cwd: the in-tree package and kernels
    proc = watched.proc
    try:
        time.sleep(0.5)
        if backlog:
            proc.send_signal(signal.SIGSTOP)
        cpu_before, softirq_before = _proc_cpu_s(proc.pid), _softirq_s(PROBE_CPU)
        gen = flood(capture, pps, args)
        cpu_s, softirq_s = _proc_cpu_s(proc.pid) - cpu_before, _softirq_s(PROBE_CPU) - softirq_before
        if backlog:
            proc.send_signal(signal.SIGCONT)
        time.sleep(4.0 if backlog else 1.0)
        rss_mb = _peak_rss_mb(proc.pid)  # the probe itself: ip netns exec and taskset exec it
    finally:
        proc.send_signal(signal.SIGTERM)
        watched.finish(300)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed ({proc.returncode}):\n{''.join(watched.lines)}")
    summary = json.loads(watched.lines[-1])
    return {"target": pps, "generator": gen, "summary": summary, "cpu_s": cpu_s, "softirq_s": softirq_s,
            "rss_mb": rss_mb}


def _agent_config(args: argparse.Namespace, prefix: str) -> Path:
    """A `hopscope agent` configuration that captures B's veth end only (its namespace through a directory of
    one link, none through processes), with the probe's ring size and L7 setting, into Kafka."""
    netns_dir, no_procs = Path(args.tmp) / "netns", Path(args.tmp) / "no-processes"
    netns_dir.mkdir(exist_ok=True)
    no_procs.mkdir(exist_ok=True)
    if not (netns_dir / "b").is_symlink():
        (netns_dir / "b").symlink_to(f"/var/run/netns/{NS_B}")
    config = Path(args.tmp) / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "schema": "hopscope.agent/1", "host": "bench",
        "interfaces": {"include": VETH_B, "rescan_s": 60},
        "namespaces": {"root": False, "netns_dirs": [str(netns_dir)], "proc_root": str(no_procs)},
        "capture": {"l7": args.l7, "ring_mb": args.ring_mb},
        "kafka": {"bootstrap": args.agent, "topic_prefix": prefix}, "report_interval_s": 2,
    }))  # fmt: skip
    return config


def bench_agent(capture: Path, pps: int, args: argparse.Namespace) -> dict[str, object]:
    """`hopscope agent` on CPU 1 capturing B's veth end during one flood at ``pps``, publishing to Kafka
    (``--agent BOOTSTRAP``): the probe's capture in the agent's process, with its buffer and sender."""
    from hopscope.lab.live import bound_packet_sockets

    cmd = ["taskset", "-c", PROBE_CPU, PYTHON, "-m", "hopscope", "-v", "agent",
           "--config", str(_agent_config(args, args.agent_prefix))]  # fmt: skip
    watched = start_watched(cmd, "agent: capturing", cwd=ROOT)
    proc = watched.proc
    try:
        deadline = time.monotonic() + 30
        while VETH_B not in bound_packet_sockets(NS_B) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        cpu_before = _proc_cpu_s(proc.pid)
        gen = flood(capture, pps, args)
        cpu_s = _proc_cpu_s(proc.pid) - cpu_before
        time.sleep(1.0)
        rss_mb = _peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        watched.finish(300)
    if proc.returncode != 0:
        raise SystemExit(f"agent failed ({proc.returncode}):\n{''.join(watched.lines)}")
    summary = json.loads(watched.lines[-1])
    (point,) = summary["points"]
    return {"target": pps, "generator": gen, "cpu_s": cpu_s, "rss_mb": rss_mb, "captured": point["kernel_packets"],
            "kernel_drops": point["kernel_drops"], "records_sent": summary["records_sent"]}  # fmt: skip


def agent_row(result: dict[str, object]) -> str:
    gen: FloodResult = result["generator"]  # type: ignore[assignment]
    return (f"  agent: {gen.pps:,.0f} pps offered, {int(result['captured']) / gen.seconds:,.0f} captured, "  # type: ignore[call-overload]
            f"kernel drops {result['kernel_drops']:,}, CPU {100 * float(result['cpu_s']) / gen.seconds:.0f}%, "  # type: ignore[arg-type]
            f"peak {float(result['rss_mb']):.0f} MB resident, {result['records_sent']:,} records sent to Kafka")  # type: ignore[arg-type]


def agent_lines(agent: dict[str, object], probe: dict[str, object]) -> list[str]:
    """The agent's figures at one rate beside the probe's (ratio: the probe's over the agent's)."""
    gen: FloodResult = agent["generator"]  # type: ignore[assignment]
    pgen: FloodResult = probe["generator"]  # type: ignore[assignment]
    sm: dict[str, float] = probe["summary"]  # type: ignore[assignment]
    target = int(agent["target"])  # type: ignore[call-overload]
    name = f"probe_live_{target}pps_agent" if target else "probe_live_flat_out_agent"
    cpu, pcpu = 100 * float(agent["cpu_s"]) / gen.seconds, 100 * float(probe["cpu_s"]) / pgen.seconds  # type: ignore[arg-type]
    rss, prss = float(agent["rss_mb"]), float(probe["rss_mb"])  # type: ignore[arg-type]
    return [
        bench_line(f"{name}_captured", int(agent["captured"]) / gen.seconds, "pps"),  # type: ignore[call-overload]
        bench_line(f"{name}_kernel_drops", int(agent["kernel_drops"]), "frames",  # type: ignore[call-overload]
                   ("probe", int(sm["kernel_drops"]))),
        bench_line(f"{name}_cpu", cpu, "%", ("probe", pcpu), pcpu / cpu if cpu else None),
        bench_line(f"{name}_peak_rss", rss, "MB", ("probe", prss), prss / rss if rss else None),
    ]  # fmt: skip


def bench_tcpdump(capture: Path, args: argparse.Namespace) -> dict[str, object]:
    cmd = ["ip", "netns", "exec", NS_B, "taskset", "-c", PROBE_CPU, "tcpdump", "-i", VETH_B, "-w", "/dev/null", "-n",
           "-B", str(args.ring_mb * 1024)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.5)
        gen = flood(capture, 0, args)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    captured = re.search(r"(\d+) packets captured", stderr)
    dropped = re.search(r"(\d+) packets dropped by kernel", stderr)
    return {
        "generator": gen,
        "captured": int(captured.group(1)) if captured else -1,
        "dropped": int(dropped.group(1)) if dropped else -1,
    }


HEADER = (
    f"{'target pps':>11} {'offered pps':>12} {'captured pps':>13} {'kernel drops':>13} {'probe CPU':>10} "
    f"{'CPU1 softirq':>12} {'flow recs':>10} {'req recs':>9}  frames/CPU-s of capture work"
)


def row(result: dict[str, object]) -> str:
    gen: FloodResult = result["generator"]  # type: ignore[assignment]
    sm: dict[str, float] = result["summary"]  # type: ignore[assignment]
    secs = gen.seconds
    target = int(result["target"])  # type: ignore[call-overload]
    cpu, softirq = float(result["cpu_s"]), float(result["softirq_s"])  # type: ignore[arg-type]
    per_cpu = sm["frames_read"] / sm["busy_cpu_s"] if sm["busy_cpu_s"] else 0.0
    return (
        f"{target or 'flat out':>11} {gen.pps:>12,.0f} {sm['frames_read'] / secs:>13,.0f} "
        f"{sm['kernel_drops']:>13,} {100 * cpu / secs:>9.0f}% {100 * softirq / secs:>11.0f}% "
        f"{sm['flow_records']:>10,} {sm['request_records']:>9,}  {per_cpu:,.0f}"
    )


def backlog_row(result: dict[str, object]) -> str:
    gen: FloodResult = result["generator"]  # type: ignore[assignment]
    sm: dict[str, float] = result["summary"]  # type: ignore[assignment]
    frames, busy, busy_cpu = sm["frames_read"], sm["busy_s"], sm["busy_cpu_s"]
    return (
        f"backlog: {frames:,.0f} frames queued while the probe was stopped ({gen.pps:,.0f} pps offered), "
        f"kernel drops {sm['kernel_drops']:,.0f}; drained at {frames / busy:,.0f} frames per wall second of "
        f"capture work ({frames / busy_cpu:,.0f} per CPU second), {sm['flow_records']:,.0f} flow records"
    )


def bench_lines(result: dict[str, object], dump: dict[str, object] | None) -> list[str]:
    """The figures of one rate's row; flat out beside tcpdump's (when it ran)."""
    gen: FloodResult = result["generator"]  # type: ignore[assignment]
    sm: dict[str, float] = result["summary"]  # type: ignore[assignment]
    target = int(result["target"])  # type: ignore[call-overload]
    name = f"probe_live_{target}pps" if target else "probe_live_flat_out"
    captured = sm["frames_read"] / gen.seconds
    peer_rate = peer_drops = None
    if dump is not None and not target:
        dgen: FloodResult = dump["generator"]  # type: ignore[assignment]
        peer_rate = ("tcpdump", int(dump["captured"]) / dgen.seconds)  # type: ignore[call-overload]
        peer_drops = ("tcpdump", int(dump["dropped"]))  # type: ignore[call-overload]
    # ratios: the probe's captured rate over tcpdump's; tcpdump's drops over the probe's (higher is better)
    return [
        bench_line(f"{name}_offered", gen.pps, "pps"),
        bench_line(f"{name}_captured", captured, "pps", peer_rate, captured / peer_rate[1] if peer_rate else None),
        bench_line(f"{name}_kernel_drops", int(sm["kernel_drops"]), "frames", peer_drops,
                   peer_drops[1] / sm["kernel_drops"] if peer_drops and sm["kernel_drops"] else None),
        bench_line(f"{name}_probe_cpu", 100 * float(result["cpu_s"]) / gen.seconds, "%"),  # type: ignore[arg-type]
        bench_line(f"{name}_probe_peak_rss", float(result["rss_mb"]), "MB"),  # type: ignore[arg-type]
        bench_line(f"{name}_cpu{PROBE_CPU}_softirq", 100 * float(result["softirq_s"]) / gen.seconds, "%"),  # type: ignore[arg-type]
        bench_line(f"{name}_flow_records", int(sm["flow_records"]), "records"),
        bench_line(f"{name}_request_records", int(sm["request_records"]), "records"),
        bench_line(f"{name}_frames_per_cpu_s", sm["frames_read"] / sm["busy_cpu_s"] if sm["busy_cpu_s"] else 0.0,
                   "frames/cpu_s"),
    ]  # fmt: skip


def backlog_lines(result: dict[str, object]) -> list[str]:
    sm: dict[str, float] = result["summary"]  # type: ignore[assignment]
    frames = sm["frames_read"]
    return [
        bench_line("probe_live_backlog_drain", frames / sm["busy_s"], "frames/s"),
        bench_line("probe_live_backlog_drain_per_cpu_s", frames / sm["busy_cpu_s"], "frames/cpu_s"),
        bench_line("probe_live_backlog_kernel_drops", int(sm["kernel_drops"]), "frames"),
    ]


def print_profile(path: str) -> None:
    import pstats

    print(f"\nprofile of the probe at the last rate ({path}), by internal time:")
    pstats.Stats(path).sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rates", default="400000,600000,800000,1000000,0", help="pps per run, comma-separated; 0 = flat out"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="flood length per rate")
    ap.add_argument("--frames", type=int, default=MIX_PACKETS, help="frames of the mix replayed per cycle")
    ap.add_argument("--ring-mb", type=int, default=128, help="the probe's ring (and tcpdump's buffer), MiB")
    ap.add_argument("--rps", action="store_true", help="receive work of B's veth on the probe's CPU (RPS)")
    ap.add_argument(
        "--second-generator",
        default="",
        metavar="PRIORITY",
        help="a second generator on the probe's CPU: 'idle' (SCHED_IDLE) or a nice level above --nice",
    )
    ap.add_argument(
        "--nice", default="", help="nice level of the probe and the CPU 0 generator, each in an autogroup of its own"
    )
    ap.add_argument("--backlog-seconds", type=float, default=0.0, help="flood length of the backlog run (0: none)")
    ap.add_argument("--backlog-mb", type=int, default=1024, help="the probe's ring in the backlog run, MiB")
    ap.add_argument("--profile", action="store_true", help="cProfile the probe at the last rate")
    ap.add_argument("--l7", action="store_true", help="also run the HTTP/DNS stage (default: capture + meter)")
    ap.add_argument("--skip-tcpdump", action="store_true")
    ap.add_argument("--agent", metavar="BOOTSTRAP",
                    help="also run `hopscope agent` at each rate, publishing to this Kafka (its topics deleted after)")
    args = ap.parse_args()
    args.agent_prefix = f"hsbenchagent{os.getpid()}"
    if os.geteuid() != 0:
        raise SystemExit("bench/probe_live.py needs root (network namespaces, packet sockets)")
    build_flood()
    capture = traffic()
    rates = [int(r) for r in args.rates.split(",")]
    results: list[dict[str, object]] = []
    agents: list[dict[str, object]] = []
    backlog: dict[str, object] | None = None
    profile = str(VAR / "bench" / "probe_live.prof")
    setup(args.rps)
    try:
        with tempfile.TemporaryDirectory() as args.tmp:
            for n, pps in enumerate(rates):
                last = n == len(rates) - 1
                results.append(bench_probe(capture, pps, args, profile if args.profile and last else ""))
                print(("" if n else HEADER + "\n") + row(results[-1]), flush=True)
                if args.agent:
                    agents.append(bench_agent(capture, pps, args))
                    print(agent_row(agents[-1]), flush=True)
            if args.backlog_seconds:
                seconds, args.seconds = args.seconds, args.backlog_seconds
                backlog = bench_probe(capture, 0, args, backlog=True)
                print(backlog_row(backlog), flush=True)
                args.seconds = seconds
        dump = None if args.skip_tcpdump else bench_tcpdump(capture, args)
    finally:
        teardown()
        if args.agent:
            from hopscope.lab.live import delete_topics

            print(delete_topics(args.agent, args.agent_prefix, []))
    native, load = os.environ.get("HOPSCOPE_NATIVE", "1"), os.getloadavg()[0]
    print(f"(probe on CPU {PROBE_CPU}, generator on CPU {GEN_CPU}, rps={args.rps}, l7={args.l7}, "
          f"second generator on CPU {PROBE_CPU}: {args.second_generator or 'none'}, nice={args.nice or 0}, "
          f"HOPSCOPE_NATIVE={native}, {args.seconds:g} s per rate, "
          f"ring {args.ring_mb} MiB; load average {load:.1f})")  # fmt: skip
    if dump is not None:
        dgen: FloodResult = dump["generator"]  # type: ignore[assignment]
        print(f"tcpdump -w /dev/null (CPU {PROBE_CPU}), flat out: {dgen.pps:,.0f} pps offered, "
              f"captured {dump['captured']:,} of {dgen.sent:,} frames, kernel drops {dump['dropped']}")  # fmt: skip
    if args.profile:
        print_profile(profile)
    lines = [line for result in results for line in bench_lines(result, dump)]
    lines += [line for agent, probe in zip(agents, results, strict=False) for line in agent_lines(agent, probe)]
    print("\n".join(lines + (backlog_lines(backlog) if backlog else [])))


if __name__ == "__main__":
    main()
