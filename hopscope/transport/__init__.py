"""Transport of record batches from probes to correlators: in-process, or Kafka.

Both implementations offer the same two halves:

- ``Publisher.publish(batch)`` sends a ``Batch``; the Kafka publisher splits it by partition of each
  record's correlation key (``correlation_keys``), so every observation of one connection, whatever
  NAT did to its addresses, reaches the same partition and so the same correlator.
- ``Consumer.poll()`` returns ``Delivery`` values (a decoded batch and where it came from);
  ``Consumer.commit(deliveries)`` is called only after the store accepted what was made of them
  (at-least-once delivery). A message that does not decode is counted, logged with its offset and
  kept in a dead-letter place, never dropped silently and never fatal.
"""

from hopscope.transport.base import (
    Consumer,
    Delivery,
    Publisher,
    TransportStats,
    correlation_keys,
    partition_of,
)
from hopscope.transport.inproc import InProcessTransport

__all__ = [
    "Consumer",
    "Delivery",
    "InProcessTransport",
    "Publisher",
    "TransportStats",
    "correlation_keys",
    "partition_of",
]
