#!/usr/bin/env bash
# Builds the project's container images without Docker, as OCI images laid out by umoci:
#
#   ghcr.io/performance-sandbox/workload:0.1.0   what Dockerfile.workload's final stage says
#   ghcr.io/performance-sandbox/operator:0.1.0   what Dockerfile.operator's final stage says
#   ghcr.io/performance-sandbox/loadgen:0.1.0    what Dockerfile.loadgen's final stage says
# Each of these three says what is in it: its binary carries its dependency list (cargo auditable), and the
# image its CycloneDX SBOM at /usr/share/sbom/NAME.cdx.json (cargo cyclonedx), as the Dockerfiles do.
#   registry.k8s.io/pause:3.10.1                 the sandbox image, built from the pause.c of the test
#                                                bed's k8s.io/kubernetes module, as build/pause does
# and, for `import`, the monitoring chain the real node runs (monitoring_images): the Prometheus Operator,
# its config reloader, Prometheus and prometheus-adapter.
#
#   scripts/images.sh build            binaries, OCI layout and one docker-archive per image in target/images
#   scripts/images.sh import SOCKET    build, add the monitoring images (they need testbed/build.sh's
#                                      binaries), then import them all into the containerd at SOCKET
#                                      (namespace k8s.io)
#
# The binaries are static (glibc with crt-static: the musl target cannot be installed offline) and need
# nothing from the image. The Dockerfiles' base, distroless/static-debian12:nonroot, cannot be pulled here:
# base_rootfs lays out the parts of it a process can notice (passwd and group with nonroot 65532, /tmp,
# /home/nonroot, CA certificates) and base_config its config (PATH, SSL_CERT_FILE, working directory).
# operator/tests/images.rs checks each image's config and files against its Dockerfile's final stage.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${IMAGES_DIR:-$root/target/images}
layout=$out/oci
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
pause_version=3.10.1
# What testbed/build.sh builds.
testbed_bin=${TESTBED_BIN:-$root/target/testbed/bin}

. "$root/scripts/lib.sh"

# The pause binary from the same Kubernetes release as the test bed's kubelet, with upstream's flags.
pause_binary() {
	local source
	source=$(cd "$root/testbed/kubernetes" && go mod download -json k8s.io/kubernetes |
		sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
	[ -f "$source/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in $source"
	mkdir -p "$out/bin"
	gcc -Os -Wall -Werror -static -DVERSION="v$pause_version-testbed" \
		-o "$out/bin/pause" "$source/build/pause/linux/pause.c"
	echo "$out/bin/pause"
}

# base_rootfs DIR: distroless/static's nonroot layout, the files a static binary may read.
base_rootfs() {
	local rootfs=$1
	mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/home/nonroot" "$rootfs/tmp"
	chmod 1777 "$rootfs/tmp"
	chown 65532:65532 "$rootfs/home/nonroot"
	cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
	cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
	cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
}

# busybox_rootfs DIR: what the Prometheus projects' base (quay.io/prometheus/busybox) gives their static
# binaries: passwd and group with nobody 65534, /tmp, CA certificates. Not busybox's shell and tools,
# which nothing the test bed runs calls.
busybox_rootfs() {
	local rootfs=$1
	mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
	chmod 1777 "$rootfs/tmp"
	printf '%s\n' root:x:0:0:root:/root:/bin/sh nobody:x:65534:65534:nobody:/home:/bin/false >"$rootfs/etc/passwd"
	printf '%s\n' root:x:0: nobody:x:65534: >"$rootfs/etc/group"
	cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
}

# image NAME:TAG BASE FILE... -- UMOCI_CONFIG_ARGS...: a one-layer image in $layout whose rootfs is the base
# (distroless, busybox or scratch) plus each FILE at /, or at DEST for FILE=DEST, with the config that the
# arguments after -- set.
image() {
	local ref=$1 base=$2; shift 2
	local files=()
	while [ "$1" != -- ]; do files+=("$1"); shift; done
	shift
	local tag=${ref//[\/:]/_} bundle
	bundle=$(mktemp -d "$out/bundle.XXXXXX")
	umoci new --image "$layout:$tag"
	umoci unpack --image "$layout:$tag" "$bundle/b" >/dev/null
	case $base in
	distroless) base_rootfs "$bundle/b/rootfs" ;;
	busybox) busybox_rootfs "$bundle/b/rootfs" ;;
	esac
	local file mode
	for file in "${files[@]}"; do
		if [[ $file == *=* ]]; then
			# Binaries are executable, documents (the SBOMs) only readable.
			mode=0755; [[ $file == *.json ]] && mode=0644
			install -D -m "$mode" "${file%%=*}" "$bundle/b/rootfs/${file#*=}"
		else
			install -m 0755 "$file" "$bundle/b/rootfs/"
		fi
	done
	umoci repack --image "$layout:$tag" "$bundle/b"
	umoci config --image "$layout:$tag" "$@" \
		--author=performance-sandbox --architecture=amd64 --os=linux
	rm -rf "$bundle"
	rm -f "$out/$tag.tar"
	skopeo copy --quiet "oci:$layout:$tag" "docker-archive:$out/$tag.tar:$ref"
	log "$ref: $(du -h "$out/$tag.tar" | cut -f1) ($out/$tag.tar)"
}

# The config distroless/static-debian12:nonroot gives an image that does not set these itself.
base_config=(--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	--config.env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --config.workingdir=/home/nonroot)

# sbom PACKAGE: PACKAGE's CycloneDX SBOM (JSON, spec 1.5) of its runtime dependencies for the images'
# target, resolved from Cargo.lock; prints its path. `cargo cyclonedx` writes one next to every
# workspace member's Cargo.toml, so they are moved out of the tree at once.
sbom() {
	local member
	# No SBOM of an earlier run may stand in for this one (`|| die`: bash does not stop in $(...)).
	rm -f "$out/sbom/$1.cdx.json"
	(cd "$root" && cargo cyclonedx --quiet --format json --spec-version 1.5 --no-build-deps \
		--target x86_64-unknown-linux-gnu) || die "cargo cyclonedx failed"
	mkdir -p "$out/sbom"
	for member in "$root"/*/*.cdx.json "$root"/*/*/*.cdx.json; do
		[ -f "$member" ] && mv "$member" "$out/sbom/"
	done
	[ -f "$out/sbom/$1.cdx.json" ] || die "cargo cyclonedx wrote no SBOM for $1"
	echo "$out/sbom/$1.cdx.json"
}

build() {
	command -v umoci >/dev/null && command -v skopeo >/dev/null ||
		die "umoci and skopeo are missing: run scripts/install-test-deps.sh"
	local start=$SECONDS workload operator loadgen workload_sbom operator_sbom loadgen_sbom pause
	log "building static binaries (crt-static) and pause"
	workload=$(release_binary workload)
	operator=$(release_binary operator)
	loadgen=$(release_binary loadgen)
	cargo_tool cargo-cyclonedx "$cargo_cyclonedx_version" || die "installing cargo-cyclonedx failed"
	workload_sbom=$(sbom workload)
	operator_sbom=$(sbom operator)
	loadgen_sbom=$(sbom loadgen)
	pause=$(pause_binary)
	rm -rf "$layout" && mkdir -p "$out"
	umoci init --layout "$layout"
	# Each config below is what the Dockerfile's final stage says; the e2e test images.rs compares them.
	image "ghcr.io/performance-sandbox/workload:$version" distroless "$workload" \
		"$workload_sbom=/usr/share/sbom/workload.cdx.json" -- "${base_config[@]}" \
		--config.user=65532:65532 --config.exposedports=3000/tcp \
		--config.env=HOST=0.0.0.0 --config.env=PORT=3000 --config.entrypoint=/workload
	image "ghcr.io/performance-sandbox/operator:$version" distroless "$operator" \
		"$operator_sbom=/usr/share/sbom/operator.cdx.json" -- "${base_config[@]}" \
		--config.user=65532:65532 --config.exposedports=8080/tcp --config.exposedports=8443/tcp \
		--config.env=ADMIN_ADDR=0.0.0.0:8080 --config.entrypoint=/operator --config.cmd=run
	image "ghcr.io/performance-sandbox/loadgen:$version" distroless "$loadgen" \
		"$loadgen_sbom=/usr/share/sbom/loadgen.cdx.json" -- "${base_config[@]}" \
		--config.user=65532:65532 --config.entrypoint=/loadgen
	image "registry.k8s.io/pause:$pause_version" scratch "$pause" -- \
		--config.user=65535:65535 --config.entrypoint=/pause
	log "built in $((SECONDS - start)) s"
}

# The monitoring chain of kube-prometheus-stack and prometheus-adapter, for the real node: the Prometheus
# Operator and its config reloader (testbed/prometheus-operator), prometheus-adapter (testbed/adapter),
# Prometheus (testbed/prometheus-operator: the release the operator's module requires), each at the
# reference and with the config of the upstream image of that version. All are static Go binaries.
monitoring_images() {
	local operator_version adapter_version binary
	operator_version=$(testbed_module_version prometheus-operator github.com/prometheus-operator/prometheus-operator)
	adapter_version=$(testbed_module_version adapter sigs.k8s.io/prometheus-adapter)
	for binary in operator prometheus-config-reloader prometheus adapter; do
		[ -x "$testbed_bin/$binary" ] || die "$testbed_bin/$binary is missing: run testbed/build.sh first"
	done
	image "quay.io/prometheus-operator/prometheus-operator:$operator_version" busybox \
		"$testbed_bin/operator=/bin/operator" -- \
		--config.user=65534 --config.exposedports=8080/tcp --config.entrypoint=/bin/operator
	image "quay.io/prometheus-operator/prometheus-config-reloader:$operator_version" busybox \
		"$testbed_bin/prometheus-config-reloader=/bin/prometheus-config-reloader" -- \
		--config.user=65534 --config.entrypoint=/bin/prometheus-config-reloader
	image "quay.io/prometheus/prometheus:$(prometheus_version)" busybox \
		"$testbed_bin/prometheus=/bin/prometheus" -- \
		--config.user=65534 --config.exposedports=9090/tcp --config.workingdir=/prometheus \
		--config.volume=/prometheus --config.entrypoint=/bin/prometheus
	image "registry.k8s.io/prometheus-adapter/prometheus-adapter:$adapter_version" distroless \
		"$testbed_bin/adapter" -- "${base_config[@]}" --config.user=65534 --config.entrypoint=/adapter
}

import() {
	local socket=$1 archive
	for archive in "$out"/*.tar; do
		ctr --address "$socket" -n k8s.io images import "$archive" >/dev/null
	done
	log "imported into $socket: $(ctr --address "$socket" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

case "${1:-}" in
build) build ;;
import) [ -S "${2:-}" ] || die "usage: scripts/images.sh import CONTAINERD_SOCKET"; build; monitoring_images; import "$2" ;;
*) echo "usage: scripts/images.sh build | import CONTAINERD_SOCKET" >&2; exit 2 ;;
esac
