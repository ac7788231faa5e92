#!/usr/bin/env bash
# The SandboxService's own account of a run's first scale-out (status.autoscaling.scaleEvents) against
# what scripts/autoscale-bench.sh sampled of the same run, from the files it wrote in OUT:
#   scale-out.json     the CR's first scale-out event decided after the load started (empty: none kept)
#   readiness-period   the pods' readiness probe period, in seconds
#   pods.tsv, samples.tsv as scripts/autoscale-report.sh reads them
# The status may lag the samples by one readiness-probe period (it learns of backpressure and readiness
# from the kubelet's probes) plus one second (its times are whole seconds): each time and each duration
# is held to that. Exit 1 when one is off by more.
# usage: autoscale-status-check.sh OUT LOAD_START READINESS_FACTOR
set -euo pipefail
out=$1 load_start=$2 readiness_factor=$3

if [ ! -s "$out/scale-out.json" ]; then
	echo "the SandboxService's status holds no scale-out of this run (it keeps the last 5 decisions)"
	exit 0
fi
period=$(cat "$out/readiness-period")
tolerance=$((period + 1))
# The status's times as Unix seconds ("-" where unset) and the pods the HPA decided on.
read -r status_since status_decided status_ready to < <(jq -r '
	def t(f): (f // empty | fromdateiso8601) // "-";
	[t(.backpressureSince), t(.decidedAt), t(.readyAt), .to] | @tsv' "$out/scale-out.json")
first() { awk -F'\t' "$1 { print \$1; exit }" "$2"; }
# Sampled: a pod's queue_ratio over its readiness limit (its probe answers 429 from then), the HPA's
# desired count raised, and `to` endpoints ready at the Service.
bench_since=$(first "\$3 + 0 > $readiness_factor && \$1 >= $load_start" "$out/pods.tsv")
bench_decided=$(first "\$4 > 1 && \$1 >= $load_start" "$out/samples.tsv")
bench_ready=$(first "\$3 >= $to && \$1 >= ${bench_decided:-$load_start}" "$out/samples.tsv")

echo "the SandboxService's first scale-out (to $to pods) against this bench's samples, allowed to differ by the readiness probe's period + 1 s = $tolerance s:"
printf '| %-44s | %10s | %10s | %9s |\n' "" "status" "sampled" "agree"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..11})"
awk -v s="$load_start" -v tol="$tolerance" \
	-v ss="$status_since" -v sd="$status_decided" -v sr="$status_ready" \
	-v bs="${bench_since:--}" -v bd="${bench_decided:--}" -v br="${bench_ready:--}" '
	function shown(x) { return x == "-" ? "-" : sprintf("%.1f", x) }
	function row(what, a, b) {
		agree = (a == "-" || b == "-") ? "-" : ((a - b <= tol && b - a <= tol) ? "yes" : "NO")
		if (agree == "NO") bad = 1
		printf "| %-44s | %10s | %10s | %9s |\n", what, shown(a), shown(b), agree
	}
	function at(x) { return x == "-" ? "-" : x - s }
	function took(a, b) { return (a == "-" || b == "-") ? "-" : b - a }
	BEGIN {
		row("backpressure began (s after load start)", at(ss), at(bs))
		row("HPA decided (s after load start)", at(sd), at(bd))
		row("new pods ready at the Service (s)", at(sr), at(br))
		row("reaction: backpressure -> decision (s)", took(ss, sd), took(bs, bd))
		row("ready: decision -> pods ready (s)", took(sd, sr), took(bd, br))
		row("time to capacity: backpressure -> ready (s)", took(ss, sr), took(bs, br))
		exit bad
	}'
