#!/usr/bin/env bash
# The image's own checks: build it from aio-base.Dockerfile and measure what users care about
# (build time, size, safety, start-up behaviour). Each check prints one line
#   PASS|FAIL|SKIP  name  measured  (budget)  detail
# then a summary table; exit 1 when any check FAILs, 0 otherwise (SKIPs say why).
#
#   tests/test-build.sh [--junit FILE] [--image NAME] [--keep]
#
# Environment: BASE_IMAGE (default: from tests/lib/base-images.sh: python:3.11-slim when a registry
# answers, else the local stand-in), BASE_IMAGE_ARM64 (an arm64 base for the emulated arm64 check),
# TEST_BUILD_WARM_ONLY=1 (skip the cold --no-cache build: for quick local iterations only).
# Needs a running Docker engine with buildx (tests/lib/docker-engine.sh makes one).
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="aio-federation-agent:test-build"
JUNIT=""
KEEP=0
while [ "$#" -gt 0 ]; do
	case "$1" in
	--junit) JUNIT="${2:?--junit needs a file}" && shift ;;
	--image) IMAGE="${2:?--image needs a name}" && shift ;;
	--keep) KEEP=1 ;;
	-h | --help) sed -n '2,13p' "$0" && exit 0 ;;
	*) printf 'usage: %s [--junit FILE] [--image NAME] [--keep]\n' "$0" >&2 && exit 64 ;;
	esac
	shift
done

# Budgets (issue 5).
COLD_BUILD_BUDGET_S=300
WARM_BUILD_BUDGET_S=20
SIZE_BUDGET_MB=450
SIZE_STRETCH_MB=420
CONTEXT_BUDGET_KB=1024
STOP_BUDGET_MS=3000
HEALTHCHECK_BUDGET_MS=1000
START_TIMEOUT_S=60

RUN_ID="aio-tb-$$"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/test-build.XXXXXX")"
NET="$RUN_ID-net"
FAKE="$RUN_ID-livekit"
AGENT="$RUN_ID-agent"
# Known dummy secrets: available to the build (environment, pip_ca secret) and searched for later.
SECRET_MARK="aio-dummy-secret-$RUN_ID-$RANDOM$RANDOM"
export LLM_API_KEY="sk-$SECRET_MARK-llm" LIVEKIT_API_SECRET="$SECRET_MARK-livekit"
export POSTGRES_URL="postgresql://hr_agent:$SECRET_MARK-pg@db:5432/aio"

declare -a R_NAME=() R_STATUS=() R_MEASURED=() R_BUDGET=() R_DETAIL=() R_SECONDS=()
CHECK_T0=0

cleanup() {
	docker rm -f "$AGENT" "$FAKE" "$RUN_ID-idle" "$RUN_ID-bad" >/dev/null 2>&1 || true
	docker network rm "$NET" >/dev/null 2>&1 || true
	if [ "$KEEP" != 1 ]; then
		docker image rm -f "$IMAGE-warm" "$IMAGE-arm64" >/dev/null 2>&1 || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
log() { printf '  ... %s\n' "$*" >&2; }
start_check() { CHECK_T0=$(now_ms); }

# record NAME STATUS MEASURED BUDGET DETAIL
record() {
	local elapsed
	elapsed=$(awk -v ms=$(($(now_ms) - CHECK_T0)) 'BEGIN {printf "%.1f", ms / 1000}')
	R_NAME+=("$1") R_STATUS+=("$2") R_MEASURED+=("$3") R_BUDGET+=("$4") R_DETAIL+=("$5")
	R_SECONDS+=("$elapsed")
	printf '%-4s  %-22s %-16s %-18s %s\n' "$2" "$1" "$3" "${4:+($4)}" "$5"
}

# verdict CMD...: prints 0 when CMD succeeds, 1 otherwise (never trips set -e).
verdict() { if "$@"; then echo 0; else echo 1; fi; }

# pass_if CONDITION-EXIT-CODE NAME MEASURED BUDGET DETAIL
pass_if() {
	local ok="$1"
	shift
	if [ "$ok" = 0 ]; then record "$1" PASS "$2" "$3" "$4"; else record "$1" FAIL "$2" "$3" "$4"; fi
}

secs() { awk -v ms="$1" 'BEGIN {printf "%.1f s", ms / 1000}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1000000}'; }

# ---------------------------------------------------------------------------------------------
prepare() {
	if [ -z "${BASE_IMAGE:-}" ]; then
		# shellcheck source=tests/lib/base-images.sh
		. "$REPO/tests/lib/base-images.sh"
		base_images_ensure
	fi
	PIP_CA_SECRET=()
	if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
		cp /etc/ssl/certs/ca-certificates.crt "$WORK/pip_ca.pem"
	else
		: >"$WORK/pip_ca.pem"
	fi
	# A comment outside the PEM blocks: ignored by TLS, found by grep if the secret ever leaks.
	printf '# %s-pip-ca\n' "$SECRET_MARK" >>"$WORK/pip_ca.pem"
	PIP_CA_SECRET=(--secret "id=pip_ca,src=$WORK/pip_ca.pem")
	printf 'test-build: image %s on BASE_IMAGE=%s (%s CPUs, %s)\n' "$IMAGE" "$BASE_IMAGE" \
		"$(nproc)" "$(date -u +%FT%TZ)"
}

build() { # build TAG CONTEXT [extra docker build args...]
	local tag="$1" ctx="$2"
	shift 2
	docker buildx build --load -f "$REPO/aio-base.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
		"${PIP_CA_SECRET[@]}" --build-arg "REVISION=test" --build-arg "CREATED=$(date -u +%FT%TZ)" \
		-t "$tag" "$@" "$ctx"
}

check_context() {
	start_check
	# Export exactly what the engine receives as context (the .dockerignore applies).
	local bytes
	if printf 'FROM scratch\nCOPY . /\n' | docker buildx build -q -f - --output "type=local,dest=$WORK/ctx" \
		"$REPO" >"$WORK/ctx.log" 2>&1; then
		bytes=$(du -sb "$WORK/ctx" | cut -f1)
		local kb=$((bytes / 1024)) files
		files=$(find "$WORK/ctx" -type f | wc -l)
		pass_if "$(verdict [ "$kb" -lt "$CONTEXT_BUDGET_KB" ])" context_size "$kb KB" "< $CONTEXT_BUDGET_KB KB" "$files files: $(find "$WORK/ctx" -mindepth 1 -maxdepth 1 -printf "%P ")"
	else
		record context_size FAIL "-" "< $CONTEXT_BUDGET_KB KB" "$(tail -n 3 "$WORK/ctx.log")"
	fi
}

check_cold_build() {
	start_check
	if [ "${TEST_BUILD_WARM_ONLY:-0}" = 1 ]; then
		local t0
		t0=$(now_ms)
		if build "$IMAGE" "$REPO" >"$WORK/cold.log" 2>&1; then
			record cold_build SKIP "$(secs $(($(now_ms) - t0)))" "<= ${COLD_BUILD_BUDGET_S} s" \
				"TEST_BUILD_WARM_ONLY=1: built with the cache, cold time not measured"
		else
			record cold_build FAIL "-" "<= ${COLD_BUILD_BUDGET_S} s" "build failed: $(tail -n 5 "$WORK/cold.log")"
			return 1
		fi
		return 0
	fi
	# Cold: no layer cache and an empty pip cache mount, as on a fresh CI machine.
	docker builder prune -f --filter type=exec.cachemount >/dev/null 2>&1 || true
	local t0 ms
	t0=$(now_ms)
	if build "$IMAGE" "$REPO" --no-cache >"$WORK/cold.log" 2>&1; then
		ms=$(($(now_ms) - t0))
		pass_if "$(verdict [ "$ms" -le $((COLD_BUILD_BUDGET_S * 1000)) ])" cold_build "$(secs "$ms")" "<= ${COLD_BUILD_BUDGET_S} s" \
			"--no-cache, empty pip cache, $(nproc) CPUs"
	else
		record cold_build FAIL "-" "<= ${COLD_BUILD_BUDGET_S} s" "build failed, last lines: $(tail -n 5 "$WORK/cold.log" | tr '\n' ' ')"
		return 1
	fi
}

check_warm_rebuild() {
	start_check
	# A code-only change in a copy of the context (the repository is not touched).
	local ctx="$WORK/ctx" t0 ms
	if [ ! -d "$ctx/aio_agent" ]; then
		record warm_rebuild FAIL "-" "<= ${WARM_BUILD_BUDGET_S} s" "no exported context to change"
		return 0
	fi
	cp "$REPO/.dockerignore" "$ctx/.dockerignore"
	printf '\n# code-only change %s\n' "$RUN_ID" >>"$ctx/aio_agent/__init__.py"
	t0=$(now_ms)
	if build "$IMAGE-warm" "$ctx" >"$WORK/warm.log" 2>&1; then
		ms=$(($(now_ms) - t0))
		local cached
		cached=$(grep -c 'CACHED' "$WORK/warm.log" || true)
		# The dependency layer must come from the cache: no pip download in the log.
		local ok=0
		[ "$ms" -le $((WARM_BUILD_BUDGET_S * 1000)) ] || ok=1
		! grep -q 'Collecting\|Downloading' "$WORK/warm.log" || ok=1
		pass_if "$ok" warm_rebuild "$(secs "$ms")" "<= ${WARM_BUILD_BUDGET_S} s" \
			"aio_agent/__init__.py changed; $cached steps CACHED (dependency layer reused)"
	else
		record warm_rebuild FAIL "-" "<= ${WARM_BUILD_BUDGET_S} s" "build failed: $(tail -n 3 "$WORK/warm.log" | tr '\n' ' ')"
	fi
}

check_size() {
	start_check
	local bytes base_bytes
	bytes=$(docker image inspect --format '{{.Size}}' "$IMAGE")
	base_bytes=$(docker image inspect --format '{{.Size}}' "$BASE_IMAGE")
	local mbi=$((bytes / 1000000))
	if [ "$mbi" -le "$SIZE_STRETCH_MB" ]; then
		record size_uncompressed PASS "$(mb "$bytes")" "<= $SIZE_BUDGET_MB MB" "stretch <= $SIZE_STRETCH_MB MB met; base $(mb "$base_bytes")"
	elif [ "$mbi" -le "$SIZE_BUDGET_MB" ]; then
		record size_uncompressed PASS "$(mb "$bytes")" "<= $SIZE_BUDGET_MB MB" "stretch <= $SIZE_STRETCH_MB MB NOT met; base $(mb "$base_bytes")"
	else
		record size_uncompressed FAIL "$(mb "$bytes")" "<= $SIZE_BUDGET_MB MB" "base $(mb "$base_bytes")"
	fi
	start_check
	local gz
	gz=$(docker save "$IMAGE" | gzip -c | wc -c)
	record size_compressed PASS "$(mb "$gz")" "" "docker save | gzip -c | wc -c (reported, no budget)"
}

in_image() { docker run --rm --entrypoint "$1" "$IMAGE" "${@:2}"; }

check_user_and_setuid() {
	start_check
	local uid cfg_user
	uid=$(in_image id -u 2>&1) || true
	cfg_user=$(docker image inspect --format '{{.Config.User}}' "$IMAGE")
	pass_if "$(verdict [ "$uid" = 1000 ])" runs_as_uid_1000 "uid $uid" "1000" "USER $cfg_user; $(in_image getent passwd 1000 2>&1 | cut -d: -f1,6,7)"
	start_check
	local found count
	found=$(in_image find / -xdev -perm /6000 -type f 2>/dev/null) || true
	count=$(printf '%s' "$found" | grep -c . || true)
	pass_if "$(verdict [ "$count" = 0 ])" no_setuid_setgid "$count files" "0" "${found//$'\n'/ }"
}

check_secrets() {
	start_check
	local hits_save hits_history
	hits_save=$(docker save "$IMAGE" | grep -a -c "$SECRET_MARK" || true)
	hits_history=$(docker history --no-trunc "$IMAGE" | grep -c "$SECRET_MARK" || true)
	local inspect_hits
	inspect_hits=$(docker image inspect "$IMAGE" | grep -c "$SECRET_MARK" || true)
	pass_if "$(verdict [ $((hits_save + hits_history + inspect_hits)) = 0 ])" no_secrets_in_image "$((hits_save + hits_history + inspect_hits)) hits" "0" \
		"dummy secrets (env LLM_API_KEY/LIVEKIT_API_SECRET/POSTGRES_URL, pip_ca secret) searched in docker save, history, inspect"
}

check_missing_env() {
	start_check
	local out code=0
	out=$(docker run --rm --name "$RUN_ID-bad" --read-only --tmpfs /tmp \
		--tmpfs /app/config:uid=1000,gid=1000,mode=0700 --cap-drop ALL \
		--security-opt no-new-privileges "$IMAGE" 2>&1) || code=$?
	local required missing=()
	required=$(in_image python -c 'from aio_agent.config import variables
print(" ".join(v.name for v in variables() if v.required))' 2>/dev/null) || required=""
	[ -n "$required" ] || required="DEPARTMENT_ID DEPARTMENT_NAME LIVEKIT_URL LIVEKIT_API_KEY LIVEKIT_API_SECRET LLM_API_KEY"
	local name
	for name in $required; do
		grep -q "$name" <<<"$out" || missing+=("$name")
	done
	pass_if "$(verdict [ "$code:${#missing[@]}" = 78:0 ])" missing_env_exit_78 "exit $code" "exit 78, all named" \
		"required: $required${missing[*]:+; NOT named: ${missing[*]}}"
}

# The agent container: hardened flags, valid environment. With the fake LiveKit server (same image,
# tests/fakes mounted) the agent can register; otherwise LIVEKIT_URL points at nothing.
start_agent() {
	docker network create "$NET" >/dev/null
	LIVEKIT_MODE="nothing"
	local url="ws://127.0.0.1:7880"
	if [ -f "$REPO/tests/fakes/livekit_server.py" ]; then
		docker run -d --name "$FAKE" --network "$NET" --network-alias livekit \
			-v "$REPO/tests:/src/tests:ro" -w /src --entrypoint python "$IMAGE" \
			-m tests.fakes.livekit_server --port 7880 --api-key devkey \
			--api-secret "$LIVEKIT_API_SECRET" >/dev/null
		url="ws://livekit:7880"
		LIVEKIT_MODE="fake"
	fi
	docker run -d --name "$AGENT" --network "$NET" --read-only --tmpfs /tmp \
		--tmpfs /app/config:uid=1000,gid=1000,mode=0700 --cap-drop ALL \
		--security-opt no-new-privileges \
		-e DEPARTMENT_ID=hr -e "DEPARTMENT_NAME=Human Resources" -e "LIVEKIT_URL=$url" \
		-e LIVEKIT_API_KEY=devkey -e LIVEKIT_API_SECRET -e LLM_API_KEY -e LOG_FORMAT=json \
		"$IMAGE" >/dev/null
}

check_running_agent() {
	start_check
	start_agent
	local deadline=$((SECONDS + START_TIMEOUT_S)) hc_args=() hc_out="" hc_code=1 state
	[ "$LIVEKIT_MODE" = fake ] && hc_args=(--live)
	while [ "$SECONDS" -lt "$deadline" ]; do
		state=$(docker inspect --format '{{.State.Status}}' "$AGENT" 2>/dev/null || echo gone)
		[ "$state" = running ] || break
		hc_code=0
		hc_out=$(docker exec "$AGENT" python /app/healthcheck.py "${hc_args[@]}" 2>&1) || hc_code=$?
		[ "$hc_code" = 0 ] && break
		sleep 1
	done
	local flags
	flags=$(docker inspect --format 'ro={{.HostConfig.ReadonlyRootfs}} capdrop={{.HostConfig.CapDrop}} secopt={{.HostConfig.SecurityOpt}}' "$AGENT")
	if [ "$hc_code" = 0 ]; then
		record valid_env_healthy PASS "healthy" "healthcheck exit 0" \
			"healthcheck.py ${hc_args[*]:-(no --live)}; LiveKit: $LIVEKIT_MODE; $flags"
		record hardened_run PASS "running" "read-only, cap-drop ALL, no-new-privileges" "$flags"
	else
		record valid_env_healthy FAIL "exit $hc_code ($state)" "healthcheck exit 0" \
			"$(printf '%s' "$hc_out" | tail -n 8 | tr '\n' ' ') | logs: $(docker logs "$AGENT" 2>&1 | tail -n 5 | tr '\n' ' ')"
		record hardened_run FAIL "$state" "read-only, cap-drop ALL, no-new-privileges" "$flags"
		return 0
	fi

	start_check
	local times=() i t0 ms
	for i in 1 2 3 4 5; do
		t0=$(now_ms)
		docker exec "$AGENT" python /app/healthcheck.py "${hc_args[@]}" >/dev/null 2>&1 || true
		times+=($(($(now_ms) - t0)))
	done
	local sorted median
	sorted=$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')
	median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
	pass_if "$(verdict [ "$median" -le "$HEALTHCHECK_BUDGET_MS" ])" healthcheck_time "$median ms" "<= $HEALTHCHECK_BUDGET_MS ms" \
		"median of 5 docker exec runs (incl. ~exec overhead): $sorted ms"

	start_check
	local pid1
	pid1=$(docker exec "$AGENT" cat /proc/1/comm 2>&1) || true
	pass_if "$(verdict [ "$pid1" = tini ])" tini_is_pid_1 "$pid1" "tini" "$(docker exec "$AGENT" cat /proc/1/cmdline 2>/dev/null | tr '\0' ' ')"

	start_check
	local code
	t0=$(now_ms)
	docker stop -t 10 "$AGENT" >/dev/null
	ms=$(($(now_ms) - t0))
	code=$(docker inspect --format '{{.State.ExitCode}}' "$AGENT")
	pass_if "$(verdict [ "$ms" -lt "$STOP_BUDGET_MS" ])" sigterm_stop "$ms ms" "< $STOP_BUDGET_MS ms" "docker stop (SIGTERM) of an idle agent; exit code $code"
}

check_lint() {
	start_check
	local hl="$REPO/.venv/bin/hadolint" sc="$REPO/.venv/bin/shellcheck" out code=0
	local dockerfiles=("$REPO/aio-base.Dockerfile" "$REPO"/tests/images/*/Dockerfile)
	if [ -x "$hl" ]; then
		out=$("$hl" "${dockerfiles[@]}" 2>&1) || code=$?
		pass_if "$code" hadolint "$(printf '%s' "$out" | grep -c . || true) findings" "0" \
			"$("$hl" --version 2>&1 | head -n1); ${#dockerfiles[@]} Dockerfiles ${out:+: $out}"
	else
		record hadolint FAIL "-" "0" "$hl missing (pip install -r requirements-dev.txt)"
	fi
	start_check
	code=0
	local scripts=()
	while IFS= read -r -d '' f; do scripts+=("$f"); done < <(
		find "$REPO" -path "$REPO/.venv" -prune -o -path "$REPO/.git" -prune -o -type f -name '*.sh' -print0
	)
	[ -f "$REPO/.ci/run" ] && scripts+=("$REPO/.ci/run")
	if [ -x "$sc" ]; then
		out=$("$sc" -x "${scripts[@]}" 2>&1) || code=$?
		pass_if "$code" shellcheck "$(printf '%s' "$out" | grep -c '^In ' || true) findings" "0" \
			"shellcheck $("$sc" --version | sed -n 's/^version: //p'); ${#scripts[@]} scripts"
		[ "$code" = 0 ] || printf '%s\n' "$out" | head -n 40 >&2
	else
		record shellcheck FAIL "-" "0" "$sc missing (pip install -r requirements-dev.txt)"
	fi
}

check_trivy() {
	start_check
	if ! command -v trivy >/dev/null 2>&1; then
		record trivy SKIP "-" "0 HIGH/CRITICAL fixable" "trivy is not installed on this machine"
		return 0
	fi
	local out code=0
	out=$(trivy image --quiet --severity HIGH,CRITICAL --ignore-unfixed --exit-code 1 "$IMAGE" 2>&1) || code=$?
	pass_if "$code" trivy "exit $code" "0 HIGH/CRITICAL fixable" "$(printf '%s' "$out" | grep -E '^Total' | tr '\n' ' ')"
}

check_arm64() {
	start_check
	if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
		record arm64_import SKIP "-" "import aio_agent" "no binfmt_misc handler for arm64 (install qemu-user-static + binfmt-support)"
		return 0
	fi
	if [ -z "${BASE_IMAGE_ARM64:-}" ]; then
		record arm64_import SKIP "-" "import aio_agent" "BASE_IMAGE_ARM64 unset: no arm64 base image (no registry; build-and-push makes one)"
		return 0
	fi
	local t0 ms
	t0=$(now_ms)
	if BASE_IMAGE="$BASE_IMAGE_ARM64" build "$IMAGE-arm64" "$REPO" --platform linux/arm64 >"$WORK/arm64.log" 2>&1 &&
		docker run --rm --platform linux/arm64 --entrypoint python "$IMAGE-arm64" \
			-c 'import platform, aio_agent; print(platform.machine())' >"$WORK/arm64.out" 2>&1; then
		ms=$(($(now_ms) - t0))
		record arm64_import PASS "$(secs "$ms")" "import aio_agent" "built + imported under emulation: $(tail -n1 "$WORK/arm64.out")"
	else
		record arm64_import FAIL "-" "import aio_agent" "$(tail -n 3 "$WORK/arm64.log" "$WORK/arm64.out" 2>/dev/null | tr '\n' ' ')"
	fi
}

# ---------------------------------------------------------------------------------------------
summary() {
	local i pass=0 fail=0 skip=0
	printf '\n%-22s %-5s %-16s %-32s %s\n' CHECK RESULT MEASURED BUDGET SECONDS
	for i in "${!R_NAME[@]}"; do
		printf '%-22s %-5s %-16s %-32s %s\n' "${R_NAME[$i]}" "${R_STATUS[$i]}" "${R_MEASURED[$i]}" \
			"${R_BUDGET[$i]}" "${R_SECONDS[$i]}"
		case "${R_STATUS[$i]}" in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; *) skip=$((skip + 1)) ;; esac
	done
	printf '\n%d passed, %d failed, %d skipped\n' "$pass" "$fail" "$skip"
	[ -n "$JUNIT" ] && write_junit "$pass" "$fail" "$skip"
	[ "$fail" = 0 ]
}

xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' <<<"$1"; }

write_junit() {
	local i total=${#R_NAME[@]} tmp="$JUNIT.partial"
	mkdir -p "$(dirname "$JUNIT")"
	{
		printf '<?xml version="1.0" encoding="UTF-8"?>\n'
		printf '<testsuite name="test-build" tests="%d" failures="%d" skipped="%d">\n' "$total" "$2" "$3"
		for i in "${!R_NAME[@]}"; do
			printf '  <testcase classname="test-build" name="%s" time="%s">' "${R_NAME[$i]}" "${R_SECONDS[$i]}"
			local msg
			msg=$(xml_escape "${R_MEASURED[$i]} (budget ${R_BUDGET[$i]}): ${R_DETAIL[$i]}")
			case "${R_STATUS[$i]}" in
			FAIL) printf '<failure message="%s"/>' "$msg" ;;
			SKIP) printf '<skipped message="%s"/>' "$msg" ;;
			*) printf '<system-out>%s</system-out>' "$msg" ;;
			esac
			printf '</testcase>\n'
		done
		printf '</testsuite>\n'
	} >"$tmp"
	mv "$tmp" "$JUNIT"
}

main() {
	prepare
	check_context
	if check_cold_build; then
		check_warm_rebuild
		check_size
		check_user_and_setuid
		check_secrets
		check_missing_env
		check_running_agent
		check_trivy
		check_arm64
	fi
	check_lint
	summary
}

main
