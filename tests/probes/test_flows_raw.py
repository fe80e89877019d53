"""``hopscope flows`` JSON lines straight from the compiled meter's output (``RawJsonLines``: the record
matrix and text buffer read in place) against the same records through FlowRecord batches and against
the reference paths (``HOPSCOPE_NATIVE=0``): the same bytes. The crafted capture holds what the
in-place form cannot express and hands to the batch path (a VXLAN tunnel's outer flow, whose service
names the tunnel), content services, interim records, IPv6, ICMP and non-ASCII names. Also the
kernel's SPANS kind on its own: JSON escaping and the errors it gives for spans outside the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from hopscope.cli import main
from hopscope.probes.output import JsonLines, RawJsonLines
from hopscope.records import Batch
from tests.probes.crafting import MAC_A, MAC_B, T0, conversation

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples" / "lab").glob("*.pcap"))
REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
def kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOPSCOPE_NATIVE", "1")
    if JsonLines().kernel is None:
        pytest.skip("the _jsonl kernel is not built (pip install -e .)")


def crafted(path: Path, tunnel: bool) -> Path:
    """HTTP and DNS (services), a flow with packets 130 s apart (interim records at the 60 s
    interval), ICMP echo and IPv6; with ``tunnel`` also HTTP in VXLAN (the outer flow's service is
    "vxlan")."""
    packets: list[Packet] = []
    http = conversation([">S", "<SA", ">A", ">PA:1", "<A", ">FA", "<FA", ">A"])
    http[3][TCP].remove_payload()
    http[3] = http[3] / Raw(REQUEST)
    packets += http
    dns = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=5353, dport=53)
    packets.append(dns / DNS(rd=1, qd=DNSQR(qname="example.com")))
    packets[-1].time = T0 + 0.5
    for k in range(3):  # one UDP flow alive for 130 s
        pkt = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.7", dst="10.0.0.8") / UDP(sport=7000, dport=7001) / b"hi"
        pkt.time = T0 + 1 + 65 * k
        packets.append(pkt)
    outer = Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=50000, dport=4789)
    for pkt in conversation([">S", "<SA", ">A", ">PA:20"]) if tunnel else []:
        wrapped = outer / VXLAN(vni=9) / Ether(src=MAC_A, dst=MAC_B) / pkt[IP]
        wrapped.time = pkt.time + 2
        packets.append(wrapped)
    echo = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.9") / ICMP(type=8)
    echo.time = T0 + 3
    six = Ether(src=MAC_A, dst=MAC_B, type=0x86DD) / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(flags="S")
    six.time = T0 + 4
    packets += [echo, six]
    wrpcap(str(path), sorted(packets, key=lambda p: float(p.time)))
    return path


def flows_output(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(["flows", *args]) == 0
    return capsys.readouterr().out


def batch_path_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str]) -> str:
    """``hopscope flows`` through FlowRecord batches and ``JsonLines`` (the raw form turned off)."""
    with monkeypatch.context() as patch:
        init = RawJsonLines.__init__

        def without_kernel(self: RawJsonLines, meter: object) -> None:
            init(self, meter)  # type: ignore[arg-type]
            self.kernel = None

        patch.setattr(RawJsonLines, "__init__", without_kernel)
        return flows_output(capsys, args)


@pytest.mark.parametrize("interim", [False, True])
@pytest.mark.parametrize("tunnel", [False, True])
def test_crafted_capture_same_bytes_as_batches_and_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kernels: None,
    interim: bool, tunnel: bool,
) -> None:  # fmt: skip
    args = [str(crafted(tmp_path / "c.pcap", tunnel)), "-C", "--host", "h\u00e9\"", "--hop-kind", "pod"]
    args += ["--point", "p1", *(["--interim"] if interim else [])]
    through_batches: list[int] = []  # records the raw form handed to the batch path (a tunnel's outer flow)
    write = RawJsonLines.write

    def counted(self: RawJsonLines, batch: Batch, out: BinaryIO) -> None:
        through_batches.append(len(batch))
        write(self, batch, out)

    monkeypatch.setattr(RawJsonLines, "write", counted)
    raw = flows_output(capsys, args)
    assert bool(through_batches) == tunnel
    assert raw == batch_path_output(capsys, monkeypatch, args)
    monkeypatch.setenv("HOPSCOPE_NATIVE", "0")
    assert raw == flows_output(capsys, args)
    rows = [json.loads(line) for line in raw.splitlines()]
    services = {r["service"] for r in rows}
    assert {"http", "dns"} <= services and ("vxlan" in services) == tunnel
    assert {r["host"] for r in rows} == {"h\u00e9\""} and {r["point"] for r in rows} == {"p1"}
    assert any(r["tunnel"].startswith("vxlan vni=9") for r in rows) == tunnel
    assert any(":" in r["orig_h"] for r in rows) and any(r["proto"] == "icmp" for r in rows)
    assert any(r["final"] == 0 for r in rows) == interim  # the UDP flow's interim records


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_lab_captures_same_bytes_as_batches(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kernels: None, path: Path
) -> None:
    raw = flows_output(capsys, [str(path)])
    assert raw and raw == batch_path_output(capsys, monkeypatch, [str(path)])


def test_spans_kind_escapes_as_json_and_rejects_spans_outside_the_text(kernels: None) -> None:
    k = JsonLines().kernel
    assert k is not None
    text = bytes(range(256)) + b'ab"c\\'
    starts, ends = np.array([0, 256, 3, 5], np.int64), np.array([256, 261, 3, 6], np.int64)
    out = bytearray()
    size = k.format_rows(4, [(b'{"x":', k.SPANS, (text, starts, ends))], out)
    got = [json.loads(line)["x"] for line in out[:size].decode("ascii").splitlines()]
    assert got == [text[a:b].decode("latin-1") for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    assert bytes(out[:size]).splitlines()[0] == b'{"x":' + json.dumps(text[:256].decode("latin-1")).encode() + b"}"
    for bad_start, bad_end in ((-1, 2), (3, 2), (0, len(text) + 1)):
        with pytest.raises(ValueError, match="not inside"):
            k.format_rows(1, [(b"", k.SPANS, (text, np.array([bad_start]), np.array([bad_end])))], out)
    with pytest.raises(TypeError, match="int64"):
        k.format_rows(1, [(b"", k.SPANS, (text, np.array([0], np.int32), np.array([1], np.int32)))], out)
    with pytest.raises(TypeError, match="spans column"):
        k.format_rows(1, [(b"", k.SPANS, text)], out)
