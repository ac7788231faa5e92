#!/usr/bin/env bash
# Builds the test bed's binaries from Go modules into target/testbed/bin:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy (testbed/kubernetes)
#   etcd (testbed/etcd), kwok (testbed/kwok), prometheus-adapter (testbed/adapter)
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

# build MODULE_DIR LDFLAGS PACKAGE... ; skipped when the stamp of its inputs is unchanged.
build() {
	local module=$1 ldflags=$2; shift 2
	local name stamp_file stamp
	name=$(basename "$module")
	stamp_file="$bin/.stamp-$name"
	stamp=$( (cat "$0"; cd "$module" && cat go.mod go.sum $(find . -name '*.go' | sort)) | sha256sum | cut -d' ' -f1)
	if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
		echo "testbed/$name: up to date"
		return
	fi
	local start=$SECONDS
	echo "testbed/$name: building $*"
	(cd "$module" && go build -ldflags "$ldflags" -o "$bin/" "$@")
	echo "$stamp" >"$stamp_file"
	echo "testbed/$name: built in $((SECONDS - start)) s"
}

total=$SECONDS
build "$testbed/etcd" "-s -w" .
build "$testbed/kwok" "-s -w" sigs.k8s.io/kwok/cmd/kwok
# kwok does nothing without Stages. Its own defaults (what kwokctl installs), from the pinned module:
# Nodes initialize and heartbeat; Pods turn Running and Ready, and go away when deleted.
kwok_dir=$(cd "$testbed/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready \
	pod/fast/pod-complete pod/fast/pod-delete; do
	cat "$kwok_dir/kustomize/stage/$stage.yaml"
	echo "---"
done >"$bin/kwok-stages.yaml"
build "$testbed/adapter" "-s -w" sigs.k8s.io/prometheus-adapter/cmd/adapter
build "$testbed/kubernetes" "$(version_ldflags)" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
	k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
echo "testbed: binaries in $bin ($((SECONDS - total)) s)"
