#!/usr/bin/env bash
# Builds the test bed's binaries from Go modules into target/testbed/bin, in two groups:
#   control-plane  etcd (testbed/etcd), kwok (testbed/kwok), prometheus-adapter (testbed/adapter),
#                  kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy
#                  (testbed/kubernetes): all that the kwok bed runs, and the real node's own
#   monitoring     the Prometheus Operator, its prometheus-config-reloader and Prometheus
#                  (testbed/prometheus-operator): only the real node runs them
# `testbed/build.sh` builds both; `testbed/build.sh GROUP` one (CI builds monitoring while kwok's suite runs).
# Each module is rebuilt only when its go.mod, go.sum, sources or this script change. Everything comes
# from the Go module proxy, checked against the committed go.sum files.
set -euo pipefail
testbed=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$testbed")
bin=${TESTBED_BIN:-$root/target/testbed/bin}
mkdir -p "$bin"

# The Kubernetes release the control plane is built from; its staging modules are v0.MINOR.PATCH.
kube_version=v1.34.4

export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

version_ldflags() {
	local minor=${kube_version#v1.}; minor=${minor%%.*}
	local flags="" pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	echo "-s -w$flags"
}

# build NAME MODULE_DIR LDFLAGS PACKAGE... ; skipped when the stamp of its inputs is unchanged. With
# build_tags set, builds with those tags.
build() {
	local name=$1 module=$2 ldflags=$3; shift 3
	local stamp_file stamp
	stamp_file="$bin/.stamp-$name"
	stamp=$( (cat "$0"; cd "$module" && cat go.mod go.sum $(find . -name '*.go' | sort)) | sha256sum | cut -d' ' -f1)
	if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
		echo "testbed/$name: up to date"
		return
	fi
	local start=$SECONDS
	echo "testbed/$name: building $*"
	(cd "$module" && go build -tags "${build_tags:-}" -ldflags "$ldflags" -o "$bin/" "$@")
	echo "$stamp" >"$stamp_file"
	echo "testbed/$name: built in $((SECONDS - start)) s"
}

# The Prometheus Operator's and Prometheus' version stamp, as their own Makefiles set it (`--version`,
# the build_info metric).
prometheus_stamp() {
	local version=$1
	echo "-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Revision=v$version -X github.com/prometheus/common/version.Branch=v$version"
}
required() { sed -n "s|^\s*$1 v\([^ ]*\).*|\1|p" "$testbed/prometheus-operator/go.mod"; }

build_control_plane() {
	build etcd "$testbed/etcd" "-s -w" .
	build kwok "$testbed/kwok" "-s -w" sigs.k8s.io/kwok/cmd/kwok
	# kwok does nothing without Stages. Its own defaults (what kwokctl installs), from the pinned module:
	# Nodes initialize and heartbeat; Pods turn Running and Ready, and go away when deleted.
	local kwok_dir stage
	kwok_dir=$(cd "$testbed/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
	for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready \
		pod/fast/pod-complete pod/fast/pod-delete; do
		cat "$kwok_dir/kustomize/stage/$stage.yaml"
		echo "---"
	done >"$bin/kwok-stages.yaml"
	build adapter "$testbed/adapter" "-s -w" sigs.k8s.io/prometheus-adapter/cmd/adapter
	build kubernetes "$testbed/kubernetes" "$(version_ldflags)" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

# The Prometheus Operator, and the Prometheus release its module requires (3.x is module v0.3XX.Y).
build_monitoring() {
	local po_version prometheus_module prometheus_version
	po_version=$(required github.com/prometheus-operator/prometheus-operator)
	prometheus_module=$(required github.com/prometheus/prometheus)
	build prometheus-operator "$testbed/prometheus-operator" "$(prometheus_stamp "$po_version")" \
		github.com/prometheus-operator/prometheus-operator/cmd/operator \
		github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader
	# Module v0.313.1 is Prometheus 3.13.1. Only the Kubernetes service discovery, the one a Prometheus
	# Operator's scrape config uses (Prometheus' own build tags; its default build has every SD's SDK).
	prometheus_version=$(echo "$prometheus_module" | sed 's/^0\.3\([0-9][0-9]\)\./3.\1./; s/^3\.0/3./')
	build_tags=remove_all_sd,enable_kubernetes_sd build prometheus "$testbed/prometheus-operator" \
		"$(prometheus_stamp "$prometheus_version")" github.com/prometheus/prometheus/cmd/prometheus
}

total=$SECONDS
case "${1:-all}" in
all) build_control_plane; build_monitoring ;;
control-plane) build_control_plane ;;
monitoring) build_monitoring ;;
*) echo "usage: testbed/build.sh [control-plane|monitoring]" >&2; exit 2 ;;
esac
echo "testbed: ${1:-all} binaries in $bin ($((SECONDS - total)) s)"
