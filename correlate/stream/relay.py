"""Stage 1, the relay: a rendezvous host per connection, host groups for proxy chains, republish."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from hopscope.codec import encode_batch
from hopscope.correlate.stream.buffers import RowBuffer, oldest_excess
from hopscope.correlate.stream.offsets import OffsetBook, _check_assignment, commit
from hopscope.correlate.stream.records import (
    event_times,
    take,
)
from hopscope.correlate.stream.settings import (
    _RECORD_TYPES,
    FOREVER,
    I64,
    RECORD_TABLES,
    TP,
    U64,
    Bools,
    StreamSettings,
    StreamStats,
    pass_interval,
)
from hopscope.correlate.stream.watermark import (
    Watermark,
    _polled,
    marker_batch,
    partition_keys,
)
from hopscope.records import Batch, HopKind
from hopscope.transport.base import correlation_keys, topic_of


def _group_all(keys: U64, flag: Bools) -> Bools:
    """Per row: ``flag`` holds on every row with the same key."""
    uniq, inv = np.unique(keys, return_inverse=True)
    ok = np.ones(len(uniq), bool)
    np.logical_and.at(ok, inv, flag)
    out: Bools = ok[inv]
    return out


def rendezvous_hosts(requests: Batch, flows: Batch) -> dict[int, str]:
    """Rendezvous host per correlation key: the host of the connection's observation nearest the
    server. Requests decide when the connection has any, flows otherwise."""
    return connection_ends(requests, flows)[0]


def connection_ends(requests: Batch, flows: Batch, keys_of: tuple[U64, U64] | None = None
                    ) -> tuple[dict[int, str], dict[int, str]]:
    """Per correlation key, the host of the connection's observation nearest the server (its
    rendezvous host) and that of the one nearest the client (where it left: a proxy's upstream leg
    leaves the proxy's host). Requests decide when the connection has any, flows otherwise.
    ``keys_of``: the correlation keys of both batches, when known."""
    keys, prio, score, hosts = [], [], [], []
    if len(requests):
        rc = requests.columns
        t_req = np.asarray(rc["req_first_ns"]).astype(np.int64)
        t_resp = np.asarray(rc["resp_first_ns"]).astype(np.int64)
        k = correlation_keys(requests) if keys_of is None else keys_of[0]
        full = _group_all(k, t_resp > 0)  # every hop saw the response: residence, clock-free
        keys.append(k)
        prio.append(np.zeros(len(k), np.int64))
        score.append(np.where(full, t_resp - t_req, -t_req))
        hosts += list(rc["host"])
    if len(flows):
        fc = flows.columns
        rtt = np.asarray(fc["rtt_server_us"]).astype(np.int64)
        k = correlation_keys(flows) if keys_of is None else keys_of[1]
        full = _group_all(k, rtt > 0)
        keys.append(k)
        prio.append(np.ones(len(k), np.int64))
        score.append(np.where(full, rtt, -np.asarray(fc["start_ns"]).astype(np.int64)))
        hosts += list(fc["host"])
    if not keys:
        return {}, {}
    all_keys, all_prio, all_score = np.concatenate(keys), np.concatenate(prio), np.concatenate(score)
    ends = []
    for sign in (1, -1):  # the smallest score (nearest the server), then the largest (nearest the client)
        order = np.lexsort((sign * all_score, all_prio, all_keys))
        ks = all_keys[order]
        first = order[np.r_[True, ks[1:] != ks[:-1]]]
        ends.append({int(k): str(hosts[i]) for k, i in zip(all_keys[first].tolist(), first.tolist(), strict=True)})
    return ends[0], ends[1]


class HostGroups:
    """Hosts joined by proxied connections, so that every leg of a proxy chain meets in one stage-2
    partition (a stage-2 key is a group's representative: the least host name in it).

    A proxy's two legs end (downstream leg) and start (upstream leg) on the proxy's host. Each leg
    goes to its rendezvous host (the end nearest the server): a server-side sidecar's legs meet there
    as they are. A client-side (egress) sidecar's upstream leg leaves its host for another one, while
    the leg into it (the client app's, on the pod's loopback) stays on its host; so a connection that
    leaves a host with proxy points joins that host's group to its rendezvous host's. Chains across
    hosts then link as the offline engine links them, through the NAT-invariant hops of the middle leg.
    The price: every host a chain touches shares one partition (a mesh with egress sidecars on every
    pod becomes one group)."""

    def __init__(self) -> None:
        self.up: dict[str, str] = {}
        #: hosts where a record was seen at a hop of kind ``proxy``
        self.proxy_hosts: set[str] = set()

    def saw(self, batch: Batch) -> None:
        """Note the hosts of the batch's records seen at proxy hops."""
        proxy = HopKind.PROXY.value
        self.proxy_hosts.update(h for h, k in zip(batch.columns["host"], batch.columns["hop_kind"], strict=True)
                                if k == proxy)

    def find(self, host: str) -> str:
        root = host
        while self.up.get(root, root) != root:
            root = self.up[root]
        while host != root:  # path compression
            host, self.up[host] = self.up[host], root
        return root

    def join(self, client_end: str, server_end: str) -> None:
        """A connection left ``client_end`` for ``server_end``: one group if it left a proxy's host."""
        if client_end == server_end or client_end not in self.proxy_hosts:
            return
        a, b = sorted((self.find(client_end), self.find(server_end)))
        if a != b:
            self.up[b] = a


class Relay:
    """Stage 1: hold records per connection, choose its rendezvous host, republish keyed by it."""

    def __init__(self, consumer: Any, publisher: Any, prefix: str, settings: StreamSettings,
                 stats: StreamStats, s2_partitions: dict[str, int] | None = None) -> None:
        self.consumer = consumer
        #: this relay's name in its watermark markers (a restarted relay is a new one)
        self.name = uuid.uuid4().hex[:12]
        self.marker_keys = {t: partition_keys(n) for t, n in (s2_partitions or {}).items()}
        self._last_mark = -1
        self.publisher = publisher
        self.prefix = prefix
        self.settings = settings
        self.stats = stats
        self.book = OffsetBook()
        self.buffers = {t: RowBuffer(_RECORD_TYPES[t]) for t in RECORD_TABLES}
        self.watermark = Watermark(settings.lateness_us, settings.idle_flush_s, settings.max_future_us,
                                   settings.min_lateness_us, settings.lateness_window_s)
        self.decisions: dict[int, tuple[str, int]] = {}  # correlation key -> (host, record time)
        self.groups = HostGroups()
        self._assignment: set[TP] = set()
        self._since = 0
        self._last = time.monotonic()
        self._release_s = 0.0  # wall time the last release took

    def held(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def step(self, timeout_s: float | None = None) -> int:
        timeout = self.settings.poll_timeout_s if timeout_s is None else timeout_s
        deliveries = self.consumer.poll(timeout, self.settings.max_poll_records)
        _polled(self.consumer, self.watermark)
        self._assignment, _ = _check_assignment(self.consumer, self._assignment, self.buffers.values(),
                                                self.book, self.stats, self.watermark)
        for d in deliveries:
            buf = self.buffers.get(d.batch.record_type.TABLE)
            if buf is None or not len(d.batch):
                self.book.add(d, 0)
                continue
            times = event_times(d.batch)
            self.watermark.saw(times, (d.topic, d.partition))
            self.stats.relay_late_records += int((times < self.watermark.value()).sum())
            mid = self.book.add(d, len(d.batch))
            # a relay's row id is the record's correlation key, computed once
            buf.add(d.batch, times, correlation_keys(d.batch), mid, (d.topic, d.partition))
            self.stats.relay_records_in += len(d.batch)
            self._since += len(d.batch)
        if self._due():
            self.release(self.watermark.value())
        return len(deliveries)

    def _due(self) -> bool:
        if self._since or self.held():  # releases, and watermark markers, every stitch_every_s
            return (self.watermark.idle() or self.held() > self.settings.max_buffer_records
                    or time.monotonic() - self._last >= pass_interval(self.settings, self._release_s))
        if self._assignment and self.watermark.idle() and self._last_mark != FOREVER:
            return True  # announce that everything was sent
        return bool(self.book.commit_points())

    def release(self, watermark_ns: int) -> None:
        """Republish every record older than the watermark (and the oldest beyond the bound), commit."""
        self._since, self._last = 0, time.monotonic()
        bufs = [self.buffers[t] for t in RECORD_TABLES]
        for b in bufs:
            b.settle()
        forced = oldest_excess([b.time for b in bufs], self.settings.max_buffer_records)
        masks = [(b.time < watermark_ns) | f for b, f in zip(bufs, forced, strict=True)]
        self.stats.relay_forced += sum(int((f & (b.time >= watermark_ns)).sum()) for b, f in zip(bufs, forced,
                                                                                              strict=True))
        if any(m.any() for m in masks):
            self._decide(bufs, masks)
            keys = [b.rid[m] for b, m in zip(bufs, masks, strict=True)]
            out = {t: b.split(m) for t, b, m in zip(RECORD_TABLES, bufs, masks, strict=True)}
            self._publish({t: (batch, times, k) for (t, (batch, _, times)), k in zip(out.items(), keys, strict=True)})
            self._mark(watermark_ns)
            self.publisher.flush()
            for _, mids, _ in out.values():
                self.book.done(mids)
        elif self._assignment:
            self._mark(watermark_ns)
            self.publisher.flush()
        commit(self.consumer, self.book, self.stats)
        self._prune()
        self._release_s = time.monotonic() - self._last

    def _mark(self, watermark_ns: int) -> None:
        """Tell every stage-2 partition: everything older than ``watermark_ns`` was sent (after it, in
        each partition's order). A relay without partitions says nothing (it holds nothing)."""
        if not self._assignment:
            return
        value = encode_batch(marker_batch(self.name, watermark_ns))
        for table, keys in self.marker_keys.items():
            topic = topic_of(f"s2.{table}", self.prefix)
            for key in keys:
                self.publisher.publish_raw(topic, value, key=key)
        self._last_mark = watermark_ns

    def _decide(self, bufs: list[RowBuffer], masks: list[Bools]) -> None:
        """Decide connections about to be released, from all their records held."""
        keys = [b.rid for b in bufs]
        leaving = np.unique(np.concatenate([k[m] for k, m in zip(keys, masks, strict=True)]))
        new = np.array([k for k in leaving.tolist() if k not in self.decisions], dtype=np.uint64)
        if len(new) == 0:
            return
        sel = [np.flatnonzero(np.isin(k, new)) for k in keys]
        deciding = [take(b.batch, rows) for b, rows in zip(bufs, sel, strict=True)]
        for batch in deciding:  # once per connection: a proxy host is known before its legs are joined
            self.groups.saw(batch)
        hosts, client_ends = connection_ends(deciding[0], deciding[1], (keys[0][sel[0]], keys[1][sel[1]]))
        newest = self.watermark.newest_ns
        for k, host in hosts.items():
            self.decisions[k] = (host, newest)
            self.groups.join(client_ends[k], host)

    def _publish(self, released: dict[str, tuple[Batch, I64, U64]]) -> None:
        """Publish in event-time slices of half the stage-2 lateness (each slice: requests, then flows;
        per host), so every stage-2 partition receives records in time order to within a slice and
        its watermark never passes records still to come from this release."""
        step = max(1, self.settings.relay_lateness_us * 500)
        firsts = [int(t.min()) for b, t, _ in released.values() if len(b)]
        if not firsts:
            return
        t0 = min(firsts)
        sends: list[tuple[int, int, str, str, Batch, I64]] = []
        for ti, (table, (batch, times, keys)) in enumerate(released.items()):
            if not len(batch):
                continue
            names, hid = self._stage2_hosts(batch, keys)
            sl = (times - t0) // step
            order = np.lexsort((hid, sl))
            key = sl[order] * len(names) + hid[order]
            for rows in np.split(order, np.flatnonzero(np.diff(key)) + 1):
                sends.append((int(sl[rows[0]]), ti, table, names[hid[rows[0]]], batch, rows))
            self.stats.relay_records_out += len(batch)
        chunk = self.settings.relay_chunk_records
        for _, _, table, host, batch, rows in sorted(sends, key=lambda x: (x[0], x[1], x[3])):
            topic = topic_of(f"s2.{table}", self.prefix)
            for lo in range(0, len(rows), chunk):
                part = take(batch, rows[lo : lo + chunk])
                self.publisher.publish_raw(topic, encode_batch(part), key=host.encode())
                self.stats.relay_messages_out += 1

    def _stage2_hosts(self, batch: Batch, keys: U64) -> tuple[list[str], I64]:
        """The stage-2 keys (host groups' representatives) the records go to: their names, and per
        record an index into them. Decided per connection; a record of a connection not decided (none
        is, by the time it leaves) goes to its own host's group."""
        uniq, inv = np.unique(keys, return_inverse=True)
        decided = [self.decisions.get(k) for k in uniq.tolist()]
        if all(d is not None for d in decided):
            conn_hosts = [self.groups.find(d[0]) for d in decided if d is not None]
            names = sorted(set(conn_hosts))
            index = {h: i for i, h in enumerate(names)}
            conn_hid = np.fromiter((index[h] for h in conn_hosts), dtype=np.int64, count=len(conn_hosts))
            return names, conn_hid[inv]
        own: list[str] = batch.columns["host"]  # type: ignore[assignment]
        hosts = [self.groups.find(self.decisions.get(k, (h, 0))[0]) for k, h in zip(keys.tolist(), own, strict=True)]
        names = sorted(set(hosts))
        index = {h: i for i, h in enumerate(names)}
        return names, np.fromiter((index[h] for h in hosts), dtype=np.int64, count=len(hosts))

    def _prune(self) -> None:
        if len(self.decisions) > self.settings.max_buffer_records:
            horizon = self.watermark.newest_ns - self.settings.dedup_horizon_us * 1000
            self.decisions = {k: v for k, v in self.decisions.items() if v[1] >= horizon}
