"""L7 parsing for the probes: HTTP/1.x and DNS request records from TCP segments and UDP datagrams.

- ``reassembly``: TCP stream reassembly per direction (seq unwrapping, retransmissions, holes).
- ``http``: HTTP/1.x message framing per direction and request/response pairing per connection.
- ``dns``: DNS message decoding and DNS-over-TCP framing.
- ``tracker``: ``L7Tracker``, the per-capture-point stage that turns packets into ``RequestRecord``s.
- ``feed``: drives an ``L7Tracker`` from decoded ``PacketBlock``s.
- ``tshark``: optional deep dissection (HTTP/2, gRPC) through tshark.
"""

from hopscope.ids import request_id
from hopscope.probes.l7.tracker import CapturePoint, L7Settings, L7Stats, L7Tracker

__all__ = ["CapturePoint", "L7Settings", "L7Stats", "L7Tracker", "request_id"]
