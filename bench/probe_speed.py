"""Probe speed: read + decode + meter packets/s of ``hopscope flows`` against tcpdump, tshark, nfpcapd, argus.

Generates (once, cached under var/bench/) a pcap of realistic traffic, at least 1,000,000 packets: many
concurrent TCP connections with handshakes, requests, multi-segment responses with delayed ACKs, FIN or
RST closes, a few retransmissions, unanswered and rejected SYNs, plus UDP DNS query/response pairs.
Then times, on one core (``taskset -c 0``) and in the same run, every tool on the same file and prints
packets/s; hopscope, nfpcapd, argus and libpcap's read run in turn, round after round (``IN_TURN``). A
second capture holds 100,000 short flows of 10 packets each (1M packets: handshake, one
request and response, FIN close), where the per-record work weighs most; ``hopscope flows`` and nfpcapd
run on it in turn (interleaved, best of ``--repeat``). It also measures the peak RSS of ``hopscope
flows`` on a capture with 100,000 flows open at once (goal: under 300 MB). hopscope runs with its bytecode
cache written first, as an installed package does (``cache_bytecode``). Ends with one ``bench:``
line per figure: hopscope's packets per CPU second beside each peer's (ratio: hopscope's rate over the
peer's, higher is better), its wall and net rates, start-up and peak RSS.

Usage: ``python bench/probe_speed.py [--packets 1000000] [--repeat 3] [--skip-peers] [--short-flows 100000]``
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_lines.py, also when imported by another script
from _lines import bench_line

VAR = Path(os.environ.get("HOPSCOPE_VAR", Path(__file__).resolve().parents[1] / "var")) / "bench"
ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
MSS = 1448
BODY = random.Random(7).randbytes(1 << 16)
REQUEST = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 99999\r\n\r\n"
TSHARK = ["tshark", "-r"]
#: Tools timed in turn with hopscope (the others take many times longer and run on their own).
IN_TURN = ("hopscope_flows", "nfpcapd", "argus", "tcpdump_read")


def _ip4(a: int) -> bytes:
    return struct.pack("!I", a)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


class Writer:
    """A minimal pcap writer (µs timestamps, Ethernet)."""

    def __init__(self) -> None:
        self.records: list[tuple[float, bytes]] = []
        self.ip_id = 1

    def tcp(self, ts: float, src: tuple[int, int], dst: tuple[int, int], flags: int, seq: int, ack: int,
            payload_len: int = 0, window: int = 64240, head: bytes = b"") -> None:  # fmt: skip
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                          window, 0, 0)  # fmt: skip
        start = (seq * 7919) % (len(BODY) - MSS)  # body bytes: a slice of a random pool
        payload = (head + BODY[start : start + payload_len])[:payload_len]
        self._ip(ts, src[0], dst[0], 6, tcp + payload)

    def udp(self, ts: float, src: tuple[int, int], dst: tuple[int, int], payload: bytes) -> None:
        self._ip(ts, src[0], dst[0], 17, struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload)

    def _ip(self, ts: float, src: int, dst: int, proto: int, body: bytes) -> None:
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), self.ip_id, 0x4000, 64, proto, 0,
                           _ip4(src), _ip4(dst))  # fmt: skip
        head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
        self.records.append((ts, ETH + head + body))

    def save(self, path: Path) -> None:
        self.records.sort(key=lambda r: r[0])
        with path.open("wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for ts, frame in self.records:
                sec = int(ts)
                fh.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)) + frame)


def tcp_conversation(w: Writer, rng: random.Random, t0: float, client: tuple[int, int],
                     server: tuple[int, int]) -> None:  # fmt: skip
    """One HTTP-like connection: handshake, request, response segments with ACKs, FIN or RST close."""
    rtt = rng.uniform(0.0002, 0.02)
    kind = rng.random()
    cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
    w.tcp(t0, client, server, SYN, cseq, 0)
    if kind < 0.03:  # unanswered SYN, retried
        w.tcp(t0 + 1, client, server, SYN, cseq, 0)
        w.tcp(t0 + 3, client, server, SYN, cseq, 0)
        return
    if kind < 0.06:  # rejected
        w.tcp(t0 + rtt, server, client, RST | ACK, 0, cseq + 1)
        return
    t = t0 + rtt
    w.tcp(t, server, client, SYN | ACK, sseq, cseq + 1)
    t += rtt
    cseq, sseq = cseq + 1, sseq + 1
    w.tcp(t, client, server, ACK, cseq, sseq)
    req = rng.randint(80, 600)
    w.tcp(t + 0.00001, client, server, ACK | PSH, cseq, sseq, req, head=REQUEST)
    cseq += req
    t += rtt
    w.tcp(t, server, client, ACK, sseq, cseq)
    for k in range(rng.choice((1, 1, 2, 3, 5, 8, 13, 30))):
        t += 0.00005
        seg = MSS if rng.random() < 0.8 else rng.randint(100, MSS)
        head = RESPONSE if k == 0 else b""
        w.tcp(t, server, client, ACK | PSH, sseq, cseq, seg, head=head)
        if rng.random() < 0.01:  # a retransmission
            w.tcp(t + rtt * 3, server, client, ACK | PSH, sseq, cseq, seg, head=head)
        sseq += seg
        if k % 2:
            w.tcp(t + rtt / 2, client, server, ACK, cseq, sseq)
    t += rtt
    if rng.random() < 0.1:
        w.tcp(t, client, server, RST | ACK, cseq, sseq)
        return
    w.tcp(t, client, server, FIN | ACK, cseq, sseq)
    w.tcp(t + rtt, server, client, FIN | ACK, sseq, cseq + 1)
    w.tcp(t + 2 * rtt, client, server, ACK, cseq + 1, sseq + 1)


def dns_exchange(w: Writer, rng: random.Random, t0: float, client: tuple[int, int], server: tuple[int, int]) -> None:
    qid = rng.getrandbits(16)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    w.udp(t0, client, server, query)
    if rng.random() < 0.95:
        w.udp(t0 + rng.uniform(0.0005, 0.03), server, client, query[:2] + b"\x81\x80" + query[4:] + b"\x00" * 16)


def generate(path: Path, packets: int, seed: int = 1) -> None:
    """Write a capture of at least ``packets`` packets of the mix described in the module docstring."""
    rng = random.Random(seed)
    w = Writer()
    t, port = 1_700_000_000.0, 1024
    servers = [(0x0A640000 + i, rng.choice((80, 443, 8080))) for i in range(1, 200)]
    while len(w.records) < packets:
        t += rng.expovariate(2000.0)
        client_ip = 0x0A000000 + rng.randint(1, 60000)
        port = 1024 + (port + 1 - 1024) % 64000
        if rng.random() < 0.15:
            dns_exchange(w, rng, t, (client_ip, port), (0x0A0000FE, 53))
        else:
            tcp_conversation(w, rng, t, (client_ip, port), rng.choice(servers))
    w.save(path)


def generate_short_flows(path: Path, flows: int, seed: int = 3) -> None:
    """``flows`` TCP connections of 10 packets each, a few hundred open at once: SYN, SYN-ACK, ACK, a
    request, its ACK, a response, its ACK, FIN, FIN, ACK."""
    rng = random.Random(seed)
    w = Writer()
    t = 1_700_000_000.0
    servers = [(0x0A640000 + i, rng.choice((80, 443, 8080))) for i in range(1, 200)]
    for i in range(flows):
        t += rng.expovariate(20000.0)
        client, server = (0x0A000000 + rng.randint(1, 60000), 1024 + i % 64000), rng.choice(servers)
        rtt, c, s = rng.uniform(0.0002, 0.005), rng.getrandbits(32), rng.getrandbits(32)
        w.tcp(t, client, server, SYN, c, 0)
        w.tcp(t + rtt, server, client, SYN | ACK, s, c + 1)
        c, s, x = c + 1, s + 1, t + 2 * rtt
        w.tcp(x, client, server, ACK, c, s)
        w.tcp(x + 1e-5, client, server, ACK | PSH, c, s, 120, head=REQUEST)
        c, x = c + 120, x + rtt
        w.tcp(x, server, client, ACK, s, c)
        w.tcp(x + 5e-5, server, client, ACK | PSH, s, c, 300, head=RESPONSE)
        s, x = s + 300, x + rtt
        w.tcp(x, client, server, ACK, c, s)
        w.tcp(x + 1e-4, client, server, FIN | ACK, c, s)
        w.tcp(x + rtt, server, client, FIN | ACK, s, c + 1)
        w.tcp(x + 2 * rtt, client, server, ACK, c + 1, s + 1)
    w.save(path)


def generate_concurrent(path: Path, flows: int) -> None:
    """``flows`` TCP handshakes first, data and FINs only after all of them: ``flows`` open at once."""
    w = Writer()
    t = 1_700_000_000.0
    for i in range(flows):
        c, s = (0x0A000000 + (i >> 8), 1024 + (i & 0xFF) * 200 + 7), (0x0A640001, 80)
        w.tcp(t + i * 1e-5, c, s, SYN, i * 7, 0)
        w.tcp(t + i * 1e-5 + 5e-6, s, c, SYN | ACK, i * 11, i * 7 + 1)
    t2 = t + flows * 1e-5 + 1
    for i in range(flows):
        c, s = (0x0A000000 + (i >> 8), 1024 + (i & 0xFF) * 200 + 7), (0x0A640001, 80)
        w.tcp(t2 + i * 1e-5, c, s, FIN | ACK, i * 7 + 1, i * 11 + 1)
    w.save(path)


def count_packets(path: Path) -> int:
    n, pos = 0, 24
    data = path.read_bytes()
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        n += 1
    return n


def timed(cmd: list[str], repeat: int, cwd: Path | None = None, env: dict[str, str] | None = None
          ) -> tuple[float, float] | None:  # fmt: skip
    """Best (wall, CPU) seconds of ``repeat`` runs of ``cmd`` pinned to CPU 0 (None if the tool is missing).

    CPU time (user + system of the child) is what a loaded machine distorts least; both are printed.
    A tool slower than 10 s per run is run once.
    """
    if shutil.which(cmd[0]) is None:
        return None
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              cwd=cwd, check=False, env=None if env is None else {**os.environ, **env})  # fmt: skip
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            print(f"  {cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()[-300:]}", file=sys.stderr)
            return None
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_wall, best_cpu = min(best_wall, elapsed), min(best_cpu, cpu)
        if elapsed > 10:
            break
    return best_wall, best_cpu


def cache_bytecode(exe: str, capture: Path) -> None:
    """Run ``hopscope flows`` once (compiled and reference paths) with Python's bytecode cache writable,
    so that the timed runs load compiled modules as an installed package does (pip compiles them at
    install time) even where PYTHONDONTWRITEBYTECODE is set; else every module changed since its cache
    was written would be compiled again at each run and counted as start-up."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for native in ("1", "0"):
        subprocess.run([exe, "flows", "-C", str(capture)], env={**env, "HOPSCOPE_NATIVE": native},
                       stdout=subprocess.DEVNULL, check=True)  # fmt: skip


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of ``cmd`` in MB, from GNU time's %M (getrusage's children maximum would include
    every earlier child of this script, tshark among them)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=True)  # fmt: skip
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def short_flows(exe: str, flows: int, repeat: int, skip_peers: bool) -> list[str]:
    """Time ``hopscope flows`` and nfpcapd in turn on the short-flow mix; return their bench lines."""
    capture = VAR / f"probe_short_flows_{flows}.pcap"
    if not capture.exists():
        print(f"generating {capture} ...", flush=True)
        generate_short_flows(capture, flows)
    packets = count_packets(capture)
    print(f"short-flow mix: {capture} ({packets} packets, {flows} flows)")
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {"hopscope_flows": [exe, "flows", "-C", str(capture)]}
        if not skip_peers and shutil.which("nfpcapd"):
            cmds["nfpcapd"] = ["nfpcapd", "-r", str(capture), "-w", tmp]
        for _ in range(repeat):  # interleaved: a load change on a shared machine hits both alike
            for token, cmd in cmds.items():
                got = timed(cmd, 1)
                if got is not None:
                    old = best.get(token, (float("inf"), float("inf")))
                    best[token] = (min(old[0], got[0]), min(old[1], got[1]))
    for token, (wall, cpu) in best.items():
        print(f"  {token:42s} {wall:7.2f} s wall {cpu:7.2f} s CPU {packets / cpu:11,.0f} pkts/s CPU")
    if "hopscope_flows" not in best:
        return []
    cpu = best["hopscope_flows"][1]
    if "nfpcapd" not in best:
        return [bench_line("probe_short_flows_cpu_rate", packets / cpu, "pps")]
    peer = best["nfpcapd"][1]
    # ratio: hopscope's packets per CPU second over nfpcapd's, higher is better
    return [bench_line("probe_short_flows_cpu_rate", packets / cpu, "pps", ("nfpcapd", packets / peer), peer / cpu)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--concurrent-flows", type=int, default=100_000)
    parser.add_argument("--short-flows", type=int, default=100_000, help="flows of the short-flow mix (0: skip it)")
    args = parser.parse_args(argv)
    VAR.mkdir(parents=True, exist_ok=True)
    capture = VAR / f"probe_mix_v2_{args.packets}.pcap"
    if not capture.exists():
        print(f"generating {capture} ...", flush=True)
        generate(capture, args.packets)
    packets = count_packets(capture)
    print(f"capture: {capture} ({packets} packets, {capture.stat().st_size / 1e6:.0f} MB)")
    tiny = VAR / "probe_mix_v2_200.pcap"
    if not tiny.exists():
        generate(tiny, 200)
    exe = str(Path(sys.executable).with_name("hopscope"))
    cache_bytecode(exe, tiny)
    reference = {"HOPSCOPE_NATIVE": "0"}
    #: (label, token in the bench lines, command, environment). -C: the generated capture carries no
    #: TCP/UDP checksums (as one taken on the sending host), and none of the peers validates them
    tools: list[tuple[str, str, list[str], dict[str, str] | None]] = [
        ("hopscope flows -C (read+decode+meter+JSON)", "hopscope_flows", [exe, "flows", "-C", "{capture}"], None),
        ("  same, reference path (HOPSCOPE_NATIVE=0)", "reference_path", [exe, "flows", "-C", "{capture}"],
         reference),
    ]
    figures: dict[str, tuple[float, float, float, float]] = {}  # token: (wall, cpu, start-up, net pkts/s)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_peers:
            tools += [
                ("tcpdump -nn -r", "tcpdump_text", ["tcpdump", "-nn", "-r", "{capture}"], None),
                # tcpdump's text output grows quadratically with the number of TCP connections here
                # (50k packets 0.2 s, 100k 0.8 s, 200k 3.0 s CPU; -S and -q do not help). Reading and
                # writing the file back (-w) is libpcap's raw read speed: the floor for any reader.
                ("tcpdump -r -w /dev/null (libpcap read only)", "tcpdump_read",
                 ["tcpdump", "-r", "{capture}", "-w", "/dev/null"], None),
                ("tshark -T fields -e frame.number", "tshark",
                 [*TSHARK, "{capture}", "-T", "fields", "-e", "frame.number"], None),
                ("nfpcapd -r -w (nfdump 1.7)", "nfpcapd", ["nfpcapd", "-r", "{capture}", "-w", tmp], None),
                ("argus -r -w /dev/null", "argus", ["argus", "-r", "{capture}", "-w", "/dev/null"], None),
            ]  # fmt: skip
        print("start-up: CPU s of the same command on a 200-packet capture; 'net' rates leave it out")
        print(f"{'tool':44s} {'wall s':>7s} {'pkts/s wall':>12s} {'CPU s':>7s} {'pkts/s CPU':>11s} "
              f"{'start-up':>8s} {'net pkts/s':>11s}")  # fmt: skip
        # the tools within a few times of hopscope run in turn, ``--repeat`` rounds (as in short_flows: a
        # load change on the shared machine hits them alike); the slow ones run on their own
        in_turn: dict[str, tuple[float, float] | None] = {t: None for _, t, _, _ in tools if t in IN_TURN}
        for _ in range(args.repeat):
            for _name, token, cmd, env in tools:
                got = timed([a.format(capture=capture) for a in cmd], 1, env=env) if token in in_turn else None
                if got is not None:
                    old = in_turn[token] or (float("inf"), float("inf"))
                    in_turn[token] = (min(old[0], got[0]), min(old[1], got[1]))
        for name, token, cmd, env in tools:
            best = in_turn[token] if token in in_turn else timed([a.format(capture=capture) for a in cmd],
                                                                  args.repeat, env=env)  # fmt: skip
            if best is None:
                print(f"{name:44s} {'n/a':>7s}")
                continue
            small = timed([a.format(capture=tiny) for a in cmd], max(args.repeat, 3), env=env)
            wall, cpu = best
            startup = small[1] if small else 0.0
            net = packets / (cpu - startup) if cpu > startup else float("nan")
            figures[token] = (wall, cpu, startup, net)
            print(f"{name:44s} {wall:7.2f} {packets / wall:12,.0f} {cpu:7.2f} {packets / cpu:11,.0f} "
                  f"{startup:8.2f} {net:11,.0f}", flush=True)  # fmt: skip
    short = short_flows(exe, args.short_flows, args.repeat, args.skip_peers) if args.short_flows else []
    many = VAR / f"probe_concurrent_{args.concurrent_flows}.pcap"
    if not many.exists():
        generate_concurrent(many, args.concurrent_flows)
    rss = peak_rss_mb([str(Path(sys.executable).with_name("hopscope")), "flows", "-C", str(many)])
    print(f"peak RSS of hopscope flows with {args.concurrent_flows} concurrent flows: {rss:.0f} MB (goal < 300)")
    if "hopscope_flows" in figures:
        wall, cpu, startup, net = figures.pop("hopscope_flows")
        # ratio: hopscope's packets per CPU second over the peer's, higher is better
        for token, peer in figures.items():
            name = "probe_flows_cpu_rate" if token == "reference_path" else f"probe_flows_vs_{token}_cpu_rate"
            print(bench_line(name, packets / cpu, "pps", (token, packets / peer[1]), peer[1] / cpu))
        print(bench_line("probe_flows_wall_rate", packets / wall, "pps"))
        print(bench_line("probe_flows_net_cpu_rate", net, "pps"))
        print(bench_line("probe_flows_startup_cpu", startup, "s"))
    print(bench_line(f"probe_flows_peak_rss_{args.concurrent_flows}_flows", rss, "MB"))
    for line in short:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
