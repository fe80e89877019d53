"""hopscope.correlate: stitch per-hop flow and request records into end-to-end traces.

The engine (``Correlator``) takes record batches from any number of capture points and returns
``Span`` and ``Trace`` batches. Steps, one module each:

- ``matchers``: one matcher per correlation key (``l7:req_tcp_seq``, ``l7:dns_id``, ``nat:syn_seq``)
  groups observations of the same request (or connection) at different points into *segments*;
  addresses are never compared, so NAT is transparent.
- ``proxy``: links segments across L7 proxies (``proxy:x-request-id``, ``proxy:traceparent``,
  ``proxy:b3``, ``proxy:nested``, ``proxy:retry``), never requiring Host or path to agree, and TLS
  exchanges between mutual-TLS sidecars to the plaintext legs around them (``tls:nested``,
  ``tls:nested+id``, ``tls:nested+path``).
- ``clock``: estimates clock offsets between capture points from the same packets seen both ways.
- ``order``: puts each segment's hops in path order by residence time (no clock needed).
- ``assemble``: walks the proxy tree, computes per-link latency, pins loss to links, makes ids.

Around it: ``capture`` (a capture file through the probes into records), ``offline`` (the captures
of several points read and stitched at once: ``hopscope analyze``), ``report`` (the analyze JSON and
summary), ``evaluate`` (precision and recall against a lab manifest), ``synthetic`` (a multi-hop load
with ground truth). Settings with units:
``CorrelateSettings``. ``stream`` runs the same engine over Kafka, in two stages (``hopscope correlate``).
"""

from hopscope.correlate.engine import Correlator, StitchResult
from hopscope.correlate.settings import CorrelateSettings

__all__ = ["CorrelateSettings", "Correlator", "StitchResult"]
