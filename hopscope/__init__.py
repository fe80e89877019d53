"""hopscope: full-path network observability.

Probes meter flow and request records at every capture point of a request's path; the correlator
stitches them into one trace per request, hop by hop, across NAT and proxies; the store keeps them;
the API and the topology serve them.
"""

__version__ = "0.1.0"
