"""The recipe of the shipped sample captures (``hopscope lab samples``): small enough to ship (a few
MB of pcaps), with every case the correlator handles present."""

from __future__ import annotations

from pathlib import Path

from hopscope.lab.lab import ImpairSpec, Lab, record
from hopscope.lab.plan import PlanSettings

SAMPLE_SETTINGS = PlanSettings(requests_per_session=8, sessions=1, big_bytes=60_000, dead_attempts=1, dns_lookups=3)
#: 5 ms of delay on node B's ingress: the link latencies the samples show are measurable.
SAMPLE_IMPAIRMENTS = (ImpairSpec("nodeB-ingress", delay_ms=5.0),)


def record_samples(out: Path, sidecar: str = "envoy", client_sidecar: str = "none") -> Path:
    """Build a lab (its server pods behind ``sidecar``, its client pods' egress through
    ``client_sidecar``), record the sample run into ``out`` (its old
    pcaps removed first), tear the lab down; return the path of the new ``manifest.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.pcap"):
        old.unlink()
    with Lab(sidecar=sidecar, client_sidecar=client_sidecar) as lab:
        manifest: Path = record(lab, out, list(SAMPLE_IMPAIRMENTS), SAMPLE_SETTINGS)
    return manifest
