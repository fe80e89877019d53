"""The lab's userspace delayer/dropper: the netem stand-in on a kernel without sch_netem.

Standalone script, run inside the namespace that holds the impaired hop::

    python delayer.py --queue 1 --delay-ms 5 --loss 0.01 --seed 7 --stats stats.json

It binds NFQUEUE ``--queue`` (an iptables rule ``-j NFQUEUE --queue-num N`` sends packets there),
holds every packet ``delay-ms`` then accepts it, or drops it with probability ``loss`` (a seeded
RNG, so a run is repeatable for the same packet sequence). The delay is constant, so packets leave
in the order they came (a FIFO, no reordering). Prints ``ready`` once bound; on SIGTERM/SIGINT it
releases what it holds, writes its counters to ``--stats`` and exits.

The delay a packet really got is written too, per TCP data segment (``held_segments``): from the
moment the kernel received it (the timestamp NFQUEUE hands over, set when the packet entered the
namespace; the moment the delayer read it when the kernel gave none) to the moment it was accepted.
On a loaded machine the delayer reads and releases late by up to milliseconds; that per-segment
truth, not ``delay-ms``, is what a hop's measured latency is held against.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import select
import signal
import socket
import struct
import time
from typing import Any

#: Bytes of each packet handed to userspace: an IPv6 TCP header with options, or a VXLAN frame's
#: outer headers (50 bytes) and its inner IPv4 TCP header.
HEADER_BYTES = 160
VXLAN_PORT = 4789


def describe(ip: bytes, time_ns: int) -> dict[str, Any]:
    """A packet's identity from its first bytes: addresses, IP id (IPv4), length, TCP/UDP ports, TCP
    seq/ack and payload length. IPv4 and IPv6 (without extension headers).

    The IP id, length and TCP seq/ack survive NAT, so a drop can be found in the captures around it. The
    payload length (``payload_len``) tells a data segment from an ACK whose options (SACK blocks) make
    it as long as a small one. A VXLAN datagram (UDP to 4789) is described by the packet it carries,
    its outer addresses and ports under ``outer``, so a drop on an overlay's underlay is found in the
    captures by the inner segment, as the correlator sees it there.
    """
    rec: dict[str, Any] = {"time_ns": time_ns}
    if len(ip) >= 40 and ip[0] >> 4 == 6:
        payload_len, proto = struct.unpack("!HB", ip[4:7])
        rec.update(src=socket.inet_ntop(socket.AF_INET6, ip[8:24]), dst=socket.inet_ntop(socket.AF_INET6, ip[24:40]),
                   ip_len=40 + payload_len, proto=proto)
        return _l4(rec, proto, ip[40:], payload_len)
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return rec
    ihl = (ip[0] & 0x0F) * 4
    total_len, ip_id = struct.unpack("!HH", ip[2:6])
    proto = ip[9]
    rec.update(src=socket.inet_ntoa(ip[12:16]), dst=socket.inet_ntoa(ip[16:20]), ip_id=ip_id, ip_len=total_len)
    rec["proto"] = proto
    l4 = ip[ihl:]
    if proto == 17 and len(l4) >= 8 and struct.unpack("!H", l4[2:4])[0] == VXLAN_PORT and len(l4) >= 8 + 8 + 14:
        inner = describe(l4[8 + 8 + 14:], time_ns)  # UDP, VXLAN, inner Ethernet
        if "proto" in inner:
            outer = {k: rec[k] for k in ("src", "dst", "ip_id", "ip_len")}
            outer["sport"], outer["dport"] = struct.unpack("!HH", l4[:4])
            return {**inner, "encap": "vxlan", "outer": outer}
    return _l4(rec, proto, l4, total_len - ihl)


def _l4(rec: dict[str, Any], proto: int, l4: bytes, l4_len: int) -> dict[str, Any]:
    rec["proto"] = proto
    if proto in (6, 17) and len(l4) >= 4:
        rec["sport"], rec["dport"] = struct.unpack("!HH", l4[:4])
    if proto == 6 and len(l4) >= 12:
        rec["seq"], rec["ack"] = struct.unpack("!II", l4[4:12])
    if proto == 6 and len(l4) >= 13:
        rec["payload_len"] = max(0, l4_len - (l4[12] >> 4) * 4)
    return rec


class Delayer:
    """FIFO of (release time, packet); the callback only enqueues or drops."""

    def __init__(self, delay_ns: int, loss: float, seed: int) -> None:
        self.delay_ns = delay_ns
        self.loss = loss
        self.rng = random.Random(seed)
        self.held: collections.deque[tuple[int, tuple[int, int, int], Any]] = collections.deque()
        self.seen = 0
        self.dropped = 0
        self.accepted = 0
        self.max_held = 0
        self.drops: list[dict[str, Any]] = []  # one record per dropped packet: the loss ground truth
        self.late_ns: list[int] = []  # how late past its release time each held packet was accepted
        #: [seq, payload_len, held_ns] per held TCP data segment: the delay it really got (see the module doc)
        self.segments: list[list[int]] = []
        self.kernel_stamped = 0  # held packets whose arrival time came from the kernel

    def on_packet(self, pkt: Any) -> None:
        self.seen += 1
        if self.loss > 0 and self.rng.random() < self.loss:
            self.drops.append(describe(pkt.get_payload(), time.time_ns()))
            pkt.drop()
            self.dropped += 1
            return
        if self.delay_ns <= 0:
            pkt.accept()
            self.accepted += 1
            return
        arrival, waited = self._arrival(pkt)
        # the delay counts from the packet's arrival, not from the moment this process got to read it
        self.held.append((time.monotonic_ns() + self.delay_ns - waited, arrival, pkt))
        self.max_held = max(self.max_held, len(self.held))

    def _arrival(self, pkt: Any) -> tuple[tuple[int, int, int], int]:
        """((seq, payload_len, arrival in CLOCK_REALTIME ns), ns it waited in the queue) of a packet; seq
        and payload_len are 0 but for a TCP data segment."""
        now = time.time_ns()
        stamp = int(pkt.get_timestamp() * 1e9)
        if 0 < stamp <= now and now - stamp < 1_000_000_000:  # a kernel stamp, and a sane one
            self.kernel_stamped += 1
        else:
            stamp = now
        d = describe(pkt.get_payload(), 0)
        if d.get("proto") != 6 or not d.get("payload_len"):
            return (0, 0, stamp), now - stamp
        return (d["seq"], d["payload_len"], stamp), now - stamp

    def _accept(self, arrival: tuple[int, int, int], pkt: Any) -> None:
        released = time.time_ns()  # before the verdict: the packet goes on its way within that call
        pkt.accept()
        self.accepted += 1
        if arrival[1]:
            self.segments.append([arrival[0], arrival[1], released - arrival[2]])

    def release_due(self) -> float | None:
        """Accept every packet whose time has come; return seconds until the next one (None: none held)."""
        now = time.monotonic_ns()
        while self.held and self.held[0][0] <= now:
            due, arrival, pkt = self.held.popleft()
            self._accept(arrival, pkt)
            self.late_ns.append(now - due)
        if not self.held:
            return None
        return max(0.0, (self.held[0][0] - time.monotonic_ns()) / 1e9)

    def release_all(self) -> None:
        while self.held:
            _, arrival, pkt = self.held.popleft()
            self._accept(arrival, pkt)

    def stats(self) -> dict[str, Any]:
        """Counters, and percentiles of the lateness: the time a packet was held beyond delay-ms."""
        late = sorted(self.late_ns)

        def pct(q: float) -> float | None:
            return round(late[min(len(late) - 1, int(q * len(late)))] / 1000, 1) if late else None

        return {
            "seen": self.seen,
            "accepted": self.accepted,
            "dropped": self.dropped,
            "dropped_packets": self.drops,
            "max_held": self.max_held,
            "late_us_p50": pct(0.5),
            "late_us_p90": pct(0.9),
            "late_us_p99": pct(0.99),
            "late_us_max": round(late[-1] / 1000, 1) if late else None,
            "held_segments": self.segments,
            "kernel_stamped": self.kernel_stamped,
        }


def serve(queue_num: int, delayer: Delayer, stop: list[bool]) -> None:
    from netfilterqueue import COPY_PACKET, NetfilterQueue  # PyPI NetfilterQueue (libnetfilter_queue)

    nfq = NetfilterQueue()
    # Only the first HEADER_BYTES of each packet reach userspace: enough to describe a drop.
    nfq.bind(queue_num, delayer.on_packet, max_len=65536, mode=COPY_PACKET, range=HEADER_BYTES)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    # The kernel stamps a packet's arrival only while some socket asked for receive timestamps (tcpdump
    # does; the live probe's ring does not): this one asks, so every held packet carries its stamp.
    stamps = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stamps.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMP", 29), 1)  # 29: Linux's SO_TIMESTAMP
    print("ready", flush=True)
    timeout: float | None = None
    try:
        while not stop[0]:
            readable, _, _ = select.select([sock], [], [], 0.2 if timeout is None else timeout)
            if readable:
                nfq.run(block=False)
            timeout = delayer.release_due()
    finally:
        delayer.release_all()
        nfq.unbind()
        sock.close()
        stamps.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability, 0..1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--realtime", action="store_true", help="run with SCHED_FIFO priority 10")
    parser.add_argument("--stats", help="JSON file for the counters, written at exit")
    args = parser.parse_args()
    delayer = Delayer(int(args.delay_ms * 1e6), args.loss, args.seed)
    if args.realtime:
        # Real-time priority: on a busy 2-core machine the delayer then wakes on time instead of
        # waiting behind envoy, tcpdump and the generator (lateness drops from ~1 ms to tens of us).
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    stop = [False]

    def on_signal(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve(args.queue, delayer, stop)
    if args.stats:
        with open(args.stats, "w", encoding="utf-8") as f:
            json.dump(delayer.stats(), f)


if __name__ == "__main__":
    main()
