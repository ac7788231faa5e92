#!/usr/bin/env bash
# Runs the seed's acceptance table against the release binary with autocannon, exactly as the README's
# walkthrough does, and fails on any mismatch.
#
#   scripts/seed-table.sh            # 2 s operations, as the seed (about a minute)
#   OPERATION_DURATION_MS=1000 DURATION=6 scripts/seed-table.sh
#
# For each row: start a fresh `workload` (CONCURRENCY=1), run `autocannon -t 60 -c N` against
# /expensive-op, and half-way through an operation probe /readiness and send one manual /expensive-op.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

OPERATION_DURATION_MS=${OPERATION_DURATION_MS:-2000}
DURATION=${DURATION:-10}
PORT=${PORT:-3000}

command -v autocannon >/dev/null || { echo "autocannon not found: npm install -g autocannon" >&2; exit 1; }
BIN=$(release_binary workload)

work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

metric() { grep "^$1 " <<<"$2" | cut -d' ' -f2; }
scrape() { curl -fs "http://127.0.0.1:$PORT/metrics" || true; }
# The answer of $1 (a probe, or an /expensive-op expected to be rejected) with $2 tasks waiting. Between an
# operation's end and its connection's next request the queue is one short, so an answer counts only if the
# completed counter, read in a scrape before the one showing the full queue, has not moved when it comes (the
# counter moves before the task leaves). A discarded /expensive-op answered 200 was admitted into that moment
# and took a place in the queue, turning one of autocannon's requests away: "admitted", run the row again.
steady_status() {
  local baseline before status completed=expensive_operations_completed_total
  for _ in $(seq 500); do
    baseline=$(metric $completed "$(scrape)")
    before=$(scrape)
    if [ "$(metric queue_waiting_tasks "$before")" = "$2" ] && [ "$(metric $completed "$before")" = "$baseline" ]; then
      status=$(curl -s -o /dev/null -m 60 -w '%{http_code}' "http://127.0.0.1:$PORT$1")
      [ "$(metric $completed "$(scrape)")" = "$baseline" ] && { echo "$status"; return; }
      [ "$1" = /expensive-op ] && [ "$status" = 200 ] && { echo admitted; return; }
    fi
    sleep 0.01
  done
  echo "no-steady-answer"
}
json() { node -e "const r=require('$1'); console.log($2)"; }

failures=0
check() { # what expected actual
  if [ "$2" = "$3" ]; then printf '  ok    %-38s %s\n' "$1" "$3"
  else printf '  FAIL  %-38s expected %s, got %s\n' "$1" "$2" "$3"; failures=$((failures + 1)); fi
}

# connections  readiness  manual  load (the seed's table)
rows=(
  "3 200 200 all-ok"
  "4 429 200 all-ok"
  "5 429 503 all-ok"
  "6 429 503 mostly-503"
)
half_op=$(awk "BEGIN { print $OPERATION_DURATION_MS / 2000 }")
# One row on a fresh workload: sets ready, manual, drained and leaves autocannon's JSON in $work/c$1.json.
run_row() { # connections want_manual
  local c=$1 start cannon_pid deadline full
  echo "autocannon http://127.0.0.1:$PORT/expensive-op -t 60 -c $c -d $DURATION"
  HOST=127.0.0.1 PORT=$PORT CONCURRENCY=1 OPERATION_DURATION_MS=$OPERATION_DURATION_MS RUST_LOG=warn "$BIN" &
  server_pid=$!
  wait_listening "$PORT" /liveness
  start=$(date +%s.%N)
  autocannon "http://127.0.0.1:$PORT/expensive-op" -t 60 -c "$c" -d "$DURATION" --json >"$work/c$c.json" 2>/dev/null &
  cannon_pid=$!
  # Wait until the first connection is answered, then to the middle of the second operation: the queue is
  # full and no operation is finishing.
  deadline=$(( $(date +%s) + 30 + OPERATION_DURATION_MS / 1000 * 2 ))
  until scrape | grep -q '^expensive_operations_completed_total [1-9]'; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "no operation completed under -c $c" >&2; exit 1; }
    sleep 0.02
  done
  sleep "$half_op"
  full=$(( c - 1 < 4 ? c - 1 : 4 ))
  ready=$(steady_status /readiness "$full")
  # An accepted request waits for operations to finish, so it cannot be timed between them; the race only
  # shortens the queue, which never turns an acceptance into a rejection.
  if [ "$2" = 503 ]; then
    manual=$(steady_status /expensive-op "$full")
  else
    manual=$(curl -s -o /dev/null -m 60 -w '%{http_code}' "http://127.0.0.1:$PORT/expensive-op")
  fi
  wait "$cannon_pid"
  kill -TERM "$server_pid"; drained=0; wait "$server_pid" || drained=$?; server_pid=""
  wall=$(awk "BEGIN { print $(date +%s.%N) - $start }")
}

for row in "${rows[@]}"; do
  read -r c want_ready want_manual want_load <<<"$row"
  for attempt in 1 2 3; do
    run_row "$c" "$want_manual"
    [ "$manual" != admitted ] && break
    echo "  (attempt $attempt: the manual probe was admitted between two operations; running -c $c again)"
  done

  r="$work/c$c.json"
  ok=$(json "$r" "r['2xx']"); non2xx=$(json "$r" "r.non2xx"); errors=$(json "$r" "r.errors + r.timeouts")
  check "-c $c  GET /readiness" "$want_ready" "$ready"
  check "-c $c  GET /expensive-op (manual)" "$want_manual" "$manual"
  check "-c $c  autocannon errors+timeouts" 0 "$errors"
  check "-c $c  workload exit after SIGTERM" 0 "$drained"
  if [ "$want_load" = all-ok ]; then
    check "-c $c  autocannon non-2xx" 0 "$non2xx"
  else
    mostly=$([ "$non2xx" -gt "$ok" ] && [ "$ok" -gt 0 ] && echo yes || echo no)
    check "-c $c  autocannon mostly 503, some 200" yes "$mostly"
  fi
  printf '        autocannon: %s 2xx, %s non-2xx in %ss (%.1fs wall)\n' "$ok" "$non2xx" "$DURATION" "$wall"
done

if [ "$failures" -gt 0 ]; then echo "seed table: $failures mismatches"; exit 1; fi
echo "seed table: every row holds"
