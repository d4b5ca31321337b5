#!/usr/bin/env bash
# Test stage for build-and-push.sh: a real multi-arch build pushed to a real registry on loopback.
#
#   tests/test-build-and-push.sh [--junit FILE] [pytest args...]
#
# 1. a Docker engine with buildx (tests/lib/docker-engine.sh);
# 2. a base image that serves BOTH linux/amd64 and linux/arm64: $BASE_IMAGE when a registry
#    already serves it for both, else the loopback stand-in made by tests/lib/arm64-base.sh
#    (QEMU emulation, an arm64 python stand-in, both halves joined in a registry on
#    127.0.0.1:$BASE_REGISTRY_PORT; cached after the first run);
# 3. tests/test_build_and_push.py (pytest -m docker): its own registry on a free loopback port and
#    a temporary git clone of this checkout; the real checkout is never modified.
# Prints how long each part took. The base registry is stopped at the end when this run started
# it. Exit code: pytest's (0 all passed), or that of the failed preparation step.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${VENV:-$REPO/.venv}"

log() { printf '%s [test-build-and-push] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now_s() { date +%s; }

# shellcheck source=tests/lib/local-registry.sh
source "$REPO/tests/lib/local-registry.sh"

# True when REF in a registry lists both platforms (the real python:3.11-slim does).
serves_both_platforms() {
	local listing
	listing="$(timeout 60 docker buildx imagetools inspect "$1" 2>/dev/null)" || return 1
	grep -q 'Platform: *linux/amd64' <<<"$listing" && grep -q 'Platform: *linux/arm64' <<<"$listing"
}

main() {
	local junit=() pytest_args=()
	while [ "$#" -gt 0 ]; do
		case "$1" in
		--junit)
			junit=(--junitxml "${2:?--junit needs a file}")
			shift
			;;
		-h | --help)
			sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
			return 0
			;;
		*) pytest_args+=("$1") ;;
		esac
		shift
	done

	local t_all t0
	t_all="$(now_s)"
	t0="$(now_s)"
	bash tests/lib/docker-engine.sh
	log "engine ready in $(($(now_s) - t0)) s"

	t0="$(now_s)"
	local base="${BASE_IMAGE:-python:3.11-slim}" started_registry=0
	local port="${BASE_REGISTRY_PORT:-5000}"
	local dir="${BASE_REGISTRY_DIR:-${AIO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aio-federation}/registry-$port}"
	if [ -z "${MULTIARCH_BASE_IMAGE:-}" ]; then
		if [[ "$base" != aio-local/* ]] && serves_both_platforms "$base"; then
			MULTIARCH_BASE_IMAGE="$base"
		else
			local_registry_answers "$port" || started_registry=1
			MULTIARCH_BASE_IMAGE="$(bash tests/lib/arm64-base.sh)"
		fi
	fi
	export MULTIARCH_BASE_IMAGE
	log "multi-arch base $MULTIARCH_BASE_IMAGE ready in $(($(now_s) - t0)) s"
	if [ "$started_registry" -eq 1 ]; then
		# shellcheck disable=SC2064 # expand now: the values are fixed for this run
		trap "local_registry_stop '$port' '$dir'" EXIT
	fi

	t0="$(now_s)"
	local rc=0
	"$VENV/bin/pytest" -m docker -p no:cacheprovider "${junit[@]}" \
		tests/test_build_and_push.py "${pytest_args[@]}" || rc=$?
	log "pytest finished in $(($(now_s) - t0)) s (exit $rc); whole stage $(($(now_s) - t_all)) s"
	return "$rc"
}

main "$@"
