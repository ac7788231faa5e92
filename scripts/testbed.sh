#!/usr/bin/env bash
# The test bed: a real Kubernetes control plane on 127.0.0.1, from the binaries testbed/build.sh makes.
#
#   scripts/testbed.sh up       start etcd, kube-apiserver, controller-manager, scheduler, the nodes and the
#                               monitoring chain: Prometheus and prometheus-adapter (the aggregated API
#                               custom.metrics.k8s.io), as pods under the Prometheus Operator on the real node,
#                               as processes beside the stand-in on kwok's; print the exports; a no-op when
#                               running
#   scripts/testbed.sh down     stop exactly the processes `up` started (pid files), never by name
#   scripts/testbed.sh status   each component: running or not, the API server's /readyz and, on the real
#                               node, Prometheus and the adapter's APIService
#   scripts/testbed.sh env      the exports for a shell: eval "$(scripts/testbed.sh env)"
#   scripts/testbed.sh stop C   stop one control-plane component C (etcd, kube-apiserver, kube-controller-manager,
#                               kube-scheduler): the fault tests' outage
#   scripts/testbed.sh start C  start C again exactly as `up` did (same flags, same data); for kube-apiserver,
#                               return once /readyz answers
#
# The API server writes an audit log, $TESTBED_DIR/audit.log (JSON lines, one per request), of every request
# the operator's ServiceAccount makes and of nothing else: what the fault tests count writes, retries and
# concurrency from, as the API server saw them.
#
# Everything lives under target/testbed (TESTBED_DIR): pki/, etcd data, logs/, pids/, kubeconfig.
#
# The nodes (TESTBED_NODES):
#   real  one real Node, testbed-node-0 (scripts/testbed-node.sh): containerd + runc run the images that
#         scripts/images.sh builds, the kubelet runs probes, preStop and termination, kube-proxy (nftables)
#         routes Services. The monitoring chain runs as pods on it (scripts/testbed-monitoring.sh): the
#         Prometheus Operator turns ServiceMonitors into Prometheus' scrape config and PrometheusRules
#         into its rules; prometheus-adapter serves custom.metrics.k8s.io through its Service. No
#         stand-in. Needs root (bridge, routes, nftables, cgroups).
#   kwok  three fake Nodes of kwok: pods turn Running and Ready but no container runs. For the workload's
#         pods the stand-in does what the kubelet, kube-proxy and the Prometheus Operator would: one real
#         `workload` process per running pod, a round-robin address per Service (TESTBED_STANDIN/state lists
#         them), and the scrape jobs, for a Prometheus and a prometheus-adapter that run here as processes.
#         For many pods at once (scripts/operator-bench.sh).
#
# Settings of `up`: TESTBED_NODES (real); TESTBED_HPA_SYNC (the HPA sync period, 5s); on kwok's nodes,
# TESTBED_STANDIN_SELECTOR, the label selector of the pods and Services the stand-in runs and proxies (app.kubernetes.io/name=workload; one
# that matches nothing, e.g. app.kubernetes.io/name=none as scripts/operator-bench.sh uses, runs no
# workload process: kwok alone makes the pods Running and Ready).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${TESTBED_DIR:-$root/target/testbed}
bin=${TESTBED_BIN:-$root/target/testbed/bin}
pki=$dir/pki logs=$dir/logs pids=$dir/pids
kubeconfig=$dir/kubeconfig
nodes=${TESTBED_NODES:-real}
# Only `up` chooses the nodes; `down`, `status` and `env` act on the test bed as it was started, even
# where an earlier `eval "$(scripts/testbed.sh env)"` left another TESTBED_NODES in the environment.
if [ "${1:-}" != up ] && [ -f "$dir/nodes" ]; then nodes=$(cat "$dir/nodes"); fi
case $nodes in real | kwok) ;; *) echo "testbed: error: TESTBED_NODES is real or kwok, not $nodes" >&2; exit 2 ;; esac
# The order `up` starts them in; `down` stops them in reverse (the node's pods first: stop_all).
control_plane=(etcd kube-apiserver kube-controller-manager kube-scheduler)
monitoring=(prometheus prometheus-adapter standin)
if [ "$nodes" = real ]; then
	components=("${control_plane[@]}" containerd kubelet kube-proxy)
else
	components=("${control_plane[@]}" kwok "${monitoring[@]}")
fi
# Fake nodes and how many pods each takes: enough for the operator benchmark's 500+ pods.
node_count=3 pods_per_node=400
# The HPA controller's sync period (the controller-manager's default is 15s).
hpa_sync=${TESTBED_HPA_SYNC:-5s}
# The pods and Services the stand-in runs a workload process and a proxy for.
standin_selector=${TESTBED_STANDIN_SELECTOR:-app.kubernetes.io/name=workload}

# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

# shellcheck source=scripts/testbed-node.sh
. "$root/scripts/testbed-node.sh"

# shellcheck source=scripts/testbed-monitoring.sh
. "$root/scripts/testbed-monitoring.sh"

# The executable of each component.
binary() {
	case $1 in
	# Debian's, for the kwok bed: not the test bed's own build (the real node's image), which `env` puts
	# on PATH under the same name.
	prometheus) type -ap prometheus | grep -v "^$bin/" | head -n1 ;;
	containerd) command -v containerd ;;
	prometheus-adapter) echo "$bin/adapter" ;;
	standin) echo "$release_dir/testbed-standin" ;;
	*) echo "$bin/$1" ;;
	esac
}

pid_of() { [ -f "$pids/$1.pid" ] && cat "$pids/$1.pid"; }
# Running, and still this component: not another process that got the recorded pid since.
# (A binary rebuilt while it ran shows as "<path> (deleted)".)
running() {
	local pid exe want
	pid=$(pid_of "$1") || return 1
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	# A component whose binary is not installed matches no process (an empty prefix would match any).
	want=$(readlink -f "$(binary "$1")" 2>/dev/null) && [ -n "$want" ] || return 1
	[[ $exe == "$want"* ]]
}

# A failed start: which step, and the end of that component's log.
fail_start() {
	local component=$1 why=$2
	echo "testbed: error: $component $why; last lines of $logs/$component.log:" >&2
	tail -n 30 "$logs/$component.log" >&2 || true
	stop_all
	exit 1
}

start() {
	local component=$1; shift
	# The exact command, for `start COMPONENT` after `stop COMPONENT`; a restart appends to the log.
	printf '%s\0' "$@" >"$pids/$component.argv"
	"$@" >>"$logs/$component.log" 2>&1 &
	local pid=$! shell
	echo "$pid" >"$pids/$component.pid"
	# Until the forked shell has exec'd the component, its pid's executable is still bash, and
	# `running` would call a component that is starting dead: wait for the exec (or the exit).
	shell=$(readlink "/proc/$$/exe")
	for _ in $(seq 100); do
		[[ $(readlink "/proc/$pid/exe" 2>/dev/null) != "$shell" ]] && break
		sleep 0.05
	done
	log "started $component (pid $pid)"
}

# wait_until COMPONENT SECONDS COMMAND...: until COMMAND succeeds, failing if the component dies.
wait_until() {
	local component=$1 seconds=$2; shift 2
	local deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		running "$component" || fail_start "$component" "exited during start"
		[ $SECONDS -lt $deadline ] || fail_start "$component" "was not ready within ${seconds}s"
		sleep 0.2
	done
}

# --- certificates --------------------------------------------------------------------------------

# new_ca NAME CN: a self-signed CA.
new_ca() {
	openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$2" \
		-keyout "$pki/$1.key" -out "$pki/$1.crt" 2>/dev/null
}

# new_cert CA NAME SUBJECT EXTENSIONS: a key and a certificate signed by CA.
new_cert() {
	local ca=$1 name=$2 subject=$3 extensions=$4
	openssl req -newkey rsa:2048 -nodes -subj "$subject" \
		-keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
		-days 365 -extfile <(printf '%s\n' "$extensions") -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr"
}

make_pki() {
	# Kept between runs while valid for another day.
	[ -f "$pki/.complete" ] && [ -f "$pki/kubelet.crt" ] && openssl x509 -checkend 86400 -noout -in "$pki/apiserver.crt" >/dev/null && return
	rm -rf "$pki" && mkdir -p "$pki"
	local client="basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
	new_ca ca testbed-ca
	new_cert ca apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$node_ip,IP:$kubernetes_service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
	new_cert ca admin "/O=system:masters/CN=testbed-admin" "$client"
	new_cert ca controller-manager "/CN=system:kube-controller-manager" "$client"
	new_cert ca scheduler "/CN=system:kube-scheduler" "$client"
	# kwok acts for the kubelets of its fake Nodes; it needs to write any Node and Pod status.
	new_cert ca kwok "/O=system:masters/CN=kwok" "$client"
	# Aggregated APIs (prometheus-adapter) trust requests that the API server proxies with this client.
	new_ca front-proxy-ca testbed-front-proxy-ca
	new_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" "$client"
	openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
	openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
	# prometheus-adapter, reached by the aggregator as the Service prometheus-adapter.monitoring.svc.
	new_cert ca adapter "/CN=prometheus-adapter" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:prometheus-adapter.monitoring.svc"
	node_pki
	touch "$pki/.complete"
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig for the API server with the client certificate CERT_NAME.
write_kubeconfig() {
	local file=$1 cert=$2
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: testbed
    cluster:
      server: https://$(cat "$dir/apiserver.address"):$(cat "$dir/apiserver.port")
      certificate-authority: $pki/ca.crt
users:
  - name: $cert
    user:
      client-certificate: $pki/$cert.crt
      client-key: $pki/$cert.key
contexts:
  - name: testbed
    context: {cluster: testbed, user: $cert, namespace: default}
current-context: testbed
EOF
}

# --- components ----------------------------------------------------------------------------------

kubectl_() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
apiserver_ready() { kubectl_ get --raw /readyz >/dev/null 2>&1; }

fake_nodes() {
	local i
	for i in $(seq 1 "$node_count"); do
		cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "$pods_per_node"}
  capacity: {cpu: "64", memory: 256Gi, pods: "$pods_per_node"}
---
EOF
	done
}

up() {
	local component
	for component in "${control_plane[@]}" kwok kubelet kube-proxy prometheus-adapter kubectl; do
		[ -x "$(binary "$component")" ] || die "$(binary "$component") is missing: run testbed/build.sh first"
	done
	local tool
	for tool in prometheus containerd runc umoci skopeo nft; do
		command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-test-deps.sh"
	done
	# The real node's monitoring images (scripts/images.sh).
	if [ "$nodes" = real ]; then
		for component in operator prometheus-config-reloader prometheus; do
			[ -x "$bin/$component" ] || die "$bin/$component is missing: run testbed/build.sh first"
		done
	fi
	[ -x "$cni_bin/bridge" ] && [ -x "$cni_bin/host-local" ] || die "CNI plugins are missing in $cni_bin: run scripts/install-test-deps.sh"
	[ "$nodes" = kwok ] || [ "$(id -u)" = 0 ] || die "a real node needs root (bridge, routes, nftables, cgroups); TESTBED_NODES=kwok does not"
	local all_running=true
	for component in "${components[@]}"; do running "$component" || all_running=false; done
	if $all_running && apiserver_ready && { [ "$nodes" = kwok ] || cluster_monitoring_ready; }; then
		log "already up"
		print_env
		return
	fi
	# A test bed of the other kind of nodes is stopped as what it is.
	if [ -f "$dir/nodes" ] && [ "$(cat "$dir/nodes")" != "$nodes" ]; then
		env -u TESTBED_NODES "$0" down
	fi
	stop_all
	rm -rf "$logs" "$pids"
	mkdir -p "$logs" "$pids"
	echo "$nodes" >"$dir/nodes"
	make_pki
	log "building the workload and the stand-in (release)"
	release_binary workload >/dev/null
	release_binary testbed-standin >/dev/null
	local start_time=$SECONDS

	# A real node's pods reach the API server through the `kubernetes` Service: it listens on the node
	# address, which the API server then publishes as that Service's endpoint.
	# Aggregated APIs (prometheus-adapter) are reached at their endpoints, pod IPs, on the real node:
	# this machine cannot open a connection to a ClusterIP (testbed-node.sh).
	local etcd_client etcd_peer apiserver address=127.0.0.1 reconciler=none aggregator_routing=false
	if [ "$nodes" = real ]; then
		node_network
		address=$node_ip reconciler=lease aggregator_routing=true
	fi
	etcd_client=$(free_port) etcd_peer=$(free_port) apiserver=$(free_port)
	echo "$apiserver" >"$dir/apiserver.port"
	echo "$address" >"$dir/apiserver.address"
	rm -rf "$dir/etcd" "$dir/audit.log"
	audit_policy >"$dir/audit-policy.yaml"
	start etcd "$bin/etcd" -data-dir "$dir/etcd" \
		-client-url "http://127.0.0.1:$etcd_client" -peer-url "http://127.0.0.1:$etcd_peer"
	wait_until etcd 30 curl -fsS "http://127.0.0.1:$etcd_client/health"

	start kube-apiserver "$bin/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$etcd_client" \
		--bind-address="$address" --advertise-address="$address" --secure-port="$apiserver" \
		--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
		--client-ca-file="$pki/ca.crt" \
		--service-account-issuer="https://$address:$apiserver" \
		--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
		--service-cluster-ip-range="$service_cidr" --endpoint-reconciler-type="$reconciler" \
		--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$pki/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement,PodSecurity \
		--allow-privileged=true \
		--requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$pki/front-proxy-client.crt" \
		--proxy-client-key-file="$pki/front-proxy-client.key" \
		--enable-aggregator-routing="$aggregator_routing" \
		--audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
		--audit-log-maxsize=0
	write_kubeconfig "$kubeconfig" admin
	wait_until kube-apiserver 90 apiserver_ready

	write_kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
	start kube-controller-manager "$bin/kube-controller-manager" \
		--kubeconfig="$dir/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
		--root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
		--use-service-account-credentials=true \
		--service-cluster-ip-range="$service_cidr" \
		--horizontal-pod-autoscaler-sync-period="$hpa_sync"
	write_kubeconfig "$dir/scheduler.kubeconfig" scheduler
	start kube-scheduler "$bin/kube-scheduler" \
		--kubeconfig="$dir/scheduler.kubeconfig" \
		--authentication-kubeconfig="$dir/scheduler.kubeconfig" \
		--authorization-kubeconfig="$dir/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=0 --leader-elect=false
	if [ "$nodes" = real ]; then
		start_node
	else
		start_kwok
	fi
	# Pods need a ServiceAccount: the controller-manager creates `default` in each namespace.
	wait_until kube-controller-manager 60 kubectl_ get serviceaccount default -n default
	echo "$hpa_sync" >"$dir/hpa-sync"
	if [ "$nodes" = real ]; then
		start_cluster_monitoring
	else
		start_monitoring
	fi
	for component in "${components[@]}"; do running "$component" || fail_start "$component" "exited"; done
	log "up in $((SECONDS - start_time)) s"
	print_env
}

# Every request of the operator's ServiceAccount, at Metadata level (who, what, when, the answer's code),
# each once it completes; nothing of anyone else's.
audit_policy() {
	cat <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:sandbox-system:sandbox-operator"]
- level: None
EOF
}

# restart COMPONENT: start a stopped control-plane component again with the flags `up` gave it.
restart() {
	local component=$1 argv
	[[ " ${control_plane[*]} " == *" $component "* ]] || die "start one of: ${control_plane[*]}"
	[ -f "$pids/$component.argv" ] || die "$component was never started: run scripts/testbed.sh up"
	running "$component" && die "$component is running"
	mapfile -d '' argv <"$pids/$component.argv"
	echo "--- started again at $(date -u +%FT%TZ)" >>"$logs/$component.log"
	start "$component" "${argv[@]}"
	local deadline=$((SECONDS + 90)) ready=(true) i
	case $component in
	kube-apiserver) ready=(apiserver_ready) ;;
	etcd) for i in "${!argv[@]}"; do
		[ "${argv[i]}" = -client-url ] && ready=(curl -fsS "${argv[i + 1]}/health")
	done ;;
	esac
	until "${ready[@]}" >/dev/null 2>&1; do
		running "$component" || { tail -n 30 "$logs/$component.log" >&2; die "$component exited"; }
		[ $SECONDS -lt $deadline ] || die "$component was not ready within 90 s"
		sleep 0.2
	done
	running "$component" || { tail -n 30 "$logs/$component.log" >&2; die "$component exited"; }
}

start_kwok() {
	write_kubeconfig "$dir/kwok.kubeconfig" kwok
	start kwok "$bin/kwok" --config="$bin/kwok-stages.yaml" \
		--kubeconfig="$dir/kwok.kubeconfig" --manage-all-nodes=true \
		--server-address=127.0.0.1:0 --cidr=10.244.0.1/16 --node-ip=127.0.0.1
	fake_nodes >"$dir/nodes.yaml"
	wait_until kube-apiserver 30 kubectl_ apply -f "$dir/nodes.yaml"
	wait_until kwok 60 kubectl_ wait --for=condition=Ready node --all --timeout=1s
}

# The APIService registering prometheus-adapter (on 127.0.0.1:PORT) as custom.metrics.k8s.io, the one
# version the chart registers. An ExternalName Service to localhost is how the aggregator reaches a
# process outside the cluster network.
adapter_registration() {
	local port=$1
	cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: prometheus-adapter, namespace: monitoring}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{name: https, port: $port}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.custom.metrics.k8s.io}
spec:
  group: custom.metrics.k8s.io
  version: v1beta1
  service: {name: prometheus-adapter, namespace: monitoring, port: $port}
  caBundle: $(base64 -w0 "$pki/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
}

adapter_available() {
	[ "$(kubectl_ get apiservice v1beta1.custom.metrics.k8s.io \
		-o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]
}

# On kwok's nodes: Prometheus and prometheus-adapter as processes here, with the config users install
# (deploy/monitoring/adapter-config.yaml), and the stand-in, which runs the pods as processes and writes
# Prometheus' scrape jobs for them.
start_monitoring() {
	local prometheus_port adapter_port
	prometheus_port=$(free_port) adapter_port=$(free_port)
	echo "$prometheus_port" >"$dir/prometheus.port"
	rm -rf "$dir/prometheus" "$dir/standin" && mkdir -p "$dir/prometheus" "$dir/standin"
	echo 'scrape_configs: []' >"$dir/prometheus/prometheus.yml"
	start prometheus "$(binary prometheus)" --config.file="$dir/prometheus/prometheus.yml" \
		--storage.tsdb.path="$dir/prometheus/data" --web.listen-address="127.0.0.1:$prometheus_port" \
		--web.enable-lifecycle
	wait_until prometheus 60 curl -fsS "http://127.0.0.1:$prometheus_port/-/ready"

	kubectl_ create namespace monitoring >/dev/null
	kubectl_ apply --server-side -f "$root/deploy/monitoring/adapter-config.yaml" >/dev/null
	kubectl_ get configmap -n monitoring prometheus-adapter-sandbox \
		-o jsonpath='{.data.config\.yaml}' >"$dir/adapter-config.yaml"
	# The relist interval is the one deploy/monitoring/prometheus-adapter-values.yaml ships.
	start prometheus-adapter "$(binary prometheus-adapter)" \
		--secure-port="$adapter_port" --bind-address=127.0.0.1 \
		--tls-cert-file="$pki/adapter.crt" --tls-private-key-file="$pki/adapter.key" \
		--lister-kubeconfig="$kubeconfig" --authentication-kubeconfig="$kubeconfig" \
		--authorization-kubeconfig="$kubeconfig" \
		--prometheus-url="http://127.0.0.1:$prometheus_port" \
		--metrics-relist-interval="$(adapter_value metricsRelistInterval)" --config="$dir/adapter-config.yaml"
	adapter_registration "$adapter_port" | kubectl_ apply --server-side -f - >/dev/null
	wait_until prometheus-adapter 60 adapter_available

	KUBECONFIG="$kubeconfig" start standin "$(binary standin)" --workload "$release_dir/workload" \
		--state-dir "$dir/standin" --prometheus-config "$dir/prometheus/prometheus.yml" \
		--prometheus-url "http://127.0.0.1:$prometheus_port" --pod-selector "$standin_selector"
	wait_until standin 30 test -s "$dir/standin/standin.addr"
}

stop() {
	local component=$1 pid
	pid=$(pid_of "$component") || return 0
	if running "$component"; then
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
		log "stopped $component (pid $pid)"
	fi
	rm -f "$pids/$component.pid"
}

stop_all() {
	local i
	if [ "$nodes" = real ]; then
		# Nothing may recreate the pods that the kubelet is about to remove.
		stop kube-controller-manager
		stop kube-scheduler
		stop_node_pods
	fi
	for ((i = ${#components[@]} - 1; i >= 0; i--)); do stop "${components[i]}"; done
	if [ "$nodes" = real ]; then
		unmount_node
		node_network_down
	fi
}

status() {
	local component all=0
	for component in "${components[@]}"; do
		if running "$component"; then
			echo "$component: running (pid $(pid_of "$component"))"
		else
			echo "$component: not running"; all=1
		fi
	done
	if running kube-apiserver && apiserver_ready; then echo "kube-apiserver /readyz: ok"; else
		echo "kube-apiserver /readyz: not ready"; all=1; fi
	if [ "$nodes" = real ]; then
		if running kube-apiserver && cluster_monitoring_ready; then
			echo "monitoring: Prometheus Available, custom.metrics.k8s.io Available"
		else
			echo "monitoring: not ready (kubectl get pods -n $monitoring_ns)"; all=1
		fi
	fi
	return $all
}

print_env() {
	echo "export KUBECONFIG=$kubeconfig"
	echo "export TESTBED_HPA_SYNC=$(cat "$dir/hpa-sync")"
	if [ "$nodes" = real ]; then
		local prometheus
		prometheus=$(cluster_prometheus_url) || die "Prometheus has no pod address: scripts/testbed.sh status"
		echo "export TESTBED_PROMETHEUS=$prometheus"
		# The stand-in's address of a kwok test bed before this one would mislead.
		echo "unset TESTBED_STANDIN"
	else
		echo "export TESTBED_PROMETHEUS=http://127.0.0.1:$(cat "$dir/prometheus.port")"
		echo "export TESTBED_STANDIN=http://$(cat "$dir/standin/standin.addr")"
	fi
	echo "export TESTBED_DIR=$dir"
	echo "export TESTBED_NODES=$nodes"
	[ "$nodes" = real ] && echo "export TESTBED_NODE_IP=$node_ip"
	# The test bed's kubectl matches the API server's version; the machine's may be older.
	echo "export PATH=$bin:\$PATH"
}

case "${1:-}" in
up) up ;;
down) stop_all ;;
status) status ;;
env) [ -f "$kubeconfig" ] || die "not up: run scripts/testbed.sh up"; print_env ;;
stop) [[ " ${control_plane[*]} " == *" ${2:-} "* ]] || die "stop one of: ${control_plane[*]}"; stop "$2" ;;
start) restart "${2:-}" ;;
*) echo "usage: scripts/testbed.sh up | down | status | env | stop COMPONENT | start COMPONENT" >&2; exit 2 ;;
esac
