#!/usr/bin/env bash
# The seed's autoscaling loop on the test bed, timed: load fills the queue, Prometheus scrapes
# queue_ratio, prometheus-adapter serves it, the HPA scales the Deployment out, the new pods take load;
# load ends, the HPA scales back in. Prints where the time goes and draws the run as a PNG.
#
#   scripts/autoscale-bench.sh                   # -c 6 for 60 s, as the seed; ~2.5 minutes
#   CONNECTIONS=20 CONCURRENCY=2 scripts/autoscale-bench.sh
#   METRIC=Occupancy scripts/autoscale-bench.sh  # the HPA on queue_occupancy (spec.autoscaling.metric)
#
# Settings: the ServiceMonitor interval (INTERVAL, 5s), the scale-down window (WINDOW, 30 s) and when pods
# close kept-alive connections (CONNECTION_CLOSE, WhenQueued) go into the SandboxService; the HPA sync period is the test bed's (TESTBED_HPA_SYNC=15s scripts/testbed.sh up for
# a cluster's default; 5s otherwise). Starts the test bed if it is not up (and stops it again).
# On the real node (TESTBED_NODES=real) the load goes to the Service's NodePort through kube-proxy, the
# pods are containers scraped at their pod IPs, and the operator is the in-cluster one that
# `kubectl apply -k crds` and `-k deploy/operator` install; on kwok's nodes, the load goes through the stand-in's
# per-request proxy and the operator runs here as the test bed's admin.
# Output in target/autoscale-bench (OUT): samples.tsv, pods.tsv, autocannon.json, run.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/lib.sh

CONNECTIONS=${CONNECTIONS:-6} CONCURRENCY=${CONCURRENCY:-1} DURATION=${DURATION:-60}
INTERVAL=${INTERVAL:-5s} WINDOW=${WINDOW:-30} CONNECTION_CLOSE=${CONNECTION_CLOSE:-WhenQueued}
METRIC=${METRIC:-QueueRatio}
case $METRIC in
QueueRatio) gauge=queue_ratio ;;
Occupancy) gauge=queue_occupancy ;;
*) echo "autoscale-bench: METRIC is QueueRatio or Occupancy, not '$METRIC'" >&2; exit 2 ;;
esac
ns=${NAMESPACE:-autoscale-bench} name=performance-sandbox
out=${OUT:-$root/target/autoscale-bench}
rm -rf "$out" && mkdir -p "$out/counts" "$out/latency"

require_tools autocannon gnuplot jq curl

operator_pid="" sampler_pid=""
cleanup() {
	[ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
	[ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null
	# The demo's run in `default` stays for the user to look at.
	[ "$ns" = default ] || kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	if $started_testbed; then scripts/testbed.sh down; fi
	wait 2>/dev/null || true
}
trap cleanup EXIT

testbed_up

kubectl apply --server-side -f third_party/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml >/dev/null
if [ "$TESTBED_NODES" = real ]; then
	kubectl apply --server-side -k crds >/dev/null
	kubectl apply --server-side -k deploy/operator >/dev/null
	kubectl rollout status deployment/sandbox-operator -n sandbox-system --timeout=180s >/dev/null
	# The operator's metrics server at its pod IP (pod addresses are reachable from the node).
	operator_metrics=$(kubectl get pod -n sandbox-system -l app.kubernetes.io/name=sandbox-operator \
		-o jsonpath='{.items[0].status.podIP}'):8443
else
	kubectl apply --server-side -f crds/sandboxservice.yaml >/dev/null
	kubectl get namespace sandbox-system >/dev/null 2>&1 || kubectl create namespace sandbox-system >/dev/null
	start_operator "$out/operator.log" sandbox-system autoscale-bench
	# start_operator set operator_metrics.
fi
metrics_token=$(metrics_reader_token) && [ -n "$metrics_token" ] || die "no token to read the operator's metrics with"
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
if [ "$ns" != default ]; then
	kubectl delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null
	kubectl create namespace "$ns" >/dev/null
fi

# The seed's sample, with the monitoring interval and the scale-down window of this run.
sed -e "s/namespace: default/namespace: $ns/" \
	-e "s/concurrency: 1/concurrency: $CONCURRENCY\n  connectionClose: $CONNECTION_CLOSE/" \
	-e "s/maxReplicas: 10/maxReplicas: 10\n    metric: $METRIC\n    scaleDownStabilizationSeconds: $WINDOW/" \
	-e "s/^  monitoring:/  monitoring:\n    interval: $INTERVAL/" deploy/examples/seed.yaml >"$out/cr.yaml"
kubectl apply -f "$out/cr.yaml" >/dev/null
kubectl wait -n "$ns" --for=condition=Ready "sbx/$name" --timeout=120s >/dev/null
echo "waiting until the HPA reads $gauge (the adapter lists new series every $(sed -n 's/^metricsRelistInterval: *//p' deploy/monitoring/prometheus-adapter-values.yaml))" >&2
hpa_reads_metric() { kubectl get hpa -n "$ns" "$name" -o jsonpath='{.status.conditions[?(@.type=="ScalingActive")].status}' | grep -qx True; }
wait_for 180 "the HPA reads $gauge" hpa_reads_metric
target=$(kubectl get hpa -n "$ns" "$name" -o jsonpath='{.spec.metrics[0].pods.target.averageValue}')
if [ "$TESTBED_NODES" = real ]; then
	service=$TESTBED_NODE_IP:$(kubectl get service -n "$ns" "$name" -o jsonpath='{.spec.ports[0].nodePort}')
else
	service=$(curl -fsS "$TESTBED_STANDIN/state" | jq -r --arg ns "$ns" '.services[] | select(.namespace == $ns) | .address')
fi

# The running, not terminating pods as "NAME ADDRESS" lines, ready endpoints, and the Service's answers so
# far as "200s 503s no-endpoint-503s". Behind kube-proxy the answers are the pods' own counters (kept after
# a pod leaves, in counts/), and a connection without a ready endpoint is refused, not answered ("-").
if [ "$TESTBED_NODES" = real ]; then
	pods() {
		api_get "/api/v1/namespaces/$ns/pods?labelSelector=app.kubernetes.io/instance=$name" | jq -r '.items[]
			| select(.metadata.deletionTimestamp == null and .status.podIP != null)
			| "\(.metadata.name) \(.status.podIP):\(.spec.containers[0].ports[0].containerPort)"'
	}
	ready_endpoints() {
		api_get "/apis/discovery.k8s.io/v1/namespaces/$ns/endpointslices?labelSelector=kubernetes.io/service-name=$name" |
			jq '[.items[].endpoints[]? | select(.conditions.ready)] | length'
	}
	answers() { cat "$out"/counts/* 2>/dev/null | awk '{ ok += $1; no += $2 } END { printf "%d\t%d\t-", ok, no }'; }
else
	pods() { curl -fsS "$TESTBED_STANDIN/state" | jq -r --arg ns "$ns" '.pods[] | select(.namespace == $ns and (.terminating | not)) | "\(.name) \(.address)"'; }
	ready_endpoints() { curl -fsS "$TESTBED_STANDIN/state" | jq --arg ns "$ns" '[.services[] | select(.namespace == $ns) | .endpoints[]] | length'; }
	answers() {
		curl -fsS "$TESTBED_STANDIN/state" | jq -r --arg ns "$ns" '.services[] | select(.namespace == $ns) | .responses
			| "\(."200" // 0)\t\(."503" // 0)\t\(.no_endpoints // 0)"'
	}
fi

# One line per half second: time, Deployment replicas, ready endpoints, HPA desired replicas, the HPA's
# average of its metric, the Service's answers so far (200, 503, no ready endpoint), and the highest value
# of that metric the custom metrics API serves for the namespace's pods (what the HPA reads next). Per pod:
# its queue_ratio (backpressure), its counters and the gauge the HPA scales on.
# Every 5 s a line on the terminal says the same.
sample() {
	# A pod can go between listing and scraping it: a failed read skips it, it does not stop the sampler.
	set +e +o pipefail
	local t hpa deployment line ratios served shown=0
	while true; do
		t=$(now)
		ratios=""
		while read -r pod address; do
			pod_metrics=$(curl -fsS --max-time 1 "http://$address/metrics" 2>/dev/null) || continue
			ratio=$(sed -n 's/^queue_ratio //p' <<<"$pod_metrics")
			scaled_on=$(sed -n "s/^$gauge //p" <<<"$pod_metrics")
			completed=$(sed -n 's/^expensive_operations_completed_total //p' <<<"$pod_metrics")
			in_flight=$(sed -n 's/^queue_in_flight_tasks //p' <<<"$pod_metrics")
			rejected=$(sed -n 's/^expensive_operations_rejected_total{reason="circuit_open"} //p' <<<"$pod_metrics")
			printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$pod" "${ratio:-nan}" "${completed:-0}" "${in_flight:-0}" \
				"${scaled_on:-nan}" >>"$out/pods.tsv"
			echo "${completed:-0} ${rejected:-0}" >"$out/counts/$pod"
			# The pod's own time for its 200s (queue + operation), as "BUCKET COUNT" lines: client-side
			# latency is not usable once pods close connections (autocannon mis-times reconnects).
			sed -nE 's/^http_request_duration_seconds_bucket\{.*route="\/expensive-op",status_code="200",le="([^"]+)"\} ([0-9]+)$/\1 \2/p' \
				<<<"$pod_metrics" >"$out/latency/$pod"
			ratios+=" ${pod##*-}=${scaled_on:-?}"
		done < <(pods)
		hpa=$(api_get "/apis/autoscaling/v2/namespaces/$ns/horizontalpodautoscalers/$name")
		deployment=$(api_get "/apis/apps/v1/namespaces/$ns/deployments/$name")
		served=$(api_get "/apis/custom.metrics.k8s.io/v1beta1/namespaces/$ns/pods/*/$gauge" 2>/dev/null |
			jq -r '[.items[].value | if endswith("m") then (.[:-1] | tonumber) / 1000 else tonumber end] | max // "-"')
		line=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s' "$t" \
			"$(jq '.spec.replicas' <<<"$deployment")" "$(ready_endpoints)" \
			"$(jq '.status.desiredReplicas // 0' <<<"$hpa")" \
			"$(jq -r '.status.currentMetrics[0].pods.current.averageValue // "-"' <<<"$hpa")" "$(answers)" \
			"${served:--}")
		echo "$line" >>"$out/samples.tsv"
		if [ $((SECONDS - shown)) -ge 5 ]; then
			shown=$SECONDS
			awk -F'\t' -v s="$(cat "$out/load-start" 2>/dev/null || echo "$t")" -v g="$gauge" -v pods="$ratios" '{ printf "  %5.0fs  replicas %s, ready %s, HPA wants %s (average %s %s)  200s %s  503s %s  by pod:%s\n", $1 - s, $2, $3, $4, g, $5, $6, $7, pods }' <<<"$line" >&2
		fi
		sleep 0.5
	done
}
sample &
sampler_pid=$!
sleep 3

echo "load: autocannon -t 60 -c $CONNECTIONS -d $DURATION http://$service/expensive-op" >&2
load_start=$(now)
echo "$load_start" >"$out/load-start"
reconciles() { operator_metrics_text "$operator_metrics" "$metrics_token" | sed -n 's/^sandbox_operator_reconciliations_total //p'; }
reconciles_before=$(reconciles)
# The CR's status writes (server-side apply patches of its status subresource), one CR in this run.
status_writes() {
	operator_metrics_text "$operator_metrics" "$metrics_token" |
		sed -n 's/^sandbox_operator_api_requests_total{resource="sandboxservices\/status",verb="patch"} //p' | awk '{ n += $1 } END { print n + 0 }'
}
status_writes_before=$(status_writes)
autocannon -t 60 -c "$CONNECTIONS" -d "$DURATION" --json "http://$service/expensive-op" >"$out/autocannon.json" 2>/dev/null
load_end=$(now)
echo "load ended; waiting for the scale-in (window ${WINDOW}s)" >&2
one_pod() {
	[ "$(api_get "/apis/apps/v1/namespaces/$ns/deployments/$name" | jq '.spec.replicas')" = 1 ] && [ "$(pods | wc -l)" = 1 ]
}
# The window, up to two HPA syncs, and the last pod's drain.
wait_for $((WINDOW + 120)) "the scale-in to one pod" one_pod
scaled_in=$(now)
# The operator's reconciles from load start to scale-in: it watches the HPA and Deployment it owns, so
# each of their status writes (an HPA sync that moved the metric, a pod turning ready) starts one.
echo "$(($(reconciles) - reconciles_before))" >"$out/operator-reconciles"
echo "$(($(status_writes) - status_writes_before))" >"$out/operator-status-writes"
# The CR's own account of its first scale-out since the load started, and the probe period it may lag by.
kubectl get -n "$ns" "sbx/$name" -o json | jq --argjson start "$load_start" '
	[.status.autoscaling.scaleEvents[]? | select(.to > .from and (.decidedAt | fromdateiso8601) >= ($start | floor))]
	| first // empty' >"$out/scale-out.json"
kubectl get -n "$ns" deployment "$name" \
	-o jsonpath='{.spec.template.spec.containers[0].readinessProbe.periodSeconds}' >"$out/readiness-period"
sleep 3
kill "$sampler_pid" && wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

# Prometheus' own samples: when the first scrape saw the full queue.
prometheus_seen=$(curl -fsS "$TESTBED_PROMETHEUS/api/v1/query" \
	--data-urlencode "query=queue_ratio{namespace=\"$ns\"}[10m]" |
	jq --argjson start "$load_start" '[.data.result[].values[] | select(.[0] >= $start and (.[1] | tonumber) >= 1) | .[0]] | min // empty')

scripts/autoscale-report.sh "$out" "$load_start" "$load_end" "$scaled_in" "${prometheus_seen:-}" \
	"$INTERVAL" "$WINDOW" "$CONNECTIONS" "$CONCURRENCY" "$TESTBED_HPA_SYNC" \
	"$(kubectl get -n "$ns" "sbx/$name" -o jsonpath='{.spec.operationDurationMs}')" \
	"$(kubectl get -n "$ns" "sbx/$name" -o jsonpath='{.spec.readinessQueueFactor}')" "$CONNECTION_CLOSE" \
	"$gauge" "$target"
