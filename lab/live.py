"""``hopscope lab run --live``: the whole pipeline on the lab, scored against the run's ground truth.

What runs, in order::

    lab up ─ delayer overhead ─ one `hopscope agent` per lab host ─ `hopscope correlate` ─ traffic plan
         ─ agents stopped (they flush) ─ lab down ─ correlator exits when idle ─ stored traces scored

Agents
    One ``hopscope agent`` process per lab host that has capture points, with a configuration of its
    own (``agent-<host>.yaml`` in the run's directory). The process stays in the machine's own network
    namespace, where Kafka is, and captures inside its host's namespace, as the agent of a Kubernetes
    node captures inside its pods' namespaces: the configuration's ``netns_dirs`` hold one entry, named
    as the lab host, for that host's namespace, and ``interfaces.include`` selects exactly the host's
    capture interfaces. Points are named ``{netns}/{iface}`` (``nodeA/cni0``), the hop kinds are the
    manifest's (``hop_kinds.overrides``), and the host is the lab host, so clock domains are the lab's
    hosts. The manifest's capture points each carry the agent's name for them (``agent_point``); the
    scoring reads the stored traces under the manifest's names through that table. An agent is ready
    when the kernel lists a packet socket bound to each of its interfaces (``/proc/net/packet`` in the
    host's namespace): from then on its ring receives every frame.

Kafka, store
    ``--kafka`` or, without it, the broker on 127.0.0.1:9092, started by the checkout's
    ``deploy/kafka/start.sh`` when none answers (and stopped again at the end). ``--store`` or an
    embedded chDB store in the run's directory (``OUT/store``: ``hopscope serve --store chdb://OUT/store``
    shows the run afterwards). Topics are ``<prefix>.*`` with a prefix of the run's own, consumed by the
    correlator's groups ``<prefix>-s1``/``-s2``; topics and groups are deleted at the end.

Waiting
    The correlator runs with ``--idle-exit``: once every agent stopped (so every record is in Kafka), it
    stitches what it holds, writes it and exits after ``idle_exit_s`` without input. A chDB directory is
    one process's at a time, so the scoring opens the store only then. The wait is bounded
    (``store_wait_s``); beyond it the correlator is stopped and what it stored is scored.

Teardown
    Agents, correlator, lab, topics and groups, and a Kafka this run started, on success, failure,
    Ctrl-C or SIGTERM. The child processes also get SIGTERM when this process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import yaml

from hopscope.correlate.evaluate import Evaluation
from hopscope.errors import ConfigError, HopscopeError
from hopscope.lab.lab import ImpairSpec, Lab, check_prerequisites
from hopscope.lab.plan import PlanSettings

#: Where Kafka is looked for without ``--kafka`` (the broker of deploy/kafka/start.sh).
DEFAULT_KAFKA: Final = "127.0.0.1:9092"
#: The lowest recall a live run passes with; any false link (precision below 1, a trace shared by two
#: requests, a hop in two traces) fails it too.
RECALL_BAR: Final = 0.999
NETNS_DIR: Final = "/var/run/netns"
PR_SET_PDEATHSIG: Final = 1


class LiveRunError(HopscopeError):
    """A part of the live pipeline did not start or did not finish."""


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """How one live run is wired and how long it waits."""

    kafka: str | None = None  # bootstrap; None: DEFAULT_KAFKA, started from the checkout if silent
    store: str | None = None  # store URL; None: chDB in OUT/store
    idle_exit_s: float = 8.0  # the correlator exits after this long without input
    store_wait_s: float = 180.0  # bound on the wait for the correlator to finish
    ready_wait_s: float = 60.0  # bound on the wait for the agents' sockets
    stop_wait_s: float = 40.0  # bound on each agent's exit after SIGTERM (it flushes to Kafka)


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """One lab host's agent: its namespace, configuration and point names."""

    host: str
    netns: str  # the lab namespace's name (``ip netns``)
    config: Path
    log: Path
    #: interface -> manifest capture point name
    points: dict[str, str]


def agent_point(host: str, iface: str) -> str:
    """The name an agent of :func:`agent_config` gives the point at ``host:iface`` (``{netns}/{iface}``,
    its one namespace entry named ``host``)."""
    return f"{host}/{iface}"


@dataclass(slots=True)
class LiveResult:
    """A scored live run."""

    evaluation: Evaluation
    traces_stored: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def bar_failures(ev: Evaluation) -> list[str]:
    """Why a run's score is below the bar (empty: it passes)."""
    out = []
    if ev.requests == 0:
        out.append("no request of the manifest was answered")
    if ev.recall < RECALL_BAR:
        out.append(f"recall {ev.recall:.4f} < {RECALL_BAR}")
    if ev.precision < 1.0:
        out.append(f"precision {ev.precision:.4f}: {ev.matched - ev.precise} traces link the wrong upstream leg")
    if ev.duplicate_traces or ev.shared_hops:
        out.append(f"{ev.duplicate_traces} traces shared by two requests, {ev.shared_hops} hop records in two traces")
    return out


# --- agents -----------------------------------------------------------------------------------------------


def agent_plans(lab: Lab, run_dir: Path) -> list[AgentPlan]:
    """One agent per lab host with capture points, in topology order."""
    hosts: dict[str, dict[str, str]] = {}
    for cp in lab.topo.captures:
        hosts.setdefault(cp.host, {})[cp.interface] = cp.name
    return [AgentPlan(host, lab.ns[host], run_dir / f"agent-{host}.yaml", run_dir / f"agent-{host}.log", points)
            for host, points in hosts.items()]


def agent_config(plan: AgentPlan, kinds: dict[str, str], bootstrap: str, prefix: str, run_dir: Path) -> dict[str, Any]:
    """The agent configuration (``hopscope.agent/1``) of one host: only its namespace, only its capture
    interfaces, points ``{netns}/{iface}`` with the netns entry named as the host, the manifest's kinds."""
    netns_dir = run_dir / "netns" / plan.host
    netns_dir.mkdir(parents=True, exist_ok=True)
    link = netns_dir / plan.host
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.join(NETNS_DIR, plan.netns))
    no_processes = run_dir / "netns" / "no-processes"  # proc_root: no namespace is found through processes
    no_processes.mkdir(exist_ok=True)
    return {
        "schema": "hopscope.agent/1",
        "host": plan.host,
        "interfaces": {"include": "|".join(re.escape(i) for i in plan.points), "exclude": "", "rescan_s": 5},
        "namespaces": {"root": False, "netns_dirs": [str(netns_dir)], "proc_root": str(no_processes)},
        "points": {"name": "{netns}/{iface}"},
        "hop_kinds": {"infer": False, "overrides": {re.escape(i): kinds[p] for i, p in plan.points.items()}},
        "capture": {"bpf": "", "l7": True, "ring_mb": 8, "max_flows": 100_000},
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix},
        "inventory": {"kubernetes": False},
        "report_interval_s": 5,
    }  # fmt: skip


#: Signals held while a child is started: one arriving inside fork would raise in the interpreter's
#: after-fork hooks, where the exception is ignored (and the logging lock stays taken).
HELD_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})


def _child_setup() -> None:
    """In the child before exec: the held signals back, and SIGTERM when the process that started it dies."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_hopscope(argv: list[str], log: Path, children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """``hopscope ARGV`` as a child process (this interpreter), its standard error into ``log``; listed in
    ``children`` before a held Ctrl-C or SIGTERM can interrupt this process."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "hopscope", *argv], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_child_setup)  # fmt: skip
        children.append(proc)
        return proc
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def bound_packet_sockets(netns: str) -> set[str]:
    """Names of the interfaces of ``netns`` a packet socket is bound to (its /proc/net/packet)."""
    from hopscope.probes.live import in_netns

    with in_netns(netns):
        names = dict(socket.if_nameindex())
        with open("/proc/thread-self/net/packet", encoding="ascii") as fh:
            rows = fh.read().splitlines()[1:]
    return {names[int(cols[4])] for cols in (r.split() for r in rows) if len(cols) > 4 and int(cols[4]) in names}


def wait_agents_ready(plans: list[AgentPlan], procs: dict[str, subprocess.Popen[bytes]], wait_s: float) -> None:
    """Until every agent has a packet socket on each of its interfaces; an agent that exits is an error."""
    deadline = time.monotonic() + wait_s
    pending = {p.host: p for p in plans}
    while pending:
        for host, plan in list(pending.items()):
            if procs[host].poll() is not None:
                raise LiveRunError(f"the agent of {host} exited ({procs[host].returncode}): {_tail(plan.log)}")
            if set(plan.points) <= bound_packet_sockets(plan.netns):
                del pending[host]
        if pending and time.monotonic() > deadline:
            raise LiveRunError(f"agents not capturing after {wait_s:.0f} s: {', '.join(sorted(pending))}")
        time.sleep(0.2)


def stop_agents(plans: list[AgentPlan], procs: dict[str, subprocess.Popen[bytes]],
                wait_s: float) -> list[dict[str, Any]]:  # fmt: skip
    """SIGTERM every agent (each flushes its captures and waits for Kafka's acknowledgement), then their
    summaries (the JSON line each writes last)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    summaries = []
    for plan in plans:
        try:
            procs[plan.host].wait(wait_s)
        except subprocess.TimeoutExpired:
            procs[plan.host].kill()
            raise LiveRunError(f"the agent of {plan.host} did not stop within {wait_s:.0f} s") from None
        summaries.append(_last_json(plan.log) or {"agent": plan.host, "error": _tail(plan.log)})
    return summaries


def _last_json(log: Path) -> dict[str, Any] | None:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                found: dict[str, Any] = json.loads(line)
                return found
    return None


def _tail(log: Path, chars: int = 600) -> str:
    try:
        return log.read_text(errors="replace")[-chars:].strip() or "(no output)"
    except OSError:
        return "(no log)"


def agents_line(summaries: list[dict[str, Any]]) -> str:
    """One line for all agents: points, records sent, kernel drops, batches dropped."""
    points = [p for s in summaries for p in s.get("points", [])]
    return (f"agents: {len(summaries)} processes, {len(points)} points, "
            f"{sum(s.get('records_sent', 0) for s in summaries)} records sent, "
            f"{sum(p.get('kernel_drops', 0) for p in points)} kernel drops, "
            f"{sum(s.get('batches_dropped', 0) for s in summaries)} batches dropped")  # fmt: skip


# --- Kafka ------------------------------------------------------------------------------------------------


def _checkout_script(name: str) -> Path:
    import hopscope

    return Path(hopscope.__file__).resolve().parent.parent / "deploy" / "kafka" / name


def resolve_kafka(bootstrap: str | None) -> tuple[str, bool]:
    """(bootstrap, whether this run started the broker). A given one must answer; without one, the
    broker on DEFAULT_KAFKA, started by the checkout's deploy/kafka/start.sh when none answers."""
    from hopscope.transport.kafka import check_reachable

    if bootstrap is not None:
        check_reachable(bootstrap)
        return bootstrap, False
    with contextlib.suppress(HopscopeError):
        check_reachable(DEFAULT_KAFKA)
        return DEFAULT_KAFKA, False
    start = _checkout_script("start.sh")
    if not start.is_file():
        raise ConfigError(f"no Kafka broker answers at {DEFAULT_KAFKA} and deploy/kafka/start.sh is not here "
                          "(an installed package): start one and pass --kafka BOOTSTRAP")
    print(f"no Kafka broker at {DEFAULT_KAFKA}: starting one (deploy/kafka/start.sh)", flush=True)
    done = subprocess.run(["bash", str(start)], capture_output=True, text=True)
    if done.returncode != 0:
        raise LiveRunError(f"deploy/kafka/start.sh failed ({done.returncode}): {(done.stdout + done.stderr)[-800:]}")
    return DEFAULT_KAFKA, True


def stop_started_kafka() -> None:
    subprocess.run(["bash", str(_checkout_script("stop.sh"))], capture_output=True, check=False)


def delete_topics(bootstrap: str, prefix: str, groups: list[str]) -> str:
    """Delete the run's topics (``prefix.*``) and consumer groups; what was deleted, or why not."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    except (KafkaError, OSError) as exc:
        return f"topics of {prefix} not deleted: {exc}"
    try:
        topics = sorted(t for t in admin.list_topics() if t.startswith(prefix + "."))
        if topics:
            admin.delete_topics(topics, timeout_ms=30_000)
        if groups:
            with contextlib.suppress(KafkaError):  # a group that never committed does not exist
                admin.delete_groups(groups)
        return f"deleted {len(topics)} topics {prefix}.*" + (f" and the groups {', '.join(groups)}" if groups else "")
    except (KafkaError, OSError) as exc:
        return f"topics of {prefix} not all deleted: {exc}"
    finally:
        admin.close()


# --- correlator and scoring -----------------------------------------------------------------------------


def start_correlator(bootstrap: str, store: str, prefix: str, idle_exit_s: float, log: Path,
                     children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:  # fmt: skip
    return start_hopscope(["correlate", "--kafka", bootstrap, "--store", store, "--topic-prefix", prefix,
                           "--group", prefix, "--idle-exit", str(idle_exit_s)], log, children)  # fmt: skip


def wait_correlator(proc: subprocess.Popen[bytes], log: Path, wait_s: float) -> str:
    """Until the correlator exits on its own (idle); beyond ``wait_s`` it is stopped (SIGTERM: it writes
    what is complete). Its summary line."""
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        print(f"the correlator is still busy after {wait_s:.0f} s: stopping it", flush=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise LiveRunError(f"the correlator failed ({proc.returncode}): {_tail(log, 1500)}")
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.startswith("hopscope correlate:")]
    return lines[0] if lines else "hopscope correlate: (no summary)"


def score_store(store_url: str, manifest: dict[str, Any], start_ns: int, end_ns: int) -> LiveResult:
    """The traces stored in [start_ns, end_ns) scored against the manifest, as ``hopscope analyze
    --manifest`` scores its own (``hopscope.correlate.evaluate``), under the manifest's point names."""
    from hopscope.correlate.engine import StitchResult
    from hopscope.correlate.evaluate import evaluate
    from hopscope.records import Batch, RequestRecord, Span, Trace
    from hopscope.store import store_from_url
    from hopscope.store.query import MAX_LIMIT

    names = {cp["agent_point"]: cp["name"] for cp in manifest["capture_points"]}
    store = store_from_url(store_url)
    try:
        spans = store.query_spans(start_ns, end_ns, limit=MAX_LIMIT)
        traces = store.query_traces(start_ns, end_ns, limit=MAX_LIMIT)
        requests = store.query_requests(start_ns, end_ns, limit=MAX_LIMIT)
    finally:
        store.close()
    spans = [replace(s, point=names.get(s.point, s.point)) for s in spans]
    requests = [replace(r, point=names.get(r.point, r.point)) for r in requests]
    result = StitchResult(Batch.from_records(Span, spans), Batch.from_records(Trace, traces), {})
    ev = evaluate(manifest, result, Batch.from_records(RequestRecord, requests))
    return LiveResult(ev, len(traces), bar_failures(ev))


# --- the run --------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class LiveRun:
    """One live run: the lab, its agents, the correlator, the store; :meth:`run` tears all of it down."""

    def __init__(self, lab: Lab, out: Path, options: LiveOptions | None = None) -> None:
        self.lab = lab
        self.out = out.resolve()  # absolute: the agents' netns_dirs entries are taken relative to /var/run/netns
        self.options = options or LiveOptions()
        self.prefix = f"hslive{uuid.uuid4().hex[:10]}"
        self.store_url = self.options.store or f"chdb://{self.out / 'store'}"
        self.bootstrap: str | None = None
        self.started_kafka = False
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.correlator: subprocess.Popen[bytes] | None = None
        #: every process this run started, agents and correlator
        self.children: list[subprocess.Popen[bytes]] = []
        self.agent_summaries: list[dict[str, Any]] = []
        self.correlator_summary = ""
        self.traffic_start_ns = 0

    def run(self, impairments: list[ImpairSpec], settings: PlanSettings, seed: int = 1,
            measure_overhead: bool = True) -> LiveResult:  # fmt: skip
        """Up, agents, correlator, traffic, agents stopped, down, wait for the store, score; always torn down."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            check_prerequisites(self.lab.sidecar, self.lab.client_sidecar, self.lab.mtls)  # before a broker starts
            self.out.mkdir(parents=True, exist_ok=True)
            self.bootstrap, self.started_kafka = resolve_kafka(self.options.kafka)
            _say(f"Kafka {self.bootstrap}, topics {self.prefix}.*; store {self.store_url}")
            manifest, start_ns = self._drive(impairments, settings, seed, measure_overhead)
            self._wait_stored(manifest)
            result = score_store(self.store_url, manifest, start_ns - 10 * 10**9, time.time_ns() + 60 * 10**9)
            self._write_score(result)
            return result
        finally:
            self._teardown()
            signal.signal(signal.SIGTERM, previous)

    def _drive(self, impairments: list[ImpairSpec], settings: PlanSettings, seed: int,
               measure_overhead: bool) -> tuple[dict[str, Any], int]:  # fmt: skip
        """The part that needs the lab: agents capture while the traffic plan runs; the manifest."""
        with self.lab as lab:
            _say(f"lab {lab.prefix} up in {lab.up_seconds} s (server sidecar {lab.sidecar})")
            if measure_overhead:  # before the agents: its connections are not part of the plan
                lab.measure_delayer_overhead(impairments[0].site if impairments else "nodeB-ingress")
            try:
                path = self._capture(lab, impairments, settings, seed)
            except BaseException:
                end_all(self.children)  # the agents while their namespaces still exist
                raise
        manifest = json.loads(path.read_text())
        for cp in manifest["capture_points"]:
            cp["agent_point"] = agent_point(cp["host"], cp["interface"])
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest, self.traffic_start_ns

    def _capture(self, lab: Lab, impairments: list[ImpairSpec], settings: PlanSettings, seed: int) -> Path:
        """Agents and correlator started, the plan run under the impairments, agents stopped; the manifest."""
        plans = self._start_agents()
        assert self.bootstrap is not None
        self.correlator = start_correlator(self.bootstrap, self.store_url, self.prefix, self.options.idle_exit_s,
                                           self.out / "correlate.log", self.children)  # fmt: skip
        for spec in impairments:
            lab.impair(spec.site, delay_ms=spec.delay_ms, loss=spec.loss, seed=seed)
        self.traffic_start_ns = time.time_ns()
        try:
            truth = lab.traffic(settings)
        finally:  # while the agents still capture: every packet a delayer saw reaches them
            lab.clear_impairments()
        time.sleep(0.5)  # the last segments (FIN/ACK, delayed ones) reach every point
        self.agent_summaries = stop_agents(plans, self.agents, self.options.stop_wait_s)
        _say(agents_line(self.agent_summaries))
        return lab.write_manifest(self.out, truth)

    def _start_agents(self) -> list[AgentPlan]:
        assert self.bootstrap is not None
        plans = agent_plans(self.lab, self.out)
        kinds = {cp.name: cp.kind for cp in self.lab.topo.captures}
        for plan in plans:
            config = agent_config(plan, kinds, self.bootstrap, self.prefix, self.out)
            plan.config.write_text(yaml.safe_dump(config, sort_keys=False))
            self.agents[plan.host] = start_hopscope(["agent", "--config", str(plan.config)], plan.log, self.children)
        wait_agents_ready(plans, self.agents, self.options.ready_wait_s)
        points = sum(len(p.points) for p in plans)
        _say(f"agents: {len(plans)} processes capturing at {points} points ({self.out}/agent-HOST.yaml)")
        return plans

    def _wait_stored(self, manifest: dict[str, Any]) -> None:
        assert self.correlator is not None
        c, o = manifest["counts"], self.options
        _say(f"waiting for the correlator to store the traces of {c['requests']} HTTP requests and {c['dns']} DNS "
             f"lookups: it exits {o.idle_exit_s:.0f} s after its last record (at most {o.store_wait_s:.0f} s)")
        started = time.monotonic()
        log = self.out / "correlate.log"
        if self.correlator.poll() is not None:  # idle during a quiet stretch of the plan: it exited early
            early = wait_correlator(self.correlator, log, o.store_wait_s)
            _say(f"{early} (exited before the agents stopped: starting it again for the rest)")
            log = self.out / "correlate-2.log"
            assert self.bootstrap is not None
            self.correlator = start_correlator(self.bootstrap, self.store_url, self.prefix, o.idle_exit_s, log,
                                               self.children)  # fmt: skip
        self.correlator_summary = wait_correlator(self.correlator, log, o.store_wait_s)
        _say(f"{self.correlator_summary} ({time.monotonic() - started:.1f} s after the agents stopped)")

    def _write_score(self, result: LiveResult) -> None:
        doc = {"evaluation": result.evaluation.as_dict(), "traces_stored": result.traces_stored,
               "passed": result.passed, "failures": result.failures, "store": self.store_url,
               "agents": self.agent_summaries, "correlator": self.correlator_summary}  # fmt: skip
        (self.out / "score.json").write_text(json.dumps(doc, indent=1) + "\n")

    def _teardown(self) -> None:
        """Every process of the run stopped, topics and groups deleted, a Kafka this run started stopped."""
        end_all(self.children)
        if self.bootstrap is not None:
            _say(delete_topics(self.bootstrap, self.prefix, [f"{self.prefix}-s1", f"{self.prefix}-s2"]))
        if self.started_kafka:
            stop_started_kafka()
            _say("stopped the Kafka broker this run started")


def end_all(procs: list[subprocess.Popen[bytes]], wait_s: float = 10.0) -> None:
    """SIGTERM to every process still running, then SIGKILL to those still running ``wait_s`` later."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _say(line: str) -> None:
    print(line, flush=True)


def score_lines(result: LiveResult) -> str:
    """The score as ``hopscope analyze --manifest`` prints it, then the verdict."""
    from hopscope.correlate.report import evaluation_text

    text = f"\n{result.traces_stored} traces stored" + evaluation_text(result.evaluation.as_dict())
    verdict = "PASS" if result.passed else "FAIL: " + "; ".join(result.failures)
    return text + f"\n{verdict} (bar: recall >= {RECALL_BAR}, no false link)\n"

