"""What the lab commands print: a run's traffic, the manifest of a recorded run, the running labs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def traffic_summary(truth: Sequence[dict[str, Any]]) -> str:
    """One line: HTTP requests (with errors) and DNS lookups of a traffic run's ground truth."""
    http = [r for r in truth if r["type"] == "http"]
    errors = sum(1 for r in http if r["error"])
    return f"{len(http)} HTTP requests ({errors} errors), {len(truth) - len(http)} DNS lookups"


def manifest_summary(path: Path) -> list[str]:
    """The lines describing a recorded run's ``manifest.json``: counts, impairments, delayer overhead."""
    m = json.loads(path.read_text())
    c = m["counts"]
    lines = [
        f"{path}: {c['requests']} requests ({c['without_client_request_id']} without a client id, "
        f"{c['status_5xx']} 5xx, {c['errors']} errors), {c['dns']} DNS, "
        f"{len(m['capture_points'])} capture points"
    ]
    sidecar = m.get("server_sidecar")
    if sidecar:
        lines.append(f"  server sidecar: {sidecar['kind']} ({sidecar['version']})")
    egress = m.get("client_sidecar")
    if egress and egress["kind"] != "none":
        lines.append(f"  client sidecar: {egress['kind']} ({egress['version']}) on {egress['listen']}")
    tls = m.get("mtls")
    if tls:
        lines.append(f"  mutual TLS between the sidecars: {tls['version']}, CA {tls['ca']}, "
                     f"{len(tls['certificates'])} certificates, {tls['session_resumption']}")
    for imp in m["impairments"]:
        stats = imp["delayer_stats"]
        lines.append(f"  impairment {imp['site']}: delay {imp['delay_ms']} ms, loss {imp['loss']}: {stats}")
    if m.get("delayer_overhead"):
        lines.append(f"  delayer overhead: {m['delayer_overhead']['overhead_us']} us per packet")
    return lines


def running_labs() -> list[str]:
    """One line per running lab (its prefix, age, overlay, address families and sidecars, from its state
    file), or that none runs."""
    import time

    from hopscope.lab.lab import state_root
    from hopscope.lab.netns import lab_prefixes

    lines = []
    for prefix in lab_prefixes():
        state_file = state_root() / prefix / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        age = (time.time_ns() - state["created_ns"]) / 1e9 if "created_ns" in state else None
        note = (f"up {age:.0f} s, overlay {state.get('overlay')}, {'dual-stack' if state.get('ipv6') else 'IPv4'}, "
                f"server sidecar {state.get('sidecar', 'envoy')}, "
                f"client sidecar {state.get('client_sidecar', 'none')}"
                f"{', mutual TLS between them' if state.get('mtls') else ''}"
                if age is not None else "no state (crashed run?)")
        lines.append(f"{prefix}  {note}")
    return lines or ["no lab running"]
