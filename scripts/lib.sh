# shellcheck shell=bash
# Helpers shared by the scripts: `. scripts/lib.sh` once the script is at the repository root.
# Messages carry the calling script's name ($script, by default its file name without `.sh`).

script=${script:-$(basename "$0" .sh)}

log() { echo "$script: $*" >&2; }
die() { log "error: $*"; exit 1; }

# A TCP port free on 127.0.0.1 at the time of asking.
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listening PORT PATH: until http://127.0.0.1:PORT/PATH answers 2xx (5 s at most).
wait_listening() {
	for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1$2" && return 0; sleep 0.05; done
	die "nothing answers on http://127.0.0.1:$1$2"
}

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail naming WHAT.
wait_for() {
	local seconds=$1 what=$2; shift 2
	local deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || die "no $what within ${seconds}s"
		sleep 1
	done
}

now() { date +%s.%N; }
# elapsed START END: seconds between two `now`s, to a tenth.
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# testbed_up [VAR=value...]: start the test bed (built first if need be) with those settings unless
# one is up, then take its environment. Sets started_testbed=true when it started one, so the
# caller's cleanup takes down only what it started.
started_testbed=false
testbed_up() {
	if ! scripts/testbed.sh status >/dev/null 2>&1; then
		testbed/build.sh >/dev/null
		log "starting the test bed"
		env "$@" scripts/testbed.sh up >/dev/null
		started_testbed=true
	fi
	eval "$(scripts/testbed.sh env)"
}

# api_get PATH: GET from the test bed's API server with its admin certificate (cheaper than kubectl
# when polled); after testbed_up.
api_get() {
	local server
	server=$(sed -n 's/^ *server: //p' "$KUBECONFIG" | head -1)
	curl -fsS --cacert "$TESTBED_DIR/pki/ca.crt" --cert "$TESTBED_DIR/pki/admin.crt" \
		--key "$TESTBED_DIR/pki/admin.key" "$server$1"
}

# The cargo subcommands the release builds use, at the versions the Dockerfiles install.
cargo_auditable_version=0.7.7
cargo_cyclonedx_version=0.5.9

# cargo_tool CRATE VERSION: install the cargo subcommand CRATE at VERSION from crates.io unless present
# (crates.io is one of the registries this project's machines reach; a machine without it needs them
# installed beforehand: `cargo install --locked cargo-auditable cargo-cyclonedx`).
cargo_tool() {
	cargo install --list | grep -qx "$1 v$2:" && return
	log "installing $1 $2 (cargo install)"
	cargo install --quiet --locked "$1" --version "$2" >&2
}

# release_binary PACKAGE: build PACKAGE's binary of the same name as the images ship it (release, linked
# statically: glibc with crt-static, as the musl target cannot be installed offline) and print its path.
# Every script that runs a release binary takes it from here, so the release dependencies are compiled once
# (one target, one set of flags) rather than once for the host and once for the images. One package per
# build, so feature unification gives each binary exactly the features its own build would have. The
# binaries are in $release_dir. Built with `cargo auditable`, so each carries its dependency list (a
# `.dep-v0` section that `cargo audit bin`, syft or trivy read back).
release_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
release_dir=$release_root/target/x86_64-unknown-linux-gnu/release
release_binary() {
	# `|| die`: callers take the path with $(...), where bash does not stop on a failed command, and an
	# older binary would be left to ship.
	cargo_tool cargo-auditable "$cargo_auditable_version" || die "installing cargo-auditable failed"
	(cd "$release_root" && RUSTFLAGS='-C target-feature=+crt-static' \
		cargo auditable build --release --locked --quiet -p "$1" --bin "$1" --target x86_64-unknown-linux-gnu) ||
		die "building $1 (release) failed"
	local binary=$release_dir/$1
	# A dynamically linked binary names its loader (PT_INTERP); a static one runs in an empty image.
	if readelf -lW "$binary" | grep -q INTERP; then die "$binary is dynamically linked"; fi
	echo "$binary"
}

# start_operator LOG LEASE_NAMESPACE NAME: the release operator as a process on this machine, its
# Lease and identity named NAME, logging to LOG; returns once it leads and is ready. Sets
# operator_pid, operator_admin (host:port of its admin server) and operator_metrics (of its
# metrics server).
start_operator() {
	local operator
	operator=$(release_binary operator)
	operator_admin=127.0.0.1:$(free_port)
	operator_metrics=127.0.0.1:$(free_port)
	"$operator" run --admin-addr "$operator_admin" --metrics-addr "$operator_metrics" --lease-name "$3" \
		--lease-namespace "$2" --identity "$3" >"$1" 2>&1 &
	operator_pid=$!
	local deadline=$((SECONDS + 60))
	until grep -q 'acquired leadership' "$1" && curl -fsS "http://$operator_admin/readyz" >/dev/null 2>&1; do
		kill -0 "$operator_pid" 2>/dev/null || die "the operator exited: $(tail -5 "$1")"
		[ $SECONDS -lt $deadline ] || die "the operator was not leading and ready within 60 s"
		sleep 0.2
	done
}

# metrics_reader_token: a token that may read an operator's /metrics, of the ServiceAccount
# sandbox-system/metrics-reader bound to the metrics-reader ClusterRole (applied from
# deploy/operator/rbac.yaml, where `operator rbac` defines it).
metrics_reader_token() {
	local role=sandbox-operator-metrics-reader
	kubectl get namespace sandbox-system >/dev/null 2>&1 || kubectl create namespace sandbox-system >/dev/null
	python3 -c 'import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == sys.argv[2]:
        print(yaml.safe_dump(doc))' "$release_root/deploy/operator/rbac.yaml" "$role" |
		kubectl apply --server-side -f - >/dev/null
	kubectl get serviceaccount metrics-reader -n sandbox-system >/dev/null 2>&1 ||
		kubectl create serviceaccount metrics-reader -n sandbox-system >/dev/null
	kubectl create clusterrolebinding metrics-reader --clusterrole="$role" \
		--serviceaccount=sandbox-system:metrics-reader --dry-run=client -o yaml |
		kubectl apply --server-side -f - >/dev/null
	kubectl create token metrics-reader -n sandbox-system --duration=2h
}

# operator_metrics_text ADDRESS TOKEN: an operator's /metrics at ADDRESS (host:port of its metrics server),
# over HTTPS with TOKEN. Its certificate is self-signed: the token is what it checks.
operator_metrics_text() {
	curl -fsSk --max-time 5 -H "Authorization: Bearer $2" "https://$1/metrics"
}

# require_tools TOOL...: fail naming the first missing one and where it comes from.
require_tools() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-test-deps.sh"
	done
}

# testbed_module_version DIR MODULE: the version of MODULE that the test bed's Go module testbed/DIR requires.
testbed_module_version() {
	sed -n "s|^\s*$2 \(v[^ ]*\).*|\1|p" "$release_root/testbed/$1/go.mod" | head -n1
}

# The version of the test bed's Prometheus (testbed/build.sh), as its image tag: v3.13.1.
prometheus_version() {
	local binary=${TESTBED_BIN:-$release_root/target/testbed/bin}/prometheus
	[ -x "$binary" ] || die "$binary is missing: run testbed/build.sh first"
	echo "v$("$binary" --version 2>&1 | sed -n 's/^prometheus, version \([0-9.]*\).*/\1/p')"
}
