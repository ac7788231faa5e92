#!/usr/bin/env bash
# The whole thing on this machine, as a user would run it on a cluster: installs what it needs, builds the
# test bed (a Kubernetes control plane and one real node, from Go modules) and the images (without Docker),
# brings the test bed up, installs the CRD and the operator (`kubectl apply -k crds`, `-k deploy/operator`), applies the seed's
# SandboxService and loads its NodePort Service with the seed's autocannon run. While it runs, a line every
# 5 s shows the pods, each pod's value of the HPA's metric and the HPA's decision; at the end, the timing table and a
# chart (target/demo/run.png).
#
#   scripts/demo.sh          leaves the test bed up and prints the `export KUBECONFIG=...` to go on with
#   scripts/demo.sh --down   takes the test bed down at the end
#
# Needs root (the real node's bridge, routes, nftables and cgroups). The first run builds for a long time
# (the Kubernetes binaries take 15-25 minutes on 2 cores); later runs reuse the builds. Settings:
# CONNECTIONS (6) and DURATION (60 s) of the load, WINDOW (30 s), the scale-down window the demo gives
# the SandboxService so that the scale-in shows too (the HPA's default is 300 s), and METRIC, what the HPA
# scales on: QueueRatio (the seed's queue_ratio, by default) or Occupancy (queue_occupancy, which grows with
# the load, so the HPA can settle on one count): `METRIC=Occupancy scripts/demo.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

down=false
case "${1:-}" in
"") ;;
--down) down=true ;;
*) echo "usage: scripts/demo.sh [--down]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "demo: the test bed's real node needs root" >&2; exit 1; }

step() { printf '\n== %s\n' "$*" >&2; }

step "installing what the test bed needs (Debian, npm, PyPI packages)"
scripts/install-test-deps.sh >&2
step "building the test bed from Go modules (cached after the first run)"
testbed/build.sh >&2
step "starting the test bed with a real node (images built and imported on the way)"
TESTBED_NODES=real scripts/testbed.sh up >/dev/null
eval "$(scripts/testbed.sh env)"
kubectl get nodes -o wide >&2

step "kubectl apply --server-side -k crds, then -k deploy/operator"
kubectl apply --server-side -k crds >&2
kubectl apply --server-side -k deploy/operator >&2
kubectl rollout status deployment/sandbox-operator -n sandbox-system --timeout=180s >&2

step "the seed's SandboxService (deploy/examples/seed.yaml, spec.autoscaling.metric ${METRIC:-QueueRatio}) under the seed's load"
NAMESPACE=default OUT=$root/target/demo scripts/autoscale-bench.sh

if $down; then
	kubectl delete -f deploy/examples/seed.yaml --ignore-not-found >/dev/null
	scripts/testbed.sh down
else
	step "the test bed stays up; go on with:"
	scripts/testbed.sh env
	echo "kubectl get sbx,hpa,pods -o wide"
	echo "# and take it down with: scripts/testbed.sh down"
fi
