"""Network namespaces for the live capture tests (root needed): two namespaces joined by a veth pair,
removed by the test whatever happens."""

from __future__ import annotations

import subprocess


def sh(*cmd: str) -> None:
    """Run a command; a failure raises (with its output)."""
    subprocess.run(cmd, check=True, capture_output=True)


def add_veth_pair(ns_x: str, ns_y: str, dev_x: str, dev_y: str, addr_x: str, addr_y: str) -> None:
    """Namespaces ``ns_x`` and ``ns_y`` joined by the veth pair ``dev_x``/``dev_y``, addressed (/24), up,
    their loopbacks too."""
    sh("ip", "netns", "add", ns_x)
    sh("ip", "netns", "add", ns_y)
    sh("ip", "link", "add", dev_x, "netns", ns_x, "type", "veth", "peer", "name", dev_y, "netns", ns_y)
    for ns, dev, addr in ((ns_x, dev_x, addr_x), (ns_y, dev_y, addr_y)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def delete_namespaces(*names: str) -> None:
    """Remove the namespaces that exist of ``names`` (with their veth ends)."""
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
