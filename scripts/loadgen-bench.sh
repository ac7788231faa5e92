#!/usr/bin/env bash
# The load generator's own cost beside wrk's and autocannon's: each loads the bare axum route
# (workload/examples/bare_ok.rs, kept-alive) with the same connections for the same time, in
# interleaved rounds, and the figure is requests answered per second of the client's own CPU time
# (user + system), which on shared cores is steadier than requests per second. Prints each client's
# median beside its ratio to wrk's.
#
#   scripts/loadgen-bench.sh                                   # 3 rounds of 5 s, 10 connections
#   BENCH_SECONDS=3 BENCH_ROUNDS=1 scripts/loadgen-bench.sh    # a quicker, noisier look
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-10}
for tool in wrk autocannon jq /usr/bin/time; do
	command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-test-deps.sh"
done

cargo build --release --locked --quiet -p loadgen --bin loadgen -p workload --example bare_ok
port=$(free_port)
PORT=$port target/release/examples/bare_ok &
bare_pid=$!
trap 'kill "$bare_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
wait_listening "$port" /
url=http://127.0.0.1:$port/
work=$(mktemp -d)

# run CLIENT: the client's answered requests and its CPU seconds, as "REQUESTS CPU_SECONDS".
run() {
	local requests
	case $1 in
	wrk)
		/usr/bin/time -f '%U %S' -o "$work/time" wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "$url" >"$work/out"
		requests=$(awk '/requests in/ { print $1 }' "$work/out")
		;;
	autocannon)
		/usr/bin/time -f '%U %S' -o "$work/time" autocannon -c "$CONNECTIONS" -d "$SECONDS_PER_RUN" --json "$url" \
			>"$work/out" 2>/dev/null
		requests=$(jq '.statusCodeStats["200"].count' "$work/out")
		;;
	loadgen)
		/usr/bin/time -f '%U %S' -o "$work/time" target/release/loadgen "$url" -c "$CONNECTIONS" \
			-d "${SECONDS_PER_RUN}s" >"$work/out"
		requests=$(jq '.total.statuses["200"]' "$work/out")
		;;
	esac
	echo "$requests $(awk '{ print $1 + $2 }' "$work/time")"
}

clients=(wrk autocannon loadgen)
declare -A figures=()
for round in $(seq "$ROUNDS"); do
	for client in "${clients[@]}"; do
		read -r requests cpu < <(run "$client")
		figure=$(awk -v r="$requests" -v c="$cpu" 'BEGIN { printf "%.0f", (c > 0 ? r / c : 0) }')
		log "round $round: $client answered $requests in ${SECONDS_PER_RUN} s using $cpu CPU s: $figure requests per CPU s"
		figures[$client]+="$figure "
	done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
wrk_median=$(echo "${figures[wrk]}" | median)
printf '\n%-12s %22s %10s\n' client "requests per CPU second" "x wrk"
for client in "${clients[@]}"; do
	m=$(echo "${figures[$client]}" | median)
	printf '%-12s %22s %10s\n' "$client" "$m" "$(awk -v m="$m" -v w="$wrk_median" 'BEGIN { printf "%.2f", m / w }')"
done
echo "($ROUNDS rounds of $SECONDS_PER_RUN s, $CONNECTIONS connections, kept alive, on $url: the bare axum route)"
rm -rf "$work"
