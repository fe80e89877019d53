"""The lab's DNS server (a kube-dns stand-in) and the wire helpers the generator's client shares.

Standalone script: ``python dns_server.py --listen 0.0.0.0 --port 53 --zone NAME=IP ...``. Answers A
queries for the zone's names (NXDOMAIN otherwise), over UDP, one JSON log line per query.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time

QTYPE_A = 1
QCLASS_IN = 1
RCODE_NXDOMAIN = 3


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def decode_name(buf: bytes, offset: int) -> tuple[str, int]:
    """The (uncompressed) name at ``offset`` and the offset after it."""
    labels: list[str] = []
    while True:
        length = buf[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        labels.append(buf[offset : offset + length].decode("ascii", "replace"))
        offset += length


def build_query(txid: int, name: str) -> bytes:
    """A recursive A query for ``name``."""
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", QTYPE_A, QCLASS_IN)


def parse_answer(buf: bytes) -> tuple[int, int, list[str]]:
    """(txid, rcode, A addresses) of a response (answers must use a name pointer, as ours do)."""
    txid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", buf[:12])
    offset = 12
    for _ in range(qd):
        _, offset = decode_name(buf, offset)
        offset += 4
    addrs = []
    for _ in range(an):
        if buf[offset] & 0xC0 == 0xC0:
            offset += 2
        else:
            _, offset = decode_name(buf, offset)
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", buf[offset : offset + 10])
        offset += 10
        if rtype == QTYPE_A and rdlen == 4:
            addrs.append(socket.inet_ntoa(buf[offset : offset + 4]))
        offset += rdlen
    return txid, flags & 0xF, addrs


def answer(query: bytes, zone: dict[str, str]) -> tuple[bytes, str, int]:
    """The response to ``query``, the name asked and the rcode."""
    txid, flags = struct.unpack("!HH", query[:4])
    name, end = decode_name(query, 12)
    qtype, _qclass = struct.unpack("!HH", query[end : end + 4])
    question = query[12 : end + 4]
    ip = zone.get(name.lower().rstrip("."))
    rd = flags & 0x0100
    if ip is None:
        header = struct.pack("!HHHHHH", txid, 0x8080 | rd | RCODE_NXDOMAIN, 1, 0, 0, 0)
        return header + question, name, RCODE_NXDOMAIN
    answers = b""
    count = 0
    if qtype == QTYPE_A:
        answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, 30, 4) + socket.inet_aton(ip)
        count = 1
    header = struct.pack("!HHHHHH", txid, 0x8480 | rd, 1, count, 0, 0)
    return header + question + answers, name, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--zone", action="append", default=[], help="NAME=IP (repeatable)")
    parser.add_argument("--log", help="JSON-lines query log")
    args = parser.parse_args()
    zone = dict(item.split("=", 1) for item in args.zone)
    logf = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.listen, args.port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            resp, name, rcode = answer(data, zone)
        except (struct.error, IndexError, UnicodeError):
            continue
        sock.sendto(resp, peer)
        if logf:
            rec = {"time_ns": time.time_ns(), "peer": f"{peer[0]}:{peer[1]}", "name": name, "rcode": rcode}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()


if __name__ == "__main__":
    main()
