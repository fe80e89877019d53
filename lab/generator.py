"""The lab's traffic generator: runs inside a client pod and records ground truth for every request.

Standalone script: ``python generator.py --client client1 --plan plan.json --out truth.jsonl``. The
plan is a JSON list of sessions, each run in its own thread (so sessions of one client are
concurrent):

``{"kind": "http", "target": "10.96.0.10", "port": 80, "host": "web", "keepalive": true,
   "requests": [{"method": "GET", "path": "/ok", "send_id": false}, ...], "pause_ms": 5}``
``{"kind": "dns", "server": "10.96.0.53", "names": ["web.default.svc.cluster.local", ...]}``
``{"kind": "connect", "target": "10.244.2.11", "port": 80, "count": 50}`` (TCP connect RTT samples)

Each output line is one JSON record: ``type`` http, dns or connect. Times are CLOCK_REALTIME
nanoseconds (``time.time_ns``), the clock tcpdump stamps packets with on the same machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
import uuid
import zlib
from typing import Any

try:
    from hopscope.lab.dns_server import build_query, parse_answer
except ImportError:  # run as a script inside a namespace: the sibling module
    from dns_server import build_query, parse_answer  # type: ignore[no-redef]

TIMEOUT_S = 15.0


def http_session(client: str, sid: int, spec: dict[str, Any], emit: Any) -> None:
    """Send the session's requests: on one connection (keep-alive) or one connection each."""
    conn: http.client.HTTPConnection | None = None
    conn_no = 0
    for seq, req in enumerate(spec["requests"]):
        if conn is None:
            conn_no += 1
            conn = http.client.HTTPConnection(spec["target"], spec.get("port", 80), timeout=TIMEOUT_S)
        rec = one_request(client, sid, seq, conn_no, conn, spec, req)
        emit(rec)
        if rec["error"] or not spec.get("keepalive", False) or rec.get("server_closed"):
            conn.close()
            conn = None
        if spec.get("pause_ms"):
            time.sleep(spec["pause_ms"] / 1000)
    if conn is not None:
        conn.close()


def one_request(
    client: str,
    sid: int,
    seq: int,
    conn_no: int,
    conn: http.client.HTTPConnection,
    spec: dict[str, Any],
    req: dict[str, Any],
) -> dict[str, Any]:
    keepalive = bool(spec.get("keepalive", False))
    headers = {"Host": spec.get("host", spec["target"]), "User-Agent": "hopscope-lab/1"}
    if not keepalive:
        headers["Connection"] = "close"
    request_id = str(uuid.uuid4()) if req.get("send_id") else None
    if request_id:
        headers["x-request-id"] = request_id
    rec: dict[str, Any] = {
        "type": "http",
        "client": client,
        "session": sid,
        "seq": seq,
        "conn": f"{client}-s{sid}-c{conn_no}",
        "method": req.get("method", "GET"),
        "path": req["path"],
        "host": headers["Host"],
        "target": f"{spec['target']}:{spec.get('port', 80)}",
        "keepalive": keepalive,
        "sent_request_id": request_id is not None,
        "request_id": request_id,
        "start_ns": time.time_ns(),
        "status": None,
        "error": None,
    }
    try:
        if conn.sock is None:
            conn.connect()
            rec["connected_ns"] = time.time_ns()
        local = conn.sock.getsockname()
        rec["local"] = f"{local[0]}:{local[1]}"
        conn.request(rec["method"], req["path"], body=req.get("body"), headers=headers)
        rec["sent_ns"] = time.time_ns()
        resp = conn.getresponse()
        rec["response_ns"] = time.time_ns()
        body = resp.read()
        rec["end_ns"] = time.time_ns()
        rec["status"] = resp.status
        rec["response_bytes"] = len(body)
        rec["upstream_request_id"] = resp.getheader("x-hs-upstream-request-id")
        rec["upstream_path"] = resp.getheader("x-hs-upstream-path")
        rec["upstream_host"] = resp.getheader("x-hs-upstream-host")
        rec["server"] = resp.getheader("x-hs-server")
        # set by a client pod's egress sidecar: the id and socket of its upstream leg
        rec["egress_request_id"] = resp.getheader("x-hs-egress-request-id")
        rec["egress_local"] = resp.getheader("x-hs-egress-local")
        # set by a server sidecar speaking mutual TLS: what its TLS leg carried
        tls = {k: resp.getheader(f"x-hs-tls-{k}") for k in ("version", "peer", "resumed", "remote")}
        if tls["version"]:
            rec["tls"] = tls
        rec["server_closed"] = resp.will_close
    except ConnectionRefusedError:
        rec["error"] = "refused"  # RST in answer to the SYN
    except ConnectionResetError:
        rec["error"] = "reset"
    except TimeoutError:
        rec["error"] = "timeout"
    except (http.client.HTTPException, OSError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec.setdefault("end_ns", time.time_ns())
    return rec


def dns_session(client: str, sid: int, spec: dict[str, Any], emit: Any) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    for seq, name in enumerate(spec["names"]):
        txid = (zlib.crc32(client.encode()) + sid * 1000 + seq * 7 + 1) & 0xFFFF
        rec: dict[str, Any] = {
            "type": "dns",
            "client": client,
            "session": sid,
            "seq": seq,
            "name": name,
            "txid": txid,
            "server": f"{spec['server']}:{spec.get('port', 53)}",
            "start_ns": time.time_ns(),
            "rcode": None,
            "answers": [],
            "error": None,
        }
        try:
            sock.sendto(build_query(txid, name), (spec["server"], spec.get("port", 53)))
            rec["local"] = "{}:{}".format(*sock.getsockname())
            data, _ = sock.recvfrom(4096)
            _, rec["rcode"], rec["answers"] = parse_answer(data)
        except TimeoutError:
            rec["error"] = "timeout"
        rec["end_ns"] = time.time_ns()
        emit(rec)
        if spec.get("pause_ms"):
            time.sleep(spec["pause_ms"] / 1000)
    sock.close()


def connect_session(client: str, sid: int, spec: dict[str, Any], emit: Any) -> None:
    """TCP connect times (one SYN/SYN-ACK round trip each) to target:port."""
    for seq in range(spec.get("count", 20)):
        start = time.perf_counter_ns()
        try:
            with socket.create_connection((spec["target"], spec.get("port", 80)), timeout=5):
                rtt = time.perf_counter_ns() - start
            emit(
                {
                    "type": "connect",
                    "client": client,
                    "session": sid,
                    "seq": seq,
                    "rtt_ns": rtt,
                    "error": None,
                }
            )
        except OSError as exc:
            emit(
                {
                    "type": "connect",
                    "client": client,
                    "session": sid,
                    "seq": seq,
                    "rtt_ns": None,
                    "error": str(exc),
                }
            )
        time.sleep(spec.get("pause_ms", 5) / 1000)


SESSIONS = {"http": http_session, "dns": dns_session, "connect": connect_session}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", required=True)
    parser.add_argument("--plan", required=True, help="JSON file: list of sessions")
    parser.add_argument("--out", required=True, help="JSON-lines ground truth")
    args = parser.parse_args()
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    lock = threading.Lock()
    out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115

    def emit(rec: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    threads = []
    for sid, spec in enumerate(plan):
        t = threading.Thread(target=SESSIONS[spec["kind"]], args=(args.client, sid, spec, emit), daemon=True)
        t.start()
        threads.append(t)
        if spec.get("stagger_ms"):
            time.sleep(spec["stagger_ms"] / 1000)
    for t in threads:
        t.join()
    out.close()


if __name__ == "__main__":
    main()
