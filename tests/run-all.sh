#!/usr/bin/env bash
# The one test command: everything CI checks, in order, on a fresh machine or a laptop.
#
#   tests/run-all.sh                  all stages
#   tests/run-all.sh --fast           setup, lint, unit (seconds to a minute; no Docker)
#   tests/run-all.sh --only unit,compose
#   tests/run-all.sh --skip n8n
#
# On a fresh Debian machine (as root) it installs what it needs: PostgreSQL binaries for the
# throwaway test clusters, a Docker engine with the buildx and compose plugins, and, where no
# container registry answers, local stand-ins of the base images. Each stage prints its duration;
# the summary at the end lists every stage; the exit code is non-zero when any stage failed.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

ALL_STAGES=(setup lint unit docker build-push image n8n compose bench)
VENV="${VENV:-$REPO/.venv}"
RESULTS_DIR="${RESULTS_DIR:-$REPO/test-results}"

log() { printf '%s [run-all] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

usage() {
	sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# --- stages ----------------------------------------------------------------------------------
stage_setup() {
	if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
		log "installing PostgreSQL binaries (throwaway test clusters)"
		apt_install postgresql
	fi
	if [[ ! -x "$VENV/bin/python" ]]; then
		log "creating $VENV"
		python3 -m venv "$VENV"
	fi
	local stamp="$VENV/.requirements.sha256" want
	want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
	if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
		"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
		"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
		printf '%s\n' "$want" >"$stamp"
	fi
	"$VENV/bin/python" -c 'import livekit.agents, asyncpg, pytest' >/dev/null
}

stage_lint() {
	local rc=0 shell_files=() dockerfiles=()
	mapfile -t shell_files < <(git ls-files -co --exclude-standard -- '*.sh' '.ci/run')
	mapfile -t dockerfiles < <(git ls-files -co --exclude-standard -- '*Dockerfile*')
	"$VENV/bin/ruff" check . || rc=1
	"$VENV/bin/ruff" format --check . || rc=1
	"$VENV/bin/shellcheck" -x "${shell_files[@]}" || rc=1
	if ((${#dockerfiles[@]})); then
		"$VENV/bin/hadolint" "${dockerfiles[@]}" || rc=1
	fi
	"$VENV/bin/yamllint" -c .yamllint.yml . || rc=1
	check_requirements_lock || rc=1
	return "$rc"
}

# requirements.txt must be what requirements.in compiles to (hashes included).
check_requirements_lock() {
	local tmp
	tmp="$(mktemp)"
	if ! "$VENV/bin/uv" pip compile --quiet requirements.in --generate-hashes --universal \
		--python-version 3.11 --no-header --native-tls -o "$tmp" 2>/dev/null; then
		log "SKIP requirements lock check: PyPI did not answer"
		rm -f "$tmp"
		return 0
	fi
	if ! diff -q <(grep -v '^#' requirements.txt | sed '/^$/d') <(grep -v '^#' "$tmp" | sed '/^$/d') >/dev/null; then
		log "requirements.txt is out of date: run the command in its header"
		rm -f "$tmp"
		return 1
	fi
	rm -f "$tmp"
}

stage_unit() {
	"$VENV/bin/pytest" -m "not docker and not n8n" -p no:cacheprovider \
		--junitxml="$RESULTS_DIR/unit.xml" tests
}

stage_docker() {
	bash tests/lib/docker-engine.sh
	load_image_env
	env | grep -E '^(BASE_IMAGE|POSTGRES_IMAGE|LIVEKIT_IMAGE|N8N_IMAGE)=' || true
}

stage_image() {
	load_image_env
	# The build-push stage leaves an arm64 stand-in base (and its build cache): with it,
	# test-build.sh builds and imports the image under emulation too.
	if [[ -z "${BASE_IMAGE_ARM64:-}" ]] && docker image inspect aio-local/python:3.11-slim-arm64 >/dev/null 2>&1; then
		export BASE_IMAGE_ARM64=aio-local/python:3.11-slim-arm64
	fi
	bash tests/test-build.sh --junit "$RESULTS_DIR/test-build.xml"
}

stage_build-push() {
	load_image_env
	bash tests/test-build-and-push.sh
}

stage_n8n() {
	bash tests/lib/n8n-install.sh
	AIO_REQUIRE_N8N=1 "$VENV/bin/pytest" -m n8n -p no:cacheprovider \
		--junitxml="$RESULTS_DIR/n8n.xml" tests
}

stage_compose() {
	load_image_env
	bash tests/test-compose.sh
}

# Every benchmark prints its numbers and budget. A crash fails the stage; a missed budget (exit 3)
# is reported in the summary, and fails the stage only with BENCH_STRICT=1: wall-clock budgets
# on a shared 2-CPU machine are a measurement to read, not a coin to flip for every merge.
stage_bench() {
	local rc=0 script code over=()
	for script in bench/*.py; do
		log "benchmark $script"
		code=0
		"$VENV/bin/python" "$script" || code=$?
		case "$code" in
		0) ;;
		3) over+=("$script") ;;
		*) rc=1 ;;
		esac
	done
	if ((${#over[@]})); then
		log "OVER BUDGET: ${over[*]} (see their output above)"
		printf '%s\n' "${over[@]}" >"$RESULTS_DIR/bench-over-budget.txt"
		[[ "${BENCH_STRICT:-0}" == 1 ]] && rc=1
	fi
	return "$rc"
}

# --- helpers ---------------------------------------------------------------------------------
apt_updated=0
apt_install() {
	if ((EUID != 0)); then
		log "need root to install: $* (or install them yourself)"
		return 1
	fi
	if ((!apt_updated)); then
		apt-get update -qq -o DPkg::Lock::Timeout=600
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
		--no-install-recommends "$@" >/dev/null
}

image_env_loaded=0
load_image_env() {
	((image_env_loaded)) && return 0
	local exports
	exports="$(bash tests/lib/base-images.sh --print-env)"
	eval "$exports"
	image_env_loaded=1
}

# --- main ------------------------------------------------------------------------------------
main() {
	local selected=("${ALL_STAGES[@]}") skip=() arg
	while (($#)); do
		arg="$1"
		case "$arg" in
		--fast) selected=(setup lint unit) ;;
		--only)
			IFS=, read -r -a selected <<<"${2:?--only needs a list of stages}"
			shift
			;;
		--skip)
			IFS=, read -r -a skip <<<"${2:?--skip needs a list of stages}"
			shift
			;;
		-h | --help)
			usage
			return 0
			;;
		*)
			printf 'unknown argument: %s (see --help; stages: %s)\n' "$arg" "${ALL_STAGES[*]}" >&2
			return 64
			;;
		esac
		shift
	done
	mkdir -p "$RESULTS_DIR"
	rm -f "$RESULTS_DIR/bench-over-budget.txt"
	export PATH="$VENV/bin:$PATH" PYTHONDONTWRITEBYTECODE=1

	local names=() statuses=() durations=() failed=0 passed=0 stage s t0 t1 status
	local total0
	total0="$(date +%s)"
	for stage in "${ALL_STAGES[@]}"; do
		local wanted=0
		for s in "${selected[@]}"; do [[ "$s" == "$stage" ]] && wanted=1; done
		for s in "${skip[@]}"; do [[ "$s" == "$stage" ]] && wanted=0; done
		((wanted)) || continue
		# setup is required by every other stage
		if [[ "$stage" != setup && "${statuses[0]:-}" == FAIL && "${names[0]:-}" == setup ]]; then
			names+=("$stage") statuses+=(FAIL) durations+=(0)
			failed=$((failed + 1))
			continue
		fi
		log "=== stage $stage"
		t0="$(date +%s)"
		# A stage runs in its own subshell with errexit on: started in the background and
		# waited for, because bash ignores `set -e` inside anything tested by if/||/&&.
		(
			set -Eeuo pipefail
			"stage_$stage"
		) &
		if wait "$!"; then status=PASS passed=$((passed + 1)); else status=FAIL failed=$((failed + 1)); fi
		t1="$(date +%s)"
		if [[ "$stage" == bench && "$status" == PASS && -s "$RESULTS_DIR/bench-over-budget.txt" ]]; then
			status="PASS*"
		fi
		log "=== stage $stage: $status in $((t1 - t0)) s"
		names+=("$stage") statuses+=("$status") durations+=("$((t1 - t0))")
	done

	printf '\n%-12s %-6s %8s\n' STAGE RESULT SECONDS
	local i
	for i in "${!names[@]}"; do
		printf '%-12s %-6s %8s\n' "${names[$i]}" "${statuses[$i]}" "${durations[$i]}"
	done
	printf '%-12s %-6s %8s\n' total "" "$(($(date +%s) - total0))"
	if [[ -s "$RESULTS_DIR/bench-over-budget.txt" ]]; then
		printf '* benchmarks over budget (numbers above): %s\n' "$(tr '\n' ' ' <"$RESULTS_DIR/bench-over-budget.txt")"
	fi
	printf 'stages: %d passed, %d failed\n' "$passed" "$failed"
	((failed == 0))
}

main "$@"
