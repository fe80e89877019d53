"""Streaming correlation over Kafka (``hopscope correlate --kafka``): windows, two stages, at least once.

**Windows** (``StreamCorrelator``). Records are buffered; each pass runs the offline engine
(``Correlator.stitch``) on everything buffered. A record's time is its latest timestamp
(``resp_last_ns``, a flow's ``end_ns``): the probe cannot have reported it earlier. A trace is
*complete* when its newest record is ``trace_spread_us`` older than the watermark (the records of
one trace lie within that spread, so those still to come are older than the watermark: already
sent); an L4 trace also needs each of its flows reported final, or quiet for ``flow_idle_us``, so a
connection that may still carry requests never becomes an L4 trace. Complete traces are written,
their records leave the buffer, the rest waits. The watermark is event time: per partition, the
newest record time read there (capped at ``max_future_us`` past the wall clock); the stage's
watermark is the least over partitions that are not idle, minus the lateness (a consumer reads
partitions unevenly: one partition's newest says nothing of another's; a partition with records
still to fetch and none read holds everything back). The lateness adapts: the largest lag (how far
behind its partition's newest a record arrived) of the last ``lateness_window_s`` plus
``min_lateness_us``, at most ``lateness_us``, the cap also for the first window. A partition, or the
whole stage, is idle after ``idle_flush_s`` and ``IDLE_POLLS`` polls without input and with nothing
left to fetch (position = high watermark), so a long pass or a store outage is never taken for the
end of the input; an idle stage writes everything (stage 2 of the pipeline: once its relays promise
everything, as a relay does when its input ran dry: their promises hold however long no input
comes). Passes come every ``stitch_every_s``, or twice what the last one took (``pass_interval``): a
stage short of CPU stitches and inserts more at a time.

**Two stages** (``StreamPipeline``, what ``hopscope correlate`` runs). The probes key every record by
its NAT-invariant key (the client ISN), so all observations of one TCP connection reach one
partition; but a sidecar proxy's two legs are two connections, on two partitions.

- Stage 1, the ``Relay`` (group ``<group>-s1`` on ``<prefix>.requests|flows``) holds records until
  its watermark passed them, then gives each connection (correlation key) its *rendezvous host*: the
  host of the observation nearest the server (smallest residence ``resp_first - req_first``, which
  needs no clock correction; the latest request time when a hop saw no response; for connections
  without requests the smallest ``rtt_server_us``, else the latest start). The decision is cached per
  connection, so every request of a keep-alive connection follows the first. Records go on unchanged
  to ``<prefix>.s2.requests|flows`` keyed by that host (Kafka's murmur2 partitioner: one host, one
  partition, in every process), in event-time slices; then the relay writes a *watermark marker* to
  every stage-2 partition (a one-row request batch, point ``MARKER_POINT``, host = the relay's
  name, ``req_first_ns`` = its watermark: "everything older was sent, before this marker"), flushes
  (acks=all) and only then commits its input.
- Stage 2 is a ``StreamCorrelator`` (group ``<group>-s2``) on the stage-2 topics whose watermark is
  the least marker over the relays heard from and the partitions it reads: exact, however the relays
  of several processes lag each other (a relay silent for twice the idle time is dropped: it died,
  or said "everything"). Both legs of a server-side proxy end on the proxy's host: they meet.
  Proxies chained across hosts (an egress sidecar on the client's host, a sidecar on the server's):
  the client app's leg stays on its host while the egress sidecar's upstream leg goes to the server's
  host, so the relay keys stage 2 by *host group* (``HostGroups``): a connection that leaves a host
  where it has seen proxy records joins that host to its rendezvous host, and every record goes to
  its rendezvous host's group (the least host name in it). All legs of the chain meet there and are
  linked as offline, through the NAT-invariant hops of the middle leg.

Why markers: a stage-2 watermark taken from the record times stage 2 has read would, under load, pass
records a slower relay (or an unread partition) has still to deliver, and write partial traces.
Markers are the usual cure for a shuffle (watermarks flow with the data); ``relay_lateness_us``
remains only for input without markers.

**Delivery.** Stage 2 writes the raw requests and flows that leave its buffer, then the spans, then
the traces, and only then commits, per partition, up to the oldest message with a record still
buffered. Spans and traces carry deterministic ids on ReplacingMergeTree tables (requests and flows
too: their sort keys are the record's own ids), so writing again changes nothing. What a plain replay
would get wrong is a *partial* trace: after a crash (or a rebalance) the records of a trace already
written can come back in part (a message holding some of them was committed, another not; a relay
republishes what it released but had not committed). So a record is dropped when it is already in a
stored span: those this process wrote are remembered (``dedup_horizon_us`` of event time); after
(re)gaining partitions, the spans stored since shortly before the first replayed record are read
once from the store. Duplicates within the buffer are dropped too (the engine would take a record
seen twice at one hop for two requests). Partitions taken away by a rebalance are dropped from the
buffers (their new owner replays them). The consumers' group session is ``SESSION_TIMEOUT_MS``, so a
correlator killed with -9 hands its partitions over within seconds.

**Bounds.** Beyond ``max_buffer_records`` per stage the oldest records are forced out (stage 1
releases them with the best decision so far; stage 2 writes their traces as they are). Nothing leaves
silently: duplicates, replays, late records, forced traces, unmatchable records and retired flows are
counted in ``StreamStats``.

**Limitations.** Host groups trade partitions for whole chains: every host a chain of proxies touches
shares one stage-2 partition (a mesh with egress sidecars on every pod is one group). Each relay learns
its groups from the records it holds: a chain whose first connection is released before the relay
saw a proxy record of the client's host, or whose legs several relays decide before each saw such a
connection, can be split while the group forms; a group that grows later moves the hosts' records to
its new representative from then on. All traffic to one server host goes through
one stage-2 partition (a refinement: key by host and method, which every proxy matcher requires to
agree, once flows can follow every request of their connection). A record later than the
lateness, or a trace spreading wider than ``trace_spread_us`` (a hop that never saw a long request's
response), can make a trace of its own. Proxy links by timing (``proxy:nested``, no shared id) pick
among candidates by the most common turnaround of what is buffered, so near a window's edge they can
pair differently from the offline engine. A request written before its flow's reset report arrived
misses the reset mark the offline engine gives it. After a restart, flows of connections whose
requests were written before the crash, seen at points without request records, can become L4
traces. Interleaving both stages in one loop keeps them on one core; a thread per stage would gain
little under the GIL.
"""

from __future__ import annotations

from hopscope.correlate.stream.buffers import RowBuffer, Seen, oldest_excess
from hopscope.correlate.stream.offsets import GroupConsumer, OffsetBook, commit
from hopscope.correlate.stream.pipeline import StreamPipeline, ensure_relay_topics
from hopscope.correlate.stream.records import (
    PointHashes,
    conn_keys,
    event_times,
    flow_keys,
    report_ids,
    request_keys,
    take,
)
from hopscope.correlate.stream.relay import HostGroups, Relay, connection_ends, rendezvous_hosts
from hopscope.correlate.stream.settings import (
    FOREVER,
    IDLE_POLLS,
    RECORD_TABLES,
    SESSION_TIMEOUT_MS,
    StreamSettings,
    StreamStats,
)
from hopscope.correlate.stream.stitcher import Stopped, StreamCorrelator, with_retry
from hopscope.correlate.stream.watermark import MARKER_POINT, Watermark, marker_batch, partition_keys, read_marker

__all__ = [
    "FOREVER", "IDLE_POLLS", "MARKER_POINT", "RECORD_TABLES", "SESSION_TIMEOUT_MS", "GroupConsumer", "HostGroups",
    "OffsetBook", "PointHashes", "Relay", "RowBuffer", "Seen", "Stopped", "StreamCorrelator", "StreamPipeline",
    "StreamSettings", "StreamStats", "Watermark", "commit", "conn_keys", "connection_ends", "ensure_relay_topics",
    "event_times", "flow_keys", "marker_batch", "oldest_excess", "partition_keys", "read_marker", "rendezvous_hosts",
    "report_ids", "request_keys", "take", "with_retry",
]
