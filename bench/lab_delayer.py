"""The lab delayer's own cost: added latency per packet and throughput, with and without it (root).

    .venv/bin/python bench/lab_delayer.py [--samples 200] [--bytes 20000000] [--out FILE.json]

Brings a lab up and measures, between client1 and server1:
- TCP connect RTT (one SYN/SYN-ACK round trip) with no NFQUEUE rule, and with the delayer at delay 0
  on node B's ingress: the difference of the medians is the delayer's added latency per packet;
- the RTT with 5 ms injected: how close the delayer holds to what it is asked (lateness);
- the time of one long transfer (server -> client through node A's ingress) without and with the
  delayer at delay 0: the throughput the userspace path sustains.
Prints one JSON object (and writes it to --out), then one ``bench:`` line per figure; the delayer at
delay 0 stands beside no rule (ratio: no rule's RTT over the delayer's, the delayer's throughput over no
rule's; higher is better, 1 is no cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _lines import bench_line

from hopscope.lab.lab import Lab


def transfer_s(lab: Lab, nbytes: int) -> float:
    spec = {"kind": "http", "target": "10.96.0.10", "port": 80, "host": "web", "keepalive": False,
            "requests": [{"method": "GET", "path": f"/bytes/{nbytes}", "send_id": True}]}  # fmt: skip
    (rec,) = lab.run_plans({"client1": [spec]}, tag="bench")
    if rec["status"] != 200 or rec["response_bytes"] != nbytes:
        raise RuntimeError(f"transfer failed: {rec}")
    return float(rec["end_ns"] - rec["start_ns"]) / 1e9


def summary(values: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=100)
    return {"median": round(statistics.median(values), 1), "p10": round(qs[9], 1), "p90": round(qs[89], 1)}


def bench_lines(result: dict[str, Any]) -> list[str]:
    rtt, transfer = result["connect_rtt_us"], result["transfer"]
    base, zero = rtt["no_rule"]["median"], rtt["delayer_0ms"]["median"]
    mbit_base, mbit_zero = transfer["no_rule_mbit_s"], transfer["delayer_0ms_mbit_s"]
    lines = [
        bench_line("lab_delayer_lab_up", result["lab_up_s"], "s"),
        # ratios: no rule's RTT over the delayer's, the delayer's throughput over no rule's (higher is better)
        bench_line("lab_delayer_0ms_connect_rtt_p50", zero, "us", ("no_rule", base), base / zero if zero else None),
        bench_line("lab_delayer_overhead_per_packet", result["overhead_us_per_packet"], "us"),
        bench_line("lab_delayer_5ms_connect_rtt_p50", rtt["delayer_5ms"]["median"], "us"),
        bench_line("lab_delayer_5ms_error", result["delay_5ms_error_us"], "us"),
        bench_line("lab_delayer_0ms_transfer", mbit_zero, "Mbit/s", ("no_rule", mbit_base),
                   mbit_zero / mbit_base if mbit_base else None),
    ]  # fmt: skip
    for key, value in result["delayer_5ms_lateness"].items():  # late_us_p50, ...: microseconds late
        if value is not None:
            lines.append(bench_line(f"lab_delayer_5ms_{key.replace('_us', '')}", value, "us"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--bytes", type=int, default=20_000_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with Lab() as lab:
        base = lab.connect_rtts_us(args.samples)
        with lab.impaired("nodeB-ingress", delay_ms=0.0):
            zero = lab.connect_rtts_us(args.samples)
        with lab.impaired("nodeB-ingress", delay_ms=5.0) as imp:
            five = lab.connect_rtts_us(args.samples)
        five_stats = imp.stats
        t_base = transfer_s(lab, args.bytes)
        with lab.impaired("nodeA-ingress", delay_ms=0.0):
            t_zero = transfer_s(lab, args.bytes)
        result = {
            "bench": "lab_delayer",
            "lab_up_s": lab.up_seconds,
            "connect_rtt_us": {"no_rule": summary(base), "delayer_0ms": summary(zero), "delayer_5ms": summary(five)},
            "overhead_us_per_packet": round(statistics.median(zero) - statistics.median(base), 1),
            "delay_5ms_error_us": round(statistics.median(five) - statistics.median(base) - 5000, 1),
            "delayer_5ms_lateness": {k: v for k, v in five_stats.items() if k.startswith("late")},
            "transfer": {
                "bytes": args.bytes,
                "no_rule_mbit_s": round(args.bytes * 8 / t_base / 1e6, 1),
                "delayer_0ms_mbit_s": round(args.bytes * 8 / t_zero / 1e6, 1),
            },
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print("\n".join(bench_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
