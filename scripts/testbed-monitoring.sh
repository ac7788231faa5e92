# The real node's monitoring chain, sourced by scripts/testbed.sh: what a user installs with
# kube-prometheus-stack and prometheus-adapter and deploy/monitoring's values, as pods on the node from the
# images scripts/images.sh builds:
#
#   the Prometheus Operator   the CRDs and the Deployment of its Go module's example/ (the version of
#                             testbed/prometheus-operator), moved to the namespace `monitoring`
#   Prometheus                the release the operator's module requires (testbed/build.sh: 3.13.1,
#                             with only Kubernetes service discovery), run by the Prometheus Operator
#                             from a Prometheus resource as kube-prometheus-stack renders it with
#                             deploy/monitoring/kube-prometheus-stack-values.yaml: every ServiceMonitor in
#                             every namespace, PrometheusRules labelled release=kube-prometheus-stack, and
#                             the Service kube-prometheus-stack-prometheus:9090
#   prometheus-adapter        the chart's Deployment, Service, RBAC and APIService, with
#                             deploy/monitoring/adapter-config.yaml and prometheus-adapter-values.yaml's
#                             Prometheus URL and relist interval
#
# Two things a cluster has and the test bed does not, and what stands in for them:
#   cluster DNS       the Prometheus Service gets a fixed ClusterIP, and the adapter's pod a hostAliases
#                     entry that maps the values' host name to it, so the adapter still dials the URL
#                     the values file gives, through the Service
#   ClusterIPs from   the API server reaches aggregated APIs at their endpoints
#   the host          (--enable-aggregator-routing in testbed.sh), as on clusters whose control plane
#                     runs no kube-proxy

monitoring_ns=monitoring
prometheus_name=kube-prometheus-stack-prometheus
# In the band of the Service range that the API server keeps for fixed ClusterIPs (the first 256 addresses
# of a /16 are handed out automatically only once the rest is used); 10.96.0.1 is `kubernetes`.
prometheus_cluster_ip=10.96.0.90

# The Prometheus Operator module's directory in the Go module cache.
prometheus_operator_module() {
	(cd "$root/testbed/prometheus-operator" &&
		go mod download -json github.com/prometheus-operator/prometheus-operator |
		sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
}

# The module's Prometheus Operator Deployment, Service and RBAC, in $monitoring_ns instead of `default`.
prometheus_operator_manifests() {
	local module=$1 file
	for file in service-account cluster-role cluster-role-binding deployment service; do
		sed "s/^\(\s*namespace:\) default$/\1 $monitoring_ns/" \
			"$module/example/rbac/prometheus-operator/prometheus-operator-$file.yaml"
		echo "---"
	done
}

# kube-prometheus-stack's Prometheus with the values of deploy/monitoring/kube-prometheus-stack-values.yaml.
prometheus_manifests() {
	local version=$1
	cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: $prometheus_name, namespace: $monitoring_ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: $prometheus_name}
rules:
  - apiGroups: [""]
    resources: [nodes, nodes/metrics, services, endpoints, pods]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [ingresses]
    verbs: [get, list, watch]
  - nonResourceURLs: [/metrics, /metrics/cadvisor]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: $prometheus_name}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: $prometheus_name}
subjects: [{kind: ServiceAccount, name: $prometheus_name, namespace: $monitoring_ns}]
---
apiVersion: monitoring.coreos.com/v1
kind: Prometheus
metadata: {name: $prometheus_name, namespace: $monitoring_ns}
spec:
  image: quay.io/prometheus/prometheus:$version
  version: $version
  replicas: 1
  serviceAccountName: $prometheus_name
  portName: http-web
  externalUrl: http://$prometheus_name.$monitoring_ns:9090
  scrapeInterval: $(values_scrape_interval)
  # serviceMonitorSelectorNilUsesHelmValues: false with empty selectors: every ServiceMonitor.
  serviceMonitorSelector: {}
  serviceMonitorNamespaceSelector: {}
  # The chart's default (ruleSelectorNilUsesHelmValues: true): rules labelled with the release's name.
  ruleSelector: {matchLabels: {release: kube-prometheus-stack}}
  ruleNamespaceSelector: {}
  securityContext:
    runAsGroup: 2000
    runAsNonRoot: true
    runAsUser: 1000
    fsGroup: 2000
    seccompProfile: {type: RuntimeDefault}
---
apiVersion: v1
kind: Service
metadata: {name: $prometheus_name, namespace: $monitoring_ns}
spec:
  clusterIP: $prometheus_cluster_ip
  ports:
    - {name: http-web, port: 9090, targetPort: 9090}
    - {name: reloader-web, port: 8080, targetPort: reloader-web}
  selector:
    app.kubernetes.io/name: prometheus
    operator.prometheus.io/name: $prometheus_name
EOF
}

values_scrape_interval() {
	sed -n 's/^    scrapeInterval: *//p' "$root/deploy/monitoring/kube-prometheus-stack-values.yaml"
}

# A top-level `KEY:` of prometheus-adapter-values.yaml, or `PARENT.KEY` one level down.
adapter_value() {
	local file=$root/deploy/monitoring/prometheus-adapter-values.yaml
	case $1 in
	*.*) sed -n "/^${1%%.*}:/,/^[^ #]/ s/^  ${1#*.}: *//p" "$file" | tr -d '"' ;;
	*) sed -n "s/^$1: *//p" "$file" ;;
	esac
}

# The prometheus-adapter chart's objects with prometheus-adapter-values.yaml, its rules from the
# ConfigMap of deploy/monitoring/adapter-config.yaml (the chart's `rules.existing`).
prometheus_adapter_manifests() {
	local version=$1 url host
	url=$(adapter_value prometheus.url)
	host=${url#*://}
	url="$url:$(adapter_value prometheus.port)$(adapter_value prometheus.path)"
	local labels="{app.kubernetes.io/name: prometheus-adapter, app.kubernetes.io/instance: prometheus-adapter}"
	cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus-adapter, namespace: $monitoring_ns, labels: $labels}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: prometheus-adapter-resource-reader, labels: $labels}
rules:
  - apiGroups: [""]
    resources: [namespaces, pods, services, configmaps]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prometheus-adapter-resource-reader, labels: $labels}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-adapter-resource-reader}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: $monitoring_ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prometheus-adapter:system:auth-delegator, labels: $labels}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: $monitoring_ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: prometheus-adapter-auth-reader, namespace: kube-system, labels: $labels}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: prometheus-adapter, namespace: $monitoring_ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: prometheus-adapter-server-resources, labels: $labels}
rules:
  - apiGroups: [custom.metrics.k8s.io]
    resources: ["*"]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: prometheus-adapter-hpa-controller, labels: $labels}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-adapter-server-resources}
subjects: [{kind: ServiceAccount, name: horizontal-pod-autoscaler, namespace: kube-system}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: prometheus-adapter, namespace: $monitoring_ns, labels: $labels}
spec:
  replicas: 1
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}}
  selector: {matchLabels: $labels}
  template:
    metadata: {labels: $labels}
    spec:
      serviceAccountName: prometheus-adapter
      # The test bed has no cluster DNS: the values' host name, mapped to its Service's ClusterIP.
      hostAliases: [{ip: $prometheus_cluster_ip, hostnames: [$host]}]
      containers:
        - name: prometheus-adapter
          image: registry.k8s.io/prometheus-adapter/prometheus-adapter:$version
          imagePullPolicy: IfNotPresent
          args:
            - /adapter
            - --secure-port=6443
            - --cert-dir=/tmp/cert
            - --prometheus-url=$url
            - --metrics-relist-interval=$(adapter_value metricsRelistInterval)
            - --v=4
            - --config=/etc/adapter/config.yaml
          ports: [{containerPort: 6443, name: https}]
          livenessProbe:
            httpGet: {path: /healthz, port: https, scheme: HTTPS}
            initialDelaySeconds: 30
            timeoutSeconds: 5
          readinessProbe:
            httpGet: {path: /healthz, port: https, scheme: HTTPS}
            initialDelaySeconds: 30
            timeoutSeconds: 5
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            runAsUser: 10001
            seccompProfile: {type: RuntimeDefault}
          volumeMounts:
            - {mountPath: /etc/adapter/, name: config, readOnly: true}
            - {mountPath: /tmp, name: tmp}
      volumes:
        - name: config
          configMap: {name: prometheus-adapter-sandbox}
        - name: tmp
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata: {name: prometheus-adapter, namespace: $monitoring_ns, labels: $labels}
spec:
  ports: [{port: 443, protocol: TCP, targetPort: https}]
  selector: $labels
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.custom.metrics.k8s.io, labels: $labels}
spec:
  service: {name: prometheus-adapter, namespace: $monitoring_ns}
  group: custom.metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
}

# Everything above, then until Prometheus and the adapter serve: the operator's CRDs first (the
# Prometheus resource needs them), then the rest, as a user's `helm install` of the two charts would.
start_cluster_monitoring() {
	local module operator_version prometheus_version adapter_version
	module=$(prometheus_operator_module)
	[ -d "$module/example/prometheus-operator-crd" ] || die "no example/prometheus-operator-crd in $module"
	operator_version=$(testbed_module_version prometheus-operator github.com/prometheus-operator/prometheus-operator)
	adapter_version=$(testbed_module_version adapter sigs.k8s.io/prometheus-adapter)
	prometheus_version=$(prometheus_version)
	# The copies in third_party/ that the tests and the kwok bed apply must be this version's, byte for byte.
	local vendored
	for vendored in "$root"/third_party/prometheus-operator/*.yaml; do
		tail -n +3 "$vendored" | cmp -s - "$module/example/prometheus-operator-crd/$(basename "$vendored")" ||
			die "$vendored differs from the CRD of prometheus-operator $operator_version: replace it"
	done
	kubectl_ create namespace "$monitoring_ns" >/dev/null
	kubectl_ apply --server-side -f "$module/example/prometheus-operator-crd/" >/dev/null
	wait_until kube-apiserver 60 crds_established prometheuses servicemonitors prometheusrules
	prometheus_operator_manifests "$module" | kubectl_ apply --server-side -f - >/dev/null
	kubectl_ apply --server-side -f "$root/deploy/monitoring/adapter-config.yaml" >/dev/null
	{
		prometheus_manifests "$prometheus_version"
		echo "---"
		prometheus_adapter_manifests "$adapter_version"
	} | kubectl_ apply --server-side -f - >/dev/null
	log "monitoring: Prometheus Operator $operator_version, Prometheus $prometheus_version, prometheus-adapter $adapter_version"
	wait_until kubelet 180 kubectl_ rollout status -n "$monitoring_ns" deployment/prometheus-operator --timeout=1s
	# What docs/running-in-kubernetes.md waits for after `helm install kube-prometheus-stack`.
	wait_until kubelet 180 kubectl_ wait -n "$monitoring_ns" --for=condition=Available "prometheus/$prometheus_name" --timeout=1s
	wait_until kubelet 180 adapter_available
}

# crds_established PLURAL...: each monitoring.coreos.com CRD is Established (`kubectl wait` fails at once
# on a CRD too new to have conditions).
crds_established() {
	local plural
	for plural in "$@"; do
		[ "$(kubectl_ get crd "$plural.monitoring.coreos.com" \
			-o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ] || return 1
	done
}

# Prometheus' address from the host: its pod's IP (the host reaches pods, not ClusterIPs); fails while the
# pod has none.
cluster_prometheus_url() {
	local ip
	ip=$(kubectl_ get pod -n "$monitoring_ns" "prometheus-$prometheus_name-0" -o jsonpath='{.status.podIP}') &&
		[ -n "$ip" ] || return 1
	echo "http://$ip:9090"
}

# Prometheus and the adapter's APIService both Available.
cluster_monitoring_ready() {
	kubectl_ wait -n "$monitoring_ns" --for=condition=Available "prometheus/$prometheus_name" --timeout=1s \
		>/dev/null 2>&1 && adapter_available
}
