# The test bed's real node, sourced by scripts/testbed.sh: containerd + runc, a kubelet and kube-proxy from
# the control plane's own Kubernetes release, and pod networking by the CNI bridge plugin.
#
# Addresses (all on this machine; nothing is routed out for them):
#   tb-cni0       a bridge that testbed.sh creates, 10.88.0.1/24: the node's address, where the API server
#                 listens, and the pods' gateway; pods get 10.88.0.2-254 from host-local
#   10.96.0.0/16  the Service range, blackholed: kube-proxy's DNAT (nftables mode) sends Service traffic from
#                 pods and to NodePorts on to pods, and whatever it does not translate is dropped here
#   10.88.0.0/16  the pod range around the bridge's /24, blackholed
# Nothing is forwarded from the bridge to another interface (nftables table testbed-node-guard), and CNI
# does not masquerade. The host itself cannot open a connection to a ClusterIP (a blackhole route refuses
# it before kube-proxy's DNAT could apply); it reaches Services through their NodePort on the node
# address, as from outside a cluster, and pods through their pod IP.

node_name=testbed-node-0
node_bridge=tb-cni0
node_ip=10.88.0.1
pod_cidr=10.88.0.0/24
service_cidr=10.96.0.0/16
kubernetes_service_ip=10.96.0.1
# Debian's containernetworking-plugins.
cni_bin=/usr/lib/cni
# The Service range, the rest of the pod range, and kwok's fake pod addresses (its --cidr in testbed.sh).
blackholes=(10.96.0.0/16 10.88.0.0/16 10.244.0.0/16)
containerd_socket=$dir/containerd/containerd.sock
# The table that keeps pods from being forwarded off the machine.
guard_table=testbed-node-guard
# Our own kube-proxy's nftables tables, removed on `down`.
kube_proxy_tables=("ip kube-proxy" "ip6 kube-proxy")

# The bridge with the node address, and the blackholes, before any Service or pod address exists.
node_network() {
	ip link show "$node_bridge" >/dev/null 2>&1 || ip link add "$node_bridge" type bridge
	ip addr replace "$node_ip/24" dev "$node_bridge"
	ip link set "$node_bridge" up
	local range
	for range in "${blackholes[@]}"; do ip route replace blackhole "$range"; done
	# Pods are never forwarded off the bridge, whatever the machine's ip_forward says.
	nft -f - <<EOF
table inet $guard_table
delete table inet $guard_table
table inet $guard_table {
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "$node_bridge" oifname != "$node_bridge" drop
	}
}
EOF
	# A safety net that does not hold must stop the test bed before anything is routed. `ip route get`
	# sends nothing; for a blackholed address it fails with "Invalid argument", as connect() would.
	local route
	route=$(ip route get 10.96.255.254 2>&1) && die "10.96.255.254 would be routed: $route"
	[[ $route == *"Invalid argument"* ]] || die "10.96.255.254 is not blackholed: $route"
}

node_network_down() {
	local range
	for range in "${blackholes[@]}"; do ip route del blackhole "$range" 2>/dev/null || true; done
	ip link del "$node_bridge" 2>/dev/null || true
	for range in "${kube_proxy_tables[@]}"; do nft delete table $range 2>/dev/null || true; done
	nft delete table inet "$guard_table" 2>/dev/null || true
	# The kubelet's own chains (its iptables canaries and KUBE-FIREWALL), by name, in the shared tables.
	local tool table
	for tool in iptables ip6tables; do
		command -v "$tool" >/dev/null || continue
		"$tool" -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
		"$tool" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
		"$tool" -F KUBE-FIREWALL 2>/dev/null && "$tool" -X KUBE-FIREWALL 2>/dev/null || true
		for table in mangle nat filter; do "$tool" -t "$table" -X KUBE-KUBELET-CANARY 2>/dev/null || true; done
		"$tool" -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
	done
}

node_pki() {
	local client="basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
	# The Node authorizer and NodeRestriction know a kubelet by this name and group.
	new_cert ca kubelet-client "/O=system:nodes/CN=system:node:$node_name" "$client"
	new_cert ca kubelet "/CN=$node_name" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,DNS:$node_name"
	# Bound to the node-proxier role by the API server's bootstrap RBAC.
	new_cert ca kube-proxy "/CN=system:kube-proxy" "$client"
	# The API server's client for logs, exec and port-forward on the kubelet.
	new_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
}

containerd_config() {
	cat <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$containerd_socket"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  # Without CAP_SYS_RESOURCE, runc cannot lower oom_score_adj below ours: every sandbox would fail.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$dir/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$dir/cni/net.d"
EOF
}

cni_config() {
	cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "testbed",
  "plugins": [
    {
      "type": "bridge", "bridge": "$node_bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

kubelet_config() {
	cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $2
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$containerd_socket
podLogsDir: $dir/kubelet/pod-logs
volumePluginDir: $dir/kubelet/volume-plugins
# This machine: cgroup v1 without systemd, swap allowed.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# Images cannot be pulled again here: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {}
maxPods: 60
# Faster than the defaults so that the tests see status changes quickly; still within what a cluster uses.
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
EOF
}

kube_proxy_config() {
	cat <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $node_name
# iptables mode, through Debian's nf_tables-backed iptables, did not translate here; nftables does.
mode: nftables
clusterCIDR: $pod_cidr
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:$1
metricsBindAddress: 127.0.0.1:$2
nodePortAddresses: [primary]
# Leave the machine's conntrack limits and timeouts as they are.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

kubelet_ready() {
	[ "$(kubectl_ get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# containerd, the images, the kubelet (registers the Node) and kube-proxy.
start_node() {
	mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/kubelet"
	rm -rf "$dir/cni/ipam"
	containerd_config >"$dir/containerd/config.toml"
	cni_config >"$dir/cni/net.d/10-testbed.conflist"
	start containerd "$(binary containerd)" --config "$dir/containerd/config.toml"
	wait_until containerd 30 ctr --address "$containerd_socket" version
	"$root/scripts/images.sh" import "$containerd_socket" >&2

	local kubelet_port kubelet_healthz proxy_healthz proxy_metrics
	kubelet_port=$(free_port) kubelet_healthz=$(free_port) proxy_healthz=$(free_port) proxy_metrics=$(free_port)
	kubelet_config "$kubelet_port" "$kubelet_healthz" >"$dir/kubelet/config.yaml"
	write_kubeconfig "$dir/kubelet.kubeconfig" kubelet-client
	start kubelet "$(binary kubelet)" --config="$dir/kubelet/config.yaml" \
		--kubeconfig="$dir/kubelet.kubeconfig" --root-dir="$dir/kubelet/root" \
		--hostname-override="$node_name" --node-ip="$node_ip" \
		--node-labels=performance-sandbox.dev/node=real
	wait_until kubelet 90 kubelet_ready

	kube_proxy_config "$proxy_healthz" "$proxy_metrics" >"$dir/kube-proxy.yaml"
	write_kubeconfig "$dir/kube-proxy.kubeconfig" kube-proxy
	start kube-proxy "$(binary kube-proxy)" --config="$dir/kube-proxy.yaml"
	wait_until kube-proxy 60 curl -fsS "http://127.0.0.1:$proxy_healthz/healthz"
}

# Before containerd stops: remove the node's pods through the kubelet (so CNI releases their addresses and
# runc their cgroups), then end whatever is left of them: their shims are ours, found by our socket.
stop_node_pods() {
	if running kubelet && running kube-apiserver; then
		kubectl_ delete pods --all-namespaces --field-selector "spec.nodeName=$node_name" \
			--grace-period=0 --force --wait=false >/dev/null 2>&1 || true
		local deadline=$((SECONDS + 30))
		while [ $SECONDS -lt $deadline ] &&
			[ -n "$(ctr --address "$containerd_socket" -n k8s.io tasks ls -q 2>/dev/null)" ]; do sleep 0.5; done
	fi
	local pid
	for pid in $(pgrep -f "containerd-shim.*-address $containerd_socket( |\$)" || true); do
		kill -9 "$pid" 2>/dev/null || true
	done
}

# Mounts that the kubelet, containerd and CNI left under the test bed's directory, deepest first.
unmount_node() {
	local mount
	awk -v dir="$dir/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mount; do
		umount -l "$mount" 2>/dev/null || true
	done
}
