#!/usr/bin/env bash
# The workload under hostile clients (release build, one run, prints figures; not a timed test):
#
#   1. Memory per idle connection: SLOW connections that send half a request head and wait, against the
#      workload and against the bare axum route of scripts/bench.sh (which never closes them).
#   2. The attack: up to ATTACK slow-head connections, re-opened as the server closes them, for SECONDS,
#      together with the seed's `autocannon -t 60 -c 6`, at the workload's defaults (CONCURRENCY=1,
#      MAX_CONNECTIONS, HEADER_READ_TIMEOUT_MS). Meanwhile /liveness and /readiness are probed every
#      100 ms on new connections, as the kubelet does, and RSS is sampled. Afterwards: the slow
#      connections are gone and the queue is empty.
#
#   scripts/hostile.sh                 # SLOW=5000 ATTACK=10000 SECONDS_=20
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SLOW=${SLOW:-5000} ATTACK=${ATTACK:-10000} DURATION=${SECONDS_:-20}
# The operator's default memory limit for a SandboxService's pods.
POD_LIMIT_MIB=128
WORKLOAD_PORT=$(free_port) BARE_PORT=$(free_port)

require_tools autocannon
cargo build --release --locked --quiet -p workload --bin workload --example bare_ok
# Each side holds up to ATTACK sockets.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d) pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# The clients, in Python's asyncio: `hold N PORT` keeps N half-sent heads open until stdin closes;
# `attack N PORT SECONDS` keeps re-opening them; `probe PORT SECONDS` times the probes.
cat >"$work/clients.py" <<'PY'
import asyncio, sys, time

HEAD = b"GET /expensive-op HTTP/1.1\r\nHost: sandbox\r\nX-Slow: "

async def slow(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    await writer.drain()
    return reader, writer

async def hold(n, port):
    held = []
    for i in range(0, n, 500):
        held += await asyncio.gather(*(slow(port) for _ in range(min(500, n - i))))
    print(len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

async def attack(n, port, seconds):
    deadline = time.monotonic() + seconds
    opened = closed = 0
    async def one():
        nonlocal opened, closed
        while time.monotonic() < deadline:
            try:
                reader, writer = await slow(port)
                opened += 1
                await asyncio.wait_for(reader.read(), deadline - time.monotonic())
                closed += 1
            except (asyncio.TimeoutError, OSError):
                await asyncio.sleep(0.05)
    await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    print(f"{opened} {closed}", flush=True)

async def probe(port, seconds):
    worst, slow_probes, failed, count = 0.0, 0, 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/liveness", "/readiness"):
            start = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n".encode())
                status = (await asyncio.wait_for(reader.readline(), 1)).split()[1]
                writer.close()
                if status not in (b"200", b"429"):
                    failed += 1
            except Exception:
                failed += 1
            took = time.monotonic() - start
            worst, count = max(worst, took), count + 1
            slow_probes += took > 0.1
        await asyncio.sleep(0.1)
    print(f"{count} {worst * 1000:.1f} {slow_probes} {failed}", flush=True)

mode, *args = sys.argv[1:]
asyncio.run({"hold": hold, "attack": attack, "probe": probe}[mode](*map(int, args)))
PY

# --- 1. memory per idle connection -----------------------------------------------------------------
per_connection() {
	local name=$1 port=$2 pid=$3 before after
	before=$(rss_kib "$pid")
	coproc HOLD { python3 "$work/clients.py" hold "$SLOW" "$port"; }
	read -r held <&"${HOLD[0]}"
	sleep 1
	after=$(rss_kib "$pid")
	exec {HOLD[1]}>&-
	wait "$HOLD_PID" 2>/dev/null || true
	awk -v n="$name" -v h="$held" -v b="$before" -v a="$after" \
		'BEGIN { printf "| %-44s | %6d | %9.1f | %9.1f | %8.1f |\n", n, h, b / 1024, a / 1024, (a - b) * 1024 / h / 1024 }'
}

echo "memory per idle connection ($SLOW connections that sent half a head, RSS 1 s later)"
printf '| %-44s | %6s | %9s | %9s | %8s |\n' server held "RSS0 MiB" "RSS MiB" "KiB/conn"
printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "--------" "-----------" "-----------" "----------"
PORT=$BARE_PORT target/release/examples/bare_ok & bare_pid=$!; pids+=("$bare_pid")
# Long timeout and a high bound, so every connection stays for the measurement.
HOST=127.0.0.1 PORT=$WORKLOAD_PORT MAX_CONNECTIONS=100000 HEADER_READ_TIMEOUT_MS=60000 RUST_LOG=warn \
	target/release/workload & measured_pid=$!; pids+=("$measured_pid")
wait_listening "$BARE_PORT" / && wait_listening "$WORKLOAD_PORT" /liveness
per_connection "bare axum route (axum::serve, no timeouts)" "$BARE_PORT" "$bare_pid"
per_connection "workload (hyper http1, 16 KiB head limit)" "$WORKLOAD_PORT" "$measured_pid"
kill "$bare_pid" "$measured_pid"; wait "$bare_pid" "$measured_pid" 2>/dev/null || true

# --- 2. the attack -----------------------------------------------------------------------------------
HOST=127.0.0.1 PORT=$WORKLOAD_PORT RUST_LOG=warn target/release/workload & workload_pid=$!; pids+=("$workload_pid")
wait_listening "$WORKLOAD_PORT" /liveness
metric() { curl -fsS "http://127.0.0.1:$WORKLOAD_PORT/metrics" | sed -n "s/^$1 //p"; }
echo
echo "attack: $ATTACK slow-head connections kept open for ${DURATION}s + autocannon -t 60 -c 6, workload defaults"
python3 "$work/clients.py" attack "$ATTACK" "$WORKLOAD_PORT" "$DURATION" >"$work/attack" &
attack_pid=$!
python3 "$work/clients.py" probe "$WORKLOAD_PORT" "$DURATION" >"$work/probe" &
probe_pid=$!
autocannon -t 60 -c 6 -d "$DURATION" --json "http://127.0.0.1:$WORKLOAD_PORT/expensive-op" >"$work/autocannon.json" 2>/dev/null &
load_pid=$!
peak=0 peak_open=0
while kill -0 "$attack_pid" 2>/dev/null; do
	rss=$(rss_kib "$workload_pid"); [ "$rss" -gt "$peak" ] && peak=$rss
	open=$(metric http_connections_open || echo 0); [ "${open:-0}" -gt "$peak_open" ] && peak_open=$open
	sleep 0.2
done
wait "$attack_pid" "$probe_pid" "$load_pid"
read -r opened closed <"$work/attack"
read -r probes worst_ms slow_probes failed_probes <"$work/probe"
timeout_s=6 # the default header read timeout (5 s) + 1
sleep "$timeout_s"
echo "| figure | value |"
echo "| --- | --- |"
echo "| slow-head connections opened / closed by the server | $opened / $closed |"
echo "| connections over MAX_CONNECTIONS (overflow lane) | $(metric http_connections_over_limit_total) |"
echo "| peak open connections (sampled) | $peak_open |"
awk -v p="$peak" -v l="$POD_LIMIT_MIB" 'BEGIN { printf "| peak RSS | %.1f MiB of the pod'"'"'s %d MiB limit (%.0f%%) |\n", p / 1024, l, p / 1024 / l * 100 }'
echo "| probes (/liveness, /readiness) | $probes, slowest $worst_ms ms, $slow_probes over 100 ms, $failed_probes failed |"
jq -r '"| autocannon | \(.requests.total) requests: \(.statusCodeStats | to_entries | map("\(.value.count) × \(.key)") | join(", ")); \(.errors) errors, \(.timeouts) timeouts |"' "$work/autocannon.json"
echo "| ${timeout_s} s after the attack: open connections, queue_ratio, in flight | $(metric http_connections_open), $(metric queue_ratio), $(metric queue_in_flight_tasks) |"
