"""hopscope.probes: read captures, decode packets, meter L4 flows per capture point.

Stages (each its own module and tests, STYLE.md habit 2):

- ``readers``: pcap (µs/ns, either byte order) and pcapng (several interfaces and sections, if_name,
  if_tsresol) -> ``RawBlock`` (one big buffer, per frame its offset, lengths, ns timestamp and interface).
  Never decodes. Unreadable files raise ``CaptureError`` naming the file and byte offset.
- ``decode`` (+ ``layers``, its per-packet slow path): ``RawBlock`` -> ``PacketBlock`` (``packets``),
  columnar L2-L4 headers. Link types Ethernet, Linux SLL and SLL2, raw IP, BSD loopback; 802.1Q/QinQ,
  IPv4 options, IPv6 extension headers, fragments, TCP/UDP/ICMP/ICMPv6; tunnels VXLAN, Geneve, GRE,
  ERSPAN I/II/III, IP-in-IP (the inner packet is decoded, the tunnel described). Skips are counted by
  ``PacketStatus`` reason (``Decoder.skips``).
- ``meter`` (+ ``meter_reference``, ``meter_native``, ``meter_common``, ``tcpstate``, ``community_id``):
  ``PacketBlock`` -> ``FlowRecord`` batches; fills ``PacketBlock.flow_id``/``from_orig``. Zeek-compatible
  ``conn_state``/``history`` (computed only in ``tcpstate``), close type, handshake anchors and RTTs,
  retransmissions, out-of-order, zero windows, Community ID v1, payload hashes; final records at flow
  end (+ linger), idle timeout, flow-table eviction and end of capture, interim records (``final`` = 0)
  every ``interval_s`` for long flows. ``meter_reference`` is the specification (a per-packet loop),
  the compiled ``_meter`` kernel its fast twin.
- ``analyze``: the entry points below, wiring the stages for one file; ``output``: flow and request
  records as JSON lines and tables (``hopscope flows``, ``hopscope requests``).

Entry points::

    from hopscope.probes.analyze import analyze_capture, iter_capture, CaptureAnalyzer

    result = analyze_capture("a.pcapng", points={"if4": "nodeA-pre-nat"}, keep_blocks=True)
    result.flows      # hopscope.records.Batch of FlowRecord (final and interim records, emission order)
    result.blocks     # list[PacketBlock] with flow_id/from_orig filled, only when keep_blocks=True
    result.stats      # dict[str, int]: frames, bytes, skip_<reason>, slow_path_packets, flows, records,
                      # interim_records, evictions, reused_tuples, truncated_tail_bytes, pcapng_block_<type>

    for block, flows in iter_capture("a.pcap"):   # streaming: bounded memory
        ...  # block: PacketBlock (flow ids filled; empty at the end); flows: Batch of records due now

    # live or custom sources: feed RawBlocks yourself
    decoder, meter = Decoder("eth0"), FlowMeter(MeterConfig(), host="nodeA", hop_kind="node")
    batch = meter.process_batch(decoder.decode(raw_block))   # FlowRecord Batch
    batch = meter.flush_batch()                              # at the end (or flush_batches() in chunks)

``FlowMeter.process``/``flush`` return ``list[FlowRecord]`` for callers that want objects; the batch
forms are several times faster. For an L7 parser, ``PacketBlock.payload_rows_by_flow()`` gives the
payload-bearing rows of each flow in capture order (see ``hopscope.probes.packets``), and
``hopscope.ids.payload_hash`` is the hash used for ``orig_payload_hash``/``resp_payload_hash``.

``points`` maps interface labels to capture point names: ``"if<N>"`` (the interface index an SLL2
header carries: a ``tcpdump -i any`` capture, whose pcapng interface is just "any"), a pcapng
``if_name``, or ``"*"`` for every interface. Unmapped interfaces are named by their label, or by the
file stem when the file names none.
"""
