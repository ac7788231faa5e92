#!/usr/bin/env bash
# Runs the shell blocks that the docs mark as runnable on the test bed, exactly as written, so a doc cannot
# drift from what works. A block is a ```sh fence on the line right after
#
#   <!-- runs on the test bed: real -->      (or: kwok)
#
# The marked blocks of one file run in order in one shell, as a reader typing them into one terminal would,
# from the repository's root with `set -euo pipefail`; what they start in the background is stopped when
# they end. Fails when no block is marked for the nodes asked for, or when a file's blocks take over 10 min.
#
#   TESTBED_NODES=real scripts/testbed.sh up && scripts/run-docs.sh real
#   TESTBED_NODES=kwok scripts/testbed.sh up && scripts/run-docs.sh kwok
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${1:-}
case "$nodes" in
real | kwok) ;;
*) echo "usage: scripts/run-docs.sh real|kwok" >&2; exit 2 ;;
esac
running=$(cat "${TESTBED_DIR:-target/testbed}/nodes" 2>/dev/null || true)
[ "$running" = "$nodes" ] || {
	echo "run-docs: the test bed is not up with $nodes nodes (TESTBED_NODES=$nodes scripts/testbed.sh up)" >&2
	exit 1
}

# The marked blocks of FILE for these nodes, one after the other.
blocks() {
	awk -v marker="<!-- runs on the test bed: $nodes -->" '
		$0 == marker { armed = 1; next }
		armed && $0 == "```sh" { inside = 1; armed = 0; next }
		inside && $0 == "```" { inside = 0; print ""; next }
		inside { print; next }
		{ armed = 0 }' "$1"
}

ran=0
for doc in README.md docs/*.md; do
	script=$(blocks "$doc")
	[ -n "$script" ] || continue
	ran=$((ran + 1))
	printf '\n--- %s, the blocks that run on %s nodes:\n%s\n' "$doc" "$nodes" "$script"
	# Its own process group, so the background jobs the blocks start can be stopped with it.
	setsid timeout 600 bash -c "set -euo pipefail; $script" </dev/null &
	pid=$!
	status=0
	wait "$pid" || status=$?
	kill -- "-$pid" 2>/dev/null || true
	if [ "$status" -ne 0 ]; then
		echo "run-docs: FAILED: $doc's blocks for $nodes nodes exited with status $status" >&2
		exit 1
	fi
	echo "--- $doc: ok"
done
[ "$ran" -gt 0 ] || { echo "run-docs: no block is marked <!-- runs on the test bed: $nodes -->" >&2; exit 1; }
echo "run-docs: the $nodes blocks of $ran file(s) ran as written"
