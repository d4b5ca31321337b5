#!/usr/bin/env bash
# End-to-end test of docker-compose.test.yml: PostgreSQL + LiveKit (or its stand-in) + HR +
# Accounting, as a user runs them. Needs a Docker engine with the compose v2 plugin; images come
# from BASE_IMAGE / POSTGRES_IMAGE / LIVEKIT_IMAGE (tests/lib/base-images.sh makes stand-ins where
# no registry answers). Each check prints PASS/FAIL with what it measured; exit 1 on any FAIL.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PROJECT="${COMPOSE_PROJECT:-aio-e2e}"
export AGENT_IMAGE="${AGENT_IMAGE:-aio-federation-agent:e2e}"
export BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
export POSTGRES_IMAGE="${POSTGRES_IMAGE:-postgres:16}"
PIP_CA_FILE="${PIP_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
FAILS=0
PASSES=0

log() { printf '%s [compose-e2e] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
pass() {
	PASSES=$((PASSES + 1))
	printf 'PASS  %s\n' "$*"
}
fail() {
	FAILS=$((FAILS + 1))
	printf 'FAIL  %s\n' "$*"
}
compose() { docker compose -p "$PROJECT" -f docker-compose.test.yml "$@"; }
now_ms() { date +%s%3N; }

# HTTP status of a URL on the host (000 when nothing answers).
http_status() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" || true; }

# wait_for_status URL CODE TIMEOUT_S -> 0 when URL answered CODE within the timeout
wait_for_status() {
	local url="$1" want="$2" deadline=$(($(date +%s) + $3))
	while (($(date +%s) < deadline)); do
		[[ "$(http_status "$url")" == "$want" ]] && return 0
		sleep 0.5
	done
	return 1
}

cleanup() {
	if [[ "${KEEP_STACK:-0}" != 1 ]]; then
		compose --profile broken down -v --remove-orphans >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

build_images() {
	local secret=()
	[[ -r "$PIP_CA_FILE" ]] && secret=(--secret "id=pip_ca,src=$PIP_CA_FILE")
	log "building $AGENT_IMAGE on $BASE_IMAGE"
	docker buildx build --load -f aio-base.Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" \
		"${secret[@]}" -t "$AGENT_IMAGE" . >/dev/null
	if [[ -z "${LIVEKIT_IMAGE:-}" ]]; then
		if timeout 20 docker pull -q livekit/livekit-server:v1.9 >/dev/null 2>&1; then
			export LIVEKIT_IMAGE=livekit/livekit-server:v1.9
		else
			# No registry: the fake LiveKit server from tests/fakes, packaged on the agent image.
			export LIVEKIT_IMAGE=aio-local/livekit-fake:e2e
			log "no registry for livekit-server: building the stand-in $LIVEKIT_IMAGE"
			docker build -q -f tests/images/livekit-fake/Dockerfile \
				--build-arg "AGENT_IMAGE=$AGENT_IMAGE" -t "$LIVEKIT_IMAGE" tests >/dev/null
		fi
	fi
	log "images: agent=$AGENT_IMAGE postgres=$POSTGRES_IMAGE livekit=$LIVEKIT_IMAGE"
}

check_up() {
	local t0 t1
	t0="$(now_ms)"
	if compose up -d --no-build --wait --wait-timeout 180 postgres livekit hr accounting; then
		t1="$(now_ms)"
		pass "stack up, hr and accounting healthy in $((t1 - t0)) ms (docker compose up --wait)"
	else
		fail "stack did not become healthy"
		compose ps -a || true
		compose logs --no-color --tail 60 || true
		return 1
	fi
	local svc port
	for svc in hr accounting; do
		if compose exec -T "$svc" python /app/healthcheck.py >/dev/null; then
			pass "$svc: healthcheck.py inside the container passes"
		else
			fail "$svc: healthcheck.py inside the container fails"
			compose exec -T "$svc" python /app/healthcheck.py || true
		fi
	done
	for port in 8080 8081; do
		local code
		code="$(http_status "http://127.0.0.1:$port/readyz")"
		if [[ "$code" == 200 ]]; then
			pass "port $port: /readyz 200 (registered with LiveKit, DB reachable)"
		else
			fail "port $port: /readyz answered $code"
		fi
	done
}

check_isolation() {
	local out
	out="$(compose exec -T hr python - <<'PY' 2>&1 || true
import asyncio, asyncpg
from aio_agent.config import load_rendered

async def main() -> None:
    cfg = load_rendered("/app/config/config.yaml")
    conn = await asyncpg.connect(cfg["database"]["url"],
                                 server_settings={"app.department_id": "hr"})
    own = await conn.fetchval("SELECT count(*) FROM hr_tenant.drive_documents")
    print(f"own_documents={own}")
    try:
        await conn.fetch("SELECT * FROM accounting_tenant.drive_documents")
        print("other=READABLE")
    except asyncpg.InsufficientPrivilegeError as exc:
        print(f"other=denied ({exc.sqlstate})")
    await conn.close()

asyncio.run(main())
PY
)"
	if grep -Eq '^own_documents=[1-9]' <<<"$out"; then
		pass "hr reads its own documents with its own credentials ($(grep own_documents <<<"$out"))"
	else
		fail "hr cannot read its own documents: $out"
	fi
	if grep -q '^other=denied (42501)' <<<"$out"; then
		pass "hr gets permission denied on accounting_tenant (SQLSTATE 42501)"
	else
		fail "hr was not refused on accounting_tenant: $out"
	fi
}

check_broken() {
	local out rc=0
	out="$(compose --profile broken up --no-deps --no-build --exit-code-from broken broken 2>&1)" || rc=$?
	if ((rc == 78)) && grep -q 'DEPARTMENT_ID' <<<"$out" && grep -q 'LIVEKIT_URL' <<<"$out" &&
		grep -q 'LLM_API_KEY' <<<"$out"; then
		pass "broken environment exits 78 and lists every problem"
	else
		fail "broken environment: exit $rc; output: $(tail -n 12 <<<"$out")"
	fi
	if compose --profile broken ps -a broken 2>/dev/null | grep -q 'Exited (78)'; then
		pass "compose ps shows the broken instance as Exited (78)"
	else
		fail "compose ps does not show Exited (78)"
	fi
}

container_of() { compose ps -q "$1"; }

check_db_restart() {
	local hr_id acc_id hr_started acc_started
	hr_id="$(container_of hr)"
	acc_id="$(container_of accounting)"
	hr_started="$(docker inspect -f '{{.State.StartedAt}}' "$hr_id")"
	acc_started="$(docker inspect -f '{{.State.StartedAt}}' "$acc_id")"
	compose stop postgres >/dev/null 2>&1
	if wait_for_status http://127.0.0.1:8080/readyz 503 30 &&
		wait_for_status http://127.0.0.1:8081/readyz 503 30; then
		pass "postgres down: both /readyz turn 503"
	else
		fail "postgres down: /readyz did not turn 503"
	fi
	compose start postgres >/dev/null 2>&1
	local t0
	t0="$(now_ms)"
	if wait_for_status http://127.0.0.1:8080/readyz 200 60 &&
		wait_for_status http://127.0.0.1:8081/readyz 200 60; then
		pass "postgres back: both /readyz 200 again after $(($(now_ms) - t0)) ms"
	else
		fail "postgres back: /readyz did not return to 200"
	fi
	if [[ "$(docker inspect -f '{{.State.StartedAt}}' "$hr_id")" == "$hr_started" &&
		"$(docker inspect -f '{{.State.StartedAt}}' "$acc_id")" == "$acc_started" ]]; then
		pass "no agent container restarted during the database outage"
	else
		fail "an agent container restarted during the database outage"
	fi
}

check_stop() {
	local id t0 elapsed code
	id="$(container_of hr)"
	t0="$(now_ms)"
	compose stop hr >/dev/null 2>&1
	elapsed=$(($(now_ms) - t0))
	code="$(docker inspect -f '{{.State.ExitCode}}' "$id")"
	if [[ "$code" == 0 ]] && ((elapsed < 50000)); then
		pass "docker compose stop hr: exit 0 in $elapsed ms (grace period 50 s)"
	else
		fail "docker compose stop hr: exit $code after $elapsed ms"
	fi
}

main() {
	command -v curl >/dev/null || {
		echo "curl is required" >&2
		return 1
	}
	cleanup
	build_images
	if check_up; then
		check_isolation
		check_db_restart
		check_broken
		check_stop
	fi
	printf '\ncompose e2e: %d passed, %d failed\n' "$PASSES" "$FAILS"
	((FAILS == 0))
}

main "$@"
