"""Mutual TLS between the client and server sidecars (``hopscope lab up --mtls``): the config pieces.

The sidecar templates (lab/envoy.yaml, envoy-egress.yaml, nginx.conf, haproxy.cfg, haproxy-egress.cfg)
carry placeholders that are empty in a plaintext lab; here they are filled, as a mesh configures its
sidecars:

- the server sidecar's listener speaks TLS (``MTLS_VERSION``), requires a client certificate signed by
  the lab's CA, issues session tickets with a key the server pods share, and adds to each response what
  the TLS leg carried (``x-hs-tls-version``, ``x-hs-tls-peer``: the client certificate's subject,
  ``x-hs-tls-remote``: the TLS connection's client socket as the server sidecar saw it, after node A's
  NAT, and where the proxy can say it, ``x-hs-tls-resumed``), which the generator writes into the
  manifest;
- the client sidecar's upstream connections (a keep-alive pool) speak TLS with its own certificate,
  verify the server's against the CA and the Service name, and resume sessions; the Envoy client
  sidecar retires a pooled connection after ``RECYCLE_REQUESTS`` requests (as a mesh's
  maxRequestsPerConnection does), so new connections keep being made during a run and resume the
  session of an earlier one (haproxy keeps its pooled connections for the run).

Envoy pieces are one-line YAML flow mappings (JSON), so they drop into the block YAML at the
placeholder's indentation.
"""

from __future__ import annotations

import json
from typing import Any

from hopscope.lab.pki import CA_NAME, MTLS_VERSION, Pki, spiffe_id

#: The name the client sidecars ask for (SNI) and verify in the server's certificate.
SERVICE_NAME = "web.default.svc.cluster.local"
#: Every placeholder, empty: a plaintext lab.
PLAINTEXT: dict[str, str] = {"downstream_tls": "", "upstream_tls": "", "tls_response_headers": "",
                             "bind_tls": "", "server_tls": "", "listen_tls": "", "tls_directives": ""}
#: Requests the Envoy client sidecar sends over one pooled TLS connection before it opens a new one.
RECYCLE_REQUESTS = 20
_ENVOY_VERSION = {"TLSv1.2": "TLSv1_2", "TLSv1.3": "TLSv1_3"}
_TLS = "envoy.transport_sockets.tls"
_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def server_leaves(servers: tuple[str, ...], ips: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Subject alt names of each server sidecar's certificate: the Service name and the pod IP."""
    return {pod: (f"DNS:{SERVICE_NAME}", f"IP:{ips[pod]}") for pod in servers}


def client_leaves(clients: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Subject alt names of each client sidecar's certificate: its workload's SPIFFE id."""
    return {f"{pod}-egress": (f"URI:{spiffe_id(pod)}",) for pod in clients}


def manifest_entry(leaves: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """What the manifest records of the TLS leg's set-up (``leaves``: every certificate's alt names)."""
    return {"between": "client sidecars -> server sidecars", "version": MTLS_VERSION, "ca": CA_NAME,
            "key_type": "ECDSA P-256", "client_certificate": "required, verified against the CA",
            "server_name": SERVICE_NAME, "session_resumption": "session tickets, one key shared by the server sidecars",
            "certificates": [{"name": n, "sans": list(sans)} for n, sans in leaves.items()]}


def _flow(key: str, value: Any) -> str:
    return f"{key}: {json.dumps(value, separators=(', ', ': '))}"


def _envoy_common(pki: Pki, name: str, san: dict[str, Any]) -> dict[str, Any]:
    ident = pki.identities[name]
    return {
        "tls_params": {"tls_minimum_protocol_version": _ENVOY_VERSION[MTLS_VERSION],
                       "tls_maximum_protocol_version": _ENVOY_VERSION[MTLS_VERSION]},
        "tls_certificates": [{"certificate_chain": {"filename": str(ident.cert)},
                              "private_key": {"filename": str(ident.key)}}],
        "validation_context": {"trusted_ca": {"filename": str(pki.ca_cert)}, "match_typed_subject_alt_names": [san]},
    }


def server_placeholders(kind: str, pki: Pki, pod: str) -> dict[str, str]:
    """The server sidecar's pieces (``kind``: envoy, nginx or haproxy) for pod ``pod``."""
    ident = pki.identities[pod]
    if kind == "envoy":
        context = {"@type": _CONTEXT + "DownstreamTlsContext", "require_client_certificate": True,
                   "session_ticket_keys": {"keys": [{"filename": str(pki.ticket_key)}]},
                   "common_tls_context": _envoy_common(pki, pod, {"san_type": "URI",
                                                                  "matcher": {"prefix": "spiffe://"}})}
        added = [{"header": {"key": key, "value": value}} for key, value in (
            ("x-hs-tls-version", "%DOWNSTREAM_TLS_VERSION%"), ("x-hs-tls-peer", "%DOWNSTREAM_PEER_SUBJECT%"),
            ("x-hs-tls-remote", "%DOWNSTREAM_REMOTE_ADDRESS%"))]
        return {**PLAINTEXT, "downstream_tls": _flow("transport_socket", {"name": _TLS, "typed_config": context}),
                "tls_response_headers": _flow("response_headers_to_add", added)}
    if kind == "nginx":
        directives = [
            f"ssl_certificate {ident.cert};", f"ssl_certificate_key {ident.key};",
            f"ssl_client_certificate {pki.ca_cert};", "ssl_verify_client on;", f"ssl_protocols {MTLS_VERSION};",
            f"ssl_session_cache shared:tls_{pod}:1m;", "ssl_session_tickets on;",
            f"ssl_session_ticket_key {pki.ticket_key};",
            "add_header x-hs-tls-version $ssl_protocol always;",
            "add_header x-hs-tls-peer $ssl_client_s_dn always;",
            "add_header x-hs-tls-resumed $ssl_session_reused always;",
            "add_header x-hs-tls-remote $remote_addr:$remote_port always;",
        ]
        return {**PLAINTEXT, "listen_tls": " ssl", "tls_directives": "\n        ".join(directives)}
    if kind == "haproxy":
        bind = (f" ssl crt {ident.bundle} ca-file {pki.ca_cert} verify required ssl-min-ver {MTLS_VERSION} "
                f"ssl-max-ver {MTLS_VERSION} tls-ticket-keys {pki.ticket_key_b64}")
        headers = ["http-response set-header x-hs-tls-version %[ssl_fc_protocol]",
                   "http-response set-header x-hs-tls-peer %[ssl_c_s_dn]",
                   "http-response set-header x-hs-tls-resumed %[ssl_fc_is_resumed]",
                   "http-response set-header x-hs-tls-remote %[src]:%[src_port]"]
        return {**PLAINTEXT, "bind_tls": bind, "tls_response_headers": "\n    ".join(headers)}
    raise ValueError(f"unknown server sidecar {kind!r}")


def egress_placeholders(kind: str, pki: Pki, pod: str) -> dict[str, str]:
    """The client sidecar's pieces (``kind``: envoy or haproxy) for client pod ``pod``."""
    name = f"{pod}-egress"
    if kind == "envoy":
        context = {"@type": _CONTEXT + "UpstreamTlsContext", "sni": SERVICE_NAME, "max_session_keys": 4,
                   "common_tls_context": _envoy_common(pki, name, {"san_type": "DNS",
                                                                   "matcher": {"exact": SERVICE_NAME}})}
        recycle = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": RECYCLE_REQUESTS},
            "explicit_http_config": {"http_protocol_options": {}}}}
        return {**PLAINTEXT, "upstream_tls": _flow("transport_socket", {"name": _TLS, "typed_config": context})
                + "\n    " + _flow("typed_extension_protocol_options", recycle)}
    if kind == "haproxy":
        ident = pki.identities[name]
        server = (f" ssl crt {ident.bundle} ca-file {pki.ca_cert} verify required verifyhost {SERVICE_NAME} "
                  f"sni str({SERVICE_NAME}) ssl-min-ver {MTLS_VERSION} ssl-max-ver {MTLS_VERSION}")
        return {**PLAINTEXT, "server_tls": server}
    raise ValueError(f"unknown client sidecar {kind!r}")
