"""Why two observations were linked, and how sure the link is.

Every span records the reason that joined it to the previous hop (``Span.link_reason``) and a
confidence in 0..1 (``Span.link_confidence``). The reasons and their base confidences are this table.
"""

from __future__ import annotations

import enum
from typing import Final


class Reason(enum.StrEnum):
    """A reason for a link; the value is what lands in ``Span.link_reason``."""

    ORIGIN = "origin"  # the first hop of a trace: not linked to anything
    NAT_SYN_SEQ = "nat:syn_seq"  # L4: same client and server ISN (syn_seq, synack_seq)
    L7_REQ_TCP_SEQ = "l7:req_tcp_seq"  # same TCP seq of the request's first byte (and anchors)
    L7_DNS_ID = "l7:dns_id"  # DNS: same transaction id, name and type
    PROXY_X_REQUEST_ID = "proxy:x-request-id"
    PROXY_TRACEPARENT = "proxy:traceparent"
    PROXY_B3 = "proxy:b3"
    PROXY_NESTED = "proxy:nested"  # same method, status and body lengths, nested in time, one-to-one
    PROXY_RETRY = "proxy:retry"  # another attempt of a request whose downstream leg is linked already
    TLS_NESTED = "tls:nested"  # a TLS exchange nested in a plaintext leg, or a plaintext leg in one
    #: ... and the request id of the plaintext leg before the TLS hop is the one after it
    TLS_NESTED_ID = "tls:nested+id"
    #: ... and a path no other request had is the same before and after it
    TLS_NESTED_PATH = "tls:nested+path"


#: Base confidence of each reason when every anchor agreed.
BASE_CONFIDENCE: Final[dict[Reason, float]] = {
    Reason.ORIGIN: 1.0,
    Reason.NAT_SYN_SEQ: 1.0,
    Reason.L7_REQ_TCP_SEQ: 1.0,
    Reason.L7_DNS_ID: 0.95,
    Reason.PROXY_X_REQUEST_ID: 0.99,
    Reason.PROXY_TRACEPARENT: 0.98,
    Reason.PROXY_B3: 0.97,
    Reason.PROXY_NESTED: 0.8,
    Reason.PROXY_RETRY: 0.7,
    Reason.TLS_NESTED: 0.8,
    Reason.TLS_NESTED_ID: 0.95,
    Reason.TLS_NESTED_PATH: 0.9,
}

#: Multiplier per missing confirming anchor (e.g. syn_seq or resp_tcp_seq not seen at one side).
MISSING_ANCHOR_FACTOR: Final = 0.95
#: Confidence of a nested proxy link when more than one candidate competed for it.
AMBIGUOUS_NESTED_CONFIDENCE: Final = 0.6
#: Multiplier of a nested proxy link whose paths disagree (neither equal nor one a prefix-stripped
#: form of the other): a proxy that rewrites paths beyond prefixes, or a wrong pair.
PATH_DISAGREES_FACTOR: Final = 0.9
