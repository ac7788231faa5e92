#!/usr/bin/env bash
# The table and the chart of one scripts/autoscale-bench.sh run, from the files it wrote in OUT:
#   samples.tsv  time, Deployment replicas, ready endpoints, HPA desired, HPA's average of its metric,
#                200s, 503s, no-endpoint 503s (cumulative), highest value of it the custom metrics API serves
#   pods.tsv     time, pod, its queue_ratio, its completed operations, its running operations, the gauge
#                the HPA scales on
# usage: autoscale-report.sh OUT LOAD_START LOAD_END SCALED_IN PROMETHEUS_SEEN INTERVAL WINDOW C CONCURRENCY SYNC
#        OPERATION_MS READINESS_FACTOR CONNECTION_CLOSE [GAUGE TARGET]
# GAUGE (queue_ratio) is the metric the HPA scales on and TARGET (1) its per-pod target, a quantity.
set -euo pipefail
out=$1 load_start=$2 load_end=$3 scaled_in=$4 prometheus_seen=$5 interval=$6 window=$7
connections=$8 concurrency=$9 sync=${10} operation_ms=${11} readiness_factor=${12} connection_close=${13}
gauge=${14:-queue_ratio}
# The target as a number: a quantity may be in thousandths (1500m).
target=$(awk -v q="${15:-1}" 'BEGIN { if (q ~ /m$/) print substr(q, 1, length(q) - 1) / 1000; else print q + 0 }')

# Times relative to the load's start, in seconds.
rel() { awk -v t="$1" -v s="$load_start" 'BEGIN { if (t == "") print "-"; else printf "%.1f", t - s }'; }
first() { awk -F'\t' "$1 { print \$1; exit }" "$2"; }

queue_full=$(first "\$3 + 0 >= 4 && \$1 >= $load_start" "$out/pods.tsv")
decision=$(first "\$4 > 1 && \$1 >= $load_start" "$out/samples.tsv")
adapter_served=$(first "\$9 != \"-\" && \$9 + 0 >= $target && \$1 >= $load_start" "$out/samples.tsv")
replicas_up=$(first "\$2 > 1 && \$1 >= $load_start" "$out/samples.tsv")
endpoints_up=$(first "\$3 > 1 && \$1 >= $load_start" "$out/samples.tsv")
first_pod=$(awk -F'\t' '{ print $2; exit }' "$out/pods.tsv")
new_pod_load=$(first "\$2 != \"$first_pod\" && \$4 > 0" "$out/pods.tsv")
drained=$(awk -F'\t' -v end="$load_end" '$1 >= end && $3 + 0 > 0 { last = $1 } END { print (last ? last : end) }' "$out/pods.tsv")
scale_in=$(first "\$4 == 1 && \$1 >= $load_end" "$out/samples.tsv")
peak=$(awk -F'\t' '$2 > max { max = $2 } END { print max }' "$out/samples.tsv")
# From a to b; two events within one sample of each other can come out in either order: 0.
span() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.1f", (b > a ? b - a : 0) }'; }

jq -r '"autocannon: \(.requests.total) requests, \(."2xx") × 200, \(.non2xx) × 503 and other, \(.errors) errors, \(.timeouts) timeouts; codes \(.statusCodeStats | keys | join(","))"' "$out/autocannon.json"
no_endpoint=$(awk -F'\t' 'END { print $8 }' "$out/samples.tsv")
if [ "$no_endpoint" = - ]; then
	echo "behind kube-proxy, a connection made while no pod was ready is refused: autocannon counts those as errors"
else
	echo "of the 503s, $no_endpoint came from the Service having no ready endpoint (every pod's readiness 429)"
fi
[ -f "$out/operator-reconciles" ] &&
	echo "the operator reconciled $(cat "$out/operator-reconciles") times from load start to scale-in (the Deployment's ready counts and the HPA's decisions and conditions start one)"
[ -f "$out/operator-status-writes" ] &&
	echo "and wrote the SandboxService's status $(cat "$out/operator-status-writes") times"
echo
echo "autoscale-bench: -c $connections, CONCURRENCY=$concurrency, HPA on $gauge (target $target), ServiceMonitor interval $interval, HPA sync $sync, scale-down window ${window}s; peak $peak replicas"
printf '| %-58s | %8s | %8s |\n' "step" "at (s)" "took (s)"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..60})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})"
row() { printf '| %-58s | %8s | %8s |\n' "$1" "$(rel "$2")" "$3"; }
row "load starts" "$load_start" ""
row "(a) queue full on the first pod (queue_ratio 4)" "$queue_full" "$(span "$load_start" "$queue_full")"
row "    first Prometheus sample with it (scrape interval)" "$prometheus_seen" "$(span "$queue_full" "$prometheus_seen")"
row "    the adapter serves $gauge >= $target (relist, query)" "$adapter_served" "$(span "$prometheus_seen" "$adapter_served")"
row "(b) HPA decides to scale out (HPA sync)" "$decision" "$(span "$adapter_served" "$decision")"
row "    Deployment replicas raised" "$replicas_up" "$(span "$decision" "$replicas_up")"
row "(c) new pods Ready at the Service (readiness probe)" "$endpoints_up" "$(span "$replicas_up" "$endpoints_up")"
row "    a new pod completes operations" "$new_pod_load" "$(span "$endpoints_up" "$new_pod_load")"
row "    queue full -> scale-out decision" "$decision" "$(span "$queue_full" "$decision")"
row "load ends" "$load_end" ""
row "    queues drained (last queue_ratio > 0)" "$drained" "$(span "$load_end" "$drained")"
row "(d) HPA decides to scale in to min (window + sync)" "$scale_in" "$(span "$drained" "$scale_in")"
row "    back to one pod" "$scaled_in" "$(span "$scale_in" "$scaled_in")"
row "    load end -> one pod" "$scaled_in" "$(span "$load_end" "$scaled_in")"

# --- settling: does the HPA land on one count under the load, or hunt? ------------------------------
# The HPA's desired count while the load lasts: its changes after the first decision, the last change,
# and the count it ended on against the balanced one, ceil(C / (k (1 + targetQueueRatio))), where every
# slot is busy and targetQueueRatio operations wait per slot (the target is 1 + that for queue_occupancy).
echo
awk -F'\t' -v start="$load_start" -v end="$load_end" -v c="$connections" -v k="$concurrency" \
	-v target="$target" -v gauge="$gauge" '
	$1 >= start && $1 <= end {
		if (n++ == 0) { initial = $4; prev = $4 }
		if ($4 != prev) { changes++; seq = seq " -> " $4; last = $1; prev = $4 }
	}
	END {
		if (n == 0) exit
		per_slot = (gauge == "queue_occupancy" ? target : 1 + target)
		balanced = c / (k * per_slot); if (balanced > int(balanced)) balanced = int(balanced) + 1
		printf "settling under load: desired replicas %s%s; %d change(s) after the first decision", initial, seq, (changes > 0 ? changes - 1 : 0)
		if (changes > 0) printf ", the last %.1f s after load start", last - start
		printf "; ended on %s, balanced count ceil(%d / (%d x %s)) = %d\n", prev, c, k, per_slot, balanced
	}' "$out/samples.tsv"

# --- relief: do the clients get the capacity the scale-out added? ----------------------------------
# From the first sample with more than one ready endpoint + 10 s to the load's end: 200s per second
# against what the ready pods can serve (ready × concurrency / operation time), and the longest time a pod
# kept a queue above the readiness limit while another pod was idle (nothing queued or running).
echo
echo "relief (CONNECTION_CLOSE $connection_close): from new pods Ready + 10 s to load end"
awk -F'\t' -v from="${endpoints_up:-}" -v end="$load_end" -v conc="$concurrency" -v op_ms="$operation_ms" '
	from == "" { next }
	$1 >= from + 10 && $1 <= end {
		if (!n++) { t0 = $1; ok0 = $6 }
		t1 = $1; ok1 = $6; capacity += $3 * conc / (op_ms / 1000); all += $2 * conc / (op_ms / 1000)
	}
	END {
		if (n < 2) { print "  no samples: the scale-out came too late in the load (or never)"; exit }
		rate = (ok1 - ok0) / (t1 - t0)
		printf "  200s per second %.2f; ready pods could serve %.2f (%.0f %%), all running pods %.2f (%.0f %%)\n", \
			rate, capacity / n, 100 * rate / (capacity / n), all / n, 100 * rate / (all / n)
	}' "$out/samples.tsv"
# Per sampling round (one time stamp): is one pod above the readiness limit while another is idle?
awk -F'\t' -v limit="$readiness_factor" -v start="$load_start" -v end="$load_end" '
	function close_round() {
		if (t == "") return
		if (over && idle) { if (since == "") since = t; if (t - since > longest) longest = t - since }
		else since = ""
	}
	$1 != t { close_round(); t = $1; over = 0; idle = 0 }
	$1 >= start && $1 <= end { if ($3 + 0 > limit) over = 1; if ($3 + 0 == 0 && $5 + 0 == 0) idle = 1 }
	END { close_round(); printf "  longest time a pod kept queue_ratio > %s while another pod was idle: %.1f s\n", limit, longest }
' "$out/pods.tsv"
awk -F'\t' -v start="$load_start" '{ last[$2] = $4 } $1 <= start { first[$2] = $4 }
	END { printf "  operations completed per pod:"; for (p in last) printf " %s=%d", substr(p, length(p) - 4), last[p] - first[p]; print "" }' "$out/pods.tsv"
# The rate once scaled is the first line of this block; this is the one before.
awk -F'\t' -v s="$load_start" -v up="${endpoints_up:-}" -v end="$load_end" '
	$1 <= (up == "" ? end : up) { t_b = $1; ok_b = $6 }
	END { printf "  200s per second before the new pods were Ready %.2f\n", (t_b > s ? ok_b / (t_b - s) : 0) }' "$out/samples.tsv"
# Every pod's histogram of its 200s, summed: the bucket each percentile falls in.
cat "$out"/latency/* 2>/dev/null | awk '{ count[$1] += $2 } END {
	for (le in count) print le, count[le] }' | sort -g | awk '
	{ le[NR] = $1; cum[NR] = $2 } END {
		if (NR == 0 || cum[NR] == 0) exit
		for (i = 1; i <= NR; i++) { if (!p50 && cum[i] >= 0.5 * cum[NR]) p50 = le[i]; if (!p99 && cum[i] >= 0.99 * cum[NR]) p99 = le[i] }
		printf "  the 200s as the pods timed them (queue + operation): p50 <= %s s, p99 <= %s s (histogram buckets)\n", p50, p99
	}'
jq -r '"  autocannon latency (200s and 503s together; wrong once pods close connections, see docs) p50 \(.latency.p50) ms, p99 \(.latency.p99) ms; \(.errors) errors (refused connections among them)"' "$out/autocannon.json"

# --- the CR's status against the samples ---------------------------------------------------------
echo
status_agrees=true
scripts/autoscale-status-check.sh "$out" "$load_start" "$readiness_factor" || status_agrees=false

# --- the chart -------------------------------------------------------------------------------------
# Answers per second from the cumulative counts; the HPA's quantity (500m) as a number.
awk -F'\t' -v s="$load_start" 'NR > 1 && $1 > pt {
	dt = $1 - pt
	ratio = $5; if (ratio ~ /m$/) ratio = substr(ratio, 1, length(ratio) - 1) / 1000; if (ratio == "-") ratio = "nan"
	printf "%.2f\t%s\t%s\t%s\t%s\t%.1f\t%.1f\n", $1 - s, $2, $3, $4, ratio, ($6 - p6) / dt, ($7 - p7 + $8 - p8) / dt
} { pt = $1; p6 = $6; p7 = $7; p8 = $8 }' "$out/samples.tsv" >"$out/chart-samples.tsv"
# One gnuplot data block per pod.
sort -t$'\t' -k2,2 -k1,1n "$out/pods.tsv" | awk -F'\t' -v s="$load_start" '
	$2 != pod { if (pod != "") printf "\n\n"; pod = $2; print pod }
	{ printf "%.2f\t%s\n", $1 - s, (NF >= 6 ? $6 : $3) }' >"$out/chart-pods.tsv"
pod_blocks=$(cut -f2 "$out/pods.tsv" | sort -u | wc -l)
# Each change of the HPA's desired replicas is a decision: a dashed line on every panel.
decisions=$(awk -F'\t' 'NR > 1 && $4 != prev { printf "%s ", $1 } { prev = $4 }' "$out/chart-samples.tsv")
x_max=$(awk -F'\t' 'END { printf "%d", $1 + 2 }' "$out/chart-samples.tsv")
load_seconds=$(awk -v a="$load_start" -v b="$load_end" 'BEGIN { printf "%.1f", b - a }')

gnuplot <<EOF
set terminal pngcairo size 1100,900 font ",10" noenhanced
set output "$out/run.png"
set multiplot layout 3,1 title "Seed scenario on the test bed: autocannon -c $connections for ${load_seconds} s, CONCURRENCY $concurrency, scrape $interval, HPA sync $sync, scale-down window ${window} s"
set xlabel "seconds since load start"
set grid
set key outside right
set xrange [-3:$x_max]
# The same plot area in every panel, whatever the width of its legend.
set lmargin at screen 0.07
set rmargin at screen 0.75
set object 1 rect from 0, graph 0 to $load_seconds, graph 1 fc rgb "#f0f0f0" fs solid noborder behind
do for [t in "$decisions"] { set arrow from t+0, graph 0 to t+0, graph 1 nohead dt 2 lc rgb "#aa3333" }
set ylabel "pods"
set yrange [0:*]
plot "$out/chart-samples.tsv" using 1:2 with steps lw 2 title "replicas", \
     "" using 1:3 with steps lw 2 title "ready endpoints", \
     "" using 1:4 with steps dt 3 title "HPA desired (dashed lines: decisions)"
set ylabel "$gauge"
plot for [i=0:$((pod_blocks - 1))] "$out/chart-pods.tsv" index i using 1:2 with lines title columnheader(1), \
     "$out/chart-samples.tsv" using 1:5 with steps lw 2 lc rgb "black" title "HPA's average", \
     $target with lines dt 2 lc rgb "gray" title "target"
set ylabel "answers / s"
set logscale y
set yrange [0.1:*]
plot "$out/chart-samples.tsv" using 1:(\$6 > 0 ? \$6 : 1/0) with impulses lw 2 title "200", \
     "" using 1:(\$7 > 0 ? \$7 : 1/0) with points pt 7 ps 0.5 title "503"
unset multiplot
EOF
echo
echo "chart: $out/run.png"
$status_agrees || { echo "autoscale-report: the SandboxService's status and the samples disagree (above)" >&2; exit 1; }
