"""Live capture: a TPACKET_V3 ring on an interface (optionally in a network namespace) feeding the probe.

Capture
    ``PacketRing`` opens an AF_PACKET socket with a memory-mapped TPACKET_V3 receive ring (the kernel
    fills blocks of many frames; user space hands a block back by writing its status word), attaches a
    BPF filter compiled by libpcap (through pcapy-ng's ``compile``; the filter's accept length is the
    snaplen), and binds to the interface. One ``read`` returns every block the kernel has retired as one
    ``RawBlock`` (the reader/decoder interface of ``hopscope.probes.readers``), whose buffer is the ring
    itself (blocks handed back to the kernel by the next ``read``) or, for the ring's last block, a copy.
    The block walk (following each frame's ``tp_next_offset``, gathering offsets, timestamps and
    lengths) is the C kernel ``_ring.gather`` (probes/csrc/ring.c), or its reference twin
    ``gather_reference`` when kernels are off. Kernel counters (``PACKET_STATISTICS``: packets, drops,
    queue freezes) are read and accumulated by ``stats``. VLAN tags that the NIC or veth strips into
    packet metadata are not re-inserted (the decoder sees the untagged frame). ``iface="any"`` captures
    every interface of the namespace through a cooked socket; frames get a Linux SLL2 header naming
    their interface, and the probe reports one capture point per interface, ``POINT:IFNAME`` (for the
    ``nat`` hop kind). With a ``fanout`` group, several probes (processes, one per core) share an
    interface's traffic by flow hash, both directions of a connection reaching the same probe.

Namespaces
    With ``netns``, the socket is opened inside ``/var/run/netns/NAME`` (``setns``), then the thread
    returns to its own namespace, so Kafka and files stay reachable as usual while the socket keeps
    capturing in the other namespace.

The probe
    ``LiveProbe`` runs capture -> decode -> meter (and the flow records' ``service``, probes/service.py)
    -> L7 in one thread until ``stop()`` (the CLI wires
    SIGINT/SIGTERM to it), publishes FlowRecord and RequestRecord batches through a ``Publisher`` every
    ``publish_interval_s``, logs kernel drops, decode skips, evictions and table sizes every
    ``report_interval_s``, and on stop flushes the meter and the L7 tracker, publishes the rest and
    returns a ``ProbeSummary``. With ``packet_store`` settings it also keeps every metered packet in a
    rolling packet store per point (``hopscope.probes.packet_store``: size and age limits, indexed by
    flow), written as each block is metered, its index flushed and its limits applied every publish
    interval; what it kept and dropped is in the summary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from hopscope.codec import decode_batch, encode_batch
from hopscope.errors import CaptureError, ConfigError
from hopscope.probes import kernels
from hopscope.probes.decode import Decoder
from hopscope.probes.l7 import CapturePoint, L7Settings, L7Tracker
from hopscope.probes.l7.feed import BlockFeeder
from hopscope.probes.meter import FlowMeter, MeterConfig
from hopscope.probes.packet_store import PacketStore, PacketStoreSettings
from hopscope.probes.readers import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, PAD_BYTES, Interface, RawBlock
from hopscope.probes.service import ServiceDetector
from hopscope.records import Batch, FlowRecord

log = logging.getLogger(__name__)

SOL_PACKET: Final = 263
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
PACKET_FANOUT: Final = 18
PACKET_FANOUT_HASH: Final = 0  # by flow hash: both directions of a connection go to the same socket
TPACKET_V3: Final = 2
SO_ATTACH_FILTER: Final = 26
ETH_P_ALL: Final = 0x0003
ANY: Final = "any"
#: libpcap's DLT_RAW on Linux (a filter for packets that start at the IP header).
LINKTYPE_RAW_DLT: Final = 12
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
CLONE_NEWNET: Final = 0x40000000
NETNS_DIR: Final = "/var/run/netns"

_REQ3 = struct.Struct("=7I")  # block_size, block_nr, frame_size, frame_nr, retire_blk_tov, priv, features
_STATS3 = struct.Struct("=3I")  # tp_packets, tp_drops, tp_freeze_q_cnt
# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, blk_len, ...   (all u32, read through a u32 view: indices 2, 3, 4)
_BLK_STATUS, _BLK_NUM_PKTS, _BLK_FIRST = 2, 3, 4
_HDR_BYTES = 28  # tpacket3_hdr up to tp_net (a frame's mac offset is past it)
_SOCKADDR_LL = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): where the frame's sockaddr_ll starts
_SOCKADDR_LL_BYTES = 20
_SLL2_LEN = 20


@dataclass(frozen=True, slots=True)
class RingSettings:
    """Size and behaviour of the TPACKET_V3 ring."""

    block_bytes: int = 1 << 20  # one kernel block (a multiple of the page size)
    block_count: int = 64  # ring = block_bytes * block_count
    frame_bytes: int = 1 << 11  # only checked by the kernel in V3 (block_bytes % frame_bytes == 0)
    retire_ms: int = 50  # the kernel hands over a partly filled block after this long (latency bound)
    snaplen: int = 262_144  # bytes kept per frame (the BPF filter's accept length)
    max_blocks_per_read: int = 16  # blocks joined into one RawBlock at most
    zero_copy: bool = True  # RawBlocks point into the ring (valid until the next read) instead of a copy


@dataclass(slots=True)
class RingStats:
    """Kernel counters, accumulated (PACKET_STATISTICS resets them on every read)."""

    packets: int = 0  # frames that passed the filter (received + dropped)
    drops: int = 0  # frames dropped because the ring was full
    freezes: int = 0  # times the queue froze (ring full)
    frames_read: int = 0  # frames handed to the decoder
    blocks_read: int = 0
    bad_blocks: int = 0  # blocks whose walk stopped at a frame header, offset or length outside the block
    wait_s: float = 0.0  # time spent waiting in poll() for the kernel to retire a block


def compile_filter(expr: str, snaplen: int, linktype: int = LINKTYPE_ETHERNET) -> list[tuple[int, int, int, int]]:
    """Compile a tcpdump filter expression with libpcap (pcapy-ng); raises ``ConfigError`` if invalid."""
    import pcapy

    try:
        program = pcapy.compile(linktype, snaplen, expr, 1, 0xFFFFFFFF)
    except pcapy.PcapError as exc:
        raise ConfigError(f"invalid capture filter {expr!r}: {exc}") from exc
    return [(int(c), int(jt), int(jf), int(k)) for c, jt, jf, k in program.get_bpf()]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    insns = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread in network namespace ``name`` (an ``ip netns`` name, or the absolute
    path of a namespace file such as ``/proc/PID/ns/net``), then return."""
    if not name:
        yield
        return
    path = name if os.path.isabs(name) else os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        raise ConfigError(f"network namespace {name!r} not found ({path} does not exist)")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise CaptureError(f"cannot enter network namespace {name!r}: {os.strerror(err)} (root needed)")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise CaptureError("cannot return to the probe's own network namespace")
    finally:
        os.close(own)
        os.close(target)


class PacketRing:
    """A TPACKET_V3 receive ring on one interface, or on all of them (``iface="any"``).

    ``any`` opens a cooked (SOCK_DGRAM) socket bound to no interface; the filter is compiled for raw IP
    (a cooked socket's filter sees the network header first) and each frame is handed to the decoder
    with a Linux SLL2 header built from the ring's ``sockaddr_ll``, so the decoder learns the interface
    index of every packet (the ``nat`` hop kind: one capture, both sides of iptables).
    """

    def __init__(
        self,
        iface: str,
        *,
        bpf: str = "",
        netns: str | None = None,
        settings: RingSettings | None = None,
        fanout: int | None = None,
    ) -> None:
        self.iface = iface
        self.fanout = fanout  # PACKET_FANOUT group: sockets of one group share the traffic by flow hash
        self.bpf = bpf
        self.netns = netns
        self.settings = settings or RingSettings()
        self.stats = RingStats()
        self._stats_lock = threading.Lock()  # read_kernel_stats runs in the capture loop and in metrics scrapes
        self._sock: socket.socket | None = None
        self._map: mmap.mmap | None = None
        self._words: memoryview | None = None  # the ring as u32 words
        self._next_block = 0
        self._held: list[int] = []  # blocks of the last read, handed back to the kernel by the next one
        self._poller: select.poll | None = None
        self._kernel = kernels.load("_ring")  # the C block walk, or None: gather_reference
        self.cooked = iface == ANY
        linktype = LINKTYPE_LINUX_SLL2 if self.cooked else LINKTYPE_ETHERNET
        self._interfaces = (Interface(0, linktype, self.settings.snaplen, name=iface),)
        self.if_names: dict[int, str] = {}  # ifindex -> name in the capture's namespace (filled by open)
        self.last_error = 0  # errno the socket last reported (ENETDOWN: the interface went away)

    def open(self) -> PacketRing:
        s = self.settings
        program = compile_filter(self.bpf, s.snaplen, LINKTYPE_RAW_DLT if self.cooked else LINKTYPE_ETHERNET)
        kind, proto = (socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)) if self.cooked else (socket.SOCK_RAW, 0)
        with in_netns(self.netns):
            self.if_names = dict(socket.if_nameindex())
            try:
                sock = socket.socket(socket.AF_PACKET, kind, proto)
            except PermissionError as exc:
                raise CaptureError(f"capturing on {self.iface} needs root (CAP_NET_RAW): {exc}") from exc
            try:
                _attach_filter(sock, program)
                sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                frames = s.block_bytes // s.frame_bytes * s.block_count
                req = _REQ3.pack(s.block_bytes, s.block_count, s.frame_bytes, frames, s.retire_ms, 0, 0)
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                self._map = mmap.mmap(sock.fileno(), s.block_bytes * s.block_count, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
                if not self.cooked:
                    sock.bind((self.iface, ETH_P_ALL))
                if self.fanout is not None:
                    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, self.fanout | (PACKET_FANOUT_HASH << 16))
            except OSError as exc:
                sock.close()
                raise CaptureError(f"cannot capture on {self.iface!r}: {exc}") from exc
        self._sock = sock
        self._words = memoryview(self._map).cast("I")
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        return self

    def close(self) -> None:
        """Close the socket and unmap the ring (once the last RawBlock pointing into it is gone)."""
        self._release()
        self._poller = None
        if self._sock is not None:
            self.read_kernel_stats()
            self._sock.close()
            self._sock = None
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a zero-copy RawBlock still refers to it: unmapped when it goes away
                log.debug("ring of %s still referenced at close; unmapped when released", self.iface)
            self._map = None

    def __enter__(self) -> PacketRing:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_kernel_stats(self) -> RingStats:
        """Add the kernel's counters since the last call to ``stats`` and return it (any thread may call
        it: the kernel resets its counters on every read, so the additions are serialised)."""
        with self._stats_lock:
            sock = self._sock
            if sock is not None:
                try:
                    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
                except OSError:  # closed meanwhile by the capture thread, which read the last counts
                    return self.stats
                packets, drops, freezes = _STATS3.unpack(raw)
                self.stats.packets += packets
                self.stats.drops += drops
                self.stats.freezes += freezes
        return self.stats

    def read(self, timeout_ms: int = 100) -> RawBlock | None:
        """Frames of every block the kernel has handed over (waiting up to ``timeout_ms``), or None.

        With ``RingSettings.zero_copy`` the RawBlock's buffer is the ring itself: it stays valid until the
        next ``read`` or ``close``, which hand its blocks back to the kernel (consumers that keep bytes
        beyond that must copy them, as the L7 stage does). Otherwise the blocks are copied out and handed
        back at once. A read never wraps past the ring's end; the ring's last block is read alone and
        copied (the decoder needs PAD_BYTES of readable memory after the frames).
        """
        words = self._words
        if words is None or self._sock is None or self._poller is None:
            raise CaptureError("the ring is not open")
        self._release()
        s = self.settings
        block_words = s.block_bytes // 4
        if words[self._next_block * block_words + _BLK_STATUS] & TP_STATUS_USER == 0:
            waited = time.perf_counter()
            events = self._poller.poll(timeout_ms)
            if events and events[0][1] & select.POLLERR:  # reading SO_ERROR clears it: poll() waits again
                self.last_error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.stats.wait_s += time.perf_counter() - waited
        last = s.block_count - 1
        end = min(self._next_block + s.max_blocks_per_read, last if self._next_block < last else s.block_count)
        ready = list(range(self._next_block, end))
        for n, index in enumerate(ready):
            if words[index * block_words + _BLK_STATUS] & TP_STATUS_USER == 0:
                ready = ready[:n]
                break
        if not ready:
            return None
        in_place = s.zero_copy and ready[-1] != last
        raw = self._gather(ready, in_place)
        self._held = ready
        if not in_place:
            self._release()
        self._next_block = (ready[-1] + 1) % s.block_count
        return raw

    def _release(self) -> None:
        """Hand the blocks of the last read back to the kernel."""
        if self._words is not None:
            block_words = self.settings.block_bytes // 4
            for index in self._held:
                self._words[index * block_words + _BLK_STATUS] = TP_STATUS_KERNEL
        self._held = []

    def _gather(self, ready: list[int], in_place: bool) -> RawBlock:
        """Gather the ready blocks' frame columns (C kernel or reference), in the ring or from a copy."""
        assert self._map is not None and self._words is not None
        s, words, cooked = self.settings, self._words, self.cooked
        block_words = s.block_bytes // 4
        total = sum(min(words[i * block_words + _BLK_NUM_PKTS], block_words) for i in ready)
        size = len(ready) * s.block_bytes + PAD_BYTES
        if in_place:  # the ring from the first block on; PAD_BYTES of the next block (not the last) after it
            buf = np.frombuffer(self._map, np.uint8, size, ready[0] * s.block_bytes)
        else:
            buf = np.empty(size, np.uint8)
        offset, ts_ns = np.empty(total, np.int64), np.empty(total, np.int64)
        caplen, origlen = np.empty(total, np.uint32), np.empty(total, np.uint32)
        walk = self._kernel.gather if self._kernel is not None else gather_reference
        out = None if in_place else buf
        count, bad = walk(self._map, s.block_bytes, ready, out, offset, ts_ns, caplen, origlen, cooked)
        self.stats.frames_read += count
        self.stats.blocks_read += len(ready)
        self.stats.bad_blocks += bad
        return RawBlock(
            buf=buf,
            offset=offset[:count],
            caplen=caplen[:count],
            origlen=origlen[:count],
            ts_ns=ts_ns[:count],
            iface=np.zeros(count, np.uint16),
            interfaces=self._interfaces,
        )


_FRAME = struct.Struct("=6I2H")  # tpacket3_hdr up to tp_net: next, sec, nsec, snaplen, len, status, mac, net
_BLOCK_HEAD = struct.Struct("=12x2I")  # tpacket_block_desc: version, priv, block_status; num_pkts, first


def gather_reference(
    ring: mmap.mmap | bytearray,
    block_bytes: int,
    blocks: list[int],
    out: npt.NDArray[np.uint8] | None,
    offset: npt.NDArray[np.int64],
    ts_ns: npt.NDArray[np.int64],
    caplen: npt.NDArray[np.uint32],
    origlen: npt.NDArray[np.uint32],
    cooked: bool,
) -> tuple[int, int]:
    """The reference twin of the C kernel ``_ring.gather`` (probes/csrc/ring.c), same arguments and result.

    Copies ring blocks ``blocks`` into ``out`` (zeroing the rest), or with ``out=None`` leaves them where
    they are (they must be consecutive; offsets count from the first one), follows each block's
    ``tp_next_offset`` chain in Python and fills the columns; returns (frames gathered, blocks whose walk
    stopped early because a header, offset or length did not fit the block). At most
    ``block_bytes // 4`` frames per block. Cooked frames get an SLL2 header (``_write_sll2``, in ``out``
    or in the ring) and 20 bytes more in both lengths.
    """
    src = np.frombuffer(ring, np.uint8)
    if out is None and any(b != blocks[0] + n for n, b in enumerate(blocks)):
        raise ValueError("in place, the blocks must be consecutive")
    target = src[blocks[0] * block_bytes :] if out is None and blocks else out
    cap = min(len(offset), len(ts_ns), len(caplen), len(origlen))
    frames: list[tuple[int, int, int, int, int, int]] = []  # header position, start, sec, nsec, snaplen, len
    bad = 0
    for n, index in enumerate(blocks):
        if out is not None:
            out[n * block_bytes : (n + 1) * block_bytes] = src[index * block_bytes : (index + 1) * block_bytes]
        bad += _walk_block(ring, index * block_bytes, block_bytes, n * block_bytes, cooked, cap, frames)
    if out is not None:
        out[len(blocks) * block_bytes :] = 0
    count = len(frames)
    if count:
        cols = np.array(frames, np.int64).T
        offset[:count], caplen[:count], origlen[:count] = cols[1], cols[4], cols[5]
        ts_ns[:count] = cols[2] * 1_000_000_000 + cols[3]
        if cooked and target is not None:
            _write_sll2(target, cols[0] + _SOCKADDR_LL, cols[1])
            caplen[:count] += _SLL2_LEN
            origlen[:count] += _SLL2_LEN
    return count, bad


def _walk_block(
    ring: mmap.mmap | bytearray, at: int, size: int, base: int, cooked: bool, cap: int,
    frames: list[tuple[int, int, int, int, int, int]],
) -> int:  # fmt: skip
    """Append the frames of the block at ``at`` in ``ring`` (copied to ``base``); 1 if the walk stopped early."""
    count, pos = _BLOCK_HEAD.unpack_from(ring, at)
    limit = min(count, size // 4)
    for k in range(limit):
        if len(frames) >= cap or pos < 20 or pos > size or size - pos < _SOCKADDR_LL + _SOCKADDR_LL_BYTES:
            return 1
        nxt, sec, nsec, snap, wire, _, mac, net = _FRAME.unpack_from(ring, at + pos)
        if (net < _SOCKADDR_LL + _SOCKADDR_LL_BYTES + _SLL2_LEN) if cooked else (mac < _HDR_BYTES):
            return 1
        start = pos + (net - _SLL2_LEN if cooked else mac)
        if start > size or size - start < snap + (_SLL2_LEN if cooked else 0):
            return 1
        frames.append((base + pos, base + start, sec, nsec, snap, wire))
        if k + 1 < limit and (nxt == 0 or nxt % 4):
            return 1
        pos += nxt
    return int(limit < count)


def _write_sll2(buf: npt.NDArray[np.uint8], sll: npt.NDArray[np.int64], at: npt.NDArray[np.int64]) -> None:
    """Write a Linux SLL2 header (20 bytes, network byte order) at ``at`` from the sockaddr_ll at ``sll``.

    sockaddr_ll: family u16, protocol be16, ifindex i32 (host order), hatype u16 (host order), pkttype
    u8, halen u8, addr[8]. SLL2: protocol be16, reserved u16, ifindex be32, hatype be16, pkttype u8,
    halen u8, addr[8]. The ring leaves 28 bytes between sockaddr_ll's end and the network header.
    """
    host_order = [7, 6, 5, 4, 9, 8] if sys.byteorder == "little" else [4, 5, 6, 7, 8, 9]
    src_order = np.array([2, 3, -1, -1, *host_order, 10, 11, *range(12, 20)])
    idx = at[:, None] + np.arange(_SLL2_LEN)
    values = buf[sll[:, None] + np.where(src_order >= 0, src_order, 0)]
    values[:, src_order < 0] = 0
    buf[idx] = values


# --- the probe -------------------------------------------------------------------------------------


class RecordSink(Protocol):
    """Where batches go: a transport ``Publisher`` or a file (``FileSink``)."""

    def publish(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Writes batches to a file: JSON lines (``.jsonl``, one record per line with its table) or, for any
    other name, the codec's messages each preceded by its length as a little-endian u32."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.jsonl = path.endswith(".jsonl")
        self._fh = open(path, "w" if self.jsonl else "wb")  # noqa: SIM115 (closed by close())
        self.records = 0

    def publish(self, batch: Batch) -> None:
        if not len(batch):
            return
        self.records += len(batch)
        if self.jsonl:
            table = batch.record_type.TABLE
            lines = [json.dumps({"table": table, **asdict(r)}) + "\n" for r in batch.records()]  # type: ignore[call-overload]
            self._fh.write("".join(lines))
        else:
            message = encode_batch(batch)
            self._fh.write(struct.pack("<I", len(message)) + message)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class FanoutSink:
    """Publishes every batch to each of several sinks (Kafka and a file, say), in order."""

    def __init__(self, sinks: Sequence[RecordSink]) -> None:
        self.sinks = list(sinks)

    def publish(self, batch: Batch) -> None:
        for sink in self.sinks:
            sink.publish(batch)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_file_sink(path: str) -> Iterator[Batch]:
    """Read back the batches a non-JSONL ``FileSink`` wrote."""
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        yield decode_batch(data[pos + 4 : pos + 4 + length])
        pos += 4 + length


LIVE_SWEEP_S: Final = 0.1  # the live probe's MeterConfig.sweep_every_s


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What ``LiveProbe`` captures, where it says it is, and how often it reports."""

    iface: str
    point: str
    host: str = field(default_factory=socket.gethostname)
    hop_kind: str = ""
    netns: str | None = None
    bpf: str = ""
    l7: bool = True  # run the HTTP/DNS parsers
    # validate checksums as Zeek does (hopscope.probes.checksums); off: on the sending host, outgoing
    # packets carry checksums the NIC fills in later (offload), so they would fail
    checksums: bool = False
    ring: RingSettings = field(default_factory=RingSettings)
    # sweeps every 0.1 s of capture time: the records a sweep closes come out in small bursts (a 1 s
    # sweep at ~900k pps closed ~60k flows at once and stalled the ring reads for 80-120 ms)
    meter: MeterConfig = field(default_factory=lambda: MeterConfig(sweep_every_s=LIVE_SWEEP_S))
    l7_settings: L7Settings = field(default_factory=L7Settings)
    publish_interval_s: float = 1.0
    publish_max_records: int = 8192  # flow records held before they are published, in batches of this
    # size between ring reads (the capture loop stalls while a batch is encoded and sent: ~2 us a record)
    report_interval_s: float = 10.0
    read_timeout_ms: int = 100
    fanout: int | None = None  # PACKET_FANOUT group id: run several probes that share the traffic
    packet_store: PacketStoreSettings | None = None  # keep the packets on disk, indexed by flow (None: not kept)


@dataclass(slots=True)
class ProbeSummary:
    """What one run of the probe saw and sent."""

    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # CPU time the probe's process used (user + system)
    busy_s: float = 0.0  # wall time spent gathering, decoding, metering and parsing ready blocks
    busy_cpu_s: float = 0.0  # CPU time of that work (not counting time the core ran other processes)
    kernel_packets: int = 0  # frames that passed the filter (kernel count)
    kernel_drops: int = 0  # frames the kernel dropped (ring full)
    kernel_freezes: int = 0
    frames_read: int = 0  # frames decoded
    decode_skips: dict[str, int] = field(default_factory=dict)  # by PacketStatus name
    flow_records: int = 0  # FlowRecords published
    request_records: int = 0  # RequestRecords published
    meter: dict[str, int] = field(default_factory=dict)  # meter counters (evictions, ...)
    l7: dict[str, int] = field(default_factory=dict)  # L7Stats
    packet_store: dict[str, int] = field(default_factory=dict)  # PacketStoreStats: packets kept and dropped

    @property
    def frames_per_busy_s(self) -> float:
        """Frames one core handles per second of work (the probe's capacity)."""
        return self.frames_read / self.busy_s if self.busy_s else 0.0


class LiveProbe:
    """Capture -> decode -> meter -> L7 -> sink, in one thread, until ``stop()``."""

    def __init__(self, settings: ProbeSettings, sink: RecordSink) -> None:
        self.settings = settings
        self.sink = sink
        self.ring = PacketRing(
            settings.iface, bpf=settings.bpf, netns=settings.netns, settings=settings.ring, fanout=settings.fanout
        )
        resolve = self._point_of_interface if self.ring.cooked else None
        self.decoder = Decoder(default_point=settings.point, resolve_point=resolve, checksums=settings.checksums)
        self.meter = FlowMeter(settings.meter, host=settings.host, hop_kind=settings.hop_kind)
        self.services = ServiceDetector()  # FlowRecord.service, from the payloads of every block
        self.packets = PacketStore(settings.packet_store, settings.host) if settings.packet_store else None
        self.l7: dict[str, BlockFeeder] = {}  # capture point name -> its L7 stage
        self.summary = ProbeSummary()
        self._flows: deque[Batch] = deque()  # flow records not yet published, oldest first
        self._pending_flows = 0  # records in self._flows
        self._stop = threading.Event()
        self.started = threading.Event()  # set once the ring is open (capturing)

    def _point_of_interface(self, index: int, name: str, ifindex: int) -> str:
        """With ``--iface any``: one capture point per interface, named ``POINT:IFNAME``."""
        return f"{self.settings.point}:{self.ring.if_names.get(ifindex, f'if{ifindex}')}"

    def _iface_of(self, point: str) -> str:
        return point.split(":", 1)[1] if self.ring.cooked and ":" in point else self.settings.iface

    def _feeder(self, point: str) -> BlockFeeder:
        feeder = self.l7.get(point)
        if feeder is None:
            s = self.settings
            where = CapturePoint(point, s.host, self._iface_of(point), s.hop_kind)
            feeder = self.l7[point] = BlockFeeder(L7Tracker(where, s.l7_settings))
        return feeder

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stop.set()

    def run(self, max_seconds: float | None = None) -> ProbeSummary:
        s = self.settings
        started, cpu_started = time.monotonic(), time.process_time()
        deadline = started + max_seconds if max_seconds else float("inf")
        next_publish = started + s.publish_interval_s
        next_report = started + s.report_interval_s
        self.ring.open()
        self.started.set()
        log.info("capturing on %s (point %s, netns %s, filter %r)", s.iface, s.point, s.netns or "-", s.bpf)
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                before, waited, cpu_before = time.perf_counter(), self.ring.stats.wait_s, time.thread_time()
                raw = self.ring.read(s.read_timeout_ms)
                if raw is not None:
                    self._process(raw)
                    self.summary.busy_s += time.perf_counter() - before - (self.ring.stats.wait_s - waited)
                    self.summary.busy_cpu_s += time.thread_time() - cpu_before
                now = time.monotonic()
                if now >= next_publish:
                    self._publish(time.time_ns())
                    next_publish = now + s.publish_interval_s
                elif self._pending_flows >= s.publish_max_records:
                    self._publish_flows(s.publish_max_records)
                if now >= next_report:
                    self._report(now - started)
                    next_report = now + s.report_interval_s
            self._drain()
        finally:
            self.ring.close()
        self._final_flush()
        self.summary.elapsed_s = time.monotonic() - started
        self.summary.cpu_s = time.process_time() - cpu_started
        self._update_summary()
        log.info("probe summary: %s", json.dumps(asdict(self.summary), sort_keys=True))
        return self.summary

    def _process(self, raw: RawBlock) -> None:
        block = self.decoder.decode(raw)
        closed = self.meter.process_batch(block)
        if self.packets is not None:  # before the next read hands the ring's block back to the kernel
            self.packets.add(raw, block, self.decoder.row_frames)
        self.services.observe(block)
        self._add_flows(closed)
        if not self.settings.l7 or not block.count:
            return
        if not self.ring.cooked:
            self._feeder(self.settings.point).feed(block)
            return
        for pid in np.unique(block.point[block.ok]).tolist():
            rows = np.flatnonzero((block.point == pid) & block.ok)
            self._feeder(block.point_names[pid]).feed(block.take(rows))

    def _add_flows(self, records: Batch | list[FlowRecord]) -> None:
        """Keep the meter's output (a FlowRecord batch; a list from older meters) until published."""
        batch = records if isinstance(records, Batch) else Batch.from_records(FlowRecord, records)
        self.services.fill(batch)
        if len(batch):
            self._flows.append(batch)
            self._pending_flows += len(batch)

    def _drain(self) -> None:
        """Before flushing, take what the kernel holds, waiting long enough for it to retire the block
        it is filling (frames captured before the stop are not lost)."""
        end = time.monotonic() + 2 * self.settings.ring.retire_ms / 1000
        while time.monotonic() < end:
            raw = self.ring.read(10)
            if raw is not None:
                self._process(raw)
        for _ in range(self.settings.ring.block_count):
            raw = self.ring.read(0)
            if raw is None:
                return
            self._process(raw)

    def _publish_flows(self, limit: int | None = None) -> None:
        """Publish the flow records held (at most ``limit`` of them: the rest stay for the next call, so a
        burst of records, e.g. a meter sweep's, is sent in slices between ring reads)."""
        taken: list[Batch] = []
        count = 0
        while self._flows and (limit is None or count < limit):
            batch = self._flows[0]
            if limit is not None and len(batch) > limit - count:  # split the batch crossing the limit
                taken.append(batch.slice(0, limit - count))
                self._flows[0] = batch.slice(limit - count, len(batch))
                count = limit
            else:
                taken.append(self._flows.popleft())
                count += len(batch)
        self._pending_flows -= count
        if not taken:
            return
        flows = Batch.concat(taken)
        points = flows.columns["point"]
        if self.ring.cooked:  # one interface per point: look each distinct point up once
            names = {p: self._iface_of(p) for p in set(points)}
            flows.columns["iface"] = [names[p] for p in points]
        else:
            flows.columns["iface"] = [self.settings.iface] * len(points)
        self.sink.publish(flows)
        self.summary.flow_records += len(flows)

    def _publish(self, now_ns: int) -> None:
        self._publish_flows()
        if self.packets is not None:
            self.packets.maintain(now_ns)
        taken: list[Batch] = []
        for feeder in self.l7.values():
            feeder.tracker.expire(now_ns)
            if feeder.tracker.pending_records():
                taken.append(feeder.tracker.take_batch())  # columns from the tracker's rows: no record objects
        if taken:
            requests = Batch.concat(taken) if len(taken) > 1 else taken[0]
            self.sink.publish(requests)
            self.summary.request_records += len(requests)

    def _final_flush(self) -> None:
        for batch in self.meter.flush_batches():
            self._add_flows(batch)
        for feeder in self.l7.values():
            feeder.tracker.flush()
        self._publish(time.time_ns())
        self.sink.flush()
        if self.packets is not None:
            self.packets.close()

    def _update_summary(self) -> None:
        stats, summary = self.ring.read_kernel_stats(), self.summary
        summary.kernel_packets, summary.kernel_drops = stats.packets, stats.drops
        summary.kernel_freezes, summary.frames_read = stats.freezes, stats.frames_read
        summary.decode_skips = dict(self.decoder.skips)
        summary.meter = dict(self.meter.counters)
        totals: dict[str, int] = {}
        for feeder in self.l7.values():
            for name, value in feeder.tracker.stats.as_dict().items():
                totals[name] = totals.get(name, 0) + value
        summary.l7 = totals
        summary.packet_store = self.packets.stats().as_dict() if self.packets is not None else {}

    def _report(self, elapsed_s: float) -> None:
        self._update_summary()
        sm = self.summary
        sizes = [feeder.tracker.tables_size() for feeder in self.l7.values()]
        conns, dns = sum(c for c, _ in sizes), sum(d for _, d in sizes)
        log.warning(
            "probe %s: %.0f s, frames %d (%.0f/s), kernel drops %d, decode skips %s, flow records %d "
            "(flows %d, evictions %d), requests %d (tcp table %d, dns pending %d, evictions %d)",
            self.settings.point, elapsed_s, sm.frames_read, sm.frames_read / max(elapsed_s, 1e-9),
            sm.kernel_drops, sm.decode_skips or "none", sm.flow_records, sm.meter.get("flows", 0),
            sm.meter.get("evictions", 0), sm.request_records, conns, dns,
            sm.l7.get("evicted_connections", 0) + sm.l7.get("evicted_dns_queries", 0),
        )  # fmt: skip
