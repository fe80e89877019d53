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
``W`` zero window, ``^`` roles flipped. ``A``, ``D``, ``I``, ``Q`` appear at most once per direction;
``S``, ``H``, ``F``, ``R`` again when their sequence number differs from the last one of that kind;
``T`` and ``W`` on their 1st, 10th, 100th, ... occurrence (the meter computes those two).

Departures from Zeek, all deliberate: no checksum (``C``) or content-gap (``G``) letters (hopscope does
not verify checksums or reassemble); the SYN/SYN-ACK reversal flip inside Zeek's state machine is not
modelled (hopscope flips a flow whose first packet is a SYN-ACK, as Zeek's ``^`` heuristic does).
"""

from __future__ import annotations

from typing import Final

INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# hist_seen bits (per endpoint)
_H_SYN, _H_FIN, _H_RST, _H_FIN_RST, _H_DATA, _H_ACK, _H_MULTI = 1, 2, 4, 8, 16, 32, 64

#: Sentinel for "no sequence number remembered yet" (sequence numbers are 0..2^32-1).
_NONE: Final = -1
#: At most this many history letters are kept (a bound for pathological flows; meter.c: HIST_MAX).
HIST_MAX: Final = 65535


class Endpoint:
    """One side of a TCP connection as Zeek models it."""

    __slots__ = ("did_close", "last_fin", "last_rst", "last_syn", "prev", "seen", "state")

    def __init__(self) -> None:
        self.state = INACTIVE
        self.prev = INACTIVE
        self.seen = 0
        self.last_syn = _NONE
        self.last_fin = _NONE
        self.last_rst = _NONE
        self.did_close = False

    def set_state(self, state: int) -> None:
        self.prev = self.state
        self.state = state


class TcpConn:
    """The TCP state of one flow: two endpoints and the history letters so far."""

    __slots__ = ("history", "orig", "resp")

    def __init__(self) -> None:
        self.orig = Endpoint()
        self.resp = Endpoint()
        self.history: list[str] = []

    def packet(self, from_orig: bool, flags: int, seq: int, payload_len: int) -> None:
        """Account one packet: history letters first, then the state machine (Zeek's order)."""
        ep, peer = (self.orig, self.resp) if from_orig else (self.resp, self.orig)
        self._history(ep, from_orig, flags, seq, payload_len)
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
        """Both sides closed, or either side reset: the connection is over (a linger may follow)."""
        o, r = self.orig.state, self.resp.state
        return o == RESET or r == RESET or (o == CLOSED and r == CLOSED)

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
