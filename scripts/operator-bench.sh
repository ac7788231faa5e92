#!/usr/bin/env bash
# The operator at scale on the test bed (issue 10): N SandboxServices across 10 namespaces, measured
# against the API server's own floor. Prints a table, one row per phase:
#   1. floor        `operator render` of every CR, applied with one `kubectl apply --server-side`: time
#                   until every Deployment has a ready pod; writes = the objects applied; no Events
#   2. operator     the N CRs applied at once to a running operator: time until every CR reports
#                   Ready=True for its generation
#   3. steady       the same CRs left alone for BENCH_STEADY_SECONDS once settled (each HPA synced and
#                   reading its metric, or the CR Degraded; kwok moves Pod and Node status, the HPAs
#                   write status): writes per minute and CPU % of one core
#   4. spec change  concurrency 1 -> 2 on every CR: time until every CR reports its new generation
#                   Ready and its rollout complete (Progressing=False, RolloutComplete)
# Columns: wall time; the operator's API writes (create/update/patch/delete of children and CR status,
# from sandbox_operator_api_requests_total; Events and the leader-election Lease are counted apart);
# events.k8s.io Events whose reportingController is sandbox-operator, per CR (occurrences: a new Event
# or one more in an existing Event's series, as kube's Recorder folds repeats); reconciles and their
# p50/p99 from sandbox_operator_reconcile_duration_seconds (the phase's bucket diff, linear within a
# bucket as histogram_quantile; it includes the API server's answers) and the p99 of
# sandbox_operator_reconcile_busy_seconds (the same less the time its requests waited for answers:
# the operator's own work); the operator process' peak RSS
# (VmRSS sampled every 0.2 s) and CPU seconds (/proc/PID/stat utime+stime).
#
#   BENCH_CRS=20 BENCH_STEADY_SECONDS=30 scripts/operator-bench.sh     # a quick look, ~2 minutes
#   TESTBED_DIR=target/testbed-bench scripts/operator-bench.sh         # N=500, 5 min steady state
#
# Settings: BENCH_CRS (500), BENCH_STEADY_SECONDS (300), BENCH_NAMESPACES (10), BENCH_TIMEOUT (seconds a
# phase may take, 1200). Uses the test bed of TESTBED_DIR/TESTBED_BIN; if it is not up, starts it with
# TESTBED_STANDIN_SELECTOR=app.kubernetes.io/name=none (no workload process per pod: kwok alone makes
# the pods Ready) and stops it at the end. A test bed that is already up keeps its stand-in, which runs
# one workload process per pod unless it was started with such a selector. Runs the release operator as
# a local process with the test bed's admin kubeconfig. Output in target/operator-bench: the table
# (table.txt), requests by verb and resource per phase (requests.txt), the operator's log and metrics.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

crs=${BENCH_CRS:-500} steady_seconds=${BENCH_STEADY_SECONDS:-300}
namespaces=${BENCH_NAMESPACES:-10} timeout=${BENCH_TIMEOUT:-1200}
testbed=${TESTBED_DIR:-$root/target/testbed}
out=$root/target/operator-bench
label=operator-bench
rm -rf "$out" && mkdir -p "$out"

. scripts/lib.sh
require_tools jq curl python3

operator_pid="" sampler_pid=""
cleanup() {
	local status=$?
	set +e
	[ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
	if [ -n "$operator_pid" ]; then
		kill "$operator_pid" 2>/dev/null
		wait "$operator_pid" 2>/dev/null
	fi
	if $started_testbed; then
		scripts/testbed.sh down
	elif [ -n "${KUBECONFIG:-}" ]; then
		kubectl delete namespace -l "$label=true" --wait=false >/dev/null 2>&1
	fi
	wait 2>/dev/null
	exit "$status"
}
trap cleanup EXIT

if scripts/testbed.sh status >/dev/null 2>&1 &&
	! tr '\0' ' ' <"/proc/$(cat "$testbed/pids/standin.pid")/cmdline" | grep -q -- '--pod-selector'; then
	log "warning: the test bed's stand-in runs a workload process for every pod ($crs or more)"
fi
# Without workload processes: the stand-in runs none for a selector no pod matches.
testbed_up TESTBED_NODES=kwok TESTBED_STANDIN_SELECTOR="${TESTBED_STANDIN_SELECTOR:-app.kubernetes.io/name=none}"
log "building the operator (release)"
operator=$(release_binary operator)

# Namespaces: floor-K and op-K for K < $namespaces, and the Lease's. A previous run's go first.
kubectl delete namespace -l "$label=true" --wait=true --timeout=600s >/dev/null
kubectl apply --server-side -f crds/sandboxservice.yaml \
	-f third_party/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
all_namespaces=("$label")
for ((k = 0; k < namespaces; k++)); do all_namespaces+=("$label-floor-$k" "$label-op-$k"); done
for ns in "${all_namespaces[@]}"; do
	printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {%s: "true"}}\n---\n' "$ns" "$label"
done | kubectl apply --server-side -f - >/dev/null
# Pods cannot be created before the controller-manager made the namespace's ServiceAccount.
for ns in "${all_namespaces[@]}"; do
	until kubectl get serviceaccount default -n "$ns" >/dev/null 2>&1; do sleep 0.2; done
done

# cr INDEX NAMESPACE CONCURRENCY: one SandboxService.
cr() {
	printf 'apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata:\n  name: sbx-%s\n  namespace: %s\n' "$1" "$2"
	printf '  labels: {%s: "true"}\nspec:\n  concurrency: %s\n' "$label" "$3"
}
log "rendering $crs SandboxServices"
for ((i = 0; i < crs; i++)); do
	{ echo ---; cr "$i" "$label-op-$((i % namespaces))" 1; } >>"$out/crs.yaml"
	{ echo ---; cr "$i" "$label-op-$((i % namespaces))" 2; } >>"$out/crs-concurrency-2.yaml"
	cr "$i" "$label-floor-$((i % namespaces))" 1 | "$operator" render -f - >>"$out/floor.yaml"
done
floor_objects=$(grep -c '^kind:' "$out/floor.yaml")

# ready_crs ROLLED: CRs whose status is for their generation with Ready=True (and, with ROLLED=true,
# the rollout complete).
ready_crs() {
	api_get "/apis/sandbox.perf.dev/v1alpha1/sandboxservices?labelSelector=$label%3Dtrue" | jq --argjson rolled "$1" '
		[.items[] | select(.status.observedGeneration == .metadata.generation
			and any(.status.conditions[]?; .type == "Ready" and .status == "True")
			and (($rolled | not) or any(.status.conditions[]?; .type == "Progressing" and .reason == "RolloutComplete")))]
		| length'
}
# Deployments of the floor with a ready pod for their generation.
ready_floor() {
	api_get /apis/apps/v1/deployments | jq --arg prefix "$label-floor-" '
		[.items[] | select((.metadata.namespace | startswith($prefix))
			and .status.observedGeneration == .metadata.generation and (.status.readyReplicas // 0) >= 1)]
		| length'
}
# wait_for_all WHAT COMMAND...: until COMMAND prints $crs, at most $timeout seconds.
wait_for_all() {
	local what=$1 deadline=$((SECONDS + timeout)) count; shift
	until count=$("$@") && [ "$count" -ge "$crs" ]; do
		[ $SECONDS -lt $deadline ] || die "$what: ${count:-?} of $crs after ${timeout}s"
		sleep 0.5
	done
}
# The operator's Events in its namespaces, with their series (see `phase`).
events() {
	api_get /apis/events.k8s.io/v1/events | jq --arg prefix "$label-op-" \
		'[.items[] | select(.reportingController == "sandbox-operator" and (.metadata.namespace | startswith($prefix)))]'
}

# --- 1. floor -------------------------------------------------------------------------------------
log "floor: applying $floor_objects objects with kubectl apply --server-side"
floor_start=$(now)
kubectl apply --server-side -f "$out/floor.yaml" >/dev/null
floor_applied=$(now)
wait_for_all "floor Deployments with a ready pod" ready_floor
floor_wall=$(elapsed "$floor_start" "$(now)")
printf 'floor\t%s\t%s\t-\t0\t-\t-\t-\t-\t-\t-\n' "$floor_wall" "$floor_objects" >"$out/phases.tsv"
log "floor: $floor_wall s; deleting its namespaces (the test bed's nodes hold 1,200 pods)"
floor_namespaces=()
for ((k = 0; k < namespaces; k++)); do floor_namespaces+=("$label-floor-$k"); done
kubectl delete namespace "${floor_namespaces[@]}" --wait=true --timeout=600s >/dev/null

# --- the operator ---------------------------------------------------------------------------------
start_operator "$out/operator.log" "$label" "$label"
metrics_token=$(metrics_reader_token) && [ -n "$metrics_token" ] || die "no token to read the operator's metrics with"
(
	while kill -0 "$operator_pid" 2>/dev/null; do
		sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$operator_pid/status" 2>/dev/null
		sleep 0.2
	done
) >"$out/rss-kb" &
sampler_pid=$!
ticks=$(getconf CLK_TCK)
cpu_seconds() { sed 's/.*) //' "/proc/$operator_pid/stat" | awk -v t="$ticks" '{printf "%.2f", ($12 + $13) / t}'; }

# A phase's start and end: the operator's metrics, CPU time, RSS samples so far and Events.
mark() {
	operator_metrics_text "$operator_metrics" "$metrics_token" >"$out/metrics-$1"
	cpu_seconds >"$out/cpu-$1"
	wc -l <"$out/rss-kb" >"$out/rss-line-$1"
	events >"$out/events-$1"
}
# phase NAME WALL: one row of phases.tsv and the phase's requests in requests.txt, from its marks.
phase() {
	local name=$1 wall=$2 cpu rss
	cpu=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" \
		"$(cat "$out/cpu-$name-start")" "$(cat "$out/cpu-$name-end")")
	rss=$(awk -v from="$(cat "$out/rss-line-$name-start")" -v to="$(cat "$out/rss-line-$name-end")" \
		'NR > from && NR <= to && $1 > peak { peak = $1 } END { print peak + 0 }' "$out/rss-kb")
	python3 - "$name" "$wall" "$crs" "$cpu" "$rss" "$out" <<'EOF'
import json, re, sys
from collections import Counter

name, wall, crs, cpu, rss_kb, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
sample = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')

def metrics(path):
    values = {}
    for line in open(path):
        match = sample.match(line.strip())
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")))
            values[(match.group(1), labels)] = float(match.group(3))
    return values

before, after = metrics(f"{out}/metrics-{name}-start"), metrics(f"{out}/metrics-{name}-end")
diff = {key: value - before.get(key, 0.0) for key, value in after.items()}
requests = Counter()
for (metric, labels), value in diff.items():
    if metric == "sandbox_operator_api_requests_total" and value:
        requests[(dict(labels)["verb"], dict(labels)["resource"])] += int(value)
writes = sum(n for (verb, resource), n in requests.items()
             if verb in WRITES and resource.split("/")[0] not in ("events", "leases"))
reconciles = int(diff.get(("sandbox_operator_reconciliations_total", ()), 0))

def histogram(name):
    return sorted(
        (float("inf") if dict(labels)["le"] == "+Inf" else float(dict(labels)["le"]), value)
        for (metric, labels), value in diff.items()
        if metric == f"{name}_bucket")

def quantile(q, buckets):
    total = buckets[-1][1] if buckets else 0
    if not total:
        return "-"
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return f">{lower * 1000:g}"
            return f"{(lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)) * 1000:.2f}"
        lower, below = upper, count
    return "-"

whole = histogram("sandbox_operator_reconcile_duration_seconds")
busy = histogram("sandbox_operator_reconcile_busy_seconds")

# Occurrences: an Event object counts (series.count or 1) times; kube's Recorder folds a repeated
# (type, reason, regarding) into the first Event's series.
def occurrences(path):
    return {e["metadata"]["uid"]: ((e.get("series") or {}).get("count") or 1, e) for e in json.load(open(path))}

events_before, events_after = occurrences(f"{out}/events-{name}-start"), occurrences(f"{out}/events-{name}-end")
new_events = Counter()
for uid, (count, event) in events_after.items():
    new_events[(event.get("type"), event.get("reason"))] += count - events_before.get(uid, (0, None))[0]
event_count = sum(new_events.values())
with open(f"{out}/phases.tsv", "a") as table:
    print(name, f"{wall:.1f}", writes, f"{writes / crs:.2f}", f"{event_count / crs:.2f}", reconciles,
          quantile(0.5, whole), quantile(0.99, whole), quantile(0.99, busy), f"{rss_kb / 1024:.1f}", cpu,
          sep="\t", file=table)
with open(f"{out}/requests.txt", "a") as detail:
    print(f"{name}: requests by verb and resource", file=detail)
    for (verb, resource), n in sorted(requests.items()):
        print(f"  {verb:<8} {resource:<28} {n:>8}  {n / crs:8.2f}/CR", file=detail)
    print(f"{name}: Events by type and reason (occurrences, new objects or series counts)", file=detail)
    for (kind, reason), n in sorted(new_events.items()):
        if n:
            print(f"  {kind:<8} {reason:<28} {n:>8}", file=detail)
EOF
}

# --- 2. operator ----------------------------------------------------------------------------------
log "operator: applying $crs SandboxServices"
mark operator-start
start=$(now)
kubectl apply --server-side -f "$out/crs.yaml" >/dev/null
wait_for_all "SandboxServices Ready" ready_crs false
end=$(now)
mark operator-end
operator_wall=$(elapsed "$start" "$end")
phase operator "$operator_wall"
peak_hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$operator_pid/status")

# --- 3. steady state ------------------------------------------------------------------------------
# Idle means nothing left to report: each HPA has synced (its conditions are in the CR's status) and
# each that cannot read its metric (kwok's pods serve none without a workload process) is Degraded,
# once the operator's 120 s grace has passed. Those are changes, and their writes belong to no phase.
settled_crs() {
	api_get "/apis/sandbox.perf.dev/v1alpha1/sandboxservices?labelSelector=$label%3Dtrue" | jq '
		[.items[] | select((.status.autoscaling.conditions // []) as $hpa | ($hpa | length) > 0
			and (any($hpa[]; .type == "ScalingActive" and .status == "True")
				or any(.status.conditions[]?; .type == "Degraded" and .status == "True")))]
		| length'
}
start=$(now)
wait_for_all "SandboxServices settled (HPAs synced and read, or Degraded)" settled_crs
log "settled $(elapsed "$start" "$(now)") s after all were Ready"
log "steady state: ${steady_seconds}s"
mark steady-start
sleep "$steady_seconds"
mark steady-end
phase steady "$steady_seconds"

# --- 4. spec change -------------------------------------------------------------------------------
log "spec change: concurrency 1 -> 2 on $crs SandboxServices"
mark spec-change-start
start=$(now)
kubectl apply --server-side -f "$out/crs-concurrency-2.yaml" >/dev/null
wait_for_all "SandboxServices rolled out and Ready" ready_crs true
end=$(now)
mark spec-change-end
phase spec-change "$(elapsed "$start" "$end")"

# --- the table ------------------------------------------------------------------------------------
{
	echo "operator-bench: $crs SandboxServices in $namespaces namespaces, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	printf '%-12s %8s %7s %9s %9s %10s %8s %8s %9s %9s %7s\n' phase "wall s" writes writes/CR Events/CR reconciles \
		"p50 ms" "p99 ms" "busy p99" "RSS MiB" "CPU s"
	while IFS=$'\t' read -r name wall writes per_cr events reconciles p50 p99 busy rss cpu; do
		printf '%-12s %8s %7s %9s %9s %10s %8s %8s %9s %9s %7s\n' "$name" "$wall" "$writes" "$per_cr" "$events" \
			"$reconciles" "$p50" "$p99" "$busy" "$rss" "$cpu"
	done <"$out/phases.tsv"
	echo
	python3 - "$out/phases.tsv" "$steady_seconds" "$floor_wall" <<'EOF'
import sys
rows = {line.split("\t")[0]: line.rstrip("\n").split("\t") for line in open(sys.argv[1])}
steady_seconds, floor_wall = float(sys.argv[2]), float(sys.argv[3])
steady = rows["steady"]
print(f"steady state: {int(steady[2]) * 60 / steady_seconds:.1f} writes/min, "
      f"{int(steady[5]) * 60 / steady_seconds:.1f} reconciles/min, "
      f"CPU {float(steady[10]) / steady_seconds * 100:.2f} % of a core")
print(f"time to all Ready: operator {rows['operator'][1]} s = {float(rows['operator'][1]) / floor_wall:.2f} x the floor's {floor_wall:.1f} s")
EOF
	echo "floor: kubectl apply took $(elapsed "$floor_start" "$floor_applied") s of the $floor_wall s"
	echo "operator: peak RSS over its life (VmHWM) $((peak_hwm / 1024)) MiB after the operator phase"
	echo "writes: create/update/patch/delete of children and CR status; Events and Lease renewals are in requests.txt"
	echo "p50/p99: whole reconciles, including the API server's answers; busy p99: less the time its requests waited for answers"
} | tee "$out/table.txt"
echo
cat "$out/requests.txt"
