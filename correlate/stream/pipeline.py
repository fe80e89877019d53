"""Both stages in one process: what ``hopscope correlate --kafka`` runs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from hopscope.correlate.settings import CorrelateSettings
from hopscope.correlate.stream.offsets import GroupConsumer
from hopscope.correlate.stream.relay import Relay
from hopscope.correlate.stream.settings import (
    RECORD_TABLES,
    StreamSettings,
    StreamStats,
)
from hopscope.correlate.stream.stitcher import Stopped, StreamCorrelator
from hopscope.transport.base import DEFAULT_TOPIC_PREFIX

log = logging.getLogger(__name__)

#: How long a stage's poll waits for input while the other stage of the process got some (the
#: settings' poll timeout is for when neither did).
BUSY_POLL_S = 0.005


def ensure_relay_topics(bootstrap: str, prefix: str = DEFAULT_TOPIC_PREFIX, partitions: int = 4) -> None:
    """Create the input topics and the stage-2 topics ``<prefix>.s2.requests|flows`` if missing."""
    from hopscope.transport.kafka import ensure_topics

    ensure_topics(bootstrap, partitions=partitions, prefix=prefix)
    ensure_topics(bootstrap, partitions=partitions, prefix=prefix, tables=[f"s2.{t}" for t in RECORD_TABLES])


class StreamPipeline:
    """``hopscope correlate --kafka``: the relay and the stage-2 stitcher of one process, in one loop."""

    def __init__(self, bootstrap: str, store: Any, *, group: str = "hopscope-correlate",
                 prefix: str = DEFAULT_TOPIC_PREFIX, stream: StreamSettings | None = None,
                 settings: CorrelateSettings | None = None, kinds: dict[str, str] | None = None) -> None:
        from hopscope.transport.kafka import KafkaPublisher

        self.settings = stream or StreamSettings()
        self.stats = StreamStats()
        ensure_relay_topics(bootstrap, prefix)
        self.publisher = KafkaPublisher(bootstrap, prefix=prefix)
        s1 = GroupConsumer(bootstrap, f"{group}-s1", RECORD_TABLES, prefix)
        s2 = GroupConsumer(bootstrap, f"{group}-s2", [f"s2.{t}" for t in RECORD_TABLES], prefix)
        self.relay = Relay(s1, self.publisher, prefix, self.settings, self.stats, s2.partitions(prefix))
        self.stitcher = StreamCorrelator(s2, store, settings, self.settings, kinds,
                                         lateness_us=self.settings.relay_lateness_us,
                                         idle_flush_s=2 * self.settings.idle_flush_s, stats=self.stats)

    def held(self) -> int:
        return self.relay.held() + self.stitcher.held()

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> StreamStats:
        """Until ``stop`` (then release and write what is complete, and commit), or, with
        ``idle_exit_s``, until no record arrived for that long and nothing is held."""
        self.stitcher._stop = stop
        idle_since = time.monotonic()
        relay_got = 0
        try:
            while not stop.is_set():
                # Stage 2 first: the relay reads on only when stage 2 has fetched what it was sent
                # (one core: a relay far ahead only fills buffers). A stage waits for input only
                # briefly while the other one has some: the whole poll timeout is for a dry input.
                got = self.stitcher.poll_once(BUSY_POLL_S if relay_got else None)
                if not self.stitcher.watermark.lagging or not got:
                    relay_got = self.relay.step(BUSY_POLL_S if got else None)
                    got += relay_got
                # This process's relay is not dead when stage 2 keeps it from running (a backlog
                # here): its promises hold until it gives up its partitions.
                self.stitcher.watermark.alive = {self.relay.name} if self.relay._assignment else set()
                self.stitcher.maybe_stitch(stop)
                joining = not self.relay._assignment  # after a crash: until the dead member expired
                if got or self.held() or joining:
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
            self.relay.release(self.relay.watermark.value())
            self.stitcher.finish()
        except Stopped:
            log.warning("stopped while the store was unavailable: nothing more committed; a restart replays")
        return self.stats

    def close(self) -> None:
        from kafka.errors import KafkaError

        for closer in (self.relay.consumer.close, self.stitcher.consumer.close, self.publisher.close):
            try:
                closer()
            except (KafkaError, OSError) as exc:  # closing is best effort
                log.warning("closing: %s", exc)
