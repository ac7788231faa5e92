#!/usr/bin/env bash
# Points every k8s.io staging module that k8s.io/kubernetes requires at v0.0.0 to its published release.
#
# k8s.io/kubernetes resolves its staging modules (k8s.io/api, k8s.io/client-go, ...) with replaces to
# ./staging/src/... that only work inside its own repository. The list is read from the go.mod that the
# module proxy serves for the pinned version, so it follows upstream instead of being kept by hand.
# Usage: testbed/kubernetes/sync-replaces.sh v1.34.4
set -euo pipefail
version=${1:?usage: sync-replaces.sh v1.MINOR.PATCH}
[[ $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "error: want a version like v1.34.4, got $version" >&2; exit 2; }
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
cd "$(dirname "$0")"

upstream_gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
[ -f "$upstream_gomod" ] || { echo "error: the module proxy gave no go.mod for k8s.io/kubernetes@$version" >&2; exit 1; }
mapfile -t staging < <(sed -n 's#^\s*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$upstream_gomod")
[ "${#staging[@]}" -gt 0 ] || { echo "error: no staging replaces in $upstream_gomod" >&2; exit 1; }

# Drop replaces from an earlier version first, so a module upstream no longer has does not linger.
for old in $(go mod edit -json | sed -n 's#^\s*"Path": "\(k8s\.io/[^"]*\)".*#\1#p' | sort -u); do
	go mod edit -dropreplace="$old" 2>/dev/null || true
done
args=()
for module in "${staging[@]}"; do args+=("-replace=$module=$module@$staging_version"); done
go mod edit "${args[@]}"
echo "replaced ${#staging[@]} staging modules with $staging_version"
