"""Zeek's TCP endpoint state machine, ``history`` letters and ``conn_state`` codes, one packet at a time.

This is the only place hopscope computes ``conn_state`` and ``history`` (STYLE.md: compact codes are
computed by exactly one function). It follows Zeek's ``TCPSessionAdapter`` (``UpdateStateMachine``,
``update_history``) and ``base/protocols/conn/main.zeek`` (``conn_state``):

============ =====================================================================================
conn_state   meaning
============ =====================================================================================
S0           connection attempt seen, no reply
S1           connection established, not terminated
SF           normal establishment and termination
REJ          connection attempt rejected
S2           established, close attempt by the originator seen (no reply from the responder)
S3           established, close attempt by the responder seen (no reply from the originator)
RSTO         established, the originator aborted (sent a RST)
RSTR         the responder sent a RST
RSTOS0       the originator sent a SYN followed by a RST, no SYN-ACK seen
RSTRH        the responder sent a SYN-ACK followed by a RST, no SYN seen from the originator
SH           the originator sent a SYN followed by a FIN, no SYN-ACK seen
SHR          the responder sent a SYN-ACK followed by a FIN, no SYN seen from the originator
OTH          no SYN seen, just midstream traffic
============ =====================================================================================

History letters (upper case: originator, lower case: responder): ``S`` SYN, ``H`` SYN-ACK, ``A`` pure
ACK, ``D`` data, ``F`` FIN, ``R`` RST, ``I`` FIN+RST, ``Q`` SYN+FIN or SYN+RST, ``T`` retransmission,
``W`` zero window, ``G`` content gap, ``C`` bad checksum, ``^`` roles flipped. ``A``, ``D``, ``I``,
``Q`` appear at most once per direction; ``S``, ``H``, ``F``, ``R`` again when their sequence number
differs from the last one of that kind; ``T``, ``W``, ``G`` and ``C`` on their 1st, 10th, 100th, ...
occurrence (the meter adds those).

Sizes (``TcpConn.sizes``) are Zeek's ``TCP_Endpoint::Size`` from the endpoint sequence numbers kept
as ``TCP_Analyzer::DeliverPacket`` keeps them (``init_endpoint``, ``init_peer``, ``update_ack_seq``,
``update_last_seq``); ``did_close`` (a FIN or RST processed) ends the duration.

Content gaps (``missed_bytes``, ``G``) follow Zeek's ``TCP_Reassembler`` without keeping bytes: per
endpoint the sequence range delivered so far (``last_reassem_seq``), the blocks captured above a hole,
and the trim point of the peer's ACKs (``Endpoint.data_sent``, ``Endpoint.ack_for_data``). An ACK from
the peer beyond what was captured reports the holes below it as gaps (``Undelivered``), the ACK clamped
to the FIN (``AckReceived``); a segment cut by the snaplen is not captured data (``DataSent`` needs the
whole payload). Gaps count only while both endpoints are established or closed from established
(``report_gaps_for_partial = F``, ``established_or_cleanly_closing``).

Departures from Zeek, all deliberate: the SYN/SYN-ACK reversal flip inside Zeek's state machine is not
modelled (hopscope flips a flow whose first packet is a SYN-ACK, as Zeek's ``^`` heuristic does); a
size below the start of sequence is 0, not Zeek's unsigned wrap; at most ``MAX_BLOCKS`` blocks above a
hole are kept per endpoint (a further disjoint one is dropped, so its bytes count as missed once
acknowledged); Zeek's limits on data above a hole without ACKs (``tcp_max_above_hole_without_any_acks``,
``tcp_excessive_data_without_further_acks``) are not applied; a close is not deferred while data is
pending in the reassembler.
"""

from __future__ import annotations

from typing import Final

INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# hist_seen bits (per endpoint)
_H_SYN, _H_FIN, _H_RST, _H_FIN_RST, _H_DATA, _H_ACK, _H_MULTI = 1, 2, 4, 8, 16, 32, 64

#: ``TcpConn.packet`` events: a zero window (Zeek's ``ZeroWindow``), a retransmission (``DidRxmit``), and
#: data starting beyond the highest sequence end (hopscope's out-of-order count).
EV_ZERO_WINDOW, EV_RXMIT, EV_OOO = 1, 2, 4
#: Sentinel for "no sequence number remembered yet" (sequence numbers are 0..2^32-1).
_NONE: Final = -1
#: At most this many history letters are kept (a bound for pathological flows; meter.c: HIST_MAX).
HIST_MAX: Final = 65535
#: Blocks of captured data above a hole kept per endpoint (meter.c: MAX_BLOCKS).
MAX_BLOCKS: Final = 16


#: Zeek's TOO_LARGE_SEQ_DELTA: a SYN or RST sequence jump beyond this does not move ``last_seq``.
TOO_LARGE_SEQ_DELTA: Final = 1_048_576
_M32: Final = 0xFFFFFFFF


def seq_delta(a: int, b: int) -> int:
    """Zeek's ``seq_delta``: ``a - b`` as a signed 32-bit number."""
    return ((a - b + (1 << 31)) & _M32) - (1 << 31)


class Endpoint:
    """One side of a TCP connection as Zeek models it (``TCP_Endpoint``): state, history bits, and the
    sequence numbers ``Size`` is computed from (start, highest sequence end, highest ACK of the peer)."""

    __slots__ = (
        "ack", "ack_wraps", "blocks", "did_close", "fin_cnt", "fin_seq", "gap_cnt", "last", "last_fin", "last_rst",
        "last_syn", "last_wraps", "missed", "prev", "reassem", "seen", "start", "state", "trim",
    )  # fmt: skip

    def __init__(self) -> None:
        self.state = INACTIVE
        self.prev = INACTIVE
        self.seen = 0
        self.last_syn = _NONE
        self.last_fin = _NONE
        self.last_rst = _NONE
        self.did_close = False
        self.start = self.last = self.ack = self.last_wraps = self.ack_wraps = self.fin_cnt = 0
        # TCP_Reassembler, relative sequence numbers (the first data byte after a SYN is 1)
        self.reassem = self.trim = 1  # last_reassem_seq, trim_seq
        self.blocks: list[list[int]] = []  # captured [seq, upper) above a hole, ascending, disjoint
        self.fin_seq = 0  # relative sequence number after this endpoint's FIN (FIN_seq)
        self.missed = self.gap_cnt = 0  # bytes reported in content gaps; gaps reported (the G scale)

    def set_state(self, state: int) -> None:
        self.prev = self.state
        self.state = state

    def init_seq(self, start: int, last: int) -> None:
        """Zeek's ``InitStartSeq``/``InitAckSeq``/``InitLastSeq`` (wrap counts are kept, as Zeek does)."""
        self.start = self.ack = start & _M32
        self.last = last & _M32

    def update_last(self, seq: int) -> None:
        """``TCP_Endpoint::UpdateLastSeq``."""
        if seq < self.last:
            self.last_wraps += 1
        self.last = seq

    def ack_received(self, ack: int, flags: int) -> None:
        """An ACK from the peer for this endpoint's data (``TCP_Analyzer::DeliverPacket``): ``init_peer``
        while this endpoint is INACTIVE (numbered as if its SYN had been seen), else ``update_ack_seq``
        unless the ACK is in a RST (not trusted), does not advance, looks broken (0 after a huge jump)
        or falls below the start of sequence (``get_relative_seq``'s underflow)."""
        if self.state == INACTIVE:
            self.init_seq(ack - 1, ack - 1)
            return
        delta = ((ack - self.ack + (1 << 31)) & _M32) - (1 << 31)  # seq_delta(ack, self.ack)
        if flags & RST or delta <= 0 or (ack == 0 and delta > TOO_LARGE_SEQ_DELTA):
            return
        wrapped = ack < self.ack  # UpdateAckSeq counts a wrap
        if not (wrapped or self.ack_wraps) and ((ack - self.start + (1 << 31)) & _M32) - (1 << 31) < 0:
            return  # get_relative_seq's underflow: below the start of sequence
        if wrapped:
            self.ack_wraps += 1
        self.ack = ack

    def relative(self, cur: int, last: int, wraps: int) -> tuple[int, bool]:
        """Zeek's ``get_relative_seq``: ``cur`` relative to the start of sequence, counting wraps from
        ``last``/``wraps``; and whether it lies below the start (underflow)."""
        delta = (cur - last) & _M32  # seq_delta(cur, last), unsigned: >= 2^31 is negative (inlined: hot)
        if delta >> 31:
            if wraps and cur > last:
                wraps -= 1
        elif delta and cur < last:
            wraps += 1
        if wraps == 0:
            rel = ((cur - self.start + (1 << 31)) & _M32) - (1 << 31)
            return rel, rel < 0
        return (wraps << 32 | cur) - self.start, False

    def data_sent(self, seq: int, length: int) -> None:
        """Captured payload at relative ``seq`` (``TCP_Reassembler::DataSent``, ``NewBlock``,
        ``BlockInserted``): data already acknowledged or trimmed is dropped, data at the delivery point
        is delivered (with the blocks it joins), data above a hole is kept as a block."""
        upper = seq + length
        acked = (self.ack_wraps << 32 | self.ack) - self.start
        if seq < acked:
            if upper <= acked:
                return
            seq = acked
        if upper <= self.trim:
            return
        seq = max(seq, self.trim)
        if seq <= self.reassem:
            if upper > self.reassem:
                self.reassem = upper
                self._deliver()
            return
        blocks = self.blocks
        k = 0
        while k < len(blocks) and blocks[k][1] < seq:
            k += 1
        j = k
        while j < len(blocks) and blocks[j][0] <= upper:  # overlapping or adjacent blocks merge
            seq, upper = min(seq, blocks[j][0]), max(upper, blocks[j][1])
            j += 1
        if j == k and len(blocks) >= MAX_BLOCKS:
            return  # no room: dropped, as if not captured
        blocks[k:j] = [[seq, upper]]

    def _deliver(self) -> None:
        """Deliver the blocks that now join the delivered range (``BlockInserted``)."""
        blocks = self.blocks
        while blocks and blocks[0][0] <= self.reassem:
            self.reassem = max(self.reassem, blocks.pop(0)[1])

    def ack_for_data(self, seq: int, partial: bool) -> list[int]:
        """The peer acknowledged up to relative ``seq`` (``TCP_Reassembler::AckReceived``, clamped to the
        FIN, and ``TrimToSeq``): the content gaps this reveals (``Undelivered``), in order, lengths."""
        if self.fin_cnt and seq >= self.fin_seq:
            seq = self.fin_seq - 1
        if seq <= self.trim:
            return []
        gaps: list[int] = []
        if seq > self.reassem and not (seq <= 2 and partial):  # a partial connection's first ACK: ignored
            blocks = self.blocks
            while blocks and blocks[0][0] < seq:
                lo, hi = blocks.pop(0)
                gaps.append(lo - self.reassem)
                self.reassem = hi
                self._deliver()
            if seq > self.reassem:
                gaps.append(seq - self.reassem)
                self.reassem = seq
        self.trim = seq
        return gaps

    def size(self, peer: Endpoint) -> int:
        """``TCP_Endpoint::Size``: bytes of sequence space from the start to the highest sequence end
        or the peer's highest ACK, whichever is higher, less the SYN and the FIN (0, not Zeek's
        unsigned wrap, when below the start)."""
        last, ack = self.last_wraps << 32 | self.last, self.ack_wraps << 32 | self.ack
        attempt_reset = self.prev == SYN_SENT and self.state == RESET and peer.state == INACTIVE
        if attempt_reset and ack - self.start not in (0, 1):  # ... and ! NoDataAcked()
            return 0
        size = max(max(last, ack) - self.start, 0)
        if size:
            size -= 1
        if self.fin_cnt and size:
            size -= 1
        return size


class TcpConn:
    """The TCP state of one flow: two endpoints and the history letters so far."""

    __slots__ = ("first_seen", "gaps", "history", "orig", "partial", "resp")

    def __init__(self) -> None:
        self.orig = Endpoint()
        self.resp = Endpoint()
        self.history: list[str] = []
        self.partial = False  # Zeek's is_partial (SetPartialStatus)
        self.first_seen = 0  # bit 1: a packet of the originator seen, bit 2: of the responder
        self.gaps = 0  # content gaps the last packet revealed on its peer's data (for the G letters)

    def packet(
        self, from_orig: bool, flags: int, seq: int, ack: int, payload_len: int, window: int, captured: bool = True
    ) -> int:
        """Account one packet in Zeek's order (``TCP_Analyzer::DeliverPacket``): ``SetPartialStatus``,
        ``init_endpoint``, the history letters, ``update_window``, the FIN count and sequence, the peer's
        ACK (``init_peer``/``update_ack_seq``), ``update_last_seq``, the state machine, ``did_close``
        (``ConnectionClosed``), then the reassembler: the ACK's content gaps on the peer's data
        (``AckReceived``) and this packet's data (``DataSent``: only a wholly ``captured`` payload).
        Returns its ``EV_`` events; the meter counts them and adds the scaled ``W``, ``T`` and (for
        ``gaps``) ``G`` letters.

        A plain segment (no SYN, FIN or RST) of an endpoint past INACTIVE takes a short path: for it
        ``init_endpoint`` and the state machine change nothing, and ``update_last_seq`` only moves
        the sequence end forward or notes a retransmission."""
        ep, peer = (self.orig, self.resp) if from_orig else (self.resp, self.orig)
        self.gaps = 0
        if flags & (SYN | FIN | RST) or ep.state == INACTIVE or self.first_seen != 3:
            return self._control(ep, peer, from_orig, flags, seq, ack, payload_len, window, captured)
        self._history(ep, from_orig, flags, seq, payload_len)
        events = EV_ZERO_WINDOW if window == 0 and peer.state != CLOSED and ep.state != RESET else 0
        if flags & ACK and (ack != peer.ack or peer.state == INACTIVE):  # an unchanged ACK changes nothing
            rel_ack = self._rel_ack(peer, ack)
            peer.ack_received(ack, flags)
            self._ack_gaps(ep, peer, rel_ack)
        rel, underflow = ep.relative(seq, ep.last, ep.last_wraps) if payload_len else (0, True)
        if payload_len and 0 < (seq - ep.last) & _M32 < 1 << 31:  # starts beyond the highest end
            events |= EV_OOO
        if ep.state != RESET:
            end = (seq + payload_len) & _M32
            if 0 < (end - ep.last) & _M32 < 1 << 31:  # seq_delta(end, last) > 0
                ep.update_last(end)
            elif payload_len:
                events |= EV_RXMIT
        if payload_len and captured and not underflow:
            ep.data_sent(rel, payload_len)
        return events

    @staticmethod
    def _rel_ack(peer: Endpoint, ack: int) -> int:
        """The ACK relative to the peer's start of sequence, before it is applied: 1 when it initialises
        the peer (``init_peer``), 0 on an underflow."""
        if peer.state == INACTIVE:
            return 1
        rel, underflow = peer.relative(ack, peer.ack, peer.ack_wraps)
        return 0 if underflow else rel

    def _ack_gaps(self, ep: Endpoint, peer: Endpoint, rel_ack: int) -> None:
        """``peer->AckReceived``: the gaps in the peer's data the ACK reveals count (``missed_bytes``, the
        ``G`` letters) when both endpoints are established or closed from established
        (``TCP_Reassembler::Gap``, ``report_gaps_for_partial = F``)."""
        gaps = peer.ack_for_data(rel_ack, self.partial)
        if gaps and _clean(ep) and _clean(peer):
            peer.missed += sum(gaps)
            self.gaps = len(gaps)

    def _control(
        self,
        ep: Endpoint,
        peer: Endpoint,
        from_orig: bool,
        flags: int,
        seq: int,
        ack: int,
        payload_len: int,
        window: int,
        captured: bool,
    ) -> int:
        """``packet`` for a SYN, FIN or RST, a segment of an INACTIVE endpoint, or a direction's first."""
        bit = 1 if from_orig else 2
        if not self.first_seen & bit:  # SetPartialStatus
            if from_orig:
                self.partial = not flags & SYN or bool(flags & ACK)
            elif not self.partial:
                self.partial = not flags & SYN
            self.first_seen |= bit
        # get_segment_len: the payload (none in a RST), one for a SYN (0x02), one for a FIN (0x01)
        seg_len = (0 if flags & RST else payload_len) + (flags & FIN) + ((flags & SYN) >> 1)
        seg_end = (seq + seg_len) & _M32
        if flags & SYN or ep.state == INACTIVE:
            _init_endpoint(ep, flags, seq, seg_end)
        rel, underflow = ep.relative(seq, ep.last, ep.last_wraps)
        self._history(ep, from_orig, flags, seq, payload_len)
        zero = window == 0 and not flags & RST and peer.state != CLOSED and ep.state != RESET  # update_window
        events = EV_ZERO_WINDOW if zero else 0
        if flags & FIN:
            ep.fin_cnt += 1
            ep.fin_seq = rel + seg_len
        rel_ack = -1
        if flags & ACK and (ack != peer.ack or peer.state == INACTIVE):
            rel_ack = self._rel_ack(peer, ack)
            peer.ack_received(ack, flags)
        if payload_len and not flags & RST and seq_delta(seq, ep.last) > 0:
            events |= EV_OOO
        # Zeek's update_last_seq: the highest sequence end only moves forward (a segment with payload
        # that does not move it is a retransmission), except that SYN/RST jumps beyond
        # TOO_LARGE_SEQ_DELTA are ignored, a FIN right after the SYN moves it even backwards, and a
        # reset endpoint's sequence numbers are not trusted
        delta = seq_delta(seg_end, ep.last)
        if flags & (SYN | RST) and abs(delta) > TOO_LARGE_SEQ_DELTA:
            pass
        elif (flags & FIN and ep.last == (ep.start + 1) & _M32) or (ep.state != RESET and delta > 0):
            ep.update_last(seg_end)
        elif ep.state != RESET and payload_len:
            events |= EV_RXMIT
        state = ep.state
        if state == INACTIVE:
            self._inactive(ep, peer, from_orig, flags, payload_len)
        elif state in (SYN_SENT, SYN_ACK_SENT):
            if flags & FIN:
                ep.set_state(CLOSED)
            if flags & RST:
                ep.set_state(RESET)
        elif state in (ESTABLISHED, PARTIAL):
            self._established(ep, peer, flags)
        elif state == CLOSED and flags & RST and peer.state != CLOSED:
            ep.set_state(RESET)
        if flags & (FIN | RST):
            ep.did_close = True  # every FIN or RST that changes the state closes (do_close); later ones repeat it
        if rel_ack >= 0:
            self._ack_gaps(ep, peer, rel_ack)
        if payload_len and captured and not flags & RST and not underflow:
            ep.data_sent(rel + 1 if flags & SYN else rel, payload_len)
        return events

    def sizes(self) -> tuple[int, int]:
        """``orig_bytes`` and ``resp_bytes`` as Zeek's ``TCP_Endpoint::Size`` gives them."""
        return self.orig.size(self.resp), self.resp.size(self.orig)

    def add(self, from_orig: bool, letter: str) -> None:
        if len(self.history) < HIST_MAX:
            self.history.append(letter if from_orig else letter.lower())

    def _check(self, ep: Endpoint, from_orig: bool, bit: int, letter: str) -> bool:
        """Zeek's CheckHistory: add the letter the first time; True when it was seen before."""
        if ep.seen & bit:
            return True
        ep.seen |= bit
        self.add(from_orig, letter)
        return False

    def _history(self, ep: Endpoint, from_orig: bool, flags: int, seq: int, length: int) -> None:
        syn, fin, rst = flags & SYN, flags & FIN, flags & RST
        bits = (1 if syn else 0) + (1 if fin else 0) + (1 if rst else 0)
        if bits > 1:
            if fin and rst:
                self._check(ep, from_orig, _H_FIN_RST, "I")
            else:
                self._check(ep, from_orig, _H_MULTI, "Q")
        elif syn:
            code = "H" if flags & ACK else "S"
            if self._check(ep, from_orig, _H_SYN, code) and seq != ep.last_syn:
                self.add(from_orig, code)
            ep.last_syn = seq
        elif fin:
            end = (seq + length) & 0xFFFFFFFF
            if self._check(ep, from_orig, _H_FIN, "F") and end != ep.last_fin:
                self.add(from_orig, "F")
            ep.last_fin = end
        elif rst:
            if self._check(ep, from_orig, _H_RST, "R") and seq != ep.last_rst:
                self.add(from_orig, "R")
            ep.last_rst = seq
        elif length:
            self._check(ep, from_orig, _H_DATA, "D")
        elif flags & ACK:
            self._check(ep, from_orig, _H_ACK, "A")

    def _inactive(self, ep: Endpoint, peer: Endpoint, from_orig: bool, flags: int, length: int) -> None:
        if flags & SYN:
            if from_orig:
                ep.set_state(SYN_ACK_SENT if flags & ACK else SYN_SENT)
            else:
                if peer.state == SYN_SENT:
                    peer.set_state(ESTABLISHED)
                ep.set_state(ESTABLISHED)
        if flags & FIN:
            ep.set_state(CLOSED)
        if flags & RST:
            ep.set_state(RESET)
        if ep.state == INACTIVE:  # no control flag changed the state
            if not from_orig and length == 0 and self.orig.state == SYN_SENT:
                pass  # an ACK of the SYN before the SYN-ACK: not a partial connection
            elif flags & ACK and peer.state == ESTABLISHED:
                ep.set_state(ESTABLISHED)  # SYN-ACK seen, SYN missed: establish
            else:
                ep.set_state(PARTIAL)

    @staticmethod
    def _established(ep: Endpoint, peer: Endpoint, flags: int) -> None:
        if flags & SYN and ep.state == PARTIAL and peer.state == INACTIVE and not flags & ACK:
            ep.set_state(SYN_SENT)
        if flags & FIN and not flags & RST:
            ep.set_state(CLOSED)
            if peer.state == RESET and peer.prev == CLOSED:
                peer.set_state(CLOSED)
        if flags & RST:
            ep.set_state(RESET)

    @property
    def closed(self) -> bool:
        """The connection is over and Zeek removes it after a delay: at least one side ``did_close``,
        and both did, or one side is RESET or INACTIVE (``ConnectionClosed``'s complete close, and
        ``ExpireTimer``'s removal after ``tcp_connection_linger``)."""
        o, r = self.orig, self.resp
        if not (o.did_close or r.did_close):
            return False
        return (o.did_close and r.did_close) or RESET in (o.state, r.state) or INACTIVE in (o.state, r.state)

    def is_reuse(self, flags: int, seq: int) -> bool:
        """Zeek's ``TCPSessionAdapter::IsReuse``: whether a packet ends this connection and starts a new one
        on the same tuple. Only a SYN (a SYN-ACK only while the originator is INACTIVE, compared with the
        responder); once either side closed, any such SYN; on an open connection, a SYN whose sequence
        number is not the endpoint's start (not a retransmission, nor a SYN/SYN-ACK reversal)."""
        if not flags & SYN:
            return False
        conn_orig = self.orig
        if flags & ACK:
            if self.orig.state != INACTIVE:
                return False
            conn_orig = self.resp
        if self.orig.did_close or self.resp.did_close:
            return True
        if seq == conn_orig.start:
            return False
        reversal = conn_orig.state == SYN_ACK_SENT and self.resp.state == INACTIVE and seq == self.resp.start
        return not (reversal and not flags & ACK)

    @property
    def attempt(self) -> bool:
        """Zeek's ``AttemptTimer`` condition: the originator's SYN unanswered (the responder INACTIVE)."""
        return self.orig.state in (SYN_SENT, SYN_ACK_SENT) and self.resp.state == INACTIVE

    def history_text(self, flipped: bool = False) -> str:
        return ("^" if flipped else "") + "".join(self.history)

    def conn_state(self, orig_size: int, resp_size: int, history: str) -> str:
        """Zeek's ``conn_state`` for TCP from the endpoint states (main.zeek)."""
        os_, rs = self.orig.state, self.resp.state
        o_inactive = os_ in (INACTIVE, PARTIAL)
        r_inactive = rs in (INACTIVE, PARTIAL)
        if rs == RESET:
            if os_ in (SYN_SENT, SYN_ACK_SENT) or (os_ == RESET and orig_size == 0 and resp_size == 0):
                return "REJ"
            return "RSTRH" if o_inactive else "RSTR"
        if os_ == RESET:
            if r_inactive:
                return "RSTOS0" if _rstos0(history) else "OTH"
            return "RSTO"
        if rs == CLOSED and os_ == CLOSED:
            return "SF"
        if os_ == CLOSED:
            return "SH" if r_inactive else "S2"
        if rs == CLOSED:
            return "SHR" if o_inactive else "S3"
        if os_ == SYN_SENT and rs == INACTIVE:
            return "S0"
        if os_ == ESTABLISHED and rs == ESTABLISHED:
            return "S1"
        return "OTH"


def _init_endpoint(ep: Endpoint, flags: int, seq: int, seg_end: int) -> None:
    """Zeek's ``init_endpoint``: the sequence numbers of an endpoint, by its state before the packet."""
    state = ep.state
    if state == INACTIVE:
        if flags & SYN:
            ep.init_seq(seq, seg_end)
        else:
            ep.init_seq(seq - 1, seq)  # a partial connection: numbered as if the SYN had been seen
    elif flags & SYN and (
        (state in (SYN_SENT, SYN_ACK_SENT) and seq != ep.start)
        or state in (ESTABLISHED, PARTIAL)
        or (state == RESET and ep.prev == INACTIVE)
    ):
        ep.init_seq(seq, seg_end)


def _clean(ep: Endpoint) -> bool:
    """Zeek's ``is_clean``: established, or closed from established."""
    return ep.state == ESTABLISHED or (ep.state == CLOSED and ep.prev == ESTABLISHED)


def _rstos0(history: str) -> bool:
    """``/^\\^?S[^HAFGIQ]*R.*/``: a SYN, then no handshake/ack/fin letters, then the originator's RST."""
    text = history[1:] if history.startswith("^") else history
    if not text.startswith("S"):
        return False
    for ch in text[1:]:
        if ch == "R":
            return True
        if ch in "HAFGIQ":
            return False
    return False


def udp_conn_state(orig_pkts: int, resp_pkts: int) -> str:
    """Zeek's ``conn_state`` for UDP: SF both sides active, S0 only the originator, SHR only the responder."""
    if orig_pkts:
        return "SF" if resp_pkts else "S0"
    return "SHR" if resp_pkts else "OTH"
