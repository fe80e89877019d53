"""hopscope.probes: read captures, decode packets, meter L4 flows per capture point.

Stages (each its own module and tests, STYLE.md habit 2):

- ``readers``: pcap / pcapng files -> ``RawBlock`` (timestamps, frame offsets into one big buffer,
  link type, interface). Never decodes.
- ``decode``: ``RawBlock`` -> ``PacketBlock`` (``packets``): columnar L2-L4 headers; a numpy fast path
  for plain Ethernet/SLL/raw + IPv4/IPv6 + TCP/UDP/ICMP and a per-packet path for VLAN stacks, tunnels,
  IPv6 extension headers and fragments. Skips are counted by ``PacketStatus`` reason.
- ``meter``: ``PacketBlock`` -> ``FlowRecord`` batches; fills ``PacketBlock.flow_id``/``from_orig``.
- ``analyze``: the two entry points below, wiring the stages for one file.

Entry points (``from hopscope.probes.analyze import ...``)::

    result = analyze_capture("a.pcapng", points={"eth0": "nodeA-pre-nat"}, keep_blocks=True)
    result.flows      # hopscope.records.Batch of FlowRecord (final and interim records, end order)
    result.blocks     # list[PacketBlock] (flow_id/from_orig filled) when keep_blocks=True
    result.stats      # dict[str, int]: packets, bytes, skip counts by reason, flow evictions, ...

    for block, flows in iter_capture("a.pcap", points=None):
        ...  # block: PacketBlock with flow ids; flows: Batch of the FlowRecords closed so far

``points`` maps interface names (pcapng ``if_name``, SLL/SLL2 interface) or ``"*"`` to capture point
names; unmapped interfaces get the interface name, or the file stem when the file names none.
"""
